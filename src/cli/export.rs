//! `mtl-train export`: a trained model as a file other programs load with one call.
//!
//! `--torchscript FILE.pt` traces the model's eval-mode forward with libtorch's tracer
//! (`mtl::model::export`) and saves the module, with a description of its input and outputs
//! as the extra file `mtl.json` (`torch.jit.load(FILE, _extra_files={"mtl.json": ""})`).
//! `--onnx FILE.onnx` goes through the PyTorch twin of the model (scripts/mtl_torch.py, compiled
//! into the binary) and `torch.onnx.export`, run by a Python that has torch, onnx and
//! onnxscript. Both take a normalized float `[N, C, H, W]` batch (any N, the exported H×W) and
//! return one fp32 tensor per task, in task order.
use clap::Args;
use mtl::checkpoint::write_atomically;
use mtl::model::Mode;
use mtl::train::restore::{checkpoint_dir, restore, Restored};
use mtl::{user_bail, user_error};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tch::{Device, Kind, Tensor};

/// The PyTorch twin, written next to nothing: it runs from a temporary directory.
const MTL_TORCH_PY: &str = include_str!("../../scripts/mtl_torch.py");
/// The name of the description inside the TorchScript archive (`<archive>/extra/<name>`).
pub const DESCRIPTION_FILE: &str = "mtl.json";
/// Batch size of the example the tracer runs (any batch size runs afterwards).
const TRACE_BATCH: i64 = 2;

#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("format").required(true).multiple(true).args(["torchscript", "onnx"])))]
pub struct ExportArgs {
    /// A run directory (uses its BEST or LATEST checkpoint) or a checkpoint directory.
    run: PathBuf,
    /// Which checkpoint of a run directory: best or latest.
    #[arg(long, default_value = "best")]
    checkpoint: String,
    /// Write a TorchScript module here (`torch.jit.load(FILE)` in Python, `torch::jit::load` in C++).
    #[arg(long, value_name = "FILE.pt")]
    torchscript: Option<PathBuf>,
    /// Write an ONNX model here (through PyTorch: needs a Python with torch, onnx and onnxscript).
    #[arg(long, value_name = "FILE.onnx")]
    onnx: Option<PathBuf>,
    /// Input height and width the exported model takes, as H or HxW (default: data.image_size,
    /// square; NYUv2 runs take 288x384 at image_size 288).
    #[arg(long, value_name = "HxW")]
    size: Option<String>,
    /// The Python for --onnx (default: $MTL_PYTHON, else the .venv mtl was built with, else python3).
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    for out in args.torchscript.iter().chain(&args.onnx) {
        check_output(out)?;
    }
    let dir = checkpoint_dir(&args.run, &args.checkpoint)?;
    let mut restored = restore(&dir, Device::Cpu)?;
    if restored.run.cfg.data.features.is_some() {
        mtl::user_bail!(
            "{}: a run on a table cannot be exported yet (its vocabularies and normalization are in its config.yaml; \
             see docs/TABLES.md)",
            args.run.display()
        );
    }
    let (h, w) = input_size(&restored, args.size.as_deref())?;
    if let Some(path) = &args.torchscript {
        let worst = export_torchscript(&mut restored, (h, w), path)?;
        println!(
            "wrote {} (TorchScript, input [N, {}, {h}, {w}], outputs {}; max relative difference to mtl {worst:.1e})",
            path.display(),
            restored.run.in_channels(),
            restored.run.task_names().join(", ")
        );
    }
    if let Some(path) = &args.onnx {
        export_onnx(&dir, (h, w), path, args.python.as_deref())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// An output file's directory must exist (nothing is created for a typo).
fn check_output(path: &Path) -> anyhow::Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        user_bail!("{}: its directory {} does not exist", path.display(), parent.display());
    }
    if path.is_dir() {
        user_bail!("{}: is a directory; give a file name", path.display());
    }
    Ok(())
}

/// `--size H` or `HxW`, checked against what the model accepts.
fn input_size(r: &Restored, size: Option<&str>) -> anyhow::Result<(i64, i64)> {
    let cfg = &r.run.cfg;
    let n = cfg.data.image_size;
    let (h, w) = match size {
        None => (n, n),
        Some(s) => {
            let parse = |v: &str| v.trim().parse::<i64>().ok().filter(|&v| v > 0 && v <= 1 << 14);
            let parsed = match s.split_once(['x', 'X', '×']) {
                Some((a, b)) => parse(a).zip(parse(b)),
                None => parse(s).map(|v| (v, v)),
            };
            parsed.ok_or_else(|| user_error!("--size: '{s}' must be H or HxW in pixels, e.g. 32 or 288x384"))?
        }
    };
    super::check_input_hw(cfg, h, w).map_err(|e| user_error!("--size: {e}"))?;
    Ok((h, w))
}

/// Traces and saves the module, loads the file back and checks it against the model on a
/// fresh batch of another size, then adds its description. Returns the largest relative
/// difference seen.
fn export_torchscript(r: &mut Restored, (h, w): (i64, i64), path: &Path) -> anyhow::Result<f64> {
    let c = r.run.in_channels();
    tch::manual_seed(0);
    let example = Tensor::randn([TRACE_BATCH, c, h, w], (Kind::Float, Device::Cpu));
    let tmp = path.with_extension("pt.tmp");
    let written = mtl::model::export::save_traced(&mut r.model, &example, &tmp)
        .and_then(|()| check_against_model(r, &tmp, (h, w)))
        .and_then(|worst| {
            append_extra_file(&tmp, DESCRIPTION_FILE, description(r, (h, w)).as_bytes())?;
            std::fs::rename(&tmp, path).map_err(|e| user_error!("{}: cannot write: {e}", path.display()))?;
            Ok(worst)
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Runs the saved module on a batch size the tracer did not see (the batch dimension must
/// have stayed free) and returns its largest relative difference to the model's outputs.
fn check_against_model(r: &Restored, file: &Path, (h, w): (i64, i64)) -> anyhow::Result<f64> {
    let module = tch::CModule::load(file).map_err(|e| anyhow::anyhow!("{}: does not load: {e}", file.display()))?;
    let probe = Tensor::randn([TRACE_BATCH + 1, r.run.in_channels(), h, w], (Kind::Float, Device::Cpu));
    let expected = tch::no_grad(|| r.model.forward(&probe, Mode::Eval));
    let got = tch::no_grad(|| module.forward_is(&[tch::IValue::Tensor(probe.shallow_clone())]))
        .map_err(|e| anyhow::anyhow!("running the traced module failed: {e}"))?;
    let got = outputs(got)?;
    if got.len() != expected.len() {
        anyhow::bail!("the traced module returns {} outputs, the model {}", got.len(), expected.len());
    }
    let worst = got.iter().zip(&expected).map(|(a, b)| relative_difference(a, b)).fold(0.0, f64::max);
    if worst.is_nan() || worst > 1e-5 {
        anyhow::bail!("the traced module differs from the model by {worst:.2e} (relative); not written");
    }
    Ok(worst)
}

/// The tensors of a traced module's result: a tuple of them (several tasks) or one tensor.
fn outputs(v: tch::IValue) -> anyhow::Result<Vec<Tensor>> {
    match v {
        tch::IValue::Tensor(t) => Ok(vec![t]),
        tch::IValue::Tuple(items) | tch::IValue::GenericList(items) => items
            .into_iter()
            .map(|i| match i {
                tch::IValue::Tensor(t) => Ok(t),
                other => anyhow::bail!("the traced module returned a {other:?} among its outputs"),
            })
            .collect(),
        other => anyhow::bail!("the traced module returned {other:?}"),
    }
}

/// max |a − b| / max |b|: the largest difference against the output's own scale.
fn relative_difference(a: &Tensor, b: &Tensor) -> f64 {
    if a.size() != b.size() {
        return f64::NAN;
    }
    let diff = (a - b).abs().max().double_value(&[]);
    diff / b.abs().max().double_value(&[]).max(1e-6)
}

/// What a deployer needs besides the module: the input's shape and normalization, and each
/// output's task, kind and shape.
fn description(r: &Restored, (h, w): (i64, i64)) -> String {
    let c = r.run.in_channels();
    // Tasks with their own data may come from datasets normalized differently; the file
    // records the first one's (see docs/MULTI_INPUT.md).
    let (mean, std) = r.run.cfg.data.normalization(r.run.dataset.normalization());
    let (mean, std) = if c == 1 {
        (vec![mean.iter().sum::<f64>() / 3.0], vec![std.iter().sum::<f64>() / 3.0])
    } else {
        (mean.to_vec(), std.to_vec())
    };
    let tasks: Vec<_> = r
        .run
        .tasks
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "kind": t.kind.name(),
                "classes": (t.classes > 0).then_some(t.classes),
            })
        })
        .collect();
    let d = json!({
        "format": "mtl TorchScript export",
        "mtl_version": env!("CARGO_PKG_VERSION"),
        "run": r.run.cfg.name,
        "checkpoint": r.dir.display().to_string(),
        "input": {
            "shape": ["N", c, h, w],
            "dtype": "float32",
            "normalization": "x = (pixels / 255 - mean) / std, per channel",
            "mean": mean,
            "std": std,
        },
        "outputs": "a tuple of fp32 tensors, one per task, in the order of `tasks`",
        "tasks": tasks,
    });
    serde_json::to_string_pretty(&d).expect("a JSON value always serialises") + "\n"
}

/// Adds `extra/<name>` to a TorchScript archive, where `torch.jit.load(..., _extra_files=)`
/// and `torch::jit::load(..., extra_files)` look for it: in the archive's top directory,
/// stored uncompressed as PyTorch writes its own records.
fn append_extra_file(archive: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let cannot = |e: &dyn std::fmt::Display| user_error!("{}: cannot add {name}: {e}", archive.display());
    let file = std::fs::OpenOptions::new().read(true).write(true).open(archive).map_err(|e| cannot(&e))?;
    let top = {
        let mut zip = zip::ZipArchive::new(&file).map_err(|e| cannot(&e))?;
        let first = zip.by_index(0).map_err(|e| cannot(&e))?.name().to_string();
        first.split_once('/').map(|(top, _)| top.to_string()).ok_or_else(|| cannot(&"no top directory"))?
    };
    let mut zip = zip::ZipWriter::new_append(&file).map_err(|e| cannot(&e))?;
    let options = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file(format!("{top}/extra/{name}"), options).map_err(|e| cannot(&e))?;
    zip.write_all(bytes).map_err(|e| cannot(&e))?;
    zip.finish().map_err(|e| cannot(&e))?;
    file.sync_all().map_err(|e| cannot(&e))
}

/// The ONNX export: the embedded scripts/mtl_torch.py, run from a temporary directory by a
/// Python checked first for the packages it needs.
fn export_onnx(checkpoint: &Path, (h, w): (i64, i64), path: &Path, python: Option<&Path>) -> anyhow::Result<()> {
    let python = python_for_onnx(python);
    let probe = std::process::Command::new(&python).args(["-c", "import torch, onnx, onnxscript"]).output();
    let hint = "pip install onnx onnxscript onnxruntime, or name another Python with --python or MTL_PYTHON";
    match probe {
        Err(e) => user_bail!("--onnx: cannot run {}: {e}; {hint}", python.display()),
        Ok(out) if !out.status.success() => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("failed").trim().to_string();
            user_bail!("--onnx: {} cannot import torch, onnx and onnxscript ({why}); {hint}", python.display())
        }
        Ok(_) => {}
    }
    let scratch = tempfile_dir()?;
    let script = scratch.join("mtl_torch.py");
    write_atomically(&script, MTL_TORCH_PY.as_bytes())?;
    let mut command = std::process::Command::new(&python);
    // The script reads the registries it does not copy (`list --json`) from this binary.
    if let Ok(exe) = std::env::current_exe() {
        command.env("MTL_BIN", exe);
    }
    let status = command
        .arg(&script)
        .arg(checkpoint)
        .args(["--onnx".as_ref(), path.as_os_str()])
        .args(["--size", &h.to_string(), &w.to_string()])
        .status();
    let _ = std::fs::remove_dir_all(&scratch);
    match status {
        Err(e) => user_bail!("--onnx: cannot run {}: {e}", python.display()),
        // The script's own message is already on stderr; a failure there is not the user's.
        Ok(s) if !s.success() => anyhow::bail!("--onnx: the export by {} failed ({s})", python.display()),
        Ok(_) => Ok(()),
    }
}

/// `--python`, else `$MTL_PYTHON`, else the virtualenv mtl was built in, else `python3`.
fn python_for_onnx(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("MTL_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    match option_env!("MTL_BUILD_PYTHON").map(PathBuf::from) {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from("python3"),
    }
}

/// A fresh private directory under the system's temporary directory.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    for i in 0..100u32 {
        let dir = base.join(format!("mtl-export-{}-{i}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => user_bail!("{}: cannot create a temporary directory: {e}", dir.display()),
        }
    }
    user_bail!("{}: cannot create a temporary directory", base.display())
}
