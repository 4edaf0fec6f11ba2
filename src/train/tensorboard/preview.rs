//! The val images TensorBoard shows at each evaluation: the first few val images (the same
//! ones every time, so progress is visible), and for every task that predicts per pixel a
//! picture with one row per image under a header: the image, the target, the model's
//! prediction.
//!
//! Class maps use [`class_colour`] (pixels not scored in grey); values with one channel
//! (depth) a viridis-like ramp over the target's range in that image, shared by target and
//! prediction; three channels (normals) the usual `(n + 1) / 2` colours. Invalid target
//! pixels are black.
use crate::data::loader::Loader;
use crate::model::Mode;
use crate::model::MultiTaskModel;
use crate::tasks::{class_colour, Prediction, Task};
use image::RgbImage;
use tch::{Device, Kind, Tensor};

/// Tiles are scaled up by a whole factor until their longer side reaches this many pixels.
const TILE_PIXELS: usize = 128;
/// White space between tiles.
const GUTTER: usize = 2;
/// The band above the tiles that names the columns.
const HEADER: usize = 20;
const COLUMNS: [&str; 3] = ["image", "target", "prediction"];
/// Pixels a target does not score.
const NOT_SCORED: [u8; 3] = [160, 160, 160];
/// Stops of the ramp for one-channel values, low to high (matplotlib's viridis at 0, ¼, ½, ¾, 1).
const RAMP: [[f32; 3]; 5] = [[68., 1., 84.], [59., 82., 139.], [33., 145., 140.], [94., 201., 98.], [253., 231., 37.]];

/// The preview images and their targets, taken once when training starts.
pub struct Preview {
    /// What the model sees: normalized, on the device.
    images: Tensor,
    /// `[n, h, w, 3]` RGB bytes of the same images.
    pixels: Vec<u8>,
    /// The tasks that read these images (indices into the run's tasks), and each one's
    /// targets for them, on the CPU.
    tasks: Vec<usize>,
    targets: Vec<Tensor>,
    n: usize,
    h: usize,
    w: usize,
}

/// Whether a task gets a picture: it predicts something per pixel.
fn draws(task: &Task) -> bool {
    task.kind.prediction() != Prediction::Class
}

impl Preview {
    /// The first `count` val images of `loader`, whose targets are those of the tasks `ids`;
    /// `None` when `count` is 0 or none of them predicts per pixel.
    pub fn new(loader: &Loader, tasks: &[Task], ids: &[usize], count: usize) -> Option<Self> {
        if count == 0 || !ids.iter().any(|&i| draws(&tasks[i])) {
            return None;
        }
        let mut images = Vec::new();
        let mut targets: Vec<Vec<Tensor>> = ids.iter().map(|_| Vec::new()).collect();
        let mut have = 0;
        for batch in loader.eval_batches() {
            let take = (count - have).min(batch.images.size()[0] as usize) as i64;
            images.push(batch.images.narrow(0, 0, take));
            for (t, y) in targets.iter_mut().zip(&batch.targets) {
                t.push(y.narrow(0, 0, take).to_device(Device::Cpu));
            }
            have += take as usize;
            if have == count {
                break;
            }
        }
        let images = Tensor::cat(&images, 0);
        let s = images.size();
        let (n, c, h, w) = (s[0] as usize, s[1], s[2] as usize, s[3] as usize);
        let pixels = loader.pixels(&images);
        let rgb = if c == 1 { pixels.expand([s[0], 3, s[2], s[3]], false) } else { pixels };
        let pixels =
            Vec::<u8>::try_from(rgb.permute([0, 2, 3, 1]).contiguous().to_device(Device::Cpu).view([-1])).ok()?;
        let targets = targets.iter().map(|t| Tensor::cat(t, 0)).collect();
        Some(Self { images, pixels, tasks: ids.to_vec(), targets, n, h, w })
    }

    /// `(task name, picture)` for every task that predicts per pixel, from `model`'s
    /// eval-mode outputs on the preview images.
    pub fn render(&self, model: &MultiTaskModel, tasks: &[Task]) -> Vec<(String, RgbImage)> {
        let outputs = tch::no_grad(|| model.forward(&self.images, Mode::Eval));
        self.tasks
            .iter()
            .zip(&self.targets)
            .filter(|(&i, _)| draws(&tasks[i]))
            .map(|(&i, target)| {
                (tasks[i].name.clone(), self.picture(&tasks[i], &outputs[i].to_device(Device::Cpu), target))
            })
            .collect()
    }

    fn picture(&self, task: &Task, output: &Tensor, target: &Tensor) -> RgbImage {
        let (h, w) = (self.h, self.w);
        let scale = (TILE_PIXELS / h.max(w)).max(1);
        let (th, tw) = (h * scale, w * scale);
        let mut img = RgbImage::from_pixel(
            (3 * tw + 4 * GUTTER) as u32,
            (HEADER + self.n * th + (self.n + 1) * GUTTER) as u32,
            image::Rgb([255; 3]),
        );
        let (truth, predicted) = match task.kind.prediction() {
            Prediction::ClassMask => {
                (self.class_tiles(target, task.ignore_index), self.class_tiles(&output.argmax(1, false), -1))
            }
            _ => self.value_tiles(target, output),
        };
        for i in 0..self.n {
            let image = &self.pixels[i * h * w * 3..(i + 1) * h * w * 3];
            for (col, tile) in [image, &truth[i], &predicted[i]].into_iter().enumerate() {
                let (x0, y0) = (GUTTER + col * (tw + GUTTER), HEADER + GUTTER + i * (th + GUTTER));
                for y in 0..th {
                    for x in 0..tw {
                        let p = ((y / scale) * w + x / scale) * 3;
                        img.put_pixel(
                            (x0 + x) as u32,
                            (y0 + y) as u32,
                            image::Rgb([tile[p], tile[p + 1], tile[p + 2]]),
                        );
                    }
                }
            }
        }
        let labels: Vec<(&str, (i32, i32))> = COLUMNS
            .iter()
            .enumerate()
            .map(|(col, text)| (*text, ((GUTTER + col * (tw + GUTTER) + tw / 2) as i32, (HEADER / 2 + 1) as i32)))
            .collect();
        // The labels are a courtesy: a font failure leaves the tiles as they are.
        let _ = crate::train::plot::draw_texts(&mut img, &labels, 13);
        img
    }

    /// RGB tiles of `[n, h, w]` class labels; `ignore` (and anything not a class) in grey.
    fn class_tiles(&self, labels: &Tensor, ignore: i64) -> Vec<Vec<u8>> {
        let labels = Vec::<i64>::try_from(labels.to_kind(Kind::Int64).contiguous().view([-1])).unwrap_or_default();
        labels
            .chunks(self.h * self.w)
            .map(|tile| {
                tile.iter()
                    .flat_map(
                        |&v| if v == ignore || !(0..=255).contains(&v) { NOT_SCORED } else { class_colour(v as u8) },
                    )
                    .collect()
            })
            .collect()
    }

    /// RGB tiles of per-pixel values, target and prediction: one channel on the ramp over the
    /// target's finite range in each image, three as normals.
    fn value_tiles(&self, target: &Tensor, output: &Tensor) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let target = if target.dim() == 3 { target.unsqueeze(1) } else { target.shallow_clone() };
        let channels = output.size()[1] as usize;
        let values =
            |t: &Tensor| Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view([-1])).unwrap_or_default();
        let (truth, predicted) = (values(&target), values(output));
        let px = self.h * self.w;
        let mut out = (Vec::new(), Vec::new());
        for i in 0..self.n {
            let sample = |v: &[f32]| v[i * channels * px..(i + 1) * channels * px].to_vec();
            let (t, p) = (sample(&truth), sample(&predicted));
            // The target's range; the prediction's when the target has no valid pixel.
            let basis = if t.iter().any(|v| v.is_finite()) { &t } else { &p };
            let (lo, hi) = finite_range(basis.iter());
            let tile = |v: &[f32]| -> Vec<u8> {
                (0..px)
                    .flat_map(|j| match channels {
                        3 => normal_colour([v[j], v[px + j], v[2 * px + j]]),
                        _ => ramp_colour(v[j], lo, hi),
                    })
                    .collect()
            };
            out.0.push(tile(&t));
            out.1.push(tile(&p));
        }
        out
    }
}

fn finite_range<'a>(values: impl Iterator<Item = &'a f32>) -> (f32, f32) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if lo.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

/// The ramp colour of `v` in `[lo, hi]` (clamped); black when `v` is not finite.
fn ramp_colour(v: f32, lo: f32, hi: f32) -> [u8; 3] {
    if !v.is_finite() {
        return [0; 3];
    }
    let t = if hi > lo { ((v - lo) / (hi - lo)).clamp(0.0, 1.0) } else { 0.5 };
    let x = t * (RAMP.len() - 1) as f32;
    let k = (x as usize).min(RAMP.len() - 2);
    let f = x - k as f32;
    std::array::from_fn(|c| (RAMP[k][c] + (RAMP[k + 1][c] - RAMP[k][c]) * f).round() as u8)
}

/// A unit normal as RGB, `(n + 1) / 2` per axis; black when any component is not finite.
fn normal_colour(n: [f32; 3]) -> [u8; 3] {
    if n.iter().any(|v| !v.is_finite()) {
        return [0; 3];
    }
    n.map(|v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours() {
        assert_eq!(ramp_colour(0.0, 0.0, 1.0), [68, 1, 84]);
        assert_eq!(ramp_colour(1.0, 0.0, 1.0), [253, 231, 37]);
        assert_eq!(ramp_colour(5.0, 0.0, 1.0), [253, 231, 37], "clamped");
        assert_eq!(ramp_colour(0.5, 0.0, 1.0), [33, 145, 140]);
        assert_eq!(ramp_colour(f32::NAN, 0.0, 1.0), [0, 0, 0]);
        assert_eq!(normal_colour([0.0, 0.0, 1.0]), [128, 128, 255]);
        assert_eq!(normal_colour([-1.0, 0.0, f32::NAN]), [0, 0, 0]);
        assert_eq!(finite_range([f32::NAN, 2.0, -1.0].iter()), (-1.0, 2.0));
        assert_eq!(finite_range([f32::NAN].iter()), (0.0, 1.0));
    }
}
