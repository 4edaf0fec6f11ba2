//! `mtl-train export`: a trained model as a file other programs load with one call.
//!
//! `--torchscript FILE.pt` traces the model's eval-mode forward with libtorch's tracer
//! (`mtl::model::export`) and saves the module, with a description of its input and outputs
//! as the extra file `mtl.json` (`torch.jit.load(FILE, _extra_files={"mtl.json": ""})`).
//! `--onnx FILE.onnx` goes through the PyTorch twin of the model (scripts/mtl_torch.py, compiled
//! into the binary) and `torch.onnx.export`, run by a Python that has torch, onnx and
//! onnxscript. Both take a normalized float `[N, C, H, W]` batch (any N, the exported H×W) and
//! return one fp32 tensor per task, in task order. A run on a table takes its mapped rows
//! `[N, F]` instead, and its description carries the fitted mapping that makes them from raw
//! rows (docs/TABLES.md, "Export"); the ONNX file holds the same description in its
//! `metadata_props` under `mtl.json`.
use clap::Args;
use mtl::checkpoint::write_atomically;
use mtl::config::FittedTable;
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
    let input = Input::of(&restored, args.size.as_deref())?;
    if let Some(path) = &args.torchscript {
        let worst = export_torchscript(&mut restored, &input, path)?;
        println!(
            "wrote {} (TorchScript, input {}, outputs {}; max relative difference to mtl {worst:.1e})",
            path.display(),
            input.shape_text(),
            restored.run.task_names().join(", ")
        );
    }
    if let Some(path) = &args.onnx {
        export_onnx(&restored, &dir, &input, path, args.python.as_deref())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What the exported module takes: a normalized image batch `[N, C, H, W]`, or a table run's
/// mapped rows `[N, F]` (the model reads them as `[N, F, 1, 1]`; a server has rows, not
/// pictures). It holds its own copy of the mapping: the export borrows the model mutably.
enum Input {
    Images { channels: i64, hw: (i64, i64) },
    Rows(FittedTable),
}

impl Input {
    fn of(r: &Restored, size: Option<&str>) -> anyhow::Result<Self> {
        match r.run.cfg.data.features.as_ref().and_then(|f| f.fitted.as_ref()) {
            Some(_) if size.is_some() => {
                user_bail!("--size: a run on a table takes its mapped rows [N, F], not images of a size; drop --size")
            }
            Some(fitted) => Ok(Input::Rows(fitted.clone())),
            None => Ok(Input::Images { channels: r.run.in_channels(), hw: input_size(r, size)? }),
        }
    }

    /// `[N, C, H, W]` or `[N, F]`, as the messages and the description give it.
    fn shape(&self) -> Vec<serde_json::Value> {
        match self {
            Input::Images { channels, hw: (h, w) } => vec![json!("N"), json!(channels), json!(h), json!(w)],
            Input::Rows(fitted) => vec![json!("N"), json!(fitted.raw_width())],
        }
    }

    fn shape_text(&self) -> String {
        let dims: Vec<String> = self.shape().iter().map(|d| d.as_str().map_or(d.to_string(), String::from)).collect();
        format!("[{}]", dims.join(", "))
    }

    /// A batch of `n` valid inputs: random normalized images, or rows of random standardized
    /// entries and random vocabulary indices (an index past a vocabulary has no embedding).
    fn example(&self, n: i64) -> Tensor {
        match self {
            Input::Images { channels, hw: (h, w) } => Tensor::randn([n, *channels, *h, *w], (Kind::Float, Device::Cpu)),
            Input::Rows(fitted) => {
                let mut parts = vec![Tensor::randn([n, fitted.dense_width() as i64], (Kind::Float, Device::Cpu))];
                for c in &fitted.categorical {
                    let index = Tensor::randint(c.vocab.len() as i64 + 1, [n, 1], (Kind::Int64, Device::Cpu));
                    parts.push(index.to_kind(Kind::Float));
                }
                Tensor::cat(&parts, 1)
            }
        }
    }
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
fn export_torchscript(r: &mut Restored, input: &Input, path: &Path) -> anyhow::Result<f64> {
    tch::manual_seed(0);
    let example = input.example(TRACE_BATCH);
    let tmp = path.with_extension("pt.tmp");
    let written = mtl::model::export::save_traced(&mut r.model, &example, &tmp)
        .and_then(|()| check_against_model(r, &tmp, input))
        .and_then(|worst| {
            append_extra_file(&tmp, DESCRIPTION_FILE, description(r, input, "TorchScript").as_bytes())?;
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
fn check_against_model(r: &Restored, file: &Path, input: &Input) -> anyhow::Result<f64> {
    let module = tch::CModule::load(file).map_err(|e| anyhow::anyhow!("{}: does not load: {e}", file.display()))?;
    let probe = input.example(TRACE_BATCH + 1);
    let expected = tch::no_grad(|| r.model.forward(&mtl::model::export::model_input(&probe), Mode::Eval));
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

/// What a deployer needs besides the module: the input's shape and how to make it (images'
/// normalization, or a table's fitted mapping), and each output's task, kind and shape.
fn description(r: &Restored, input: &Input, format: &str) -> String {
    let input_json = match input {
        Input::Images { channels, .. } => {
            // Tasks with their own data may come from datasets normalized differently; the file
            // records the first one's (see docs/MULTI_INPUT.md).
            let (mean, std) = r.run.cfg.data.normalization(r.run.dataset.normalization());
            let (mean, std) = if *channels == 1 {
                (vec![mean.iter().sum::<f64>() / 3.0], vec![std.iter().sum::<f64>() / 3.0])
            } else {
                (mean.to_vec(), std.to_vec())
            };
            json!({
                "shape": input.shape(),
                "dtype": "float32",
                "normalization": "x = (pixels / 255 - mean) / std, per channel",
                "mean": mean,
                "std": std,
            })
        }
        Input::Rows(fitted) => json!({
            "shape": input.shape(),
            "dtype": "float32",
            "table": table_description(fitted),
        }),
    };
    let names = r.run.task_names();
    let tasks: Vec<_> = r
        .run
        .tasks
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "kind": t.kind.name(),
                "classes": (t.classes > 0).then_some(t.classes),
                "given": t.given.map(|p| names[p].clone()),
            })
        })
        .collect();
    let d = json!({
        "format": format!("mtl {format} export"),
        "mtl_version": env!("CARGO_PKG_VERSION"),
        "run": r.run.cfg.name,
        "checkpoint": r.dir.display().to_string(),
        "input": input_json,
        "outputs": "a tuple of fp32 tensors, one per task, in the order of `tasks`: classification [N, classes] \
                    logits; binary [N, 1] logit (probability: sigmoid; a task `given` a parent: pCVR, and \
                    pCTCVR = sigmoid(own) * sigmoid(parent)); value [N, 1]",
        "tasks": tasks,
    });
    serde_json::to_string_pretty(&d).expect("a JSON value always serialises") + "\n"
}

/// A table run's fitted mapping as a server applies it to a raw row (src/data/table/fit.rs):
/// every entry of the mapped row in order, each numeric column's statistics and each
/// categorical column's vocabulary.
fn table_description(fitted: &FittedTable) -> serde_json::Value {
    let mut row = Vec::new();
    for n in &fitted.numeric {
        row.extend((0..n.mean.len()).map(|j| json!({"column": n.column, "entry": j, "is": "standardized"})));
    }
    for n in fitted.numeric.iter().filter(|n| n.indicator) {
        row.extend((0..n.mean.len()).map(|j| json!({"column": n.column, "entry": j, "is": "missing"})));
    }
    row.extend(fitted.categorical.iter().map(|c| json!({"column": c.column, "entry": 0, "is": "index"})));
    let numeric: Vec<_> = fitted
        .numeric
        .iter()
        .map(|n| json!({"column": n.column, "mean": n.mean, "std": n.std, "missing_indicator": n.indicator}))
        .collect();
    let categorical: Vec<_> = fitted
        .categorical
        .iter()
        .map(|c| {
            let vocabulary: serde_json::Map<String, serde_json::Value> =
                c.vocab.iter().enumerate().map(|(i, v)| (v.clone(), json!(i + 1))).collect();
            json!({"column": c.column, "dim": c.dim, "vocabulary": vocabulary, "oov_index": 0})
        })
        .collect();
    let columns: Vec<&String> =
        fitted.numeric.iter().map(|n| &n.column).chain(fitted.categorical.iter().map(|c| &c.column)).collect();
    json!({
        "columns": columns,
        "row": row,
        "numeric": numeric,
        "categorical": categorical,
        "hashing": false,
        "rules": {
            "standardized": "x as float32, then (x - mean[entry]) / std[entry] in float64, stored as float32; \
                             a missing x gives 0",
            "missing": "1 where the column's entry is missing, else 0",
            "index": "vocabulary[key] or oov_index (unseen and missing values), as a float",
            "key": "text as it is; a number that is an integer below 1e15 without a decimal point (3.0 is '3'), \
                    another number in its shortest round-trip decimal form",
            "missing_text": mtl::data::table::read::MISSING_TEXT,
        },
    })
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
/// Python checked first for the packages it needs; the description goes into the file's
/// metadata.
fn export_onnx(
    r: &Restored,
    checkpoint: &Path,
    input: &Input,
    path: &Path,
    python: Option<&Path>,
) -> anyhow::Result<()> {
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
    let metadata = scratch.join(DESCRIPTION_FILE);
    write_atomically(&metadata, description(r, input, "ONNX").as_bytes())?;
    let mut command = std::process::Command::new(&python);
    // The script reads the registries it does not copy (`list --json`) from this binary.
    if let Ok(exe) = std::env::current_exe() {
        command.env("MTL_BIN", exe);
    }
    command.arg(&script).arg(checkpoint).args(["--onnx".as_ref(), path.as_os_str()]);
    command.args(["--metadata".as_ref(), metadata.as_os_str()]);
    if let Input::Images { hw: (h, w), .. } = input {
        command.args(["--size", &h.to_string(), &w.to_string()]);
    }
    let status = command.status();
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
