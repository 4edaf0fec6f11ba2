//! `mtl-train predict`: a trained model on image files or on a tensor file.
use super::CheckpointArgs;
use clap::Args;
use mtl::checkpoint::read_tensors;
use mtl::model::Mode;
use mtl::tasks::Prediction;
use mtl::train::restore::Restored;
use mtl::{user_bail, user_error};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tch::{Device, Kind, Tensor};

#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["images", "input", "table"])))]
pub struct PredictArgs {
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// A folder of .png/.jpg/.jpeg images: writes predictions.csv (tasks with one class per
    /// image), <task>/<image>.png masks whose pixel values are class ids (an indexed PNG, in
    /// colour in a viewer), and <task>/<image>.npy values into --out. Images are resized to the
    /// model's input size (said when they differ); masks come back at each image's own size.
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    /// A safetensors file with an NCHW float tensor named `input`, normalized like training inputs;
    /// writes one tensor per task to --out (a safetensors file).
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// A run on a table: rows in any table format (.csv, .parquet, .npz) holding its feature
    /// columns, mapped with the run's fitted standardization and vocabularies; writes --out as
    /// CSV (.csv) or Parquet (.parquet), one row per row (binary: the probability;
    /// classification: the class and its probability; value: the value).
    #[arg(long, value_name = "FILE")]
    table: Option<PathBuf>,
    /// Where the predictions go: a folder for --images, a safetensors file for --input, a .csv
    /// or .parquet file for --table.
    #[arg(long, value_name = "PATH", visible_alias = "output", required = true)]
    out: Option<PathBuf>,
    /// Run only these tasks' heads (repeat the flag or give a comma list); default: every task.
    #[arg(long = "task", value_name = "NAME", value_delimiter = ',')]
    tasks: Vec<String>,
}

pub fn run(args: PredictArgs) -> anyhow::Result<ExitCode> {
    let restored = args.checkpoint.restore()?;
    let chosen = chosen_tasks(&restored, &args.tasks)?;
    let out = args.out.as_deref().expect("clap requires --out");
    if let Some(input) = &args.input {
        let tasks = predict_tensor_file(&restored, &chosen, input, out)?;
        println!("wrote {} ({})", out.display(), tasks.join(", "));
    }
    if let Some(table) = &args.table {
        let rows = predict_table(&restored, &chosen, table, out)?;
        println!("predicted {rows} rows into {}", out.display());
    }
    if let Some(images) = &args.images {
        if restored.run.cfg.data.features.is_some() {
            mtl::user_bail!(
                "--images: this run learned from a table, not images; predict on its rows with --input \
                 (a safetensors 'input' [N, F, 1, 1] of mapped rows, see docs/TABLES.md)"
            );
        }
        let done = predict_folder(&restored, &chosen, images, out)?;
        for s in &done.skipped {
            eprintln!("skipped {s}");
        }
        if done.resized > 0 {
            let n = restored.run.cfg.data.image_size;
            println!(
                "resized {} of {} images to the model's {n}×{n} input (bilinear); masks are scaled back to each \
                 image's size, arrays stay at the model's",
                done.resized, done.predicted
            );
        }
        println!("predicted {} images into {}: {}", done.predicted, out.display(), done.written.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs every head in eval mode on a safetensors file's `input` tensor (NCHW float, already
/// normalized like training inputs) and writes each head's raw outputs under its task name.
/// A dataset's per-channel (mean, std).
type Normalization = ([f64; 3], [f64; 3]);

/// The tasks `--task` names (indices into the run's tasks, in task order), or every task.
fn chosen_tasks(r: &Restored, names: &[String]) -> anyhow::Result<Vec<usize>> {
    let all = r.run.task_names();
    if names.is_empty() {
        return Ok((0..all.len()).collect());
    }
    if let Some(unknown) = names.iter().find(|n| !all.contains(n)) {
        user_bail!("--task: the run has no task '{unknown}' (it has: {})", all.join(", "));
    }
    Ok((0..all.len()).filter(|&i| names.contains(&all[i])).collect())
}

fn predict_tensor_file(r: &Restored, chosen: &[usize], input: &Path, output: &Path) -> anyhow::Result<Vec<String>> {
    let tensors = read_tensors(input)?;
    let x = match tensors.iter().find(|(n, _)| n == "input") {
        Some((_, t)) => t.shallow_clone(),
        None if tensors.len() == 1 => tensors[0].1.shallow_clone(),
        None => user_bail!("{}: expected a tensor named 'input' (NCHW float)", input.display()),
    };
    let cfg = &r.run.cfg;
    let channels = r.run.in_channels();
    let s = x.size();
    if s.len() != 4 || s[1] != channels {
        user_bail!("{}: 'input' has shape {s:?}, expected [N, {channels}, H, W]", input.display());
    }
    if s[0] == 0 {
        user_bail!("{}: 'input' holds an empty batch (shape {s:?})", input.display());
    }
    super::check_input_hw(cfg, s[2], s[3]).map_err(|e| user_error!("{}: 'input' {e}", input.display()))?;
    let x = x.to_kind(Kind::Float).to_device(r.model.device());
    let outputs = tch::no_grad(|| r.model.forward(&x, Mode::Eval));
    let names = r.run.task_names();
    let named: Vec<(String, Tensor)> =
        chosen.iter().map(|&i| (names[i].clone(), outputs[i].to_device(Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&named, output).map_err(|e| user_error!("{}: cannot write: {e}", output.display()))?;
    Ok(named.into_iter().map(|(n, _)| n).collect())
}

/// How `predict --table` writes its predictions: by `--out`'s extension.
#[derive(Clone, Copy)]
enum TableOut {
    Csv,
    Parquet,
}

impl TableOut {
    fn of(out: &Path) -> anyhow::Result<Self> {
        match out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("csv") => Ok(TableOut::Csv),
            Some("parquet") => Ok(TableOut::Parquet),
            _ => user_bail!(
                "--out: {}: table predictions are written as CSV (.csv) or Parquet (.parquet)",
                out.display()
            ),
        }
    }
}

/// `predict --table`: every row of `table` through the model, one row of predictions per row.
fn predict_table(r: &Restored, chosen: &[usize], table: &Path, out: &Path) -> anyhow::Result<usize> {
    use mtl::data::table::write;
    let cfg = &r.run.cfg;
    if cfg.data.features.is_none() {
        user_bail!("--table: this run learned from images, not a table; use --images or --input");
    }
    let format = TableOut::of(out)?;
    let file = mtl::config::TableFile::File(table.display().to_string());
    let x = mtl::data::table::map_rows(&cfg.data, &file)?;
    let n = x.size()[0];
    let batch = cfg.data.eval_batch_size as i64;
    if n == 0 {
        user_bail!("--table: {}: holds no rows to predict", table.display());
    }
    let mut outputs: Vec<Vec<Tensor>> = chosen.iter().map(|_| Vec::new()).collect();
    for start in (0..n).step_by(batch as usize) {
        let part = x.narrow(0, start, batch.min(n - start)).to_device(r.model.device());
        let batch_outputs = tch::no_grad(|| r.model.forward(&part, Mode::Eval));
        for (all, &i) in outputs.iter_mut().zip(chosen) {
            all.push(batch_outputs[i].to_device(Device::Cpu));
        }
    }
    let mut columns = Vec::new();
    for (all, &i) in outputs.iter().zip(chosen) {
        let task = &r.run.tasks[i];
        columns.extend(task_columns(&task.name, task.kind.name(), &Tensor::cat(all, 0))?);
    }
    let bytes = match format {
        TableOut::Csv => write::csv(&columns).into_bytes(),
        TableOut::Parquet => write::parquet(&columns)?,
    };
    mtl::checkpoint::write_atomically(out, &bytes)?;
    Ok(n as usize)
}

/// One task's outputs as its named prediction columns: classification the class (`<task>`)
/// and its probability (`<task>_probability`), binary the probability, value the value.
fn task_columns(name: &str, kind: &str, output: &Tensor) -> anyhow::Result<mtl::data::table::write::Columns> {
    use mtl::data::table::write::Values;
    let o = output.to_kind(Kind::Double);
    Ok(match kind {
        "classification" => {
            let (p, c) = o.softmax(1, Kind::Double).max_dim(1, false);
            vec![
                (name.to_string(), Values::Int(Vec::try_from(c)?)),
                (format!("{name}_probability"), Values::Float(Vec::try_from(p)?)),
            ]
        }
        "binary" => vec![(name.to_string(), Values::Float(Vec::try_from(o.view([-1]).sigmoid())?))],
        _ => vec![(name.to_string(), Values::Float(Vec::try_from(o.view([-1]))?))],
    })
}

/// What a folder prediction did.
struct FolderPrediction {
    predicted: usize,
    /// Images whose size was not the model's input size.
    resized: usize,
    skipped: Vec<String>,
    /// What was written, for the closing line: `predictions.csv (kind)`, `seg/*.png (class ids)`.
    written: Vec<String>,
}

/// Predicts on every PNG/JPEG in `images`: `predictions.csv` (one row per image: the class and
/// its probability for each task that predicts one class per image; none without such a
/// task), `<task>/<image stem>.png` class masks at the image's own size for each per-pixel
/// class task, and `<task>/<image stem>.npy` float arrays (`(H, W)`, or `(H, W, C)` with
/// several channels) for each task that predicts values. Unreadable files are listed and
/// skipped.
fn predict_folder(r: &Restored, chosen: &[usize], images: &Path, out: &Path) -> anyhow::Result<FolderPrediction> {
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
    // A FIFO or device named like an image would block the reader forever: list, skip.
    let mut skipped: Vec<String> = Vec::new();
    files.retain(|p| {
        let regular = mtl::files::is_regular(p);
        if !regular {
            skipped.push(format!("{}: not a regular file", p.display()));
        }
        regular
    });
    files.sort();
    if files.is_empty() {
        let why = skipped.first().map(|s| format!(" ({s})")).unwrap_or_default();
        user_bail!("{}: no readable .png, .jpg or .jpeg images{why}", images.display());
    }
    let cfg = &r.run.cfg;
    let size = cfg.data.image_size as u32;
    let grey = cfg.data.grayscale;
    // Each task's images are normalized as its own data's were in training.
    let normalization = |i: usize| {
        let g = r.run.groups.iter().find(|g| g.tasks.contains(&i)).expect("every task is in a group");
        g.data.normalization(g.dataset.normalization())
    };
    let tasks: Vec<&mtl::tasks::Task> = chosen.iter().map(|&i| &r.run.tasks[i]).collect();
    let mut header = vec!["file".to_string()];
    for t in tasks.iter().filter(|t| t.kind.prediction() == Prediction::Class) {
        header.push(t.name.clone());
        header.push(format!("{}_probability", t.name));
    }
    let per_image_classes = header.len() > 1;
    let mut rows = vec![header.join(",")];
    let mut done = 0;
    let mut resized_count = 0;
    for file in &files {
        let img = match image::open(file) {
            Ok(i) => i,
            Err(e) => {
                skipped.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        if done == 0 {
            // Created only once there is something to write into it.
            std::fs::create_dir_all(out).map_err(|e| user_error!("{}: cannot create: {e}", out.display()))?;
        }
        let (w, h) = (img.width(), img.height());
        resized_count += usize::from((w, h) != (size, size));
        let resized = img.resize_exact(size, size, image::imageops::FilterType::Triangle);
        // One forward per distinct normalization among the chosen tasks.
        let mut forwards: Vec<(Normalization, Vec<Tensor>)> = Vec::new();
        let mut outputs = Vec::with_capacity(chosen.len());
        for &i in chosen {
            let norm = normalization(i);
            if !forwards.iter().any(|(n, _)| *n == norm) {
                let x = to_input(&resized, grey, &norm.0, &norm.1).to_device(r.model.device());
                forwards.push((norm, tch::no_grad(|| r.model.forward(&x, Mode::Eval))));
            }
            let (_, out) = forwards.iter().find(|(n, _)| *n == norm).expect("just computed");
            outputs.push(out[i].shallow_clone());
        }
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("image").to_string();
        let mut row = vec![file.file_name().and_then(|s| s.to_str()).unwrap_or("").to_string()];
        for (t, output) in tasks.iter().zip(&outputs) {
            match t.kind.prediction() {
                Prediction::Class => {
                    let p = output.softmax(-1, Kind::Float).get(0);
                    let class = p.argmax(0, false).int64_value(&[]);
                    row.push(class.to_string());
                    row.push(format!("{:.6}", p.double_value(&[class])));
                }
                Prediction::ClassMask => {
                    let mask = output.argmax(1, false).to_kind(Kind::Uint8).get(0).to_device(Device::Cpu);
                    write_mask_png(&mask, w, h, &out.join(&t.name).join(format!("{stem}.png")))?;
                }
                Prediction::Values => {
                    // (H, W) for one channel, (H, W, C) for several, at the model's
                    // resolution, as NumPy reads them.
                    let hwc = output.get(0).permute([1, 2, 0]).contiguous().to_device(Device::Cpu);
                    let mut shape: Vec<usize> = hwc.size().iter().map(|&d| d as usize).collect();
                    if shape.last() == Some(&1) {
                        shape.pop();
                    }
                    let path = out.join(&t.name).join(format!("{stem}.npy"));
                    std::fs::create_dir_all(out.join(&t.name))?;
                    let bytes = mtl::data::npy::encode_f32(&shape, &Vec::<f32>::try_from(hwc.flatten(0, -1))?);
                    std::fs::write(&path, bytes).map_err(|e| user_error!("{}: cannot write: {e}", path.display()))?;
                }
            }
        }
        rows.push(row.join(","));
        done += 1;
    }
    if done == 0 {
        user_bail!(
            "{}: none of its {} image file(s) could be read ({})",
            images.display(),
            skipped.len(),
            skipped.first().map(String::as_str).unwrap_or("")
        );
    }
    let mut written = Vec::new();
    if per_image_classes {
        super::write_file(&out.join("predictions.csv"), &(rows.join("\n") + "\n"))?;
        let names: Vec<&str> =
            tasks.iter().filter(|t| t.kind.prediction() == Prediction::Class).map(|t| t.name.as_str()).collect();
        written.push(format!("predictions.csv ({})", names.join(", ")));
    }
    for t in &tasks {
        match t.kind.prediction() {
            Prediction::Class => {}
            Prediction::ClassMask => written.push(format!("{}/*.png (pixel value = class id)", t.name)),
            Prediction::Values => written.push(format!("{}/*.npy", t.name)),
        }
    }
    Ok(FolderPrediction { predicted: done, resized: resized_count, skipped, written })
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

/// Writes a class mask at `w`×`h` (nearest-neighbour) as an indexed PNG: each pixel's value is
/// its class id (what PIL's `np.array(Image.open(path))` and mtl's own `folder` masks read),
/// and the palette gives class i the colour [`mtl::tasks::class_colour`] draws it in.
fn write_mask_png(mask: &Tensor, w: u32, h: u32, path: &Path) -> anyhow::Result<()> {
    let (mh, mw) = (mask.size()[0] as u32, mask.size()[1] as u32);
    let labels: Vec<u8> = Vec::try_from(mask.contiguous().view([-1]))?;
    let mut pixels = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = ((x * mw / w).min(mw - 1), (y * mh / h).min(mh - 1));
            pixels.push(labels[(sy * mw + sx) as usize]);
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let cannot = |e: &dyn std::fmt::Display| user_error!("{}: cannot write: {e}", path.display());
    let file = std::fs::File::create(path).map_err(|e| cannot(&e))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette((0..=255u8).flat_map(mtl::tasks::class_colour).collect::<Vec<u8>>());
    let mut writer = encoder.write_header().map_err(|e| cannot(&e))?;
    writer.write_image_data(&pixels).map_err(|e| cannot(&e))?;
    writer.finish().map_err(|e| cannot(&e))
}
