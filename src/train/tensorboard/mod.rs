//! TensorBoard event files in the run directory (`tensorboard --logdir runs` shows every run
//! under its name; `report.tensorboard: false` turns them off).
//!
//! What a run writes: every value of every metrics.jsonl row, at the row's step, under
//! [`tag`]; at each evaluation the val preview pictures of the per-pixel tasks ([`Preview`]);
//! at step 0 the resolved config as text and the hparams plugin's session start (the config's
//! main keys, [`HPARAMS`]); at the end of training the session end. The HParams tab takes each
//! run's final metrics from its scalars, so runs with different tasks compare side by side.
//!
//! Restarts follow TensorBoard's own rule (`_CheckForRestartAndMaybePurge` in its event
//! accumulators), as PyTorch's `SummaryWriter(purge_step=…)` does: every file begins with the
//! file version and a `SessionLog.START`, at step 0 for a new run and, for a resumed one, at
//! the first step it will write again (the checkpoint's step + 1); TensorBoard takes a run's
//! first START as its beginning and a later one as a restart, and drops every event of
//! earlier files at that step or later, so steps a crashed run had logged past its checkpoint
//! are not shown twice. (TensorBoard's data server reaches the same view its own way: a step
//! at or below one it has seen replaces the later ones.) A run started over (no checkpoint)
//! removes the event files of the attempt it replaces, as metrics.jsonl is emptied.
mod events;
mod preview;
pub mod proto;

use events::event_files;
pub use preview::Preview;

use crate::config::Config;
use crate::model::MultiTaskModel;
use crate::tasks::Task;
use crate::user_error;
use events::{now, EventFile};
use prost::Message;
use proto::*;
use std::collections::BTreeMap;
use std::path::Path;

/// The config keys the HParams tab shows, as `section.key` paths (absent ones are skipped;
/// lists are shown as text). `tasks` is shown as the task names.
pub const HPARAMS: &[&str] = &[
    "seed",
    "precision",
    "data.dataset",
    "data.image_size",
    "data.batch_size",
    "model.backbone.kind",
    "model.backbone.widths",
    "model.backbone.depth",
    "tasks",
    "balance.method",
    "optim.kind",
    "optim.lr",
    "optim.weight_decay",
    "schedule.kind",
    "train.epochs",
];

/// The tag of the config text (the text plugin shows it under this name).
pub const CONFIG_TAG: &str = "config";
/// The hparams plugin's tags and name (`tensorboard/plugins/hparams/metadata.py`).
const HPARAMS_PLUGIN: &str = "hparams";
const SESSION_START_TAG: &str = "_hparams_/session_start_info";
const SESSION_END_TAG: &str = "_hparams_/session_end_info";

/// The TensorBoard tag of a metrics.jsonl key in a row of `split`: `<task>/<metric>` for
/// val metrics (TensorBoard groups the charts by task), `<task>/train_<metric>` for training
/// values of a task (loss, weight), `<split>/<key>` for the rest (`train/lr`,
/// `train/images_per_second`, `val/delta_m`).
pub fn tag(split: &str, key: &str) -> String {
    match key.split_once('.') {
        Some((task, metric)) if split == "val" => format!("{task}/{metric}"),
        Some((task, metric)) => format!("{task}/{split}_{metric}"),
        None => format!("{split}/{key}"),
    }
}

/// A run's TensorBoard log while it trains.
pub struct Board {
    file: EventFile,
    /// One per data group with a per-pixel task.
    previews: Vec<Preview>,
}

impl Board {
    /// Opens the log of a run in `dir` that trains on from step `resumed_at` (0: from the
    /// start). See the module documentation for what is written first.
    pub fn open(dir: &Path, resumed_at: u64, cfg: &Config, previews: Vec<Preview>) -> anyhow::Result<Self> {
        let cannot = |e: std::io::Error| user_error!("{}: cannot write TensorBoard events: {e}", dir.display());
        let mut earlier = event_files(dir);
        if resumed_at == 0 {
            for file in earlier.drain(..) {
                std::fs::remove_file(&file).map_err(cannot)?;
            }
        }
        let mut board = Self { file: EventFile::create(dir).map_err(cannot)?, previews };
        // Every file starts a session: TensorBoard's Python backend takes the first START of a
        // run as its beginning and only a later one as a restart.
        let first_step = if earlier.is_empty() { 0 } else { resumed_at + 1 };
        board.write(first_step, What::SessionLog(SessionLog { status: SESSION_START }))?;
        if earlier.is_empty() {
            board.write(0, What::Summary(config_text(cfg)))?;
            board.write(0, What::Summary(session_start(cfg)))?;
        }
        Ok(board)
    }

    /// Every number of a metrics.jsonl row as a scalar at the row's step (a null, which
    /// metrics.jsonl writes for NaN and infinities, as NaN).
    pub fn record(&mut self, row: &serde_json::Map<String, serde_json::Value>) -> anyhow::Result<()> {
        let (Some(step), Some(split)) =
            (row.get("step").and_then(|v| v.as_u64()), row.get("split").and_then(|v| v.as_str()))
        else {
            return Ok(());
        };
        let value = row
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "step" | "epoch" | "split"))
            .filter(|(_, v)| v.is_number() || v.is_null())
            .map(|(k, v)| Value {
                tag: tag(split, k),
                metadata: None,
                kind: Some(Kind::SimpleValue(v.as_f64().unwrap_or(f64::NAN) as f32)),
            })
            .collect();
        self.write(step, What::Summary(Summary { value }))
    }

    /// The preview pictures of the model as it is now, at `step`.
    pub fn images(&mut self, step: u64, model: &MultiTaskModel, tasks: &[Task]) -> anyhow::Result<()> {
        if self.previews.is_empty() {
            return Ok(());
        }
        let mut value = Vec::new();
        for (task, picture) in self.previews.iter().flat_map(|p| p.render(model, tasks)) {
            value.push(image_value(&format!("{task}/val_images"), &picture)?);
        }
        self.write(step, What::Summary(Summary { value }))
    }

    /// Training reached its end at `step`: the hparams session ends (successfully).
    pub fn finish(&mut self, step: u64) -> anyhow::Result<()> {
        let end = HParamsData::SessionEndInfo(SessionEndInfo { status: STATUS_SUCCESS, end_time_secs: now() });
        self.write(step, What::Summary(hparams_summary(SESSION_END_TAG, end)))?;
        self.file.sync().map_err(|e| user_error!("{}: cannot write: {e}", self.file.path().display()))
    }

    fn write(&mut self, step: u64, what: What) -> anyhow::Result<()> {
        self.file.write(step, what).map_err(|e| user_error!("{}: cannot write: {e}", self.file.path().display()))
    }
}

/// The resolved config as YAML, in a Markdown code block so the text plugin keeps its layout.
fn config_text(cfg: &Config) -> Summary {
    let markdown: String = cfg.to_yaml().lines().map(|l| format!("    {l}\n")).collect();
    let tensor = TensorProto {
        dtype: DT_STRING,
        tensor_shape: Some(TensorShapeProto { dim: vec![Dim { size: 1 }] }),
        float_val: Vec::new(),
        string_val: vec![markdown.into_bytes()],
    };
    Summary {
        value: vec![Value {
            tag: CONFIG_TAG.into(),
            // TextPluginData { version: 0 } encodes to nothing.
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData { plugin_name: "text".into(), content: Vec::new() }),
            }),
            kind: Some(Kind::Tensor(tensor)),
        }],
    }
}

/// The hparams plugin's session start: the values of [`HPARAMS`] in `cfg`.
fn session_start(cfg: &Config) -> Summary {
    let yaml = serde_yaml::to_value(cfg).expect("a Config always serialises");
    let mut hparams = BTreeMap::new();
    for key in HPARAMS {
        let value = if *key == "tasks" {
            Some(ValueKind::String(cfg.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(",")))
        } else {
            key.split('.').try_fold(&yaml, |v, k| v.get(k)).and_then(hparam_value)
        };
        if let Some(kind) = value {
            hparams.insert(key.to_string(), ProtoValue { kind: Some(kind) });
        }
    }
    let start = SessionStartInfo { hparams, group_name: String::new(), start_time_secs: now() };
    hparams_summary(SESSION_START_TAG, HParamsData::SessionStartInfo(start))
}

fn hparam_value(v: &serde_yaml::Value) -> Option<ValueKind> {
    use serde_yaml::Value as Y;
    match v {
        Y::Bool(b) => Some(ValueKind::Bool(*b)),
        Y::Number(n) => n.as_f64().map(ValueKind::Number),
        Y::String(s) => Some(ValueKind::String(s.clone())),
        Y::Sequence(_) => serde_json::to_string(v).ok().map(ValueKind::String),
        _ => None,
    }
}

/// A summary of the hparams plugin: its data in the metadata, an empty float tensor as value
/// (what the plugin's own writer puts there).
fn hparams_summary(tag: &str, data: HParamsData) -> Summary {
    let content = HParamsPluginData { version: 0, data: Some(data) }.encode_to_vec();
    Summary {
        value: vec![Value {
            tag: tag.into(),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData { plugin_name: HPARAMS_PLUGIN.into(), content }),
            }),
            kind: Some(Kind::Tensor(TensorProto {
                dtype: DT_FLOAT,
                tensor_shape: Some(TensorShapeProto { dim: vec![Dim { size: 0 }] }),
                float_val: Vec::new(),
                string_val: Vec::new(),
            })),
        }],
    }
}

/// An RGB picture as a PNG image value.
fn image_value(tag: &str, picture: &image::RgbImage) -> anyhow::Result<Value> {
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        picture.as_raw(),
        picture.width(),
        picture.height(),
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(Value {
        tag: tag.into(),
        metadata: None,
        kind: Some(Kind::Image(Image {
            height: picture.height() as i32,
            width: picture.width() as i32,
            colorspace: 3,
            encoded_image_string: png,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_group_by_task() {
        assert_eq!(tag("val", "seg.miou"), "seg/miou");
        assert_eq!(tag("train", "seg.loss"), "seg/train_loss");
        assert_eq!(tag("train", "seg.weight"), "seg/train_weight");
        assert_eq!(tag("train", "lr"), "train/lr");
        assert_eq!(tag("val", "delta_m"), "val/delta_m");
    }
}
