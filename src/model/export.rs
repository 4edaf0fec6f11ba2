//! The model as a TorchScript file, by tracing: libtorch's tracer records every operation the
//! eval-mode forward runs on an example batch, whatever the architecture, and the recorded
//! graph becomes the module's `forward`. The weights enter the graph as constants (tch cannot
//! register them as module parameters), so the file holds them and needs nothing else;
//! `torch.jit.load(path, map_location=...)` moves them with the rest.
//!
//! What the trace fixes: eval mode (BatchNorm's running statistics, no dropout; the loaded
//! module's `train()` / `eval()` change nothing), the example's height and width (sizes the
//! forward reads become numbers in the graph), and the outputs: one fp32 tensor per task, as a
//! tuple in task order. The batch dimension stays free.
//!
//! This is tch's `CModule::create_by_tracing` with another ending: tch registers each output
//! tensor as a separate graph output, which libtorch refuses to run or save for more than one;
//! `mtl_end_tracing_tuple` (src/model/trace_tuple.cpp) packs them into a tuple first.
use super::Mode;
use super::MultiTaskModel;
use std::ffi::{c_char, c_int, CStr, CString};
use std::path::Path;
use tch::Tensor;

extern "C" {
    fn mtl_end_tracing_tuple(
        module: *mut torch_sys::CModule_,
        method: *const c_char,
        outputs: *const *mut torch_sys::C_tensor,
        count: c_int,
    ) -> *mut c_char;
}

/// What the model reads of an exported module's input: a normalized image batch as it is; a
/// table run's mapped rows `[N, F]` as `[N, F, 1, 1]` (a server has rows, not pictures; the
/// reshape is traced, so the module takes `[N, F]`).
pub fn model_input(x: &Tensor) -> Tensor {
    if x.dim() == 2 {
        x.unsqueeze(-1).unsqueeze(-1)
    } else {
        x.shallow_clone()
    }
}

/// The module's class name, as `print(module)` shows it.
const MODULE_NAME: &str = "MultiTaskModel";
/// The traced method: what `module(x)` calls.
const METHOD: &str = "forward";

/// Traces `model`'s eval-mode forward on `example` (a normalized NCHW float batch, or a table
/// run's mapped rows `[N, F]`, on the model's device) and saves the TorchScript module to
/// `path`. The variables stop requiring gradients while the tracer runs (it refuses to record
/// a tensor that requires one as a constant) and require them again afterwards.
pub fn save_traced(model: &mut MultiTaskModel, example: &Tensor, path: &Path) -> anyhow::Result<()> {
    model.vs.freeze();
    let saved = tch::no_grad(|| trace_and_save(model, example, path));
    model.vs.unfreeze();
    saved
}

fn trace_and_save(model: &MultiTaskModel, example: &Tensor, path: &Path) -> anyhow::Result<()> {
    let name = CString::new(MODULE_NAME)?;
    let method = CString::new(METHOD)?;
    let file = CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut input = example.shallow_clone();
    let inputs = [input.as_mut_ptr()];
    // SAFETY: tch's own tracing entry point, given a valid name and one live tensor; it returns
    // null (with the error recorded) when it fails.
    let module = unsafe { torch_sys::atm_create_for_tracing(name.as_ptr(), inputs.as_ptr(), 1) };
    if module.is_null() {
        anyhow::bail!("tracing the model could not start: {}", last_torch_error());
    }
    // The tracer records what runs between its start and end: the forward, on the input the
    // tracer knows (`input`, the very tensor registered above).
    let mut outputs = model.forward(&model_input(&input), Mode::Eval);
    let pointers: Vec<*mut torch_sys::C_tensor> = outputs.iter_mut().map(Tensor::as_mut_ptr).collect();
    // SAFETY: `module` is the live module of the trace begun above, `pointers` are live tensors
    // for the duration of the call; a non-null result is a malloc'd message we free.
    let failed = unsafe { mtl_end_tracing_tuple(module, method.as_ptr(), pointers.as_ptr(), pointers.len() as c_int) };
    let result = if failed.is_null() {
        // SAFETY: a complete module and a NUL-terminated path.
        unsafe { torch_sys::atm_save(module, file.as_ptr()) };
        match last_torch_error() {
            e if e.is_empty() => Ok(()),
            e => Err(crate::user_error!("{}: cannot write: {e}", path.display())),
        }
    } else {
        // SAFETY: the message `mtl_end_tracing_tuple` allocated with strdup.
        let message = unsafe { CStr::from_ptr(failed) }.to_string_lossy().into_owned();
        unsafe { libc::free(failed.cast()) };
        Err(anyhow::anyhow!("tracing the model failed: {message}"))
    };
    // SAFETY: the module came from atm_create_for_tracing and is not used after this.
    unsafe { torch_sys::atm_free(module) };
    result
}

/// The error libtorch recorded for tch's last call (empty when there was none).
fn last_torch_error() -> String {
    // SAFETY: returns null or a malloc'd message that the caller owns.
    let e = unsafe { torch_sys::get_and_reset_last_err() };
    if e.is_null() {
        return String::new();
    }
    // SAFETY: a NUL-terminated string from libtch, freed once here.
    let message = unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned();
    unsafe { libc::free(e.cast()) };
    message
}
