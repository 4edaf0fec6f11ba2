//! Host-to-device copies made inside the training step.
use tch::{Device, Kind, Tensor};

/// `t` on `device`, without making the host wait. On CUDA a copy from ordinary (pageable)
/// host memory is synchronous: the host would wait for all queued GPU work at every step and
/// could never run ahead of it. From pinned memory the copy is queued like a kernel; PyTorch's
/// caching host allocator keeps the pinned block alive until the copy has run, and reuses it.
pub fn upload(t: &Tensor, device: Device) -> Tensor {
    match device {
        Device::Cuda(_) => t.pin_memory(device).to_device_(device, t.kind(), true, false),
        _ => t.to_device(device),
    }
}

/// `values` as an f32 vector on `device` (per-task weights and the like).
pub fn f32_values(values: &[f64], device: Device) -> Tensor {
    upload(&Tensor::from_slice(values).to_kind(Kind::Float), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_keeps_values_and_kind() {
        let t = Tensor::from_slice(&[3i64, -1, 7]);
        let u = upload(&t, Device::Cpu);
        assert_eq!(Vec::<i64>::try_from(&u).unwrap(), vec![3, -1, 7]);
        let f = f32_values(&[0.5, 2.0], Device::Cpu);
        assert_eq!(f.kind(), Kind::Float);
        assert_eq!(Vec::<f32>::try_from(&f).unwrap(), vec![0.5, 2.0]);
        if tch::Cuda::is_available() {
            let c = upload(&t, Device::Cuda(0));
            assert_eq!(Vec::<i64>::try_from(&c.to_device(Device::Cpu)).unwrap(), vec![3, -1, 7]);
        }
    }
}
