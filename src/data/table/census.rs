//! `census_income`: the UCI Census-Income (KDD) tables, the MMoE paper's benchmark (Ma et al.,
//! KDD 2018): `income_50k` (income over $50,000) and `never_married` (marital status "Never
//! married") as two binary targets, every other column a feature (the instance weight left
//! out, as the paper does). Read from the published gzipped files as they are
//! (`census-income.data.gz` for train, `census-income.test.gz` for val: comma-separated, no
//! header, `?` for missing), then mapped as any table (see [`super`]).
use super::read::{Cell, RawTable, Values};
use super::{Rows, Table};
use crate::config::{CategoricalFeature, DataConfig, TableFeatures};
use crate::data::{Dataset, Loaded, TargetInfo, TargetShape, Wanted};
use crate::user_error;
use std::collections::BTreeMap;
use std::path::Path;

pub struct CensusIncome;

/// The 42 columns of census-income.names, in file order (the names the MMoE reproductions use).
pub const COLUMNS: [&str; 42] = [
    "age",
    "class_worker",
    "det_ind_code",
    "det_occ_code",
    "education",
    "wage_per_hour",
    "hs_college",
    "marital_stat",
    "major_ind_code",
    "major_occ_code",
    "race",
    "hisp_origin",
    "sex",
    "union_member",
    "unemp_reason",
    "full_or_part_emp",
    "capital_gains",
    "capital_losses",
    "stock_dividends",
    "tax_filer_stat",
    "region_prev_res",
    "state_prev_res",
    "det_hh_fam_stat",
    "det_hh_summ",
    "instance_weight",
    "mig_chg_msa",
    "mig_chg_reg",
    "mig_move_reg",
    "mig_same",
    "mig_prev_sunbelt",
    "num_emp",
    "fam_under_18",
    "country_father",
    "country_mother",
    "country_self",
    "citizenship",
    "own_or_self",
    "vet_question",
    "vet_benefits",
    "weeks_worked",
    "year",
    "income_50k",
];

/// The continuous columns (census-income.names); the others are categorical.
const NUMERIC: [&str; 7] =
    ["age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp", "weeks_worked"];

/// Not features: the sample weight, and the two columns the targets come from.
const NOT_FEATURES: [&str; 3] = ["instance_weight", "marital_stat", "income_50k"];

pub const INCOME: &str = "income_50k";
pub const NEVER_MARRIED: &str = "never_married";
pub const TRAIN_FILE: &str = "census-income.data.gz";
pub const VAL_FILE: &str = "census-income.test.gz";

/// The features when `data.features` is unset: the numeric columns, and every categorical one
/// with an embedding of 4.
pub fn default_features() -> TableFeatures {
    let categorical = COLUMNS
        .iter()
        .filter(|c| !NUMERIC.contains(c) && !NOT_FEATURES.contains(c))
        .map(|c| (c.to_string(), CategoricalFeature { dim: 4, max_vocab: None }))
        .collect();
    TableFeatures { numeric: NUMERIC.map(String::from).to_vec(), categorical, fitted: None }
}

/// One gzipped split, its `columns` (and the two targets) kept.
fn read_file(path: &Path, columns: &[String]) -> anyhow::Result<RawTable> {
    let source = path.display().to_string();
    crate::files::regular_len(path)?;
    let file = std::fs::File::open(path).map_err(|e| user_error!("{source}: cannot read: {e}"))?;
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(flate2::read::GzDecoder::new(file));
    let at = |name: &str| COLUMNS.iter().position(|c| *c == name);
    let mut cells: BTreeMap<String, Vec<Cell>> = BTreeMap::new();
    for c in columns {
        if at(c).is_none() && c != NEVER_MARRIED {
            return Err(user_error!(
                "{source}: no column '{c}' (Census-Income has: {}, {NEVER_MARRIED})",
                COLUMNS.join(", ")
            ));
        }
        cells.insert(c.clone(), Vec::new());
    }
    let mut rows = 0;
    for (row, record) in reader.records().enumerate() {
        let record = record.map_err(|e| user_error!("{source}: not the Census-Income format: {e}"))?;
        if record.len() != COLUMNS.len() {
            return Err(user_error!(
                "{source}: row {}: {} fields, Census-Income has {}",
                row + 1,
                record.len(),
                COLUMNS.len()
            ));
        }
        for (name, col) in cells.iter_mut() {
            let cell = match name.as_str() {
                INCOME => Cell::Num(record[41].trim().starts_with("50000+") as u8 as f64),
                NEVER_MARRIED => Cell::Num((record[7].trim() == "Never married") as u8 as f64),
                c => match record[at(c).expect("checked")].trim() {
                    "?" | "" => Cell::Missing,
                    text => Cell::Text(text.to_string()),
                },
            };
            col.push(cell);
        }
        rows += 1;
    }
    let mut all_columns: Vec<String> = COLUMNS.map(String::from).to_vec();
    all_columns.push(NEVER_MARRIED.into());
    let columns = cells.into_iter().map(|(k, v)| (k, Values::Cells(v))).collect();
    if rows == 0 {
        crate::user_bail!("{source}: the table has no rows");
    }
    Ok(RawTable { source, first_row: 0, rows, all_columns, columns })
}

impl Rows for CensusIncome {
    fn read(&self, d: &DataConfig, val: bool, columns: &[String]) -> anyhow::Result<RawTable> {
        let root = crate::data::root_dir(d);
        let (file, limit) = if val { (VAL_FILE, d.val_size) } else { (TRAIN_FILE, d.train_size) };
        Ok(read_file(&root.join(file), columns)?.first_rows(limit))
    }
}

impl Dataset for CensusIncome {
    fn name(&self) -> &'static str {
        "census_income"
    }

    fn targets(&self, _d: &DataConfig) -> Option<Vec<TargetInfo>> {
        let binary = |name| TargetInfo { name, shape: TargetShape::Binary, classes: 0 };
        Some(vec![binary(INCOME), binary(NEVER_MARRIED)])
    }

    fn normalization(&self) -> ([f64; 3], [f64; 3]) {
        ([0.0; 3], [1.0; 3])
    }

    fn check(&self, d: &DataConfig) -> Result<(), String> {
        if d.train.is_some() || d.val.is_some() {
            return Err(
                "data.train: census_income reads its published files from data.root; remove data.train / data.val"
                    .into(),
            );
        }
        match &d.features {
            Some(f) => super::check_features(f),
            None => Ok(()),
        }
    }

    fn prepare(&self, d: &mut DataConfig) -> anyhow::Result<()> {
        crate::data::fetch::ensure(d, &crate::data::root_dir(d))?;
        if d.features.is_none() {
            d.features = Some(default_features());
        }
        let _ = Table::features(d)?;
        super::prepare(self, d)
    }

    fn load(&self, d: &DataConfig, _seed: u64, wanted: &[Wanted]) -> anyhow::Result<Loaded> {
        super::load(self, d, wanted)
    }
}
