//! Reading a split of the `table` dataset into named columns: CSV with a header (the `csv`
//! crate), Parquet (row group by row group), `.npz` archives and `.npy` arrays. Only the
//! columns the config names are kept; a missing one is an error naming the file.
use super::super::npy;
use crate::config::TableFile;
use crate::user_error;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One value of a CSV or Parquet cell before the config says what the column is.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Missing,
    Num(f64),
    Text(String),
}

/// A column's values: cells (CSV, Parquet), or a numeric array of `width` entries per row
/// (NaN: missing) from `.npy`/`.npz`.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Cells(Vec<Cell>),
    Array { data: Vec<f32>, width: usize },
}

/// The wanted columns of one split (or of one chunk of it), by name.
#[derive(Debug)]
pub struct RawTable {
    /// The file (or the files, for arrays) as errors name them.
    pub source: String,
    /// Data rows of the file before this table's first one (0 for a whole split), so errors
    /// about a chunk name the row as the file counts it.
    pub first_row: usize,
    pub rows: usize,
    /// Every column the file has, in its order (to compare splits).
    pub all_columns: Vec<String>,
    pub columns: BTreeMap<String, Values>,
}

impl RawTable {
    pub fn values(&self, column: &str) -> &Values {
        &self.columns[column]
    }

    /// The file's row number (counted from 1) of this table's row `row` (counted from 0).
    pub fn row_number(&self, row: usize) -> usize {
        self.first_row + row + 1
    }

    /// Its first `limit` rows (0: all of them).
    pub fn first_rows(mut self, limit: usize) -> Self {
        if limit > 0 && limit < self.rows {
            self.rows = limit;
            for v in self.columns.values_mut() {
                match v {
                    Values::Cells(c) => c.truncate(limit),
                    Values::Array { data, width } => data.truncate(limit * *width),
                }
            }
        }
        self
    }
}

/// Strings a CSV cell leaves empty, or writes for "no value", read as missing.
pub const MISSING_TEXT: &[&str] = &["", "NA", "NaN", "nan", "null", "NULL", "?"];

/// Reads the `wanted` columns of `file` (paths already absolute).
pub fn read(file: &TableFile, wanted: &[String]) -> anyhow::Result<RawTable> {
    let table = match file {
        TableFile::File(path) => {
            let path = PathBuf::from(path);
            crate::files::regular_len(&path)?;
            match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
                "csv" => read_csv(&path, wanted)?,
                "parquet" | "pq" => read_parquet(&path, wanted)?,
                "npz" => read_npz(&path, wanted)?,
                other => crate::user_bail!(
                    "{}: unknown table format '.{other}' (expected .csv, .parquet, .npz, or a mapping of column to .npy file)",
                    path.display()
                ),
            }
        }
        TableFile::Arrays(files) => read_arrays(files, wanted)?,
    };
    if table.rows == 0 {
        crate::user_bail!("{}: the table has no rows", table.source);
    }
    Ok(table)
}

pub(super) fn missing_column(source: &str, column: &str, all: &[String]) -> anyhow::Error {
    let shown: Vec<&str> = all.iter().take(12).map(String::as_str).collect();
    let more = if all.len() > 12 { format!(", … ({} in all)", all.len()) } else { String::new() };
    user_error!("{source}: no column '{column}' (it has: {}{more})", shown.join(", "))
}

fn read_csv(path: &Path, wanted: &[String]) -> anyhow::Result<RawTable> {
    let source = path.display().to_string();
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_path(path).map_err(|e| bad_csv(&source, e))?;
    let header = csv_header(&source, &mut reader)?;
    csv_rows(source, header, wanted, reader.records(), 0, usize::MAX)
}

pub(super) fn bad_csv(source: &str, e: csv::Error) -> anyhow::Error {
    user_error!("{source}: not a readable CSV file: {e}")
}

/// The column names of a CSV file's header line (trimmed); an empty file is an error.
pub(super) fn csv_header<R: std::io::Read>(source: &str, reader: &mut csv::Reader<R>) -> anyhow::Result<Vec<String>> {
    let header: Vec<String> =
        reader.headers().map_err(|e| bad_csv(source, e))?.iter().map(|h| h.trim().to_string()).collect();
    if header.is_empty() || header.iter().all(String::is_empty) {
        crate::user_bail!("{source}: the file is empty (a CSV table starts with a header line)");
    }
    Ok(header)
}

/// At most `limit` records as the `wanted` columns of a table whose first row is the file's
/// data row `first_row` (counted from 0).
pub(super) fn csv_rows(
    source: String,
    header: Vec<String>,
    wanted: &[String],
    records: impl Iterator<Item = csv::Result<csv::StringRecord>>,
    first_row: usize,
    limit: usize,
) -> anyhow::Result<RawTable> {
    let mut at = Vec::new();
    for w in wanted {
        at.push(header.iter().position(|h| h == w).ok_or_else(|| missing_column(&source, w, &header))?);
    }
    let mut cells: Vec<Vec<Cell>> = wanted.iter().map(|_| Vec::new()).collect();
    let mut rows = 0;
    for record in records.take(limit) {
        let record = record.map_err(|e| bad_csv(&source, e))?;
        for (col, &i) in cells.iter_mut().zip(&at) {
            let text = record.get(i).unwrap_or("").trim();
            col.push(if MISSING_TEXT.contains(&text) { Cell::Missing } else { Cell::Text(text.to_string()) });
        }
        rows += 1;
    }
    let columns = wanted.iter().cloned().zip(cells.into_iter().map(Values::Cells)).collect();
    Ok(RawTable { source, first_row, rows, all_columns: header, columns })
}

fn read_parquet(path: &Path, wanted: &[String]) -> anyhow::Result<RawTable> {
    use parquet::file::reader::FileReader;
    let (source, reader) = open_parquet(path)?;
    let header = parquet_header(&reader);
    let mut table = parquet_table(source, header, wanted, 0)?;
    if super::parquet_columns::read(&reader, wanted, &mut table)? {
        return Ok(table);
    }
    let projection = parquet_projection(&reader, wanted).map_err(|e| bad_parquet(&table.source, e))?;
    // Row group by row group: only one group's pages are decoded at a time.
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(|e| bad_parquet(&table.source, e))?;
        let rows = group.get_row_iter(projection.clone()).map_err(|e| bad_parquet(&table.source, e))?;
        add_parquet_rows(&mut table, rows)?;
    }
    Ok(table)
}

pub(super) type ParquetReader = parquet::file::reader::SerializedFileReader<std::fs::File>;

pub(super) fn bad_parquet(source: &str, e: parquet::errors::ParquetError) -> anyhow::Error {
    user_error!("{source}: not a readable Parquet file: {e}")
}

pub(super) fn open_parquet(path: &Path) -> anyhow::Result<(String, ParquetReader)> {
    let source = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| user_error!("{source}: cannot read: {e}"))?;
    let reader = ParquetReader::new(file).map_err(|e| bad_parquet(&source, e))?;
    Ok((source, reader))
}

/// The column names of a Parquet file's schema.
pub(super) fn parquet_header(reader: &ParquetReader) -> Vec<String> {
    use parquet::file::reader::FileReader;
    let schema = reader.metadata().file_metadata().schema_descr();
    schema.root_schema().get_fields().iter().map(|f| f.name().to_string()).collect()
}

/// The file's schema cut to the `wanted` columns (each checked to exist by [`parquet_table`]):
/// the record reader then decodes only their pages, not every column of a wide file. None when
/// nothing is wanted: rows are still counted, and an empty projection would yield none.
pub(super) fn parquet_projection(
    reader: &ParquetReader,
    wanted: &[String],
) -> parquet::errors::Result<Option<parquet::schema::types::Type>> {
    use parquet::file::reader::FileReader;
    if wanted.is_empty() {
        return Ok(None);
    }
    let schema = reader.metadata().file_metadata().schema_descr();
    let fields = schema.root_schema().get_fields().iter().filter(|f| wanted.iter().any(|w| w == f.name()));
    parquet::schema::types::Type::group_type_builder(schema.root_schema().name())
        .with_fields(fields.cloned().collect())
        .build()
        .map(Some)
}

/// An empty table of the `wanted` columns (each checked to exist), to add rows to.
pub(super) fn parquet_table(
    source: String,
    header: Vec<String>,
    wanted: &[String],
    first_row: usize,
) -> anyhow::Result<RawTable> {
    for w in wanted {
        if !header.contains(w) {
            return Err(missing_column(&source, w, &header));
        }
    }
    let columns = wanted.iter().map(|w| (w.clone(), Values::Cells(Vec::new()))).collect();
    Ok(RawTable { source, first_row, rows: 0, all_columns: header, columns })
}

/// Appends `rows` (of a Parquet file's record reader) to `table`.
pub(super) fn add_parquet_rows(
    table: &mut RawTable,
    rows: impl Iterator<Item = parquet::errors::Result<parquet::record::Row>>,
) -> anyhow::Result<()> {
    for row in rows {
        for (name, field) in row.map_err(|e| bad_parquet(&table.source, e))?.get_column_iter() {
            if let Some(Values::Cells(col)) = table.columns.get_mut(name.as_str()) {
                col.push(parquet_cell(field));
            }
        }
        table.rows += 1;
    }
    Ok(())
}

fn parquet_cell(field: &parquet::record::Field) -> Cell {
    use parquet::record::Field as F;
    match field {
        F::Null => Cell::Missing,
        F::Bool(b) => Cell::Num(*b as u8 as f64),
        F::Byte(v) => Cell::Num(*v as f64),
        F::Short(v) => Cell::Num(*v as f64),
        F::Int(v) => Cell::Num(*v as f64),
        F::Long(v) => Cell::Num(*v as f64),
        F::UByte(v) => Cell::Num(*v as f64),
        F::UShort(v) => Cell::Num(*v as f64),
        F::UInt(v) => Cell::Num(*v as f64),
        F::ULong(v) => Cell::Num(*v as f64),
        F::Float16(v) => Cell::Num(f64::from(*v)),
        F::Float(v) if v.is_nan() => Cell::Missing,
        F::Float(v) => Cell::Num(*v as f64),
        F::Double(v) if v.is_nan() => Cell::Missing,
        F::Double(v) => Cell::Num(*v),
        F::Str(s) => Cell::Text(s.clone()),
        other => Cell::Text(other.to_string()),
    }
}

/// `.npz`: a zip of `.npy` arrays, each a column named by its key (1-d: one value per row,
/// 2-d: `width` values per row).
fn read_npz(path: &Path, wanted: &[String]) -> anyhow::Result<RawTable> {
    use std::io::Read;
    let source = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| user_error!("{source}: cannot read: {e}"))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| user_error!("{source}: not a .npz archive: {e}"))?;
    let header: Vec<String> =
        zip.file_names().filter_map(|n| n.strip_suffix(".npy")).map(str::to_string).collect::<Vec<_>>();
    let mut header = header;
    header.sort();
    let mut arrays = BTreeMap::new();
    for w in wanted {
        let mut entry = zip.by_name(&format!("{w}.npy")).map_err(|_| missing_column(&source, w, &header))?;
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(|e| user_error!("{source}: cannot read '{w}.npy': {e}"))?;
        let array = npy::parse(&bytes).map_err(|e| user_error!("{source}: array '{w}': {e}"))?;
        arrays.insert(w.clone(), array);
    }
    from_arrays(source, header, arrays)
}

/// A mapping of column name to `.npy` file.
fn read_arrays(files: &BTreeMap<String, String>, wanted: &[String]) -> anyhow::Result<RawTable> {
    let header: Vec<String> = files.keys().cloned().collect();
    let source = files.values().map(String::as_str).collect::<Vec<_>>().join(", ");
    let mut arrays = BTreeMap::new();
    for w in wanted {
        let path = files.get(w).ok_or_else(|| missing_column(&source, w, &header))?;
        arrays.insert(w.clone(), npy::read(Path::new(path))?);
    }
    from_arrays(source, header, arrays)
}

fn from_arrays(source: String, header: Vec<String>, arrays: BTreeMap<String, npy::Array>) -> anyhow::Result<RawTable> {
    let mut rows = None;
    let mut columns = BTreeMap::new();
    for (name, a) in arrays {
        let width = match a.shape.as_slice() {
            [_] => 1,
            [_, w] => *w,
            s => crate::user_bail!("{source}: array '{name}' has shape {s:?}; a column is 1-d (N) or 2-d (N × width)"),
        };
        let n = a.shape.first().copied().unwrap_or(0);
        match rows {
            Some(r) if r != n => {
                crate::user_bail!("{source}: array '{name}' has {n} rows, the others {r}")
            }
            _ => rows = Some(n),
        }
        columns.insert(name, Values::Array { data: a.data, width });
    }
    Ok(RawTable { source, first_row: 0, rows: rows.unwrap_or(0), all_columns: header, columns })
}
