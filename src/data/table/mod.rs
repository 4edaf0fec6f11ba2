//! `table`: rows of numeric and categorical columns (CSV with a header, Parquet, `.npz`, or one
//! `.npy` array per column), with the tasks' targets as columns (docs/TABLES.md).
//!
//! The resolve step fits the mapping on the training split ([`Dataset::prepare`]: means and
//! standard deviations, vocabularies) and records it in the config (`data.features.fitted`),
//! so the run's config.yaml maps rows for evaluation, `predict` and `export` exactly as
//! training did. A split is held in memory as float `[N, F, 1, 1]` "images" whose F entries
//! are the standardized numeric values, the missing-value indicators and one vocabulary
//! index per categorical column (the model embeds those, see `model::table_input`).
pub mod fit;
pub mod read;

use super::{Dataset, Loaded, Split, Splits, TargetShape, Wanted};
use crate::config::{DataConfig, TableFeatures, TableFile};
use crate::user_bail;
pub use fit::Layout;
use std::collections::{BTreeMap, BTreeSet};
use tch::Tensor;

pub struct Table;

impl Table {
    fn features(d: &DataConfig) -> anyhow::Result<&TableFeatures> {
        d.features.as_ref().ok_or_else(|| crate::user_error!("data.features: the table dataset needs its feature columns"))
    }
}

/// The feature columns in the order the config lists them.
fn feature_columns(f: &TableFeatures) -> Vec<String> {
    f.numeric.iter().chain(f.categorical.keys()).cloned().collect()
}

/// Reads `file`'s feature and target columns, limited to the first `limit` rows (0: all).
fn read_split(file: &TableFile, columns: &[String], limit: usize) -> anyhow::Result<read::RawTable> {
    let mut t = read::read(file, columns)?;
    if limit > 0 && limit < t.rows {
        t.rows = limit;
        for v in t.columns.values_mut() {
            match v {
                read::Values::Cells(c) => c.truncate(limit),
                read::Values::Array { data, width } => data.truncate(limit * *width),
            }
        }
    }
    Ok(t)
}

fn files(d: &DataConfig) -> anyhow::Result<(&TableFile, &TableFile)> {
    match (&d.train, &d.val) {
        (Some(t), Some(v)) => Ok((t, v)),
        (None, _) => user_bail!("data.train: the table dataset needs its training split's file"),
        (_, None) => user_bail!("data.val: the table dataset needs its validation split's file"),
    }
}

/// Train and val must have the same columns (a table exported twice with a column renamed
/// or dropped would otherwise map silently wrong).
fn same_columns(train: &read::RawTable, val: &read::RawTable) -> anyhow::Result<()> {
    let (a, b): (BTreeSet<&String>, BTreeSet<&String>) = (train.all_columns.iter().collect(), val.all_columns.iter().collect());
    if let Some(c) = a.symmetric_difference(&b).next() {
        let (has, lacks) = if a.contains(c) { (&train.source, &val.source) } else { (&val.source, &train.source) };
        user_bail!("{lacks}: no column '{c}', which {has} has: train and val must have the same columns");
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

    fn prepare(&self, d: &mut DataConfig) -> anyhow::Result<()> {
        d.image_size = 1;
        let f = Self::features(d)?;
        let columns = feature_columns(f);
        if let Some(fitted) = &f.fitted {
            let fitted_columns: Vec<String> =
                fitted.numeric.iter().map(|n| &n.column).chain(fitted.categorical.iter().map(|c| &c.column)).cloned().collect();
            if fitted_columns != columns {
                user_bail!(
                    "data.features.fitted: fitted for columns {fitted_columns:?}, not for the configured {columns:?}; remove it to fit again"
                );
            }
            return Ok(());
        }
        let (train, _) = files(d)?;
        let raw = read_split(train, &columns, d.train_size)?;
        let fitted = fit::fit(&raw, f)?;
        d.features.as_mut().expect("checked").fitted = Some(fitted);
        Ok(())
    }

    fn resolve_targets(&self, d: &DataConfig, wanted: &mut [Wanted]) -> anyhow::Result<()> {
        let f = Self::features(d)?;
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
        let (train, val) = files(d)?;
        let train = read_split(train, &targets, d.train_size)?;
        let val = read_split(val, &targets, d.val_size)?;
        same_columns(&train, &val)?;
        for w in wanted.iter_mut() {
            let (_, classes) = fit::target(&train, w)?;
            let _ = fit::target(&val, &Wanted { classes, ..w.clone() })?; // checks val's labels too
            if w.shape == TargetShape::PerImage {
                w.classes = classes;
            }
        }
        Ok(())
    }

    fn load(&self, d: &DataConfig, _seed: u64, wanted: &[Wanted]) -> anyhow::Result<Loaded> {
        let f = Self::features(d)?;
        let fitted = f.fitted.as_ref().expect("the resolve step fits the table");
        let mut columns = feature_columns(f);
        columns.extend(wanted.iter().map(|w| w.target.clone()));
        let columns: Vec<String> = columns.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        let (train, val) = files(d)?;
        let split = |file: &TableFile, limit: usize| -> anyhow::Result<Split> {
            let raw = read_split(file, &columns, limit)?;
            let width = fitted.raw_width() as i64;
            let x = fit::features(&raw, fitted)?;
            let images = Tensor::from_slice(&x).view([raw.rows as i64, width, 1, 1]);
            let mut targets = BTreeMap::new();
            for w in wanted {
                targets.insert(w.target.clone(), fit::target(&raw, w)?.0);
            }
            Ok(Split { images, targets })
        };
        let train = split(train, d.train_size)?;
        let val = split(val, d.val_size)?;
        Ok(Loaded::Memory(Splits { train, val }))
    }
}
