//! Continuing a run from a checkpoint, and starting one from PyTorch weights.
use super::skip::Skips;
use super::{Position, Trainer};
use crate::checkpoint::{self, DataPosition, Loaded};
use crate::config::Config;
use crate::model::{MissingHeads, MultiTaskModel};
use crate::{user_bail, user_error};
use sha2::{Digest, Sha256};
use std::path::Path;
use tch::Tensor;

/// Config keys whose change makes a checkpoint meaningless for this run: the model, the tasks,
/// the data and everything that decides the random streams. Everything else (epochs, log and
/// eval frequency, device, threads, checkpoint policy, even optimizer settings) may change on
/// resume and is logged.
const MUST_MATCH: &[&str] = &["model", "tasks", "data", "seed", "balance", "precision"];
/// Keys under `data` that do not affect training.
const HARMLESS_DATA: &[&str] = &[
    "data.eval_batch_size",
    "data.root",
    "data.download",
    "data.mirror",
    "data.max_memory_mb",
    "data.decode_threads",
    "data.prefetch_batches",
];

pub fn fingerprint(cfg: &Config) -> String {
    let flat = cfg.leaves();
    let mut h = Sha256::new();
    for (k, v) in flat.iter().filter(|(k, _)| must_match(k)) {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn must_match(key: &str) -> bool {
    // A task's own data: the same keys are harmless as in the top-level data.
    if let Some(rest) = key.strip_prefix("tasks[").and_then(|r| r.split_once("].data.")).map(|(_, k)| k) {
        return !HARMLESS_DATA.contains(&format!("data.{rest}").as_str());
    }
    MUST_MATCH.iter().any(|p| key == *p || key.starts_with(&format!("{p}.")) || key.starts_with(&format!("{p}[")))
        && !HARMLESS_DATA.contains(&key)
}

/// Refuses a resume whose config changes what the checkpoint depends on; returns the
/// harmless changes for the log.
pub fn compare_configs(saved: &Config, now: &Config, origin: &Path) -> anyhow::Result<Vec<String>> {
    let (a, b) = (saved.leaves(), now.leaves());
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let none = "(absent)".to_string();
    let mut blocking = Vec::new();
    let mut harmless = Vec::new();
    for k in keys {
        let (x, y) = (a.get(k).unwrap_or(&none), b.get(k).unwrap_or(&none));
        if x != y {
            let line = format!("{k}: {x} -> {y}");
            if must_match(k) {
                blocking.push(line);
            } else {
                harmless.push(line);
            }
        }
    }
    if !blocking.is_empty() {
        let shown: Vec<&str> = blocking.iter().take(3).map(String::as_str).collect();
        user_bail!(
            "{}: cannot resume: the config changes {} ({}{})",
            origin.display(),
            if blocking.len() == 1 { "a key the checkpoint depends on" } else { "keys the checkpoint depends on" },
            shown.join("; "),
            if blocking.len() > 3 { format!("; and {} more", blocking.len() - 3) } else { String::new() }
        );
    }
    Ok(harmless)
}

/// Restores model, optimizer, balancer and loop state from a checkpoint directory.
pub fn restore(trainer: &mut Trainer, dir: &Path) -> anyhow::Result<()> {
    let loaded = checkpoint::load(dir)?;
    let mut saved_cfg =
        Config::parse(&loaded.config_yaml, &dir.join(checkpoint::CONFIG_FILE).display().to_string(), &[])?;
    same_global_batch(&mut saved_cfg, loaded.state.world_size, &trainer.cfg, trainer.world_size(), dir)?;
    for change in compare_configs(&saved_cfg, &trainer.cfg, dir)? {
        tracing::info!("resume: accepted config change {change}");
    }
    trainer.model.load_tensors(&loaded.model, &dir.join(checkpoint::MODEL_FILE), MissingHeads::Refuse)?;
    let state_file = dir.join(checkpoint::TRAIN_STATE_FILE);
    let find = |prefix: &str| {
        let list: Vec<(String, Tensor)> = loaded
            .train_tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.shallow_clone())))
            .collect();
        list
    };
    // The stage the checkpoint was written in decides the variables that train and the
    // tasks whose balancer state it holds.
    trainer.enter_stage(trainer.stages.index_at(loaded.state.epoch))?;
    let optim = find("optim.");
    let lookup = |k: &str| optim.iter().find(|(n, _)| n == k).map(|(_, t)| t.shallow_clone());
    trainer
        .optimizer
        .load_state(&lookup, loaded.state.step)
        .map_err(|e| user_error!("{}: {e}", state_file.display()))?;
    trainer.balancer.load_state(&find("balance.")).map_err(|e| user_error!("{}: {e}", state_file.display()))?;
    for (name, dst) in [
        ("loop.window_loss", &trainer.window_loss),
        ("loop.epoch_loss", &trainer.epoch_loss),
        ("loop.window_weight", &trainer.window_weight),
    ] {
        let src = loaded
            .train_tensors
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, t)| t)
            .ok_or_else(|| user_error!("{}: missing tensor '{name}'", state_file.display()))?;
        if src.size() != dst.size() {
            user_bail!(
                "{}: tensor '{name}' has shape {:?}, expected {:?}",
                state_file.display(),
                src.size(),
                dst.size()
            );
        }
        tch::no_grad(|| dst.shallow_clone().copy_(src));
    }
    // Absent from checkpoints older than step skipping, which skipped nothing.
    if let Some((_, t)) = loaded.train_tensors.iter().find(|(k, _)| k == Skips::TENSOR) {
        trainer.skips = Skips::from_tensor(t)
            .ok_or_else(|| user_error!("{}: tensor '{}' is malformed", state_file.display(), Skips::TENSOR))?;
    }
    if let Some(meter) = trainer.affinity.as_mut() {
        let lookup = |k: &str| loaded.train_tensors.iter().find(|(n, _)| n == k).map(|(_, t)| t.shallow_clone());
        meter.load_state(&lookup).map_err(|e| user_error!("{}: {e}", state_file.display()))?;
    }
    check_position(&loaded, trainer.steps_per_epoch())?;
    trainer.at = Position { step: loaded.state.step, epoch: loaded.state.epoch, position: loaded.state.position };
    check_data_positions(&loaded, &trainer.data_positions())?;
    trainer.best.restore(loaded.state.best.clone());
    tracing::info!(step = loaded.state.step, "resumed from {}", dir.display());
    Ok(())
}

/// Resuming at another number of ranks with the config's `data.batch_size` unchanged from the
/// checkpoint's: the per-rank batch becomes the one that keeps the checkpoint's global batch
/// (`batch × saved ranks / ranks`), so the run continues with the same steps, schedule and
/// sample order. A per-rank batch the user changed is left for [`same_global_batch`] to check.
/// Nothing happens when the checkpoint cannot be read here (restoring it reports that).
pub fn keep_global_batch(dir: &Path, cfg: &mut Config, world: usize) -> anyhow::Result<()> {
    let state: Option<checkpoint::TrainState> = std::fs::read_to_string(dir.join(checkpoint::STATE_FILE))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let saved = std::fs::read_to_string(dir.join(checkpoint::CONFIG_FILE))
        .ok()
        .and_then(|text| Config::parse(&text, "checkpoint config", &[]).ok());
    let (Some(state), Some(saved)) = (state, saved) else { return Ok(()) };
    let (batch, ranks) = (saved.data.batch_size, state.world_size as usize);
    if ranks == world || cfg.data.batch_size != batch {
        return Ok(());
    }
    if let Some(i) = cfg.tasks.iter().position(|t| t.data.as_ref().is_some_and(|d| d.contains_key("batch_size"))) {
        user_bail!(
            "{}: cannot resume on {world} ranks (the checkpoint ran on {ranks}): tasks[{i}].data.batch_size sets a batch \
             of its own, and only data.batch_size is rescaled to keep the global batch; resume on {ranks} ranks",
            dir.display()
        );
    }
    let global = batch * ranks;
    if !global.is_multiple_of(world) {
        user_bail!(
            "{}: cannot resume on {world} ranks: the checkpoint's global batch {global} (data.batch_size {batch} × \
             {ranks} ranks) does not split evenly; use a number of ranks that divides {global}",
            dir.display()
        );
    }
    tracing::info!(
        "resume: data.batch_size {} per rank on {world} ranks keeps the checkpoint's global batch {global} ({batch} × {ranks})",
        global / world
    );
    cfg.data.batch_size = global / world;
    Ok(())
}

/// A checkpoint counts its steps (and epoch position) in global batches of `data.batch_size` ×
/// ranks, and every rank takes its slice of the same global order: it continues at another
/// world size exactly when the global batch stays the same, so the per-rank batch size may
/// then change (and is made the saved one's for the comparison of configs).
fn same_global_batch(
    saved: &mut Config,
    saved_world: u64,
    now: &Config,
    now_world: usize,
    dir: &Path,
) -> anyhow::Result<()> {
    if saved_world == now_world as u64 {
        return Ok(());
    }
    let (then, wanted) = (saved.data.batch_size as u64 * saved_world, (now.data.batch_size * now_world) as u64);
    if then != wanted {
        let hint = if then.is_multiple_of(now_world as u64) {
            format!(
                "set data.batch_size {} (--set data.batch_size={})",
                then / now_world as u64,
                then / now_world as u64
            )
        } else {
            format!("use a number of ranks that divides {then}")
        };
        user_bail!(
            "{}: cannot resume: the checkpoint's global batch is {then} (data.batch_size {} × {saved_world} ranks), this \
             run's would be {wanted} (data.batch_size {} × {now_world} ranks); {hint}",
            dir.display(),
            saved.data.batch_size,
            now.data.batch_size
        );
    }
    tracing::info!(
        "resume: {saved_world} ranks × batch {} continue as {now_world} ranks × batch {} (global batch {then})",
        saved.data.batch_size,
        now.data.batch_size
    );
    saved.data.batch_size = now.data.batch_size;
    Ok(())
}

fn check_position(loaded: &Loaded, steps_per_epoch: u64) -> anyhow::Result<()> {
    let s = &loaded.state;
    if s.epoch * steps_per_epoch + s.position != s.step || s.position >= steps_per_epoch {
        user_bail!(
            "{}: step {} does not match epoch {} position {} with {steps_per_epoch} steps per epoch",
            loaded.dir.join(checkpoint::STATE_FILE).display(),
            s.step,
            s.epoch,
            s.position
        );
    }
    Ok(())
}

/// Tasks with their own data: every group still has the batches per pass it had when the
/// checkpoint was written (else its positions, derived from the step, would not be the ones
/// the run had reached).
fn check_data_positions(loaded: &Loaded, now: &[DataPosition]) -> anyhow::Result<()> {
    let saved = &loaded.state.data;
    for (was, is) in saved.iter().zip(now) {
        if was != is {
            user_bail!(
                "{}: the data of tasks {} had {} batches per pass (at pass {} batch {}), now {} (at pass {} batch {}); \
                 its files or data settings changed since the checkpoint",
                loaded.dir.join(checkpoint::STATE_FILE).display(),
                was.tasks.join(", "),
                was.batches_per_pass,
                was.pass,
                was.position,
                is.batches_per_pass,
                is.pass,
                is.position
            );
        }
    }
    if saved.len() != now.len() {
        user_bail!(
            "{}: the checkpoint has {} data group(s), this config {}",
            loaded.dir.join(checkpoint::STATE_FILE).display(),
            saved.len(),
            now.len()
        );
    }
    Ok(())
}

/// `--init-from`: PyTorch-written weights (`safetensors.torch.save_file(model.state_dict())`).
pub fn init_from(model: &MultiTaskModel, path: &Path, missing_heads: MissingHeads) -> anyhow::Result<()> {
    let tensors = checkpoint::read_tensors(path)?;
    model.load_tensors(&tensors, path, missing_heads)?;
    tracing::info!("initialised weights from {}", path.display());
    Ok(())
}
