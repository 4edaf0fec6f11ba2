//! A CSV or Parquet split as chunks of at most `chunk_rows` rows, read one at a time: a CSV
//! file's blocks of records, each found again by the byte offset of its first record (recorded
//! in one pass over the file), and Parquet's row groups, cut into parts. Fitting, checking and
//! streaming a table larger than memory read it this way, one chunk of cells in memory at a
//! time.
//!
//! A CSV block can be read in any order. A Parquet part in the middle of its row group can only
//! be reached by decoding the group from its start, so the parts of a group form a *unit* that is
//! read in order, by one [`ChunkReader`] that keeps the group open from one part to the next.
use super::parquet_columns::GroupColumns;
use super::read::{self, RawTable};
use crate::config::TableFile;
use crate::user_error;
use parquet::record::reader::RowIter;
use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The formats that can be read in chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Parquet,
}

/// Where a chunk starts in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// The byte offset of the chunk's first record.
    Csv(u64),
    /// The row group, and the rows of it that earlier chunks hold.
    Parquet { group: usize, skip: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// The file's data row (counted from 0) the chunk starts at.
    pub first_row: usize,
    pub rows: usize,
    at: At,
}

/// A split cut into chunks.
#[derive(Debug)]
pub struct Chunks {
    /// The file as errors name it.
    pub source: String,
    path: PathBuf,
    /// Every column the file has, in its order.
    pub all_columns: Vec<String>,
    pub chunks: Vec<Chunk>,
}

impl Chunks {
    /// `file` cut into chunks of at most `chunk_rows` rows, its first `limit` rows kept (0: all);
    /// `None` for the formats read whole (`.npz`, `.npy` arrays). An empty table is an error.
    pub fn open(file: &TableFile, chunk_rows: usize, limit: usize) -> anyhow::Result<Option<Chunks>> {
        let TableFile::File(path) = file else { return Ok(None) };
        let path = PathBuf::from(path);
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => Format::Csv,
            Some("parquet" | "pq") => Format::Parquet,
            _ => return Ok(None),
        };
        crate::files::regular_len(&path)?;
        let limit = if limit == 0 { usize::MAX } else { limit };
        let chunk_rows = chunk_rows.max(1);
        let (source, all_columns, chunks) = match format {
            Format::Csv => csv_chunks(&path, chunk_rows, limit)?,
            Format::Parquet => parquet_chunks(&path, chunk_rows, limit)?,
        };
        if chunks.is_empty() {
            crate::user_bail!("{source}: the table has no rows");
        }
        Ok(Some(Chunks { source, path, all_columns, chunks }))
    }

    /// Rows in all chunks.
    pub fn rows(&self) -> usize {
        self.chunks.iter().map(|c| c.rows).sum()
    }

    /// The chunks that are read one after another, in order: each CSV block alone, each
    /// Parquet row group's parts together.
    pub fn units(&self) -> Vec<Range<usize>> {
        let mut units: Vec<Range<usize>> = Vec::new();
        for (i, c) in self.chunks.iter().enumerate() {
            match (c.at, units.last_mut()) {
                (At::Parquet { skip, .. }, Some(unit)) if skip > 0 => unit.end = i + 1,
                _ => units.push(i..i + 1),
            }
        }
        units
    }

    /// A reader of this split's chunks.
    pub fn reader(&self) -> ChunkReader<'_> {
        ChunkReader { chunks: self, open: None }
    }

    /// Reads every chunk in file order, handing each to `f`.
    pub fn for_each(&self, wanted: &[String], mut f: impl FnMut(RawTable) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let mut reader = self.reader();
        (0..self.chunks.len()).try_for_each(|i| f(reader.read(i, wanted)?))
    }
}

/// Reads chunks of one split; a Parquet row group stays open while its parts are read in order.
pub struct ChunkReader<'a> {
    chunks: &'a Chunks,
    open: Option<OpenGroup>,
}

/// A Parquet row group being read: the rows from `next` on, of the `wanted` columns.
struct OpenGroup {
    group: usize,
    next: usize,
    wanted: Vec<String>,
    rows: GroupRows,
}

/// An open row group's readers: its column chunks, or the record reader where a wanted
/// column is of a type only that converts.
enum GroupRows {
    Columns(GroupColumns),
    Records(RowIter<'static>),
}

impl GroupRows {
    /// Row group `g`'s `wanted` columns, from row `skip` on.
    fn open(chunks: &Chunks, g: usize, skip: usize, wanted: &[String]) -> anyhow::Result<Self> {
        let source = &chunks.source;
        if let Some(mut columns) = GroupColumns::open(&read::open_parquet(&chunks.path)?.1, g, wanted, source)? {
            columns.skip(skip, source)?;
            return Ok(Self::Columns(columns));
        }
        let mut rows = group_rows(chunks, g, wanted)?;
        for row in rows.by_ref().take(skip) {
            row.map_err(|e| read::bad_parquet(source, e))?;
        }
        Ok(Self::Records(rows))
    }

    /// Appends the next `rows` rows to `table`.
    fn read(&mut self, rows: usize, table: &mut RawTable) -> anyhow::Result<()> {
        match self {
            Self::Columns(columns) => columns.read(rows, table),
            Self::Records(records) => read::add_parquet_rows(table, records.by_ref().take(rows)),
        }
    }
}

impl ChunkReader<'_> {
    /// The `wanted` columns of chunk `i`.
    pub fn read(&mut self, i: usize, wanted: &[String]) -> anyhow::Result<RawTable> {
        let (chunks, chunk) = (self.chunks, self.chunks.chunks[i]);
        let source = chunks.source.clone();
        match chunk.at {
            At::Csv(byte) => {
                let mut file =
                    std::fs::File::open(&chunks.path).map_err(|e| user_error!("{source}: cannot read: {e}"))?;
                file.seek(SeekFrom::Start(byte)).map_err(|e| user_error!("{source}: cannot read: {e}"))?;
                let mut reader =
                    csv::ReaderBuilder::new().has_headers(false).from_reader(std::io::BufReader::new(file));
                let header = chunks.all_columns.clone();
                read::csv_rows(source, header, wanted, reader.records(), chunk.first_row, chunk.rows)
            }
            At::Parquet { group, skip } => {
                let mut table = read::parquet_table(source, chunks.all_columns.clone(), wanted, chunk.first_row)?;
                let mut open = match self.open.take() {
                    Some(open) if open.group == group && open.next == skip && open.wanted == wanted => open,
                    // Another group or other columns, or a part after a jump (a resume): decode
                    // from the group's start.
                    _ => OpenGroup {
                        group,
                        next: skip,
                        wanted: wanted.to_vec(),
                        rows: GroupRows::open(chunks, group, skip, wanted)?,
                    },
                };
                open.rows.read(chunk.rows, &mut table)?;
                open.next += chunk.rows;
                self.open = Some(open);
                Ok(table)
            }
        }
    }
}

/// The `wanted` columns of row group `g` alone, from an iterator that owns its file.
fn group_rows(chunks: &Chunks, g: usize, wanted: &[String]) -> anyhow::Result<RowIter<'static>> {
    use parquet::file::serialized_reader::{ReadOptionsBuilder, SerializedFileReader};
    let source = &chunks.source;
    let file = std::fs::File::open(&chunks.path).map_err(|e| user_error!("{source}: cannot read: {e}"))?;
    let options = ReadOptionsBuilder::new().with_predicate(Box::new(move |_, i| i == g)).build();
    let reader = SerializedFileReader::new_with_options(file, options).map_err(|e| read::bad_parquet(source, e))?;
    let projection = read::parquet_projection(&reader, wanted).map_err(|e| read::bad_parquet(source, e))?;
    RowIter::from_file_into(Box::new(reader)).project(projection).map_err(|e| read::bad_parquet(source, e))
}

type Index = (String, Vec<String>, Vec<Chunk>);

/// One pass over the records (parsed, not converted): the offset of every `chunk_rows`-th.
fn csv_chunks(path: &Path, chunk_rows: usize, limit: usize) -> anyhow::Result<Index> {
    let source = path.display().to_string();
    let mut reader =
        csv::ReaderBuilder::new().has_headers(true).from_path(path).map_err(|e| read::bad_csv(&source, e))?;
    let header = read::csv_header(&source, &mut reader)?;
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut record = csv::ByteRecord::new();
    let mut rows = 0;
    while rows < limit && reader.read_byte_record(&mut record).map_err(|e| read::bad_csv(&source, e))? {
        if rows % chunk_rows == 0 {
            let byte = record.position().expect("the csv reader records positions").byte();
            chunks.push(Chunk { first_row: rows, rows: 0, at: At::Csv(byte) });
        }
        chunks.last_mut().expect("pushed above").rows += 1;
        rows += 1;
    }
    Ok((source, header, chunks))
}

/// From the footer alone: each row group, cut into parts of at most `chunk_rows`.
fn parquet_chunks(path: &Path, chunk_rows: usize, limit: usize) -> anyhow::Result<Index> {
    use parquet::file::reader::FileReader;
    let (source, reader) = read::open_parquet(path)?;
    let header = read::parquet_header(&reader);
    let mut chunks = Vec::new();
    let mut rows = 0;
    for (group, meta) in reader.metadata().row_groups().iter().enumerate() {
        let in_group = meta.num_rows().max(0) as usize;
        let mut skip = 0;
        while skip < in_group && rows < limit {
            let n = chunk_rows.min(in_group - skip).min(limit - rows);
            chunks.push(Chunk { first_row: rows, rows: n, at: At::Parquet { group, skip } });
            (skip, rows) = (skip + n, rows + n);
        }
    }
    Ok((source, header, chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_chunks_read_back_the_rows_of_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        let mut text = String::from("x,name\n");
        for r in 0..23 {
            text += &format!("{r},\"n{r}\nsecond line\"\n"); // a quoted newline inside a record
        }
        std::fs::write(&path, text).unwrap();
        let file = TableFile::File(path.display().to_string());
        let whole = read::read(&file, &["x".into(), "name".into()]).unwrap();
        for (chunk_rows, limit) in [(5, 0), (23, 0), (100, 0), (4, 10)] {
            let chunks = Chunks::open(&file, chunk_rows, limit).unwrap().unwrap();
            let n = if limit == 0 { 23 } else { limit };
            assert_eq!(chunks.rows(), n);
            assert_eq!(chunks.chunks.len(), n.div_ceil(chunk_rows));
            let mut seen = Vec::new();
            chunks
                .for_each(&["name".into(), "x".into()], |t| {
                    assert_eq!(t.first_row, seen.len());
                    let read::Values::Cells(c) = t.values("x") else { panic!() };
                    seen.extend(c.clone());
                    Ok(())
                })
                .unwrap();
            let read::Values::Cells(all) = whole.values("x") else { panic!() };
            assert_eq!(seen, all[..n]);
        }
    }

    /// Each read decodes only the columns it asks for, and a row group left open for one set of
    /// columns is not reused for another.
    #[test]
    fn parquet_chunks_read_the_wanted_columns_whichever_were_read_before() {
        use super::super::write::{self, Values};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let a: Vec<f64> = (0..10).map(|r| r as f64 * 0.5).collect();
        let b: Vec<i64> = (0..10).map(|r| 100 + r).collect();
        let columns = vec![
            ("a".to_string(), Values::Float(a.clone())),
            ("b".to_string(), Values::Int(b.clone())),
            ("c".to_string(), Values::Float(vec![7.0; 10])),
        ];
        std::fs::write(&path, write::parquet(&columns).unwrap()).unwrap();
        let file = TableFile::File(path.display().to_string());
        let (_, reader) = read::open_parquet(&path).unwrap();
        let projected = read::parquet_projection(&reader, &["c".into(), "a".into()]).unwrap().unwrap();
        let names: Vec<&str> = projected.get_fields().iter().map(|f| f.name()).collect();
        assert_eq!(names, ["a", "c"], "the wanted columns, in the file's order");
        assert!(read::parquet_projection(&reader, &[]).unwrap().is_none());
        let num = |t: &RawTable, c: &str| -> Vec<f64> {
            let read::Values::Cells(cells) = t.values(c) else { panic!() };
            cells.iter().map(|x| if let read::Cell::Num(v) = x { *v } else { panic!("{x:?}") }).collect()
        };
        let chunks = Chunks::open(&file, 4, 0).unwrap().unwrap();
        let mut reader = chunks.reader();
        let first = reader.read(0, &["a".into()]).unwrap();
        assert_eq!((first.columns.len(), num(&first, "a")), (1, a[..4].to_vec()));
        // The next part of the same group, other columns: decoded afresh, from the right row.
        let second = reader.read(1, &["b".into(), "c".into()]).unwrap();
        assert_eq!(num(&second, "b"), b[4..8].iter().map(|&v| v as f64).collect::<Vec<_>>());
        assert_eq!(num(&second, "c"), [7.0; 4]);
        let whole = read::read(&file, &["b".into()]).unwrap();
        assert_eq!(whole.columns.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(num(&whole, "b"), b.iter().map(|&v| v as f64).collect::<Vec<_>>());
    }
}
