//! Columns of results written as a table: CSV text or a Parquet file (what `predict --table`
//! writes; the file's extension chooses).
use parquet::basic::{Repetition, Type as PhysicalType};
use parquet::data_type::{DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use std::sync::Arc;

/// One column's values, a row each.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Float(Vec<f64>),
    Int(Vec<i64>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Float(v) => v.len(),
            Values::Int(v) => v.len(),
        }
    }

    fn text(&self, row: usize) -> String {
        match self {
            Values::Float(v) => v[row].to_string(),
            Values::Int(v) => v[row].to_string(),
        }
    }
}

/// Named columns of equal length, in order.
pub type Columns = Vec<(String, Values)>;

fn rows(columns: &Columns) -> usize {
    let n = columns.first().map_or(0, |(_, v)| v.len());
    assert!(columns.iter().all(|(_, v)| v.len() == n), "every column has a value per row");
    n
}

/// A header line of the names, then a line per row (numbers as Rust prints them: the shortest
/// text that reads back to the same value).
pub fn csv(columns: &Columns) -> String {
    let mut text = columns.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(",") + "\n";
    for row in 0..rows(columns) {
        text += &columns.iter().map(|(_, v)| v.text(row)).collect::<Vec<_>>().join(",");
        text.push('\n');
    }
    text
}

/// A Parquet file (one row group, uncompressed): a required DOUBLE or INT64 column per column.
pub fn parquet(columns: &Columns) -> anyhow::Result<Vec<u8>> {
    rows(columns);
    let fields = columns
        .iter()
        .map(|(name, v)| {
            let physical = match v {
                Values::Float(_) => PhysicalType::DOUBLE,
                Values::Int(_) => PhysicalType::INT64,
            };
            Ok(Arc::new(Type::primitive_type_builder(name, physical).with_repetition(Repetition::REQUIRED).build()?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let schema = Arc::new(Type::group_type_builder("schema").with_fields(fields).build()?);
    let mut bytes = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut bytes, schema, Arc::new(WriterProperties::builder().build()))?;
    let mut group = writer.next_row_group()?;
    for (_, values) in columns {
        let mut column = group.next_column()?.expect("a column writer per schema field");
        match values {
            Values::Float(v) => column.typed::<DoubleType>().write_batch(v, None, None)?,
            Values::Int(v) => column.typed::<Int64Type>().write_batch(v, None, None)?,
        };
        column.close()?;
    }
    group.close()?;
    writer.close()?;
    Ok(bytes)
}
