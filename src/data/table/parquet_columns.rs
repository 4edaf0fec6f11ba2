//! Reading the wanted columns of a Parquet file a column chunk at a time (the column reader:
//! a batch of values per call) for flat columns of the common types, into the same cells the
//! record reader gives.
//!
//! Why: the record reader builds a row of named fields at a time (a name, a field and their
//! allocations per cell); loading the 1 M rows × 23 columns of the speed benchmark's table
//! spent most of its 9 s there. A column of another type (dates, decimals, timestamps as
//! INT96, fixed-length bytes, nested columns) leaves the whole read to the record reader, whose
//! conversions these follow (`parquet::record::Field::convert_*`).
use super::read::{bad_parquet, Cell, ParquetReader, RawTable, Values};
use parquet::basic::{ConvertedType, Type as PhysicalType};
use parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use parquet::data_type::DataType;
use parquet::file::reader::FileReader;
use parquet::schema::types::ColumnDescriptor;

/// How a column's stored values become cells.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Conversion {
    Bool,
    /// INT32 read as a signed integer of this many bits (INT_8, INT_16, INT_32 or none).
    Signed(u32),
    /// INT32 read as an unsigned integer of this many bits (UINT_8, UINT_16, UINT_32).
    Unsigned(u32),
    Int64,
    UInt64,
    /// FLOAT or DOUBLE: NaN is a missing value.
    Float,
    /// BYTE_ARRAY holding UTF-8 text (UTF8, ENUM, JSON).
    Text,
}

/// The conversion of a top-level, non-repeated column the record reader would turn into a
/// number or a string, or None (left to the record reader).
fn conversion(c: &ColumnDescriptor) -> Option<Conversion> {
    if c.max_rep_level() > 0 || c.max_def_level() > 1 || c.path().parts().len() != 1 {
        return None;
    }
    use ConvertedType as C;
    Some(match (c.physical_type(), c.converted_type()) {
        (PhysicalType::BOOLEAN, _) => Conversion::Bool,
        (PhysicalType::INT32, C::NONE | C::INT_32) => Conversion::Signed(32),
        (PhysicalType::INT32, C::INT_16) => Conversion::Signed(16),
        (PhysicalType::INT32, C::INT_8) => Conversion::Signed(8),
        (PhysicalType::INT32, C::UINT_32) => Conversion::Unsigned(32),
        (PhysicalType::INT32, C::UINT_16) => Conversion::Unsigned(16),
        (PhysicalType::INT32, C::UINT_8) => Conversion::Unsigned(8),
        (PhysicalType::INT64, C::NONE | C::INT_64) => Conversion::Int64,
        (PhysicalType::INT64, C::UINT_64) => Conversion::UInt64,
        (PhysicalType::FLOAT | PhysicalType::DOUBLE, _) => Conversion::Float,
        (PhysicalType::BYTE_ARRAY, C::UTF8 | C::ENUM | C::JSON) => Conversion::Text,
        _ => return None,
    })
}

fn number(v: f64) -> Cell {
    if v.is_nan() {
        Cell::Missing
    } else {
        Cell::Num(v)
    }
}

/// A wanted column, where it is in the file's schema and how its values convert.
struct Planned {
    name: String,
    index: usize,
    conversion: Conversion,
    max_def: i16,
}

/// How the `wanted` columns are read, or None when one of them is of a type this reader
/// leaves to the record reader.
fn plan(reader: &ParquetReader, wanted: &[String]) -> Option<Vec<Planned>> {
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    wanted
        .iter()
        .map(|name| {
            let index = (0..schema.num_columns()).find(|&i| schema.column(i).path().parts() == [name.as_str()])?;
            let column = schema.column(index);
            Some(Planned {
                name: name.clone(),
                index,
                conversion: conversion(&column)?,
                max_def: column.max_def_level(),
            })
        })
        .collect()
}

/// Appends every row of the `wanted` columns to `table` (made by `read::parquet_table`, no
/// rows yet) and returns true; or returns false, `table` untouched, when a wanted column is of
/// a type this reader leaves to the record reader.
pub(super) fn read(reader: &ParquetReader, wanted: &[String], table: &mut RawTable) -> anyhow::Result<bool> {
    for g in 0..reader.num_row_groups() {
        let Some(mut group) = GroupColumns::open(reader, g, wanted, &table.source)? else {
            return Ok(false);
        };
        let rows = group.rows;
        group.read(rows, table)?;
    }
    Ok(true)
}

/// The wanted columns of one row group, open for reading their rows in order.
pub(super) struct GroupColumns {
    /// Rows in the group.
    pub rows: usize,
    columns: Vec<(Planned, ColumnReader)>,
}

impl GroupColumns {
    /// Row group `g`'s `wanted` columns from their first row; None when one of them is of a
    /// type this reader leaves to the record reader.
    pub fn open(reader: &ParquetReader, g: usize, wanted: &[String], source: &str) -> anyhow::Result<Option<Self>> {
        let Some(plan) = plan(reader, wanted) else { return Ok(None) };
        let group = reader.get_row_group(g).map_err(|e| bad_parquet(source, e))?;
        let rows = group.metadata().num_rows().max(0) as usize;
        let columns = plan
            .into_iter()
            .map(|p| {
                let reader = group.get_column_reader(p.index).map_err(|e| bad_parquet(source, e))?;
                Ok((p, reader))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Some(Self { rows, columns }))
    }

    /// Passes over the next `rows` rows.
    pub fn skip(&mut self, rows: usize, source: &str) -> anyhow::Result<()> {
        for (_, reader) in &mut self.columns {
            let skipped = match reader {
                ColumnReader::BoolColumnReader(r) => r.skip_records(rows),
                ColumnReader::Int32ColumnReader(r) => r.skip_records(rows),
                ColumnReader::Int64ColumnReader(r) => r.skip_records(rows),
                ColumnReader::FloatColumnReader(r) => r.skip_records(rows),
                ColumnReader::DoubleColumnReader(r) => r.skip_records(rows),
                ColumnReader::ByteArrayColumnReader(r) => r.skip_records(rows),
                _ => unreachable!("conversion() admits only the physical types matched here"),
            }
            .map_err(|e| bad_parquet(source, e))?;
            if skipped != rows {
                crate::user_bail!("{source}: a column chunk ends before its row group's {} rows", self.rows);
            }
        }
        Ok(())
    }

    /// Appends the next `rows` rows of every column to `table` (which has a column of cells
    /// for each).
    pub fn read(&mut self, rows: usize, table: &mut RawTable) -> anyhow::Result<()> {
        let source = table.source.clone();
        for (p, reader) in &mut self.columns {
            let Some(Values::Cells(out)) = table.columns.get_mut(&p.name) else {
                unreachable!("parquet_table made a column of cells for every wanted name")
            };
            out.reserve(rows);
            let chunk = Chunk { rows, group_rows: self.rows, max_def: p.max_def, source: &source };
            match (reader, p.conversion) {
                (ColumnReader::BoolColumnReader(r), _) => chunk.read(r, out, |v| Cell::Num(*v as u8 as f64))?,
                (ColumnReader::Int32ColumnReader(r), Conversion::Signed(bits)) => {
                    chunk.read(r, out, |&v| Cell::Num(((v << (32 - bits)) >> (32 - bits)) as f64))?
                }
                (ColumnReader::Int32ColumnReader(r), Conversion::Unsigned(bits)) => {
                    let mask = u32::MAX >> (32 - bits);
                    chunk.read(r, out, |&v| Cell::Num((v as u32 & mask) as f64))?
                }
                (ColumnReader::Int64ColumnReader(r), Conversion::UInt64) => {
                    chunk.read(r, out, |&v| Cell::Num(v as u64 as f64))?
                }
                (ColumnReader::Int64ColumnReader(r), _) => chunk.read(r, out, |&v| Cell::Num(v as f64))?,
                (ColumnReader::FloatColumnReader(r), _) => chunk.read(r, out, |&v| number(v as f64))?,
                (ColumnReader::DoubleColumnReader(r), _) => chunk.read(r, out, |&v| number(v))?,
                (ColumnReader::ByteArrayColumnReader(r), _) => {
                    let mut invalid = None;
                    chunk.read(r, out, |v| match std::str::from_utf8(v.data()) {
                        Ok(s) => Cell::Text(s.to_string()),
                        Err(e) => {
                            invalid.get_or_insert(e);
                            Cell::Missing
                        }
                    })?;
                    if let Some(e) = invalid {
                        crate::user_bail!("{source}: column '{}' holds text that is not UTF-8: {e}", p.name);
                    }
                }
                _ => unreachable!("conversion() admits only the physical types matched here"),
            }
        }
        table.rows += rows;
        Ok(())
    }
}

/// The next `rows` values of one column chunk (of a row group of `group_rows`), with
/// definition levels when `max_def` is 1.
struct Chunk<'a> {
    rows: usize,
    group_rows: usize,
    max_def: i16,
    source: &'a str,
}

impl Chunk<'_> {
    /// Appends the cells to `out`: `cell` of each stored value, Missing where the definition
    /// level says there is none.
    fn read<T: DataType>(
        &self,
        reader: &mut ColumnReaderImpl<T>,
        out: &mut Vec<Cell>,
        mut cell: impl FnMut(&T::T) -> Cell,
    ) -> anyhow::Result<()> {
        let (mut defs, mut values) = (Vec::new(), Vec::new());
        let mut done = 0;
        while done < self.rows {
            defs.clear();
            values.clear();
            let levels = (self.max_def > 0).then_some(&mut defs);
            let (records, _, _) = reader
                .read_records(self.rows - done, levels, None, &mut values)
                .map_err(|e| bad_parquet(self.source, e))?;
            if records == 0 {
                crate::user_bail!(
                    "{}: a column chunk ends before its row group's {} rows",
                    self.source,
                    self.group_rows
                );
            }
            if self.max_def == 0 {
                out.extend(values.iter().map(&mut cell));
            } else {
                let mut stored = values.iter();
                for &d in &defs {
                    out.push(match (d == self.max_def).then(|| stored.next()).flatten() {
                        Some(v) => cell(v),
                        None => Cell::Missing,
                    });
                }
            }
            done += records;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::read::{self, add_parquet_rows, open_parquet, parquet_header, parquet_table};
    use super::*;
    use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, FloatType, Int32Type, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;

    const SCHEMA: &str = "message schema {
        REQUIRED BOOLEAN b;
        OPTIONAL INT32 i8 (INT_8);
        OPTIONAL INT32 u16 (UINT_16);
        REQUIRED INT32 u32 (UINT_32);
        OPTIONAL INT32 plain32;
        OPTIONAL INT64 i64;
        REQUIRED INT64 u64 (UINT_64);
        OPTIONAL FLOAT f;
        OPTIONAL DOUBLE d;
        OPTIONAL BYTE_ARRAY s (UTF8);
        OPTIONAL INT32 day (DATE);
    }";

    /// A file of `SCHEMA` in two row groups of 5 and 3 rows, with missing values and values at
    /// the edges of each converted type (stored bits that a narrower type wraps).
    fn file(dir: &std::path::Path) -> std::path::PathBuf {
        let schema = Arc::new(parquet::schema::parser::parse_message_type(SCHEMA).unwrap());
        let path = dir.join("types.parquet");
        let props = Arc::new(WriterProperties::builder().build());
        let mut writer = SerializedFileWriter::new(std::fs::File::create(&path).unwrap(), schema, props).unwrap();
        for (group, n) in [(0, 5usize), (1, 3)] {
            let defs: Vec<i16> = (0..n).map(|r| ((r + group) % 3 != 1) as i16).collect();
            let stored = defs.iter().filter(|&&d| d == 1).count();
            let mut g = writer.next_row_group().unwrap();
            macro_rules! column {
                ($t:ty, $values:expr, $defs:expr) => {{
                    let mut c = g.next_column().unwrap().unwrap();
                    c.typed::<$t>().write_batch(&$values, $defs, None).unwrap();
                    c.close().unwrap();
                }};
            }
            let ints = |k: i64| (0..stored as i64).map(move |r| r * k - 200).collect::<Vec<_>>();
            column!(BoolType, (0..n).map(|r| r % 2 == 0).collect::<Vec<_>>(), None);
            column!(Int32Type, ints(170).iter().map(|&v| v as i32).collect::<Vec<_>>(), Some(&defs));
            column!(Int32Type, ints(40_000).iter().map(|&v| v as i32).collect::<Vec<_>>(), Some(&defs));
            column!(Int32Type, (0..n as i32).map(|r| -r).collect::<Vec<_>>(), None);
            column!(Int32Type, ints(7).iter().map(|&v| v as i32).collect::<Vec<_>>(), Some(&defs));
            column!(Int64Type, ints(1 << 40), Some(&defs));
            column!(Int64Type, (0..n as i64).map(|r| -r).collect::<Vec<_>>(), None);
            let floats: Vec<f32> = (0..stored).map(|r| if r == 1 { f32::NAN } else { r as f32 * 0.25 }).collect();
            column!(FloatType, floats, Some(&defs));
            column!(DoubleType, (0..stored).map(|r| r as f64 / 3.0).collect::<Vec<_>>(), Some(&defs));
            let text: Vec<ByteArray> = (0..stored).map(|r| ByteArray::from(format!("é{r}").as_str())).collect();
            column!(ByteArrayType, text, Some(&defs));
            column!(Int32Type, ints(1).iter().map(|&v| v as i32).collect::<Vec<_>>(), Some(&defs));
            g.close().unwrap();
        }
        writer.close().unwrap();
        path
    }

    /// The record reader's table of the same columns: the reference.
    fn by_records(path: &std::path::Path, wanted: &[String]) -> RawTable {
        let (source, reader) = open_parquet(path).unwrap();
        let mut table = parquet_table(source, parquet_header(&reader), wanted, 0).unwrap();
        for g in 0..reader.num_row_groups() {
            let group = reader.get_row_group(g).unwrap();
            add_parquet_rows(&mut table, group.get_row_iter(None).unwrap()).unwrap();
        }
        table
    }

    #[test]
    fn columns_read_as_the_record_reader_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path());
        let names = ["b", "i8", "u16", "u32", "plain32", "i64", "u64", "f", "d", "s"];
        let wanted: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let (source, reader) = open_parquet(&path).unwrap();
        let mut table = parquet_table(source, parquet_header(&reader), &wanted, 0).unwrap();
        assert!(read(&reader, &wanted, &mut table).unwrap(), "every one of these types is read by columns");
        let reference = by_records(&path, &wanted);
        assert_eq!(table.rows, 8);
        for name in &wanted {
            assert_eq!(table.values(name), reference.values(name), "column {name}");
        }
        let Values::Cells(i8s) = table.values("i8") else { panic!() };
        // Stored 140 and -200 in an INT_8 column: the record reader wraps them as `i8`.
        assert!(
            i8s.contains(&Cell::Missing) && i8s.contains(&Cell::Num(-116.0)) && i8s.contains(&Cell::Num(56.0)),
            "{i8s:?}"
        );
        // The whole-file reader takes this path and gives the same table.
        let whole = read::read(&crate::config::TableFile::File(path.display().to_string()), &wanted).unwrap();
        assert_eq!(whole.columns, reference.columns);
    }

    #[test]
    fn a_column_of_another_type_leaves_the_read_to_the_record_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path());
        let wanted: Vec<String> = vec!["d".into(), "day".into()];
        let (source, reader) = open_parquet(&path).unwrap();
        let mut table = parquet_table(source, parquet_header(&reader), &wanted, 0).unwrap();
        assert!(!read(&reader, &wanted, &mut table).unwrap());
        assert_eq!(table.rows, 0, "untouched");
        let whole = read::read(&crate::config::TableFile::File(path.display().to_string()), &wanted).unwrap();
        assert_eq!(whole.columns, by_records(&path, &wanted).columns);
        let Values::Cells(days) = whole.values("day") else { panic!() };
        assert!(matches!(days[0], Cell::Text(_)), "dates are text, as the record reader gives them: {days:?}");
    }

    /// Parts of row groups, read in order and after a jump (a resume skips to a part), give
    /// the record reader's rows.
    #[test]
    fn parts_of_row_groups_read_as_the_whole_file() {
        use super::super::chunks::Chunks;
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path());
        let wanted: Vec<String> = ["s", "i64", "f", "u32"].iter().map(|s| s.to_string()).collect();
        let reference = by_records(&path, &wanted);
        let chunks = Chunks::open(&crate::config::TableFile::File(path.display().to_string()), 3, 0).unwrap().unwrap();
        assert_eq!(chunks.chunks.iter().map(|c| c.rows).collect::<Vec<_>>(), [3, 2, 3]);
        let cells = |t: &RawTable, c: &str| match t.values(c) {
            Values::Cells(v) => v.clone(),
            other => panic!("{other:?}"),
        };
        let mut reader = chunks.reader();
        let parts: Vec<RawTable> = (0..3).map(|i| reader.read(i, &wanted).unwrap()).collect();
        for name in &wanted {
            let joined: Vec<Cell> = parts.iter().flat_map(|t| cells(t, name)).collect();
            assert_eq!(joined, cells(&reference, name), "column {name}");
        }
        let alone = chunks.reader().read(1, &wanted).unwrap();
        for name in &wanted {
            assert_eq!(cells(&alone, name), cells(&reference, name)[3..5], "column {name} after a jump");
        }
    }
}
