//! Reading a balancer's checkpoint tensors back: by name, with the shape checked, so a
//! checkpoint of another method or task count fails with a message naming the tensor.
use tch::{Kind, Tensor};

/// The tensor `name` from `tensors`, which must have `shape` (`-1` matches any size). Returned
/// as an owned copy on the CPU; methods move their state to the step's device when used.
pub fn get(tensors: &[(String, Tensor)], name: &str, shape: &[i64]) -> anyhow::Result<Tensor> {
    let Some((_, t)) = tensors.iter().find(|(n, _)| n == name) else {
        crate::user_bail!("checkpoint: balancer state '{name}' is missing (saved by another method?)");
    };
    let size = t.size();
    let fits = size.len() == shape.len() && size.iter().zip(shape).all(|(a, b)| *b < 0 || a == b);
    if !fits {
        crate::user_bail!(
            "checkpoint: balancer state '{name}' has shape {size:?}, expected {shape:?} (another task count?)"
        );
    }
    Ok(t.detach().to_device(tch::Device::Cpu).copy())
}

/// A `[n]` float64 tensor's values.
pub fn get_vec(tensors: &[(String, Tensor)], name: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    super::autograd::host_vec(&get(tensors, name, &[n as i64])?)
}

/// An integer counter stored as a `[1]` int64 tensor.
pub fn get_count(tensors: &[(String, Tensor)], name: &str) -> anyhow::Result<i64> {
    Ok(get(tensors, name, &[1])?.to_kind(Kind::Int64).int64_value(&[0]))
}

pub fn count(value: i64) -> Tensor {
    Tensor::from_slice(&[value])
}

pub fn vec(values: &[f64]) -> Tensor {
    Tensor::from_slice(values)
}
