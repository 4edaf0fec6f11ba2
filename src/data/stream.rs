//! Datasets stored one file set per sample (pet, folder, nyuv2): decoded in parallel into
//! memory when they fit in `data.max_memory_mb`, streamed from disk when they do not.
//!
//! Streaming: `W` decode threads each own a bounded channel; thread w decodes the batches
//! `start + w, start + w + W, …` in turn (the sample indices of batch g come from a plan, a pure
//! function of g: the seeded epoch order for training, dataset order for evaluation) and blocks
//! when its channel holds `depth` finished batches. The trainer takes batch g from channel
//! `(g − start) mod W`, so batches arrive in order, at most `W · (depth + 1)` are in memory, and
//! a batch is a pure function of its index: the same bytes the in-memory path gathers, which is
//! what keeps resume exact in this mode too.
use super::{
    decode_threads, grayscale_images, on_bad_file, stream_threads, Dataset, Source, Sources, Split, TargetShape, MB,
};
use crate::config::{DataConfig, OnBadFile};
use crate::{user_bail, user_error};
use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use tch::{Device, Kind, Tensor};

/// One decoded sample: the image (uint8, channel-major `C·H·W`) and one value per target, in
/// the order of [`SampleSource::targets`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub image: Vec<u8>,
    pub targets: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Class(i64),
    /// `H·W` labels (255: not scored).
    Labels(Vec<u8>),
    /// `H·W` depths, NaN where invalid.
    Depth(Vec<f32>),
    /// `3·H·W` unit vectors (x plane, y plane, z plane), NaN where invalid.
    Normal(Vec<f32>),
}

/// A target of a file-per-sample dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub name: String,
    pub shape: TargetShape,
}

/// A dataset whose samples can be decoded one by one, in any order, from any thread.
pub trait SampleSource: Send + Sync {
    /// For messages: the dataset and split.
    fn name(&self) -> String;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `(channels, height, width)` of every decoded image.
    fn image_shape(&self) -> (usize, usize, usize);
    fn targets(&self) -> &[TargetSpec];
    /// Decodes sample `i`; an error names the file and what is wrong with it.
    fn read(&self, i: usize) -> anyhow::Result<Sample>;
}

/// The train and val sources of a dataset.
pub struct FileSources {
    pub train: Arc<dyn SampleSource>,
    pub val: Arc<dyn SampleSource>,
}

/// Bytes one sample takes in memory (images uint8, labels uint8, classes int64, depth and
/// normals float16), after the grey conversion when `grayscale`.
pub fn sample_bytes(src: &dyn SampleSource, grayscale: bool) -> u64 {
    let (c, h, w) = src.image_shape();
    let px = (h * w) as u64;
    let c = if grayscale { 1 } else { c as u64 };
    c * px + src.targets().iter().map(|t| super::target_bytes(t.shape, px)).sum::<u64>()
}

/// Loads both splits into memory when they fit in `data.max_memory_mb`, else prepares them for
/// streaming. Bad samples are listed once and left out, or refused (`data.on_bad_file`).
pub fn load_files(dataset: &dyn Dataset, d: &DataConfig, sources: &FileSources) -> anyhow::Result<Sources> {
    let on_bad = on_bad_file(dataset, d);
    let threads = decode_threads(d);
    let (nt, nv) = (sources.train.len(), sources.val.len());
    let bytes = sample_bytes(&*sources.train, d.grayscale) * (nt + nv) as u64;
    let mb = bytes as f64 / MB;
    if mb <= d.max_memory_mb {
        tracing::info!(
            "data: {} {nt} train + {nv} val samples take {} MB as uint8/float16 (data.max_memory_mb {}): \
             decoding into memory with {threads} threads",
            d.dataset,
            super::show_mb(mb),
            d.max_memory_mb
        );
        let load = |src: &Arc<dyn SampleSource>| -> anyhow::Result<Source> {
            let all: Vec<usize> = (0..src.len()).collect();
            let (split, bad) = read_all(&**src, &all, threads);
            let good = keep_good(on_bad, &**src, bad)?;
            let split = if good.len() == src.len() {
                split
            } else {
                split.select(&good.iter().map(|&i| i as i64).collect::<Vec<_>>())
            };
            let split = if d.grayscale {
                Split { images: grayscale_images(&split.images), targets: split.targets }
            } else {
                split
            };
            Ok(Source::Memory(split))
        };
        return Ok(Sources { train: load(&sources.train)?, val: load(&sources.val)? });
    }
    let streaming = stream_threads(d);
    tracing::info!(
        "data: {} {nt} train + {nv} val samples would take {} MB, more than data.max_memory_mb {}: \
         streaming from disk with {streaming} decode threads, {} batches ahead (checking every file first \
         with {threads})",
        d.dataset,
        super::show_mb(mb),
        d.max_memory_mb,
        d.prefetch_batches
    );
    let stream = |src: &Arc<dyn SampleSource>| -> anyhow::Result<Source> {
        let bad = verify(&**src, threads);
        let good = keep_good(on_bad, &**src, bad)?;
        Ok(Source::Stream(Streamed {
            source: src.clone(),
            indices: Arc::new(good),
            grayscale: d.grayscale,
            threads: streaming,
            prefetch: d.prefetch_batches,
            device: Device::Cpu,
        }))
    };
    Ok(Sources { train: stream(&sources.train)?, val: stream(&sources.val)? })
}

/// The indices of the good samples after listing (skip) or refusing (refuse) the bad ones.
fn keep_good(
    on_bad: OnBadFile,
    src: &dyn SampleSource,
    bad: Vec<(usize, anyhow::Error)>,
) -> anyhow::Result<Vec<usize>> {
    let good: Vec<usize> = {
        let is_bad: std::collections::BTreeSet<usize> = bad.iter().map(|(i, _)| *i).collect();
        (0..src.len()).filter(|i| !is_bad.contains(i)).collect()
    };
    if let Some((_, first)) = bad.first() {
        match on_bad {
            OnBadFile::Refuse => user_bail!(
                "{first}{} (data.on_bad_file: refuse; set skip to leave bad samples out)",
                match bad.len() {
                    1 => String::new(),
                    n => format!("; {} more bad sample(s) in {}", n - 1, src.name()),
                }
            ),
            OnBadFile::Skip => {
                for (_, e) in &bad {
                    tracing::warn!("data: skipping a bad sample: {e}");
                }
                tracing::warn!(
                    "data: {}: skipped {} of {} samples (data.on_bad_file: skip)",
                    src.name(),
                    bad.len(),
                    src.len()
                );
            }
        }
    }
    if good.is_empty() {
        user_bail!("data: {} has no usable samples", src.name());
    }
    Ok(good)
}

/// Decodes every sample once (in parallel) without keeping it: the errors, by index.
fn verify(src: &dyn SampleSource, threads: usize) -> Vec<(usize, anyhow::Error)> {
    let n = src.len();
    let per = n.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .step_by(per)
            .map(|start| {
                scope.spawn(move || {
                    (start..(start + per).min(n)).filter_map(|i| src.read(i).err().map(|e| (i, e))).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a decode thread panicked")).collect()
    })
}

/// A target buffer being filled.
enum Buf {
    I64(Vec<i64>),
    U8(Vec<u8>),
    F32(Vec<f32>),
}

enum BufMut<'a> {
    I64(&'a mut [i64]),
    U8(&'a mut [u8]),
    F32(&'a mut [f32]),
}

/// Values per sample of a target.
fn per_sample(shape: TargetShape, px: usize) -> usize {
    match shape {
        TargetShape::PerImage | TargetShape::Binary | TargetShape::Value => 1,
        TargetShape::PerPixel | TargetShape::PerPixelDepth => px,
        TargetShape::PerPixelNormal => 3 * px,
    }
}

/// Decodes the samples at `indices` with `threads` threads into one split (in that order).
/// Samples that fail are left as zeros and returned as `(position in indices, error)`.
pub fn read_all(src: &dyn SampleSource, indices: &[usize], threads: usize) -> (Split, Vec<(usize, anyhow::Error)>) {
    let n = indices.len();
    let (c, h, w) = src.image_shape();
    let px = h * w;
    let img_len = c * px;
    let specs = src.targets().to_vec();
    let mut images = vec![0u8; n * img_len];
    let mut bufs: Vec<Buf> = specs
        .iter()
        .map(|t| {
            let len = n * per_sample(t.shape, px);
            match t.shape {
                TargetShape::PerImage => Buf::I64(vec![0; len]),
                TargetShape::PerPixel => Buf::U8(vec![0; len]),
                _ => Buf::F32(vec![0.0; len]),
            }
        })
        .collect();
    let per = n.div_ceil(threads.max(1)).max(1);
    // Per chunk of `per` samples: its slice of every buffer.
    let mut chunks: Vec<(usize, &mut [u8], Vec<BufMut>)> =
        images.chunks_mut(per * img_len.max(1)).enumerate().map(|(k, img)| (k * per, img, Vec::new())).collect();
    for (buf, spec) in bufs.iter_mut().zip(&specs) {
        let len = per * per_sample(spec.shape, px);
        let parts: Vec<BufMut> = match buf {
            Buf::I64(v) => v.chunks_mut(len).map(BufMut::I64).collect(),
            Buf::U8(v) => v.chunks_mut(len).map(BufMut::U8).collect(),
            Buf::F32(v) => v.chunks_mut(len).map(BufMut::F32).collect(),
        };
        for (chunk, part) in chunks.iter_mut().zip(parts) {
            chunk.2.push(part);
        }
    }
    let errors = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|(start, img, mut parts)| {
                let specs = &specs;
                scope.spawn(move || {
                    let mut errors = Vec::new();
                    for (k, &i) in indices[start..(start + per).min(n)].iter().enumerate() {
                        let result =
                            src.read(i).and_then(|s| store(&s, k, img_len, px, img, &mut parts, specs, &src.name()));
                        if let Err(e) = result {
                            errors.push((start + k, e));
                        }
                    }
                    errors
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a decode thread panicked")).collect::<Vec<_>>()
    });
    let (n, c, h, w) = (n as i64, c as i64, h as i64, w as i64);
    let targets = specs
        .iter()
        .zip(bufs)
        .map(|(spec, buf)| {
            let t = match (buf, spec.shape) {
                (Buf::I64(v), _) => Tensor::from_slice(&v),
                (Buf::U8(v), _) => Tensor::from_slice(&v).view([n, h, w]),
                (Buf::F32(v), TargetShape::PerPixelNormal) => {
                    Tensor::from_slice(&v).view([n, 3, h, w]).to_kind(Kind::Half)
                }
                (Buf::F32(v), _) => Tensor::from_slice(&v).view([n, h, w]).to_kind(Kind::Half),
            };
            (spec.name.clone(), t)
        })
        .collect::<BTreeMap<_, _>>();
    (Split { images: Tensor::from_slice(&images).view([n, c, h, w]), targets }, errors)
}

/// Copies sample `s` into slot `k` of a chunk's buffers.
#[allow(clippy::too_many_arguments)]
fn store(
    s: &Sample,
    k: usize,
    img_len: usize,
    px: usize,
    img: &mut [u8],
    parts: &mut [BufMut],
    specs: &[TargetSpec],
    source: &str,
) -> anyhow::Result<()> {
    // A source that returns the wrong sizes is a bug, not a user error.
    anyhow::ensure!(
        s.image.len() == img_len,
        "{source}: decoded image has {} bytes, expected {img_len}",
        s.image.len()
    );
    anyhow::ensure!(
        s.targets.len() == specs.len(),
        "{source}: decoded {} targets, expected {}",
        s.targets.len(),
        specs.len()
    );
    img[k * img_len..(k + 1) * img_len].copy_from_slice(&s.image);
    for ((value, part), spec) in s.targets.iter().zip(parts.iter_mut()).zip(specs) {
        let len = per_sample(spec.shape, px);
        let at = k * len..(k + 1) * len;
        match (value, part) {
            (Value::Class(c), BufMut::I64(b)) => b[k] = *c,
            (Value::Labels(v), BufMut::U8(b)) if v.len() == len => b[at].copy_from_slice(v),
            (Value::Depth(v) | Value::Normal(v), BufMut::F32(b)) if v.len() == len => b[at].copy_from_slice(v),
            _ => anyhow::bail!("{source}: target '{}' decoded with the wrong type or size", spec.name),
        }
    }
    Ok(())
}

/// A split read from disk batch by batch.
pub struct Streamed {
    source: Arc<dyn SampleSource>,
    /// Source indices of the usable samples; sample p of the split is `source[indices[p]]`.
    indices: Arc<Vec<usize>>,
    grayscale: bool,
    threads: usize,
    prefetch: usize,
    device: Device,
}

/// The sample positions of batch g (a pure function of g).
pub type Plan = Arc<dyn Fn(u64) -> Vec<i64> + Send + Sync>;

impl Streamed {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    pub fn to_device(self, device: Device) -> Self {
        Self { device, ..self }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Channels of the images the loader sees (after the grey conversion).
    pub fn channels(&self) -> i64 {
        if self.grayscale {
            1
        } else {
            self.source.image_shape().0 as i64
        }
    }

    /// `(height, width)` of the images.
    pub fn image_hw(&self) -> (i64, i64) {
        let (_, h, w) = self.source.image_shape();
        (h as i64, w as i64)
    }

    pub fn target_shape(&self, name: &str) -> Option<TargetShape> {
        self.source.targets().iter().find(|t| t.name == name).map(|t| t.shape)
    }

    /// Decodes the samples at `positions` on this thread (CPU tensors).
    pub fn read_batch(&self, positions: &[i64]) -> anyhow::Result<Split> {
        read_positions(&*self.source, &self.indices, positions, self.grayscale)
    }

    /// Starts the decode threads on batches `start, start + 1, …` (up to `end`, exclusive).
    pub fn prefetch(&self, plan: Plan, start: u64, end: Option<u64>) -> Prefetcher {
        let workers = self.threads.max(1) as u64;
        let depth = self.prefetch.div_ceil(workers as usize).max(1);
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for w in 0..workers {
            let (tx, rx) = sync_channel(depth);
            let (source, indices, plan, grayscale) =
                (self.source.clone(), self.indices.clone(), plan.clone(), self.grayscale);
            handles.push(std::thread::spawn(move || {
                let mut g = start + w;
                while end.is_none_or(|e| g < e) {
                    let batch = read_positions(&*source, &indices, &plan(g), grayscale);
                    if tx.send((g, batch)).is_err() {
                        return; // the loader went away
                    }
                    g += workers;
                }
            }));
            receivers.push(rx);
        }
        Prefetcher { receivers, handles, start, next: start }
    }
}

fn read_positions(
    src: &dyn SampleSource,
    indices: &[usize],
    positions: &[i64],
    grayscale: bool,
) -> anyhow::Result<Split> {
    let wanted: Vec<usize> = positions.iter().map(|&p| indices[p as usize]).collect();
    let (split, errors) = read_all(src, &wanted, 1);
    if let Some((_, e)) = errors.into_iter().next() {
        // Every file decoded when the run started: it changed on disk since.
        return Err(user_error!("{e} (the file changed on disk after it was checked at start-up)"));
    }
    Ok(if grayscale { Split { images: grayscale_images(&split.images), targets: split.targets } } else { split })
}

/// Decode threads working ahead of the trainer; dropping it stops them.
pub struct Prefetcher {
    receivers: Vec<Receiver<(u64, anyhow::Result<Split>)>>,
    handles: Vec<JoinHandle<()>>,
    start: u64,
    next: u64,
}

/// Batches prepared ahead of the trainer by other threads, handed out in order.
pub trait Ahead {
    /// The index of the batch [`Ahead::next_batch`] returns.
    fn position(&self) -> u64;
    /// The next batch in order (waits for the thread preparing it).
    fn next_batch(&mut self) -> anyhow::Result<Split>;
}

impl Ahead for Prefetcher {
    fn position(&self) -> u64 {
        self.next
    }

    fn next_batch(&mut self) -> anyhow::Result<Split> {
        let g = self.next;
        let w = ((g - self.start) % self.receivers.len() as u64) as usize;
        let (tag, batch) = self.receivers[w]
            .recv()
            .map_err(|_| anyhow::anyhow!("a decode thread stopped before batch {g} (see its panic above)"))?;
        assert_eq!(tag, g, "decode threads out of step");
        self.next += 1;
        batch
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing the channels makes every blocked or finishing thread return.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sample i: every image byte i, class i % 3, a label map of i, depth i + 0.5 except a
    /// NaN in the first pixel; index 5 fails.
    struct Fake {
        n: usize,
        targets: Vec<TargetSpec>,
    }

    impl Fake {
        fn new(n: usize) -> Self {
            let spec = |name: &str, shape| TargetSpec { name: name.into(), shape };
            Fake {
                n,
                targets: vec![
                    spec("class", TargetShape::PerImage),
                    spec("mask", TargetShape::PerPixel),
                    spec("depth", TargetShape::PerPixelDepth),
                    spec("normal", TargetShape::PerPixelNormal),
                ],
            }
        }
    }

    impl SampleSource for Fake {
        fn name(&self) -> String {
            "fake".into()
        }
        fn len(&self) -> usize {
            self.n
        }
        fn image_shape(&self) -> (usize, usize, usize) {
            (3, 2, 4)
        }
        fn targets(&self) -> &[TargetSpec] {
            &self.targets
        }
        fn read(&self, i: usize) -> anyhow::Result<Sample> {
            if i == 5 {
                return Err(user_error!("fake/5.bin: broken"));
            }
            let mut depth = vec![i as f32 + 0.5; 8];
            depth[0] = f32::NAN;
            let normal = (0..24).map(|p| if p < 8 { 1.0 } else { 0.0 }).collect();
            Ok(Sample {
                image: vec![i as u8; 24],
                targets: vec![
                    Value::Class(i as i64 % 3),
                    Value::Labels(vec![i as u8; 8]),
                    Value::Depth(depth),
                    Value::Normal(normal),
                ],
            })
        }
    }

    #[test]
    fn read_all_fills_every_buffer_in_order_with_any_thread_count() {
        let src = Fake::new(9);
        let indices = [8usize, 0, 3, 5, 1];
        let (one, errors) = read_all(&src, &indices, 1);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, 3);
        assert!(errors[0].1.to_string().contains("fake/5.bin"));
        assert_eq!(one.images.size(), [5, 3, 2, 4]);
        assert_eq!(one.targets["depth"].kind(), Kind::Half);
        assert_eq!(one.targets["normal"].size(), [5, 3, 2, 4]);
        let firsts: Vec<u8> = (0..5).map(|k| one.images.int64_value(&[k, 2, 1, 3]) as u8).collect();
        assert_eq!(firsts, [8, 0, 3, 0, 1]);
        assert_eq!(Vec::<i64>::try_from(&one.targets["class"]).unwrap(), [2, 0, 0, 0, 1]);
        assert_eq!(one.targets["depth"].double_value(&[2, 1, 1]), 3.5);
        assert!(one.targets["depth"].double_value(&[2, 0, 0]).is_nan());
        for threads in [2, 3, 7] {
            let (more, e) = read_all(&src, &indices, threads);
            assert_eq!(e.len(), 1);
            assert!(more.images.equal(&one.images));
            for (k, v) in &one.targets {
                assert!(
                    v.to_kind(Kind::Float)
                        .nan_to_num(-1.0, None, None)
                        .equal(&more.targets[k].to_kind(Kind::Float).nan_to_num(-1.0, None, None)),
                    "{k}"
                );
            }
        }
    }

    #[test]
    fn prefetcher_delivers_batches_in_order_from_any_start() {
        let src: Arc<dyn SampleSource> = Arc::new(Fake::new(12));
        let indices: Vec<usize> = (0..12).filter(|&i| i != 5).collect();
        let s = Streamed {
            source: src,
            indices: Arc::new(indices.clone()),
            grayscale: false,
            threads: 3,
            prefetch: 4,
            device: Device::Cpu,
        };
        // Batch g holds positions g, g + 1 (mod 11).
        let plan: Plan = Arc::new(|g| vec![(g % 11) as i64, ((g + 1) % 11) as i64]);
        for start in [0u64, 4] {
            let mut p = s.prefetch(plan.clone(), start, Some(start + 7));
            for g in start..start + 7 {
                assert_eq!(p.position(), g);
                let b = p.next_batch().unwrap();
                let want = s.read_batch(&plan(g)).unwrap();
                assert!(b.images.equal(&want.images), "batch {g}");
                assert_eq!(b.images.int64_value(&[0, 0, 0, 0]) as usize, indices[(g % 11) as usize]);
            }
        }
        // Dropping a prefetcher with threads blocked on full channels returns promptly.
        let p = s.prefetch(plan, 0, None);
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(p);
    }
}
