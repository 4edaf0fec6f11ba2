//! `table`: rows of numeric and categorical columns (CSV with a header, Parquet, `.npz`, or one
//! `.npy` array per column), with the tasks' targets as columns (docs/TABLES.md).
//!
//! The resolve step fits the mapping on the training split ([`Dataset::prepare`]: means and
//! standard deviations, vocabularies) and records it in the config (`data.features.fitted`),
//! so the run's config.yaml maps rows for evaluation, `predict` and `export` exactly as
//! training did. A split is held in memory as float `[N, F, 1, 1]` "images" whose F entries
//! are the standardized numeric values, the missing-value indicators and one vocabulary
//! index per categorical column (the model embeds those, see `model::table_input`).
//!
//! A CSV or Parquet table whose mapped rows would take more than `data.max_memory_mb` is
//! streamed instead ([`stream`]): the resolve step records how (`fitted.stream`), and fitting,
//! checking the targets and checking every row read the files chunk by chunk ([`chunks`]), so
//! no step holds more than a chunk of raw cells.
pub mod census;
pub mod chunks;
pub mod fit;
pub mod order;
mod parquet_columns;
pub mod read;
pub mod stream;
pub mod write;

use super::{Dataset, Loaded, Source, Sources, Split, Splits, TargetShape, Wanted, MB};
use crate::config::{DataConfig, FittedTable, TableFeatures, TableFile, TableStream};
use crate::user_bail;
use chunks::Chunks;
use std::collections::{BTreeMap, BTreeSet};
use tch::Tensor;

pub struct Table;

impl Table {
    pub(crate) fn features(d: &DataConfig) -> anyhow::Result<&TableFeatures> {
        d.features
            .as_ref()
            .ok_or_else(|| crate::user_error!("data.features: the table dataset needs its feature columns"))
    }
}

/// The feature columns in the order the config lists them.
fn feature_columns(f: &TableFeatures) -> Vec<String> {
    f.numeric.iter().chain(f.categorical.keys()).cloned().collect()
}

/// Reads `file`'s feature and target columns, limited to the first `limit` rows (0: all).
fn read_split(file: &TableFile, columns: &[String], limit: usize) -> anyhow::Result<read::RawTable> {
    Ok(read::read(file, columns)?.first_rows(limit))
}

fn files(d: &DataConfig) -> anyhow::Result<(&TableFile, &TableFile)> {
    match (&d.train, &d.val) {
        (Some(t), Some(v)) => Ok((t, v)),
        (None, _) => user_bail!("data.train: the table dataset needs its training split's file"),
        (_, None) => user_bail!("data.val: the table dataset needs its validation split's file"),
    }
}

/// Train and val must have the same columns (a table exported twice with a column renamed
/// or dropped would otherwise map silently wrong). Each split is `(source, all_columns)`.
fn same_columns(train: (&str, &[String]), val: (&str, &[String])) -> anyhow::Result<()> {
    let (a, b): (BTreeSet<&String>, BTreeSet<&String>) = (train.1.iter().collect(), val.1.iter().collect());
    if let Some(c) = a.symmetric_difference(&b).next() {
        let (has, lacks) = if a.contains(c) { (train.0, val.0) } else { (val.0, train.0) };
        user_bail!("{lacks}: no column '{c}', which {has} has: train and val must have the same columns");
    }
    Ok(())
}

/// Where a table dataset's splits come from: the rows of the wanted columns.
pub trait Rows: Sync {
    /// The training split (`val` false) or the validation split, limited to
    /// `data.train_size` / `data.val_size` rows (0: all).
    fn read(&self, d: &DataConfig, val: bool, columns: &[String]) -> anyhow::Result<read::RawTable>;

    /// The same split as chunks of at most `chunk_rows` rows, when its format can be read
    /// that way (CSV, Parquet); `None` when it is read whole.
    fn chunks(&self, _d: &DataConfig, _val: bool, _chunk_rows: usize) -> anyhow::Result<Option<Chunks>> {
        Ok(None)
    }
}

impl Rows for Table {
    fn chunks(&self, d: &DataConfig, val: bool, chunk_rows: usize) -> anyhow::Result<Option<Chunks>> {
        let (train, v) = files(d)?;
        match val {
            false => Chunks::open(train, chunk_rows, d.train_size),
            true => Chunks::open(v, chunk_rows, d.val_size),
        }
    }

    fn read(&self, d: &DataConfig, val: bool, columns: &[String]) -> anyhow::Result<read::RawTable> {
        let (train, v) = files(d)?;
        match val {
            false => read_split(train, columns, d.train_size),
            true => read_split(v, columns, d.val_size),
        }
    }
}

/// Fits the mapping on the training split into `data.features.fitted` (kept when present).
pub fn prepare(rows: &dyn Rows, d: &mut DataConfig) -> anyhow::Result<()> {
    d.image_size = 1;
    let f = Table::features(d)?;
    let columns = feature_columns(f);
    if let Some(fitted) = &f.fitted {
        let fitted_columns: Vec<String> = fitted
            .numeric
            .iter()
            .map(|n| &n.column)
            .chain(fitted.categorical.iter().map(|c| &c.column))
            .cloned()
            .collect();
        if fitted_columns != columns {
            user_bail!(
                "data.features.fitted: fitted for columns {fitted_columns:?}, not for the configured {columns:?}; remove it to fit again"
            );
        }
        return Ok(());
    }
    let mut fitted = match rows.chunks(d, false, FIT_CHUNK_ROWS)? {
        Some(train) => fit_chunks(&train, &columns, f)?,
        None => fit::fit(&rows.read(d, false, &columns)?, f)?,
    };
    fitted.stream = stream_layout(rows, d, &fitted)?;
    d.features.as_mut().expect("checked").fitted = Some(fitted);
    Ok(())
}

/// Rows a chunk holds while fitting and checking targets (a few MB of cells).
const FIT_CHUNK_ROWS: usize = 16_384;

/// The fit of a table read chunk by chunk: the same numbers as fitting it whole ([`fit::Fitter`]).
fn fit_chunks(train: &Chunks, columns: &[String], f: &TableFeatures) -> anyhow::Result<FittedTable> {
    let mut fitter = fit::Fitter::new(f);
    train.for_each(columns, |chunk| fitter.add(&chunk))?;
    if fitter.needs_deviations() {
        let numeric = f.numeric.clone();
        train.for_each(&numeric, |chunk| fitter.add_deviations(&chunk))?;
    }
    fitter.finish()
}

/// Bytes a mapped row is counted at when deciding to stream: its float32 entries and room for
/// two int64 targets (the targets are not known yet when the mapping is fitted).
fn row_bytes(fitted: &FittedTable) -> usize {
    4 * fitted.raw_width() + 16
}

/// How the table streams when both splits' mapped rows would take more than
/// `data.max_memory_mb` (`None`: it is held in memory, or a split's format is read whole).
///
/// A quarter of the limit goes to the shuffle window of mapped rows (twice that while it is
/// permuted), and a chunk is a sixteenth of a window, so a window mixes rows from at least 16
/// places in the file; the rest covers the chunk being parsed (its cells take several times
/// its mapped rows) and the batches queued ahead.
fn stream_layout(rows: &dyn Rows, d: &DataConfig, fitted: &FittedTable) -> anyhow::Result<Option<TableStream>> {
    let (Some(train), Some(val)) = (rows.chunks(d, false, usize::MAX)?, rows.chunks(d, true, usize::MAX)?) else {
        return Ok(None);
    };
    let row = row_bytes(fitted);
    let mb = ((train.rows() + val.rows()) * row) as f64 / MB;
    if mb <= d.max_memory_mb {
        return Ok(None);
    }
    let window_rows = ((d.max_memory_mb * MB / 4.0) as usize / row).max(1);
    Ok(Some(TableStream { chunk_rows: (window_rows / 16).max(1), window_rows }))
}

/// Checks the targets against both splits and fills `classes` from the training split.
pub fn resolve_targets(rows: &dyn Rows, d: &DataConfig, wanted: &mut [Wanted]) -> anyhow::Result<()> {
    let f = Table::features(d)?;
    let features: BTreeSet<String> = feature_columns(f).into_iter().collect();
    for (i, w) in wanted.iter().enumerate() {
        if features.contains(&w.target) {
            user_bail!("tasks[{i}].target: column '{}' is used twice: it is also a feature (data.features)", w.target);
        }
        if matches!(w.shape, TargetShape::PerPixel | TargetShape::PerPixelDepth | TargetShape::PerPixelNormal) {
            user_bail!("tasks[{i}].kind: a table has one target value per row, nothing per pixel");
        }
    }
    let targets: Vec<String> = wanted.iter().map(|w| w.target.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    if let (Some(train), Some(val)) = (rows.chunks(d, false, FIT_CHUNK_ROWS)?, rows.chunks(d, true, FIT_CHUNK_ROWS)?) {
        same_columns((&train.source, &train.all_columns), (&val.source, &val.all_columns))?;
        // Chunk by chunk: the classes are the largest of every chunk's (each chunk's labels
        // checked against its own), then val's labels are checked against them.
        let mut classes = vec![0; wanted.len()];
        train.for_each(&targets, |chunk| {
            for (w, c) in wanted.iter().zip(classes.iter_mut()) {
                *c = (*c).max(fit::target(&chunk, w)?.1);
            }
            Ok(())
        })?;
        val.for_each(&targets, |chunk| {
            for (w, &classes) in wanted.iter().zip(&classes) {
                let _ = fit::target(&chunk, &Wanted { classes, ..w.clone() })?;
            }
            Ok(())
        })?;
        for (w, classes) in wanted.iter_mut().zip(classes) {
            if w.shape == TargetShape::PerImage {
                w.classes = classes;
            }
        }
        return Ok(());
    }
    let train = rows.read(d, false, &targets)?;
    let val = rows.read(d, true, &targets)?;
    same_columns((&train.source, &train.all_columns), (&val.source, &val.all_columns))?;
    for w in wanted.iter_mut() {
        let (_, classes) = fit::target(&train, w)?;
        let _ = fit::target(&val, &Wanted { classes, ..w.clone() })?; // checks val's labels too
        if w.shape == TargetShape::PerImage {
            w.classes = classes;
        }
    }
    Ok(())
}

/// Both splits mapped through the fitted mapping: float `[N, F, 1, 1]` rows and the targets,
/// held in memory, or streamed as `fitted.stream` says (every row checked first).
pub fn load(rows: &dyn Rows, d: &DataConfig, wanted: &[Wanted]) -> anyhow::Result<Loaded> {
    let f = Table::features(d)?;
    let fitted = f.fitted.as_ref().expect("the resolve step fits the table");
    let mut columns = feature_columns(f);
    columns.extend(wanted.iter().map(|w| w.target.clone()));
    let columns: Vec<String> = columns.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
    if let Some(layout) = fitted.stream {
        let stream = |val: bool| -> anyhow::Result<Source> {
            let chunks = rows.chunks(d, val, layout.chunk_rows)?.ok_or_else(|| {
                crate::user_error!("data.features.fitted.stream: the table streams, but its files cannot be read in chunks (CSV or Parquet)")
            })?;
            let parts = chunks.units().iter().map(|u| u.len()).max().unwrap_or(1);
            if !val && parts > 1 {
                tracing::warn!(
                    "data: {}: Parquet row groups cut into up to {parts} chunks of {} rows, read together: \
                     their rows mix only within a window; row groups of at most {} rows shuffle better",
                    chunks.source,
                    layout.chunk_rows,
                    layout.chunk_rows
                );
            }
            let split = stream::RowStream::new(
                chunks,
                columns.clone(),
                fitted.clone(),
                wanted.to_vec(),
                layout.window_rows,
                d.prefetch_batches,
            );
            split.check()?;
            Ok(Source::Rows(split))
        };
        let (train, val) = (stream(false)?, stream(true)?);
        tracing::info!(
            "data: table {} train + {} val rows would take more than data.max_memory_mb {} as float rows: \
             streaming them in chunks of {} rows, shuffled in windows of {} rows (every row checked)",
            train.len(),
            val.len(),
            d.max_memory_mb,
            layout.chunk_rows,
            layout.window_rows
        );
        return Ok(Loaded::Sources(Sources { train, val }));
    }
    let split = |val: bool| mapped(&rows.read(d, val, &columns)?, fitted, wanted);
    Ok(Loaded::Memory(Splits { train: split(false)?, val: split(true)? }))
}

/// `raw`'s rows mapped through `fitted`: float `[N, F, 1, 1]` rows and the `wanted` targets.
pub fn mapped(raw: &read::RawTable, fitted: &FittedTable, wanted: &[Wanted]) -> anyhow::Result<Split> {
    let x = fit::features(raw, fitted)?;
    let images = Tensor::from_slice(&x).view([raw.rows as i64, fitted.raw_width() as i64, 1, 1]);
    let mut targets = BTreeMap::new();
    for w in wanted {
        targets.insert(w.target.clone(), fit::target(raw, w)?.0);
    }
    Ok(Split { images, targets })
}

/// The rows of `file` (any table format) mapped as the run's training rows were: float
/// `[N, F, 1, 1]`, for `predict --table`. Targets are not read.
pub fn map_rows(d: &DataConfig, file: &TableFile) -> anyhow::Result<Tensor> {
    let f = Table::features(d)?;
    let fitted = f
        .fitted
        .as_ref()
        .ok_or_else(|| crate::user_error!("data.features.fitted: the run's config has no fitted mapping"))?;
    let raw = read::read(file, &feature_columns(f))?;
    let x = fit::features(&raw, fitted)?;
    Ok(Tensor::from_slice(&x).view([raw.rows as i64, fitted.raw_width() as i64, 1, 1]))
}

/// The rules every table dataset's `data.features` follows.
pub fn check_features(f: &TableFeatures) -> Result<(), String> {
    if f.numeric.is_empty() && f.categorical.is_empty() {
        return Err("data.features: names no column (numeric: [...], categorical: {col: {dim: 8}})".into());
    }
    let mut seen = BTreeSet::new();
    for c in feature_columns(f) {
        if !seen.insert(c.clone()) {
            return Err(format!("data.features: column '{c}' is used twice"));
        }
    }
    for (c, spec) in &f.categorical {
        if spec.dim < 1 {
            return Err(format!("data.features.categorical.{c}.dim: {} (an embedding is at least 1 wide)", spec.dim));
        }
        if spec.max_vocab == Some(0) {
            return Err(format!("data.features.categorical.{c}.max_vocab: 0 keeps no value; at least 1"));
        }
    }
    Ok(())
}

impl Dataset for Table {
    fn name(&self) -> &'static str {
        "table"
    }

    fn targets(&self, _d: &DataConfig) -> Option<Vec<super::TargetInfo>> {
        None
    }

    /// Unused: the rows are standardized by the fitted mapping, not per channel.
    fn normalization(&self) -> ([f64; 3], [f64; 3]) {
        ([0.0; 3], [1.0; 3])
    }

    fn check(&self, d: &DataConfig) -> Result<(), String> {
        let f = Self::features(d).map_err(|e| e.to_string())?;
        files(d).map_err(|e| e.to_string())?;
        if d.grayscale {
            return Err("data.grayscale: a table has no images; remove the key".into());
        }
        check_features(f)
    }

    fn prepare(&self, d: &mut DataConfig) -> anyhow::Result<()> {
        prepare(self, d)
    }

    fn resolve_targets(&self, d: &DataConfig, wanted: &mut [Wanted]) -> anyhow::Result<()> {
        resolve_targets(self, d, wanted)
    }

    fn load(&self, d: &DataConfig, _seed: u64, wanted: &[Wanted]) -> anyhow::Result<Loaded> {
        load(self, d, wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CategoricalFeature;

    /// A CSV table fitted chunk by chunk (chunks of 7 rows, the second pass too) gets exactly
    /// the numbers the whole table gets: means, standard deviations, indicators, vocabularies.
    #[test]
    fn fitting_in_chunks_equals_fitting_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        let mut text = String::from("a,b,city\n");
        for r in 0..503u64 {
            let h = r.wrapping_mul(2654435761) % 1000;
            let a = if r % 7 == 3 { String::new() } else { format!("{}", h as f64 / 37.0 - 11.3) };
            text += &format!("{a},{},c{}\n", (h % 13) as f64 * 1e-3 + 1e6, (h * h) % 11);
        }
        std::fs::write(&path, text).unwrap();
        let file = TableFile::File(path.display().to_string());
        let f = TableFeatures {
            numeric: vec!["a".into(), "b".into()],
            categorical: [("city".to_string(), CategoricalFeature { dim: 2, max_vocab: Some(6) })].into(),
            fitted: None,
        };
        let columns = feature_columns(&f);
        let whole = fit::fit(&read::read(&file, &columns).unwrap(), &f).unwrap();
        let chunked = fit_chunks(&Chunks::open(&file, 7, 0).unwrap().unwrap(), &columns, &f).unwrap();
        assert_eq!(whole, chunked);
        assert!(whole.numeric[0].indicator && !whole.numeric[1].indicator);
        assert_eq!(whole.categorical[0].vocab.len(), 6);
    }
}
