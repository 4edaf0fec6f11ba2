//! What the training split teaches (standardization and vocabularies) and the mapping every
//! split goes through: rows → one float feature vector (standardized numeric entries, missing
//! indicators, then one vocabulary index per categorical column) and the tasks' targets.
use super::read::{Cell, RawTable, Values};
use crate::config::{FittedCategorical, FittedNumeric, FittedTable, TableFeatures};
use crate::data::{TargetShape, Wanted};
use crate::user_bail;
use std::collections::HashMap;

/// A column's numeric values, `width` per row (NaN: missing); text is an error naming the row.
pub fn numeric(t: &RawTable, column: &str) -> anyhow::Result<(Vec<f32>, usize)> {
    match t.values(column) {
        Values::Array { data, width } => Ok((data.clone(), *width)),
        Values::Cells(cells) => {
            let mut out = Vec::with_capacity(cells.len());
            for (row, cell) in cells.iter().enumerate() {
                out.push(match cell {
                    Cell::Missing => f32::NAN,
                    Cell::Num(v) => *v as f32,
                    Cell::Text(s) => match s.parse::<f64>() {
                        Ok(v) if v.is_finite() => v as f32,
                        _ => user_bail!(
                            "{}: column '{column}', row {}: '{s}' is not a number",
                            t.source,
                            t.row_number(row)
                        ),
                    },
                });
            }
            Ok((out, 1))
        }
    }
}

/// Calls `f` with each of a column's values as a vocabulary key, in row order (`None`:
/// missing). Integers print without a decimal point, so `3` in a CSV and `3.0` in an array are
/// the same value. Numbers are printed into one reused buffer: a key is only borrowed.
pub fn for_each_key(t: &RawTable, column: &str, mut f: impl FnMut(Option<&str>)) -> anyhow::Result<()> {
    use std::fmt::Write;
    let mut text = String::new();
    let mut num = |v: f64, f: &mut dyn FnMut(Option<&str>)| {
        text.clear();
        let _ = if v.fract() == 0.0 && v.abs() < 1e15 { write!(text, "{}", v as i64) } else { write!(text, "{v}") };
        f(Some(&text));
    };
    match t.values(column) {
        Values::Array { width, .. } if *width != 1 => {
            user_bail!("{}: column '{column}' has {width} values per row; a categorical column has one", t.source)
        }
        Values::Array { data, .. } => {
            for &v in data {
                if v.is_nan() {
                    f(None)
                } else {
                    num(v as f64, &mut f)
                }
            }
        }
        Values::Cells(cells) => {
            for c in cells {
                match c {
                    Cell::Missing => f(None),
                    Cell::Num(v) => num(*v, &mut f),
                    Cell::Text(s) => f(Some(s)),
                }
            }
        }
    }
    Ok(())
}

/// Standardization and vocabularies from the training split held whole.
pub fn fit(train: &RawTable, f: &TableFeatures) -> anyhow::Result<FittedTable> {
    let mut fitter = Fitter::new(f);
    fitter.add(train)?;
    if fitter.needs_deviations() {
        fitter.add_deviations(train)?;
    }
    fitter.finish()
}

/// Standardization and vocabularies gathered chunk by chunk, in file order: row and value
/// counts and sums in a first pass over the chunks ([`Fitter::add`]), squared deviations from
/// the mean in a second ([`Fitter::add_deviations`], only with numeric columns). The float
/// operations are the same, in the same order, however the split is cut, so a file fitted in
/// chunks gets the numbers it gets fitted whole, bit for bit. (A one-pass variance such as
/// Welford's differs in the last bits, which would change every in-memory run's weights.)
/// Memory: a few numbers per numeric entry, and the value counts of the categorical columns.
pub struct Fitter<'a> {
    f: &'a TableFeatures,
    source: String,
    rows: usize,
    /// Per numeric column: its moments, sized by the first chunk's width.
    numeric: Vec<Option<Moments>>,
    /// Per categorical column: how often each value occurs.
    counts: Vec<HashMap<String, u64>>,
}

struct Moments {
    sum: Vec<f64>,
    count: Vec<u64>,
    /// Set once the first pass is over.
    mean: Vec<f64>,
    sq: Vec<f64>,
}

impl<'a> Fitter<'a> {
    pub fn new(f: &'a TableFeatures) -> Self {
        Self {
            f,
            source: String::new(),
            rows: 0,
            numeric: f.numeric.iter().map(|_| None).collect(),
            counts: f.categorical.iter().map(|_| HashMap::new()).collect(),
        }
    }

    /// First pass: the next chunk's counts and sums.
    pub fn add(&mut self, chunk: &RawTable) -> anyhow::Result<()> {
        self.source.clone_from(&chunk.source);
        self.rows += chunk.rows;
        for (column, moments) in self.f.numeric.iter().zip(&mut self.numeric) {
            let (values, width) = numeric(chunk, column)?;
            let m = moments.get_or_insert_with(|| Moments {
                sum: vec![0.0; width],
                count: vec![0; width],
                mean: Vec::new(),
                sq: vec![0.0; width],
            });
            if m.sum.len() != width {
                user_bail!("{}: column '{column}' changes its width within the file", chunk.source);
            }
            for row in values.chunks(width) {
                for (j, &v) in row.iter().enumerate().filter(|(_, v)| !v.is_nan()) {
                    m.sum[j] += v as f64;
                    m.count[j] += 1;
                }
            }
        }
        for (column, counts) in self.f.categorical.keys().zip(&mut self.counts) {
            for_each_key(chunk, column, |k| {
                let Some(k) = k else { return };
                match counts.get_mut(k) {
                    Some(count) => *count += 1,
                    None => drop(counts.insert(k.to_string(), 1)),
                }
            })?;
        }
        Ok(())
    }

    /// Whether [`Fitter::finish`] needs a second pass through [`Fitter::add_deviations`].
    pub fn needs_deviations(&self) -> bool {
        !self.f.numeric.is_empty()
    }

    /// Second pass: the next chunk's squared deviations from the means of the first.
    pub fn add_deviations(&mut self, chunk: &RawTable) -> anyhow::Result<()> {
        for (column, m) in self.f.numeric.iter().zip(&mut self.numeric) {
            let m = m.as_mut().expect("the first pass saw every column");
            if m.mean.is_empty() {
                m.mean = m.sum.iter().zip(&m.count).map(|(s, &c)| if c > 0 { s / c as f64 } else { 0.0 }).collect();
            }
            let (values, width) = numeric(chunk, column)?;
            for row in values.chunks(width) {
                for (j, &v) in row.iter().enumerate().filter(|(_, v)| !v.is_nan()) {
                    m.sq[j] += (v as f64 - m.mean[j]).powi(2);
                }
            }
        }
        Ok(())
    }

    pub fn finish(self) -> anyhow::Result<FittedTable> {
        let mut numeric_fits = Vec::new();
        for (column, m) in self.f.numeric.iter().zip(self.numeric) {
            let m = m.expect("the first pass saw every column");
            if m.count.iter().all(|&c| c == 0) {
                user_bail!("{}: numeric column '{column}' has no value in any row", self.source);
            }
            // Population std (numpy's and scikit-learn's StandardScaler's); a constant entry
            // keeps its scale (std 1) rather than dividing by zero.
            let std =
                m.sq.iter()
                    .zip(&m.count)
                    .map(|(s, &c)| if c > 0 { (s / c as f64).sqrt() } else { 0.0 })
                    .map(|s| if s > 1e-12 { s } else { 1.0 })
                    .collect();
            let indicator = m.count.iter().any(|&c| (c as usize) < self.rows);
            numeric_fits.push(FittedNumeric { column: column.clone(), mean: m.mean, std, indicator });
        }
        let mut categorical = Vec::new();
        for ((column, spec), counts) in self.f.categorical.iter().zip(self.counts) {
            if counts.len() < 2 {
                user_bail!(
                    "{}: categorical column '{column}' has {} in the training split: nothing to learn from it; drop it",
                    self.source,
                    if counts.is_empty() { "no value" } else { "only one value" }
                );
            }
            let mut by_count: Vec<(String, u64)> = counts.into_iter().collect();
            by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            by_count.truncate(spec.max_vocab.unwrap_or(usize::MAX));
            let vocab = by_count.into_iter().map(|(k, _)| k).collect();
            categorical.push(FittedCategorical { column: column.clone(), dim: spec.dim, vocab });
        }
        Ok(FittedTable { numeric: numeric_fits, categorical, stream: None })
    }
}

/// A split's rows as float `[N, raw_width]`: dense entries, then vocabulary indices (exact in
/// f32 below 2^24 values).
pub fn features(t: &RawTable, fitted: &FittedTable) -> anyhow::Result<Vec<f32>> {
    let width = fitted.raw_width();
    let mut out = vec![0f32; t.rows * width];
    let mut at = 0;
    let mut indicators = Vec::new();
    for n in &fitted.numeric {
        let (values, w) = numeric(t, &n.column)?;
        if w != n.mean.len() {
            user_bail!(
                "{}: column '{}' has {w} values per row; the training split had {}",
                t.source,
                n.column,
                n.mean.len()
            );
        }
        for (r, row) in values.chunks(w).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                out[r * width + at + j] = if v.is_nan() { 0.0 } else { ((v as f64 - n.mean[j]) / n.std[j]) as f32 };
            }
        }
        if n.indicator {
            indicators.push((values, w));
        }
        at += w;
    }
    for (values, w) in indicators {
        for (r, row) in values.chunks(w).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                out[r * width + at + j] = v.is_nan() as u8 as f32;
            }
        }
        at += w;
    }
    for c in &fitted.categorical {
        let index: HashMap<&str, usize> = c.vocab.iter().enumerate().map(|(i, v)| (v.as_str(), i + 1)).collect();
        let mut r = 0;
        for_each_key(t, &c.column, |k| {
            out[r * width + at] = k.and_then(|k| index.get(k)).copied().unwrap_or(0) as f32;
            r += 1;
        })?;
        at += 1;
    }
    Ok(out)
}

/// A task's target column: classes (int64, `0..classes`), 0/1 labels (int64) or values
/// (float). A missing label, a label that is no class, or a binary label other than 0/1 is an
/// error naming the row. Classes 0 are inferred as the largest label + 1.
pub fn target(t: &RawTable, w: &Wanted) -> anyhow::Result<(tch::Tensor, i64)> {
    let (values, width) = numeric(t, &w.target)?;
    if width != 1 {
        user_bail!("{}: target column '{}' has {width} values per row; a target has one", t.source, w.target);
    }
    let bad = |row: usize, what: String| -> anyhow::Error {
        crate::user_error!("{}: column '{}', row {}: {what}", t.source, w.target, t.row_number(row))
    };
    if let Some(row) = values.iter().position(|v| v.is_nan()) {
        return Err(bad(row, "the label is missing".into()));
    }
    match w.shape {
        TargetShape::Value => Ok((tch::Tensor::from_slice(&values), 0)),
        TargetShape::Binary => {
            if let Some(row) = values.iter().position(|&v| v != 0.0 && v != 1.0) {
                return Err(bad(row, format!("{} is not a binary label (0 or 1)", values[row])));
            }
            let labels: Vec<i64> = values.iter().map(|&v| v as i64).collect();
            Ok((tch::Tensor::from_slice(&labels), 2))
        }
        _ => {
            if let Some(row) = values.iter().position(|&v| v < 0.0 || v.fract() != 0.0) {
                return Err(bad(row, format!("{} is not a class (0, 1, 2, …)", values[row])));
            }
            let labels: Vec<i64> = values.iter().map(|&v| v as i64).collect();
            let classes = if w.classes > 0 { w.classes } else { labels.iter().max().map_or(0, |m| m + 1).max(2) };
            if let Some(row) = labels.iter().position(|&l| l >= classes) {
                return Err(bad(row, format!("label {} is outside 0..{classes}", labels[row])));
            }
            Ok((tch::Tensor::from_slice(&labels), classes))
        }
    }
}
