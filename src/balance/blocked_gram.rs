//! The Gram matrix of per-task gradients held in CPU memory: read once, in place, accumulated
//! in f64, skipping zero blocks.
//!
//! Why not libtorch: its Gram of an fp32 `[T, P]` matrix converts every block to f64 and runs a
//! `dgemm` whose tiny `T × T` output keeps OpenMP threads spinning. Here each block of columns
//! is read once from cache per pair of rows, and a row that is all zero over a block is left
//! out of it (in representation space most classifier rows are zero over most columns). The
//! measured difference is in docs/results/BENCHMARKS.md, "Gradient methods".
//!
//! Each block's partial sums are formed alone and then added in block order, so the result
//! does not depend on how many threads share the blocks.

/// Columns per block: eight rows of it stay in L1/L2 while every pair is summed.
const BLOCK: usize = 4096;
/// Blocks below which a second thread is not worth starting.
const MIN_BLOCKS_PER_THREAD: usize = 32;

/// `G = M Mᵀ` (row-major `n × n`) of the row-major `n × cols` matrix `values`.
pub fn gram(values: &[f32], n: usize, cols: usize) -> Vec<f64> {
    assert_eq!(values.len(), n * cols, "gram: {} values for {n} × {cols}", values.len());
    let blocks = cols.div_ceil(BLOCK);
    let threads = (tch::get_num_threads().max(1) as usize).min(blocks / MIN_BLOCKS_PER_THREAD).max(1);
    let per_thread = blocks.div_ceil(threads);
    let partials: Vec<Vec<f64>> = std::thread::scope(|scope| {
        let ranges: Vec<(usize, usize)> =
            (0..threads).map(|k| (k * per_thread, ((k + 1) * per_thread).min(blocks))).collect();
        let mut handles = Vec::new();
        for &(first, end) in &ranges[1..] {
            handles.push(scope.spawn(move || block_sums(values, n, cols, first, end)));
        }
        let mut all = block_sums(values, n, cols, ranges[0].0, ranges[0].1);
        for h in handles {
            all.extend(h.join().expect("a Gram thread panicked"));
        }
        all
    });
    let mut g = vec![0.0f64; n * n];
    for part in &partials {
        for (acc, v) in g.iter_mut().zip(part) {
            *acc += v;
        }
    }
    for i in 0..n {
        for j in 0..i {
            g[i * n + j] = g[j * n + i];
        }
    }
    g
}

/// The upper triangles of blocks `first..end`, one `n × n` partial per block.
fn block_sums(values: &[f32], n: usize, cols: usize, first: usize, end: usize) -> Vec<Vec<f64>> {
    let mut nonzero = vec![false; n];
    let mut sums = Vec::with_capacity(end - first);
    for b in first..end {
        let (start, len) = (b * BLOCK, BLOCK.min(cols - b * BLOCK));
        let row = |i: usize| &values[i * cols + start..i * cols + start + len];
        for (i, nz) in nonzero.iter_mut().enumerate() {
            // NaN and infinities count as non-zero: they must reach the Gram.
            *nz = row(i).iter().any(|&v| v != 0.0);
        }
        let mut g = vec![0.0f64; n * n];
        for i in (0..n).filter(|&i| nonzero[i]) {
            for j in (i..n).filter(|&j| nonzero[j]) {
                g[i * n + j] = dot(row(i), row(j));
            }
        }
        sums.push(g);
    }
    sums
}

/// `Σ a_k b_k` in f64, four interleaved partial sums.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] as f64 * y[k] as f64;
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ra.iter().zip(rb) {
        s += *x as f64 * *y as f64;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn reference(values: &[f32], n: usize, cols: usize) -> Vec<f64> {
        let mut g = vec![0.0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                g[i * n + j] = (0..cols).map(|k| values[i * cols + k] as f64 * values[j * cols + k] as f64).sum();
            }
        }
        g
    }

    /// Against a plain f64 sum, with zero rows over some blocks (as classifier rows are in
    /// representation space), ragged sizes, one row, and a thread count that splits the blocks.
    #[test]
    fn matches_a_plain_f64_sum_with_zero_blocks_and_any_split() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (n, cols) in [(1, 5), (3, 4097), (8, 3 * BLOCK * MIN_BLOCKS_PER_THREAD + 123), (2, 1)] {
            let mut values: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            if n > 2 {
                // Row 1 is zero except in the last block; row 2 has exact zeros inside.
                values[cols..2 * cols - 7].iter_mut().for_each(|v| *v = 0.0);
                values[2 * cols + 10..2 * cols + 20].iter_mut().for_each(|v| *v = 0.0);
            }
            let want = reference(&values, n, cols);
            let got = gram(&values, n, cols);
            for i in 0..n {
                for j in 0..n {
                    let scale = (want[i * n + i] * want[j * n + j]).sqrt().max(1e-30);
                    let err = (got[i * n + j] - want[i * n + j]).abs() / scale;
                    assert!(err < 1e-12, "{n}×{cols}: ({i},{j}) off by {err:e} of its scale");
                    assert_eq!(got[i * n + j], got[j * n + i], "symmetric");
                }
            }
            assert_eq!(gram(&values, n, cols), got, "deterministic");
        }
    }

    #[test]
    fn non_finite_values_reach_the_gram() {
        let mut values = vec![0.0f32; 2 * 10];
        values[3] = 1.0;
        values[10 + 4] = f32::NAN;
        let g = gram(&values, 2, 10);
        assert_eq!(g[0], 1.0);
        assert!(g[3].is_nan() && g[1].is_nan(), "{g:?}");
        values[10 + 4] = f32::INFINITY;
        assert!(gram(&values, 2, 10)[3].is_infinite());
    }
}
