//! The order a streamed table's rows are trained in: a pure function of (seed, epoch) that
//! a reader can follow holding one window of rows.
//!
//! Epoch e permutes the units (from `(seed, TableChunks, e)`: a CSV block, or a Parquet row
//! group's parts, see [`super::chunks`]), then walks their chunks in that order, closing a
//! window before the chunk that would take it past `window_rows` (a window holds at least one
//! chunk), and permutes the rows inside window w (from `(seed, TableRows, e, w)`).
//! The epoch's sequence is the windows' rows one after another; global batch g of the epoch
//! is its rows `[g·B, (g+1)·B)`. To start at any batch a reader finds the window holding the
//! batch's first row and reads from there: a mid-epoch resume replays nothing.
use crate::rng::{derive_seed, stream, Purpose};
use rand::seq::SliceRandom;
use std::ops::Range;

/// A window of an epoch: which chunks it reads (in that order) and where its rows start in the
/// epoch's sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub chunks: Vec<usize>,
    /// Position of the window's first row in the epoch's sequence.
    pub start: usize,
    pub rows: usize,
}

/// The order of a table whose chunks hold `chunk_rows[i]` rows, read in `units` (ranges of
/// chunks that stay together, in order).
#[derive(Debug, Clone)]
pub struct Order {
    seed: u64,
    chunk_rows: Vec<usize>,
    units: Vec<Range<usize>>,
    window_rows: usize,
}

impl Order {
    pub fn new(seed: u64, chunk_rows: Vec<usize>, units: Vec<Range<usize>>, window_rows: usize) -> Self {
        Self { seed, chunk_rows, units, window_rows }
    }

    /// The windows of `epoch`, in order.
    pub fn windows(&self, epoch: u64) -> Vec<Window> {
        let mut units = self.units.clone();
        units.shuffle(&mut stream(self.seed, Purpose::TableChunks, epoch));
        let mut windows: Vec<Window> = Vec::new();
        let mut start = 0;
        for c in units.into_iter().flatten() {
            let rows = self.chunk_rows[c];
            match windows.last_mut() {
                Some(w) if w.rows + rows <= self.window_rows => {
                    w.chunks.push(c);
                    w.rows += rows;
                }
                _ => windows.push(Window { chunks: vec![c], start, rows }),
            }
            start += rows;
        }
        windows
    }

    /// The order of window `w`'s rows in `epoch`: a permutation of `0..rows`, where row k is
    /// the k-th row of the window's chunks read one after another.
    pub fn rows_of(&self, epoch: u64, w: usize, rows: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..rows).collect();
        order.shuffle(&mut stream(derive_seed(self.seed, Purpose::TableRows, epoch), Purpose::TableRows, w as u64));
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of an epoch as (chunk, row in chunk), in training order.
    fn sequence(o: &Order, epoch: u64) -> Vec<(usize, usize)> {
        o.windows(epoch)
            .iter()
            .enumerate()
            .flat_map(|(w, win)| {
                let rows: Vec<(usize, usize)> =
                    win.chunks.iter().flat_map(|&c| (0..o.chunk_rows[c]).map(move |r| (c, r))).collect();
                o.rows_of(epoch, w, win.rows).into_iter().map(move |k| rows[k])
            })
            .collect()
    }

    #[test]
    fn every_row_once_per_epoch_in_bounded_windows_and_a_new_order_each_epoch() {
        // Ragged chunks, as a file's last CSV block or uneven Parquet row groups make them.
        let chunk_rows = vec![10, 10, 10, 3, 10, 7, 10, 10, 1, 10];
        let total: usize = chunk_rows.iter().sum();
        // Chunks 4..7 are the parts of one Parquet row group: always read together, in order.
        let units = [vec![0..1, 1..2, 2..3, 3..4, 4..7], (7..10).map(|c| c..c + 1).collect()].concat();
        let o = Order::new(9, chunk_rows.clone(), units.clone(), 25);
        let mut sequences = Vec::new();
        for epoch in 0..4 {
            let windows = o.windows(epoch);
            assert!(windows.len() > 1);
            let mut start = 0;
            for w in &windows {
                assert!(w.rows <= 25, "a window holds at most window_rows");
                assert_eq!(w.start, start);
                assert_eq!(w.rows, w.chunks.iter().map(|&c| chunk_rows[c]).sum::<usize>());
                start += w.rows;
            }
            let seq = sequence(&o, epoch);
            let mut sorted = seq.clone();
            sorted.sort();
            let all: Vec<(usize, usize)> =
                chunk_rows.iter().enumerate().flat_map(|(c, &n)| (0..n).map(move |r| (c, r))).collect();
            assert_eq!(sorted, all, "epoch {epoch}: every row exactly once");
            assert_eq!(seq.len(), total);
            let parts: Vec<usize> = seq.iter().map(|&(c, _)| c).filter(|c| (4..7).contains(c)).collect::<Vec<_>>();
            let at = |c| windows.iter().flat_map(|w| &w.chunks).position(|&x| x == c).unwrap();
            assert!(at(4) + 1 == at(5) && at(5) + 1 == at(6), "a group's parts stay together: {parts:?}");
            assert_eq!(seq, sequence(&o, epoch), "a pure function of (seed, epoch)");
            sequences.push(seq);
        }
        for e in 1..4 {
            assert_ne!(sequences[e], sequences[0], "epoch {e} repeats epoch 0's order");
        }
        assert_ne!(sequence(&Order::new(10, chunk_rows.clone(), units, 25), 0), sequences[0], "the seed matters");
        // A chunk larger than the window is a window of its own.
        let big = Order::new(1, vec![40, 5, 5], vec![0..1, 1..2, 2..3], 20);
        for w in big.windows(0) {
            assert!(w.rows <= 20 || w.chunks == [0]);
        }
    }
}
