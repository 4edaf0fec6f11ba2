//! Single-pass optimizer updates for flat fp32 buffers in CPU memory.
//!
//! Why: written as tensor ops, an AdamW update is ten passes over memory and four temporaries
//! as large as the model (measured in docs/results/BENCHMARKS.md). Here every element is read
//! and written once: `p`, `g`, and the state buffers, in one loop that the compiler vectorises,
//! split over the libtorch thread count for large buffers. The arithmetic is PyTorch's, element by element
//! (`torch.optim.AdamW` / `torch.optim.SGD`, single-tensor form, in fp32 with the step's
//! scalars computed in f64 on the host and rounded to f32, as libtorch's kernels do).
//!
//! CUDA buffers keep the tensor-op path (src/optim/mod.rs): there the passes are cheap and a
//! host loop cannot run.
use tch::Tensor;

/// Per-step AdamW scalars.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    /// `1 - lr * weight_decay`.
    pub decay: f32,
    /// `1 - beta1` (the lerp weight of the first moment).
    pub one_minus_b1: f32,
    pub b2: f32,
    pub one_minus_b2: f32,
    /// `sqrt(1 - beta2^t)`.
    pub bias2_sqrt: f32,
    pub eps: f32,
    /// `-lr / (1 - beta1^t)`.
    pub neg_step_size: f32,
}

/// Per-step SGD scalars.
#[derive(Debug, Clone, Copy)]
pub struct SgdStep {
    pub weight_decay: f32,
    pub momentum: f32,
    pub nesterov: bool,
    /// The first step copies the direction into the momentum buffer.
    pub first: bool,
    pub neg_lr: f32,
}

/// ATen's lerp for real numbers: `self + w * (end - self)`, or from the other end when
/// `|w| >= 0.5`, which keeps `lerp(a, b, 1) == b` exact.
#[inline(always)]
fn lerp(start: f32, end: f32, w: f32) -> f32 {
    if w.abs() < 0.5 {
        start + w * (end - start)
    } else {
        end - (end - start) * (1.0 - w)
    }
}

/// `fn $name(args)` calling `$body(args)`, compiled also for AVX-512 and AVX2 and run in the
/// widest the CPU has. Why: a Rust build targets baseline x86-64 (SSE2), so the loops above
/// would run four lanes wide where libtorch's own kernels pick the CPU's widest at run time;
/// the update is compute-bound on its square root and division. The result does not depend
/// on the width: every lane does the same IEEE operations in the same order (Rust never
/// contracts a multiply and an add into an FMA), so the weights are bit-identical.
macro_rules! widest_simd {
    (fn $name:ident($($arg:ident: $ty:ty),*) => $body:ident) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked on the line above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked on the line above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

widest_simd!(fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) => adamw_loop);
widest_simd!(fn sgd_chunk(p: &mut [f32], g: &[f32], buf: Option<&mut [f32]>, s: SgdStep) => sgd_loop);

#[inline(always)]
fn adamw_loop(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let gi = g[i];
        let pi = p[i] * s.decay;
        let mi = lerp(m[i], gi, s.one_minus_b1);
        let vi = v[i] * s.b2 + (s.one_minus_b2 * gi) * gi;
        let denom = vi.sqrt() / s.bias2_sqrt + s.eps;
        p[i] = pi + (s.neg_step_size * mi) / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

#[inline(always)]
fn sgd_loop(p: &mut [f32], g: &[f32], buf: Option<&mut [f32]>, s: SgdStep) {
    let n = p.len();
    let g = &g[..n];
    match buf {
        None => {
            for i in 0..n {
                let d = if s.weight_decay != 0.0 { g[i] + s.weight_decay * p[i] } else { g[i] };
                p[i] += s.neg_lr * d;
            }
        }
        Some(buf) => {
            let buf = &mut buf[..n];
            for i in 0..n {
                let d = if s.weight_decay != 0.0 { g[i] + s.weight_decay * p[i] } else { g[i] };
                let b = if s.first { d } else { buf[i] * s.momentum + d };
                buf[i] = b;
                let d = if s.nesterov { d + s.momentum * b } else { b };
                p[i] += s.neg_lr * d;
            }
        }
    }
}

/// The calling thread's floating-point control (x86's MXCSR: rounding, flush-to-zero), which
/// the threads that take chunks of its update run with: a new thread starts with the default.
#[derive(Debug, Clone, Copy)]
struct FpControl(#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] u32);

impl FpControl {
    #[allow(deprecated)] // _mm_getcsr/_mm_setcsr: deprecated for inline assembly, which says no more
    fn current() -> Self {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: reading MXCSR has no preconditions on x86-64 (SSE is baseline).
        return Self(unsafe { std::arch::x86_64::_mm_getcsr() });
        #[cfg(not(target_arch = "x86_64"))]
        Self(0)
    }

    #[allow(deprecated)]
    fn apply(self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a value read from MXCSR, or one with only the FTZ/DAZ bits added: valid.
        unsafe {
            std::arch::x86_64::_mm_setcsr(self.0)
        }
    }
}

/// While it lives, subnormal inputs and results of float arithmetic on this thread (and on the
/// threads the update hands chunks to) are zero (`speed.flush_denormal`); dropping it restores
/// the previous setting. Elsewhere than x86-64, it does nothing.
pub struct FlushDenormal(FpControl);

impl FlushDenormal {
    /// Flush-to-zero (bit 15) and denormals-are-zero (bit 6) of MXCSR.
    const BITS: u32 = 0x8040;

    pub fn set() -> Self {
        let before = FpControl::current();
        FpControl(before.0 | Self::BITS).apply();
        Self(before)
    }
}

impl Drop for FlushDenormal {
    fn drop(&mut self) {
        self.0.apply();
    }
}

/// Elements per thread below which splitting is not worth a thread start. The update is
/// memory-bound, and a thread of ours competes with libtorch's OpenMP workers, which spin for a
/// while after the backward pass: on a 2-core CPU (docs/results/BENCHMARKS.md, "Tables") a
/// 1.4 M-parameter model stepped 20 % faster with the update on one thread than split in two,
/// and an 11 M-parameter ResNet-18 no faster split. 4 M elements (16 MB per buffer) per thread.
const MIN_PER_THREAD: usize = 1 << 22;

fn threads_for(n: usize, threads: usize) -> usize {
    threads.min(n / MIN_PER_THREAD).max(1)
}

/// The fp32 contents of a non-empty, contiguous CPU tensor, to write.
///
/// # Safety
/// The tensor must pass [`assert_disjoint`] together with every other buffer sliced at the
/// same time; the caller must not run a libtorch op on it while the slice lives.
// A `Tensor` is a shared handle to storage that libtorch itself mutates through `&Tensor`
// (every in-place op does), so a mutable view from a shared reference is the model here.
#[allow(clippy::mut_from_ref)]
unsafe fn slice_mut(t: &Tensor) -> &mut [f32] {
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel())
}

/// The fp32 contents of a buffer that passed [`assert_disjoint`], to read (no mutable slice of
/// it exists: the buffers do not overlap).
fn slice(t: &Tensor) -> &[f32] {
    crate::transfer::host_f32(t).expect("a non-empty contiguous fp32 CPU buffer (asserted)")
}

/// What the slices above rely on: every buffer fp32, contiguous, in CPU memory, of the same
/// non-zero length (a null or dangling pointer is never sliced), and no two overlapping.
fn assert_disjoint(buffers: &[&Tensor]) {
    assert!(applies(buffers), "fused optimizer: buffers must be non-empty, contiguous fp32 CPU tensors of one length");
    let bytes = buffers[0].numel() * std::mem::size_of::<f32>();
    let mut spans: Vec<usize> = buffers.iter().map(|t| t.data_ptr() as usize).collect();
    spans.sort_unstable();
    assert!(spans.windows(2).all(|w| w[0] + bytes <= w[1]), "fused optimizer: buffers overlap");
}

/// Whether the buffers can take the CPU path: fp32, contiguous, in CPU memory, of one
/// non-zero length.
pub fn applies(buffers: &[&Tensor]) -> bool {
    let n = buffers.first().map(|t| t.numel());
    !buffers.is_empty() && buffers.iter().all(|t| crate::transfer::host_f32(t).is_some_and(|v| Some(v.len()) == n))
}

/// One AdamW update of `params` from `grads`, moments `exp_avg`, `exp_avg_sq`, in place.
/// The four buffers must pass [`applies`], be non-empty and not overlap (asserted). Large buffers are split
/// over up to `threads` threads (the result does not depend on the split).
pub fn adamw(params: &Tensor, grads: &Tensor, exp_avg: &Tensor, exp_avg_sq: &Tensor, s: AdamWStep, threads: usize) {
    assert_disjoint(&[params, grads, exp_avg, exp_avg_sq]);
    // SAFETY: four non-empty, disjoint, contiguous fp32 CPU buffers of one length (asserted),
    // and no libtorch op runs on them until we return.
    let (p, m, v) = unsafe { (slice_mut(params), slice_mut(exp_avg), slice_mut(exp_avg_sq)) };
    let g = slice(grads);
    let threads = threads_for(p.len(), threads);
    if threads == 1 {
        return adamw_chunk(p, g, m, v, s);
    }
    let chunk = p.len().div_ceil(threads);
    let control = FpControl::current();
    // The calling thread takes the first chunk; the others get a thread each.
    std::thread::scope(|scope| {
        let mut parts = p.chunks_mut(chunk).zip(g.chunks(chunk)).zip(m.chunks_mut(chunk)).zip(v.chunks_mut(chunk));
        let (((p0, g0), m0), v0) = parts.next().expect("at least one chunk");
        for (((p, g), m), v) in parts {
            scope.spawn(move || {
                control.apply();
                adamw_chunk(p, g, m, v, s)
            });
        }
        adamw_chunk(p0, g0, m0, v0, s);
    });
}

/// One SGD update (momentum buffer when `momentum_buffer` is given), in place.
pub fn sgd(params: &Tensor, grads: &Tensor, momentum_buffer: Option<&Tensor>, s: SgdStep, threads: usize) {
    let mut all = vec![params, grads];
    all.extend(momentum_buffer);
    assert_disjoint(&all);
    // SAFETY: as in `adamw`.
    let (p, g) = (unsafe { slice_mut(params) }, slice(grads));
    let buf = momentum_buffer.map(|b| unsafe { slice_mut(b) });
    let threads = threads_for(p.len(), threads);
    if threads == 1 {
        return sgd_chunk(p, g, buf, s);
    }
    let chunk = p.len().div_ceil(threads);
    let control = FpControl::current();
    // The calling thread takes the first chunk; the others get a thread each.
    std::thread::scope(|scope| match buf {
        None => {
            let mut parts = p.chunks_mut(chunk).zip(g.chunks(chunk));
            let (p0, g0) = parts.next().expect("at least one chunk");
            for (p, g) in parts {
                scope.spawn(move || {
                    control.apply();
                    sgd_chunk(p, g, None, s)
                });
            }
            sgd_chunk(p0, g0, None, s);
        }
        Some(buf) => {
            let mut parts = p.chunks_mut(chunk).zip(g.chunks(chunk)).zip(buf.chunks_mut(chunk));
            let ((p0, g0), b0) = parts.next().expect("at least one chunk");
            for ((p, g), b) in parts {
                scope.spawn(move || {
                    control.apply();
                    sgd_chunk(p, g, Some(b), s)
                });
            }
            sgd_chunk(p0, g0, Some(b0), s);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn buffers(n: i64) -> Vec<Tensor> {
        let t = Tensor::linspace(-3.0, 2.0, n, (Kind::Float, Device::Cpu));
        vec![t.sin(), t.cos() * 0.1, t.g_mul_scalar(0.01), (t.g_mul_scalar(0.3)).square()]
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn overlapping_buffers_are_refused() {
        let [p, _, m, v] = &buffers(64)[..] else { unreachable!() };
        let s = SgdStep { weight_decay: 0.0, momentum: 0.9, nesterov: false, first: true, neg_lr: -0.1 };
        sgd(p, &p.shallow_clone(), Some(m), s, 1);
        let _ = v;
    }

    #[test]
    #[should_panic(expected = "non-empty")]
    fn empty_buffers_are_refused() {
        let e = || Tensor::zeros([0], (Kind::Float, Device::Cpu));
        let s = SgdStep { weight_decay: 0.0, momentum: 0.0, nesterov: false, first: true, neg_lr: -0.1 };
        sgd(&e(), &e(), None, s, 1);
    }

    /// Elementwise, so splitting over threads changes nothing, bit for bit.
    #[test]
    fn thread_split_does_not_change_the_result() {
        let n = 3 * MIN_PER_THREAD as i64 + 13;
        let run = |threads: usize| {
            let [p, g, m, v] = &buffers(n)[..] else { unreachable!() };
            let s = AdamWStep {
                decay: 0.999,
                one_minus_b1: 0.1,
                b2: 0.999,
                one_minus_b2: 0.001,
                bias2_sqrt: 0.05,
                eps: 1e-8,
                neg_step_size: -0.01,
            };
            adamw(p, g, m, v, s, threads);
            let s = SgdStep { weight_decay: 1e-3, momentum: 0.9, nesterov: true, first: false, neg_lr: -0.1 };
            sgd(p, g, Some(m), s, threads);
            Tensor::cat(&[p, m, v], 0)
        };
        let one = run(1);
        assert!(one.equal(&run(3)) && one.equal(&run(8)));
        assert!(!one.equal(&Tensor::cat(&buffers(n)[..], 0).narrow(0, 0, 3 * n)));
    }

    /// `speed.flush_denormal`: a moment decaying into the subnormal range stays there without
    /// it (the IEEE result, as PyTorch computes it) and becomes zero with it; the setting is
    /// the thread's again afterwards, and the threads that take chunks inherit it.
    #[test]
    fn flushing_denormals_zeroes_subnormal_results_only_while_set() {
        let tiny = f32::MIN_POSITIVE * 4.0; // normal; times 0.1 it is subnormal
        let run = |flush: bool| {
            let p = Tensor::from_slice(&[1.0f32, 2.0]);
            let g = Tensor::from_slice(&[0.0f32, 0.5]);
            let m = Tensor::from_slice(&[tiny, 0.25]);
            let v = Tensor::from_slice(&[1.0f32, 1.0]);
            let s = AdamWStep {
                decay: 1.0,
                one_minus_b1: 0.9,
                b2: 0.999,
                one_minus_b2: 0.001,
                bias2_sqrt: 1.0,
                eps: 1e-8,
                neg_step_size: -0.001,
            };
            // The low six bits are sticky exception flags that arithmetic sets; the rest controls.
            let control = || FpControl::current().0 & !0x3f;
            let before = control();
            {
                let _flushing = flush.then(FlushDenormal::set);
                adamw(&p, &g, &m, &v, s, 1);
            }
            assert_eq!(control(), before, "the thread's setting is restored");
            Vec::<f32>::try_from(&m).unwrap()
        };
        let kept = run(false);
        assert!(kept[0] > 0.0 && kept[0] < f32::MIN_POSITIVE, "IEEE keeps the subnormal: {kept:?}");
        assert_eq!(kept[0], lerp(tiny, 0.0, 0.9));
        let flushed = run(true);
        assert_eq!(flushed[0], 0.0);
        assert_eq!(flushed[1], kept[1], "normal numbers are untouched");
        #[cfg(target_arch = "x86_64")]
        {
            let _flushing = FlushDenormal::set();
            let control = FpControl::current();
            let inherited = std::thread::spawn(move || {
                control.apply();
                FpControl::current().0 & FlushDenormal::BITS
            });
            assert_eq!(inherited.join().unwrap(), FlushDenormal::BITS);
        }
    }
}
