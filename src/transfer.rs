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

/// The values of a non-empty, contiguous fp32 CPU tensor, borrowed without a copy; `None` for
/// any other tensor. Nothing may write the tensor while the slice lives (the engine runs a
/// step's tensor work on one thread, and the borrow keeps `t`'s storage alive).
pub fn host_f32(t: &Tensor) -> Option<&[f32]> {
    (t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous() && t.numel() > 0).then(|| {
        // SAFETY: a contiguous fp32 tensor holds `numel` values from `data_ptr` (the storage
        // offset included), and `t` outlives the slice.
        unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel()) }
    })
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
        let m = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).view([2, 3]);
        assert_eq!(host_f32(&m), Some(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0][..]));
        assert_eq!(host_f32(&m.narrow(1, 1, 2)), None, "not contiguous");
        assert_eq!(host_f32(&m.narrow(0, 1, 1)), Some(&[4.0f32, 5.0, 6.0][..]), "a storage offset");
        assert_eq!(host_f32(&m.to_kind(Kind::Double)), None);
        assert_eq!(host_f32(&Tensor::zeros([0], (Kind::Float, Device::Cpu))), None);
        if tch::Cuda::is_available() {
            let c = upload(&t, Device::Cuda(0));
            assert_eq!(Vec::<i64>::try_from(&c.to_device(Device::Cpu)).unwrap(), vec![3, -1, 7]);
        }
    }
}
