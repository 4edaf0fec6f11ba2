//! Using a trained run: load a checkpoint's model, predict on image folders or tensors, and
//! re-evaluate on the val split.
use crate::checkpoint::{self, RunDir, BEST, LATEST};
use crate::config::{Config, TaskKind};
use crate::data::normalisation;
use crate::model::MultiTaskModel;
use crate::train::resume::load_model_tensors;
use crate::{user_bail, user_error};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A run directory or a checkpoint directory, and which checkpoint of a run to use.
pub fn resolve_checkpoint(path: &Path, which: &str) -> anyhow::Result<PathBuf> {
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
    pub cfg: Config,
    pub model: MultiTaskModel,
    pub dir: PathBuf,
}

pub fn restore(checkpoint_dir: &Path, device: Device) -> anyhow::Result<Restored> {
    let cfg_path = checkpoint_dir.join(checkpoint::CONFIG_FILE);
    let cfg = Config::load(&cfg_path, &[])?;
    let channels = if cfg.data.grayscale { 1 } else { 3 };
    let model = MultiTaskModel::new(&cfg, device, channels, cfg.data.image_size);
    let model_file = checkpoint_dir.join(checkpoint::MODEL_FILE);
    let tensors = checkpoint::read_tensors(&model_file)?;
    load_model_tensors(&model, &tensors, &model_file, false)?;
    Ok(Restored { cfg, model, dir: checkpoint_dir.to_path_buf() })
}

/// Runs every head in eval mode on a safetensors file's `input` tensor (NCHW float, already
/// normalised like training inputs) and writes each head's raw outputs under its task name.
pub fn predict_tensor_file(r: &Restored, input: &Path, output: &Path) -> anyhow::Result<Vec<String>> {
    let tensors = checkpoint::read_tensors(input)?;
    let x = match tensors.iter().find(|(n, _)| n == "input") {
        Some((_, t)) => t.shallow_clone(),
        None if tensors.len() == 1 => tensors[0].1.shallow_clone(),
        None => user_bail!("{}: expected a tensor named 'input' (NCHW float)", input.display()),
    };
    let channels = if r.cfg.data.grayscale { 1 } else { 3 };
    let s = x.size();
    if s.len() != 4 || s[1] != channels {
        user_bail!("{}: 'input' has shape {s:?}, expected [N, {channels}, H, W]", input.display());
    }
    if r.cfg.model.backbone.kind == crate::config::BackboneKind::Mlp
        && (s[2], s[3]) != (r.cfg.data.image_size, r.cfg.data.image_size)
    {
        let n = r.cfg.data.image_size;
        user_bail!("{}: the MLP model takes {n}×{n} inputs, got {}×{}", input.display(), s[2], s[3]);
    }
    let x = x.to_kind(Kind::Float).to_device(r.model.device());
    let outputs = tch::no_grad(|| r.model.forward(&x, false));
    let named: Vec<(String, Tensor)> = r.cfg.tasks.iter().map(|t| t.name.clone()).zip(outputs).collect();
    Tensor::write_safetensors(
        &named.iter().map(|(n, t)| (n.clone(), t.to_device(Device::Cpu).contiguous())).collect::<Vec<_>>(),
        output,
    )
    .map_err(|e| user_error!("{}: cannot write: {e}", output.display()))?;
    Ok(named.into_iter().map(|(n, _)| n).collect())
}

/// A fixed, distinguishable colour per class for mask PNGs (class 0 black).
pub fn palette(class: u8) -> [u8; 3] {
    if class == 0 {
        return [0, 0, 0];
    }
    let h = (class as u32).wrapping_mul(2654435761);
    [(h >> 24) as u8 | 0x40, (h >> 16) as u8 | 0x40, (h >> 8) as u8 | 0x40]
}

/// Predicts on every PNG/JPEG in `images`: `predictions.csv` (one row per image: the class and
/// its probability for each classification task), `<task>/<image stem>.png` colour masks at
/// the image's own size for each segmentation task, and `<task>/<image stem>.npy` float arrays
/// (depth `(H, W)`, normals `(H, W, 3)`) for each regression and normals task. Unreadable files are listed and skipped.
pub fn predict_folder(r: &Restored, images: &Path, out: &Path) -> anyhow::Result<(usize, Vec<String>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(images)
        .map_err(|e| user_error!("{}: cannot read image folder: {e}", images.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        user_bail!("{}: no .png, .jpg or .jpeg images", images.display());
    }
    std::fs::create_dir_all(out).map_err(|e| user_error!("{}: cannot create: {e}", out.display()))?;
    let size = r.cfg.data.image_size as u32;
    let grey = r.cfg.data.grayscale;
    let (mean, std) = normalisation(r.cfg.data.dataset);
    let tasks = &r.cfg.tasks;
    let mut header = vec!["file".to_string()];
    for t in tasks.iter().filter(|t| t.kind == TaskKind::Classification) {
        header.push(t.name.clone());
        header.push(format!("{}_probability", t.name));
    }
    let mut rows = vec![header.join(",")];
    let mut skipped = Vec::new();
    for file in &files {
        let img = match image::open(file) {
            Ok(i) => i,
            Err(e) => {
                skipped.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        let (w, h) = (img.width(), img.height());
        let resized = img.resize_exact(size, size, image::imageops::FilterType::Triangle);
        let x = to_input(&resized, grey, &mean, &std).to_device(r.model.device());
        let outputs = tch::no_grad(|| r.model.forward(&x, false));
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("image").to_string();
        let mut row = vec![file.file_name().and_then(|s| s.to_str()).unwrap_or("").to_string()];
        for (t, logits) in tasks.iter().zip(&outputs) {
            match t.kind {
                TaskKind::Classification => {
                    let p = logits.softmax(-1, Kind::Float).get(0);
                    let class = p.argmax(0, false).int64_value(&[]);
                    row.push(class.to_string());
                    row.push(format!("{:.6}", p.double_value(&[class])));
                }
                TaskKind::Segmentation => {
                    let mask = logits.argmax(1, false).to_kind(Kind::Uint8).get(0).to_device(Device::Cpu);
                    write_mask_png(&mask, w, h, &out.join(&t.name).join(format!("{stem}.png")))?;
                }
                TaskKind::Regression | TaskKind::Normals => {
                    // Depth (H, W) or normals (H, W, 3) at the model's resolution, as NumPy reads them.
                    let hwc = logits.get(0).permute([1, 2, 0]).contiguous().to_device(Device::Cpu);
                    let mut shape: Vec<usize> = hwc.size().iter().map(|&d| d as usize).collect();
                    if t.kind == TaskKind::Regression {
                        shape.pop();
                    }
                    let path = out.join(&t.name).join(format!("{stem}.npy"));
                    std::fs::create_dir_all(out.join(&t.name))?;
                    let bytes = crate::data::npy::encode_f32(&shape, &Vec::<f32>::try_from(hwc.flatten(0, -1))?);
                    std::fs::write(&path, bytes).map_err(|e| user_error!("{}: cannot write: {e}", path.display()))?;
                }
            }
        }
        rows.push(row.join(","));
    }
    let csv = out.join("predictions.csv");
    std::fs::write(&csv, rows.join("\n") + "\n").map_err(|e| user_error!("{}: cannot write: {e}", csv.display()))?;
    Ok((files.len() - skipped.len(), skipped))
}

fn to_input(img: &image::DynamicImage, grey: bool, mean: &[f64; 3], std: &[f64; 3]) -> Tensor {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (data, c, m, s): (Vec<u8>, i64, Vec<f32>, Vec<f32>) = if grey {
        let avg = |v: &[f64; 3]| v.iter().sum::<f64>() as f32 / 3.0;
        (img.to_luma8().into_raw(), 1, vec![avg(mean)], vec![avg(std)])
    } else {
        (img.to_rgb8().into_raw(), 3, mean.map(|v| v as f32).to_vec(), std.map(|v| v as f32).to_vec())
    };
    let x = Tensor::from_slice(&data).view([h, w, c]).permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float) / 255.0;
    (x - Tensor::from_slice(&m).view([1, c, 1, 1])) / Tensor::from_slice(&s).view([1, c, 1, 1])
}

/// Writes a class mask as a colour PNG at `w`×`h` (nearest-neighbour).
fn write_mask_png(mask: &Tensor, w: u32, h: u32, path: &Path) -> anyhow::Result<()> {
    let (mh, mw) = (mask.size()[0] as u32, mask.size()[1] as u32);
    let labels: Vec<u8> = Vec::try_from(mask.contiguous().view([-1]))?;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let (sx, sy) = ((x * mw / w).min(mw - 1), (y * mh / h).min(mh - 1));
        image::Rgb(palette(labels[(sy * mw + sx) as usize]))
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    img.save(path).map_err(|e| user_error!("{}: cannot write: {e}", path.display()))
}

/// Re-evaluates a checkpoint on its config's val split.
pub fn evaluate(r: &Restored, config_dir: &Path) -> anyhow::Result<Vec<(String, f64)>> {
    let splits = crate::data::load(&r.cfg, config_dir)?;
    let loader = crate::data::loader::Loader::new(&r.cfg, splits.val.to_device(r.model.device()), false);
    let tasks: Vec<crate::tasks::Task> = r.cfg.tasks.iter().map(crate::tasks::Task::from_config).collect();
    Ok(crate::train::evaluate::evaluate(&r.model, &loader, &tasks))
}
