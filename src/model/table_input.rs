//! The table dataset's input layer: one embedding table per categorical column
//! (`embeddings.<column>.weight`, `[vocabulary + 1, dim]`, row 0 the out-of-vocabulary
//! value), shared by every task. It turns a row's feature vector (dense entries, then one
//! vocabulary index per categorical column, see `data::table`) into the dense entries
//! followed by the columns' embeddings: what the backbone reads.
use crate::config::FittedTable;
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// Prefix of the embedding tables' variables (shared parameters: no task owns them).
pub const EMBEDDINGS: &str = "embeddings";

#[derive(Debug)]
pub struct TableInput {
    dense: i64,
    tables: Vec<Tensor>,
}

impl TableInput {
    /// `None` when the table has no categorical column (the row goes to the backbone as it is).
    pub fn new(root: &Path, fitted: &FittedTable) -> Option<Self> {
        if fitted.categorical.is_empty() {
            return None;
        }
        let p = root / EMBEDDINGS;
        // nn.Embedding's initialisation: N(0, 1).
        let init = Init::Randn { mean: 0.0, stdev: 1.0 };
        let tables = fitted
            .categorical
            .iter()
            .map(|c| (&p / c.column.as_str()).var("weight", &[c.vocab.len() as i64 + 1, c.dim], init))
            .collect();
        Some(Self { dense: fitted.dense_width() as i64, tables })
    }

    /// Width of what the backbone reads: the dense entries and every embedding.
    pub fn out_width(fitted: &FittedTable) -> i64 {
        fitted.dense_width() as i64 + fitted.categorical.iter().map(|c| c.dim).sum::<i64>()
    }

    /// `x` float `[N, F, 1, 1]` → `[N, out_width, 1, 1]`. No size is read from `x`: a traced
    /// export keeps its batch dimension free.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let flat = x.flatten(1, -1);
        let mut parts = vec![flat.narrow(1, 0, self.dense)];
        for (i, table) in self.tables.iter().enumerate() {
            let index = flat.select(1, self.dense + i as i64).to_kind(Kind::Int64);
            parts.push(Tensor::embedding(table, &index, -1, false, false));
        }
        Tensor::cat(&parts, 1).unsqueeze(-1).unsqueeze(-1)
    }
}
