//! Tests of the balancing methods: properties of each pure function (`properties`), every
//! method in a real training step in both spaces (`training`), and `build` / checkpoint state
//! (`registry`).
mod properties;
mod registry;
mod training;

use tch::{Kind, Tensor};

/// A `[T, P]` float64 gradient matrix from rows.
pub fn mat(rows: &[Vec<f64>]) -> Tensor {
    let p = rows[0].len() as i64;
    Tensor::from_slice(&rows.concat()).reshape([rows.len() as i64, p])
}

pub fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_device(tch::Device::Cpu).to_kind(Kind::Double).reshape([-1])).unwrap()
}

pub fn rows_of(t: &Tensor) -> Vec<Vec<f64>> {
    let p = t.size()[1] as usize;
    values(t).chunks(p).map(<[f64]>::to_vec).collect()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

pub fn assert_close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol * scale, "{a:?} vs {b:?}");
    }
}

pub fn assert_finite(v: &[f64]) {
    assert!(v.iter().all(|x| x.is_finite()), "not finite: {v:?}");
}

pub fn assert_simplex(w: &[f64]) {
    assert_finite(w);
    assert!(w.iter().all(|v| *v >= -1e-6), "negative weight: {w:?}");
    assert!((w.iter().sum::<f64>() - 1.0).abs() <= 1e-6, "weights do not sum to 1: {w:?}");
}

/// Random `[t, p]` float64 gradients from a seed (a Rust generator: tests run in parallel and
/// libtorch's global one is shared).
pub fn random_grads(seed: u64, t: usize, p: usize) -> Tensor {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v = super::rlw::standard_normals(&mut rng, t * p);
    Tensor::from_slice(&v).reshape([t as i64, p as i64])
}
