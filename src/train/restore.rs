//! A trained model back from a checkpoint, for `predict`, `eval` and export: the run's
//! resolved config and the model with the checkpoint's weights.
use crate::checkpoint::{self, RunDir, BEST, LATEST};
use crate::model::{MissingHeads, MultiTaskModel};
use crate::setup::{self, Resolved};
use crate::{user_bail, user_error};
use std::path::{Path, PathBuf};
use tch::Device;

/// A run directory or a checkpoint directory, and which checkpoint of a run to use
/// (`best`, falling back to the latest when there is no best yet, or `latest`).
pub fn checkpoint_dir(path: &Path, which: &str) -> anyhow::Result<PathBuf> {
    if path.join(checkpoint::MODEL_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    let pointer = match which.to_ascii_lowercase().as_str() {
        "best" => BEST,
        "latest" => LATEST,
        other => user_bail!("--checkpoint: '{other}' must be best or latest (or give a checkpoint directory)"),
    };
    let run = RunDir::new(path);
    if !path.is_dir() {
        user_bail!("{}: no such run or checkpoint directory", path.display());
    }
    match run.pointed(pointer)? {
        Some(dir) => Ok(dir),
        None if pointer == BEST => run
            .pointed(LATEST)?
            .ok_or_else(|| user_error!("{}: holds no checkpoint (no checkpoints/BEST or LATEST)", path.display())),
        None => user_bail!("{}: holds no checkpoint (no checkpoints/{pointer})", path.display()),
    }
}

/// A model restored from a checkpoint directory, with the config it was trained with.
pub struct Restored {
    pub run: Resolved,
    pub model: MultiTaskModel,
    pub dir: PathBuf,
}

/// Rebuilds the model a checkpoint was written by and loads its weights.
pub fn restore(checkpoint_dir: &Path, device: Device) -> anyhow::Result<Restored> {
    let cfg_path = checkpoint_dir.join(checkpoint::CONFIG_FILE);
    let cfg = crate::config::Config::load(&cfg_path, &[])?;
    let run = setup::resolve(cfg, &cfg_path.display().to_string(), checkpoint_dir)?;
    let model = MultiTaskModel::new(&run.cfg, &run.heads(), device, run.in_channels(), run.cfg.data.image_size)?;
    let model_file = checkpoint_dir.join(checkpoint::MODEL_FILE);
    model.load_tensors(&checkpoint::read_tensors(&model_file)?, &model_file, MissingHeads::Refuse)?;
    Ok(Restored { run, model, dir: checkpoint_dir.to_path_buf() })
}

/// Re-evaluates a restored model on its config's val split (each task on its own data's).
pub fn evaluate(r: &Restored) -> anyhow::Result<Vec<(String, f64)>> {
    let inputs = super::inputs::Inputs::load(&r.run, r.model.device(), &super::parallel::Ranks::new(None, false))?;
    Ok(super::evaluate::evaluate(&r.model, &inputs, &r.run.tasks, None))
}
