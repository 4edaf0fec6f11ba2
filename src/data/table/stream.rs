//! A table too large for `data.max_memory_mb`, read while training: a reader thread follows
//! the epoch's [`Order`], one window of mapped rows in memory at a time, and keeps
//! `data.prefetch_batches` batches ready in a bounded channel. Rows go through the fitted
//! mapping ([`super::mapped`]) exactly as the in-memory path maps them, so a batch is the same
//! float rows whichever way it was read; only the order differs (windows, not one permutation).
//!
//! Every rank reads the whole sequence and keeps its slice of each global batch, as ranks do
//! with images ([`crate::data::loader::Shard`]); evaluation reads the file in order and deals
//! its batches out in turn, as `Loader::eval_batches` does.
use super::chunks::{ChunkReader, Chunks};
use super::order::Order;
use crate::config::FittedTable;
use crate::data::stream::Ahead;
use crate::data::{Split, TargetShape, Wanted};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use tch::Device;

/// A streamed split of a table.
pub struct RowStream {
    split: Arc<Shared>,
    prefetch: usize,
    device: Device,
}

/// What the reader threads share.
struct Shared {
    chunks: Chunks,
    /// The columns a chunk is read with: features and targets.
    columns: Vec<String>,
    fitted: FittedTable,
    wanted: Vec<Wanted>,
    window_rows: usize,
}

impl Shared {
    fn chunk(&self, reader: &mut ChunkReader, i: usize) -> anyhow::Result<Split> {
        super::mapped(&reader.read(i, &self.columns)?, &self.fitted, &self.wanted)
    }

    /// The rows of window `w` of `epoch`, in training order.
    fn window(
        &self,
        reader: &mut ChunkReader,
        order: &Order,
        epoch: u64,
        w: usize,
        chunks: &[usize],
    ) -> anyhow::Result<Split> {
        let parts = chunks.iter().map(|&c| self.chunk(reader, c)).collect::<anyhow::Result<Vec<_>>>()?;
        let rows = Split::cat(parts);
        let order: Vec<i64> = order.rows_of(epoch, w, rows.len()).into_iter().map(|k| k as i64).collect();
        Ok(rows.select(&order))
    }
}

impl RowStream {
    /// `chunks` read with `columns`, mapped through `fitted`; the training order's windows hold
    /// at most `window_rows` rows.
    pub fn new(
        chunks: Chunks,
        columns: Vec<String>,
        fitted: FittedTable,
        wanted: Vec<Wanted>,
        window_rows: usize,
        prefetch: usize,
    ) -> Self {
        let split = Arc::new(Shared { chunks, columns, fitted, wanted, window_rows });
        Self { split, prefetch, device: Device::Cpu }
    }

    pub fn len(&self) -> usize {
        self.split.chunks.rows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_device(self, device: Device) -> Self {
        Self { device, ..self }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Entries of a mapped row (the "channels" of its `[N, F, 1, 1]` rows).
    pub fn width(&self) -> i64 {
        self.split.fitted.raw_width() as i64
    }

    pub fn target_shape(&self, name: &str) -> Option<TargetShape> {
        self.split.wanted.iter().find(|w| w.target == name).map(|w| w.shape)
    }

    /// The training order for `seed` (see [`Order`]).
    fn order(&self, seed: u64) -> Order {
        let chunks = &self.split.chunks;
        Order::new(seed, chunks.chunks.iter().map(|c| c.rows).collect(), chunks.units(), self.split.window_rows)
    }

    /// Training batches from global step `start` on, in the order of `seed`: step g is rows
    /// `[p·global + offset, +b)` of epoch `g / steps_per_epoch`'s sequence, p = `g % steps_per_epoch`.
    pub fn train(
        &self,
        seed: u64,
        start: u64,
        steps_per_epoch: u64,
        global: usize,
        offset: usize,
        b: usize,
    ) -> RowPrefetcher {
        let split = self.split.clone();
        let order = self.order(seed);
        RowPrefetcher::start(start, self.prefetch, move |tx| {
            let mut reader = split.chunks.reader();
            let mut g = start;
            loop {
                let (epoch, first) = (g / steps_per_epoch, g % steps_per_epoch);
                let windows = order.windows(epoch);
                // The window holding the first row this epoch still needs, and those after it.
                let from = (first as usize) * global;
                let w0 = windows.iter().position(|w| w.start + w.rows > from).expect("a full batch lies in the epoch");
                let (split, order, reader) = (&split, &order, &mut reader);
                let blocks = windows[w0..]
                    .iter()
                    .enumerate()
                    .map(move |(k, w)| split.window(reader, order, epoch, w0 + k, &w.chunks));
                let mut cursor = Cursor::new(blocks, windows[w0].start);
                for p in first..steps_per_epoch {
                    let lo = p as usize * global + offset;
                    if !tx(g, cursor.take(lo, lo + b).map_err(changed)) {
                        return;
                    }
                    g += 1;
                }
            }
        })
    }

    /// Evaluation batches of `batch` rows in file order (the last may be smaller): this rank's
    /// share, batches `rank`, `rank + world`, …; and how many there are.
    pub fn eval(&self, batch: usize, rank: usize, world: usize) -> (u64, RowPrefetcher) {
        let n = self.len();
        let all = n.div_ceil(batch);
        let mine = (all.saturating_sub(rank)).div_ceil(world) as u64;
        let split = self.split.clone();
        let prefetcher = RowPrefetcher::start(0, self.prefetch, move |tx| {
            let mut reader = split.chunks.reader();
            let blocks = (0..split.chunks.chunks.len()).map(|i| split.chunk(&mut reader, i));
            let mut cursor = Cursor::new(blocks, 0);
            for k in 0..mine {
                let lo = (k as usize * world + rank) * batch;
                if !tx(k, cursor.take(lo, (lo + batch).min(n)).map_err(changed)) {
                    return;
                }
            }
        });
        (mine, prefetcher)
    }

    /// Maps every row of the split once, keeping nothing: a bad cell anywhere is found before
    /// training starts, with its file, column and row.
    pub fn check(&self) -> anyhow::Result<()> {
        let mut reader = self.split.chunks.reader();
        (0..self.split.chunks.chunks.len()).try_for_each(|i| self.split.chunk(&mut reader, i).map(drop))
    }
}

/// A bad row met while training: every row was mapped when the run started ([`RowStream::check`]),
/// so the file changed since. The trainer stops (no checkpoint is half-written: they are
/// written whole, then renamed).
fn changed(e: anyhow::Error) -> anyhow::Error {
    crate::user_error!("{e:#} (the file changed on disk after every row was checked at start-up)")
}

/// A sequence of rows read block by block (windows, or chunks in file order), cut into
/// batches; only the block being cut is held.
struct Cursor<I> {
    blocks: I,
    block: Option<Split>,
    /// Position of the block's first row in the sequence.
    start: usize,
}

impl<I: Iterator<Item = anyhow::Result<Split>>> Cursor<I> {
    /// A sequence whose first block starts at position `start`.
    fn new(blocks: I, start: usize) -> Self {
        Self { blocks, block: None, start }
    }

    /// Rows `[lo, hi)` of the sequence; `lo` is never before an earlier call's `hi`.
    fn take(&mut self, lo: usize, hi: usize) -> anyhow::Result<Split> {
        let mut parts = Vec::new();
        let mut at = lo;
        while at < hi {
            while self.block.as_ref().is_none_or(|b| self.start + b.len() <= at) {
                if let Some(b) = self.block.take() {
                    self.start += b.len();
                }
                let next = self.blocks.next().ok_or_else(|| anyhow::anyhow!("the rows ended before row {at}"))?;
                self.block = Some(next?);
            }
            let block = self.block.as_ref().expect("read above");
            let from = at - self.start;
            let to = (hi - self.start).min(block.len());
            parts.push(block.narrow(from, to - from));
            at = self.start + to;
        }
        Ok(Split::cat(parts))
    }
}

/// A reader thread working ahead of the trainer; dropping it stops the thread.
pub struct RowPrefetcher {
    rx: Option<Receiver<(u64, anyhow::Result<Split>)>>,
    handle: Option<JoinHandle<()>>,
    next: u64,
}

/// Sends batch g; false once the receiver is gone.
type Deliver<'a> = &'a dyn Fn(u64, anyhow::Result<Split>) -> bool;

impl RowPrefetcher {
    /// Runs `read` on a thread that can be `depth` batches ahead of [`Ahead::next_batch`].
    fn start(first: u64, depth: usize, read: impl FnOnce(Deliver) + Send + 'static) -> Self {
        let (tx, rx) = sync_channel(depth.max(1));
        let handle = std::thread::spawn(move || {
            read(&|g, batch| {
                let failed = batch.is_err();
                tx.send((g, batch)).is_ok() && !failed
            })
        });
        Self { rx: Some(rx), handle: Some(handle), next: first }
    }
}

impl Ahead for RowPrefetcher {
    fn position(&self) -> u64 {
        self.next
    }

    fn next_batch(&mut self) -> anyhow::Result<Split> {
        let g = self.next;
        let rx = self.rx.as_ref().expect("open until dropped");
        let (tag, batch) = rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the table reader stopped before batch {g} (see its panic above)"))?;
        assert_eq!(tag, g, "table reader out of step");
        self.next += 1;
        batch
    }
}

impl Drop for RowPrefetcher {
    fn drop(&mut self) {
        // Closing the channel makes a blocked or finishing reader return.
        self.rx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TableFile;
    use tch::Tensor;

    /// `n` rows `x = id / 2, id` in a CSV file read in chunks of 7, windows of 30 rows; `id` is
    /// the target, so a batch says which rows it holds.
    fn ids_table(dir: &std::path::Path, n: usize) -> RowStream {
        let path = dir.join("ids.csv");
        let text: String = (0..n).map(|r| format!("{},{r}\n", r as f64 / 2.0)).collect();
        std::fs::write(&path, format!("x,id\n{text}")).unwrap();
        let file = TableFile::File(path.display().to_string());
        let features = crate::config::TableFeatures { numeric: vec!["x".into()], ..Default::default() };
        let fitted =
            super::super::fit::fit(&super::super::read::read(&file, &["x".into()]).unwrap(), &features).unwrap();
        let wanted = vec![Wanted { target: "id".into(), shape: TargetShape::Value, classes: 0 }];
        let chunks = Chunks::open(&file, 7, 0).unwrap().unwrap();
        RowStream::new(chunks, vec!["id".into(), "x".into()], fitted, wanted, 30, 2)
    }

    fn ids(s: &Split) -> Vec<i64> {
        Vec::<f32>::try_from(&s.targets["id"]).unwrap().into_iter().map(|v| v as i64).collect()
    }

    fn batches(p: &mut RowPrefetcher, n: usize) -> Vec<Split> {
        (0..n).map(|_| p.next_batch().unwrap()).collect()
    }

    /// Two ranks of batch 8 read, between them, one process's global batches of 16: the same
    /// rows in the same order, rank 0 the first half, rank 1 the second, none twice in an
    /// epoch; and the mapped features come with their rows.
    #[test]
    fn ranks_read_disjoint_halves_of_the_global_batches() {
        let dir = tempfile::tempdir().unwrap();
        let s = ids_table(dir.path(), 100);
        let spe = 100 / 16;
        let whole = batches(&mut s.train(3, 0, spe, 16, 0, 16), 3 * spe as usize);
        let ranks: Vec<Vec<Split>> =
            (0..2).map(|r| batches(&mut s.train(3, 0, spe, 16, r * 8, 8), 3 * spe as usize)).collect();
        for epoch in 0..3 {
            let mut seen = Vec::new();
            for g in epoch * spe as usize..(epoch + 1) * spe as usize {
                let (a, b) = (ids(&ranks[0][g]), ids(&ranks[1][g]));
                assert_eq!([a.clone(), b.clone()].concat(), ids(&whole[g]), "batch {g}");
                let x = Tensor::cat(&[&ranks[0][g].images, &ranks[1][g].images], 0);
                assert!(x.equal(&whole[g].images));
                seen.extend(a.into_iter().chain(b));
            }
            let n = seen.len();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), n, "epoch {epoch}: a row read twice");
            assert!(seen.iter().all(|&i| (0..100).contains(&i)));
        }
        assert_ne!(ids(&whole[0]), ids(&whole[spe as usize]), "each epoch has its own order");
    }

    /// Starting at any step (a resume) reads the batches the uninterrupted sequence has there.
    #[test]
    fn starting_mid_epoch_reads_the_uninterrupted_batches() {
        let dir = tempfile::tempdir().unwrap();
        let s = ids_table(dir.path(), 100);
        let all: Vec<Vec<i64>> = batches(&mut s.train(5, 0, 12, 8, 0, 8), 30).iter().map(ids).collect();
        for start in [1u64, 5, 11, 12, 17] {
            let mut p = s.train(5, start, 12, 8, 0, 8);
            for (g, want) in all.iter().enumerate().skip(start as usize) {
                assert_eq!(p.position(), g as u64);
                assert_eq!(&ids(&p.next_batch().unwrap()), want, "from {start}: batch {g}");
            }
        }
    }

    /// Evaluation reads the file in order; ranks take batches in turn and cover it once.
    #[test]
    fn evaluation_shards_cover_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = ids_table(dir.path(), 100);
        for world in [1, 2, 3] {
            let mut seen: Vec<Vec<i64>> = Vec::new();
            for rank in 0..world {
                let (n, mut p) = s.eval(9, rank, world);
                let mine = batches(&mut p, n as usize);
                seen.extend(mine.iter().map(ids));
            }
            seen.sort_by_key(|b| b[0]);
            assert_eq!(seen.concat(), (0..100).collect::<Vec<_>>(), "world {world}");
        }
    }
}
