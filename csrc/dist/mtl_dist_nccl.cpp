// ProcessGroupNCCL for mtl_dist.cpp: one GPU per rank (cuda:LOCAL_RANK). Compiled by build.rs
// only where the CUDA headers ProcessGroupNCCL.hpp includes are present (the nvidia-cuda-crt and
// nvidia-cuda-cccl wheels beside torch's own CUDA wheels; scripts/setup.sh installs them).
#define USE_C10D_NCCL 1
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "mtl_dist_internal.h"

c10::intrusive_ptr<c10d::Backend> mtl_dist_make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                     int world, int device, std::chrono::milliseconds timeout) {
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
  // Binding the device creates the communicator now (a rendezvous of every rank), not at the
  // first collective, so a missing rank is reported at start-up.
  nccl->setBoundDeviceId(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device)));
  nccl->eagerConnectSingleDevice(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device)));
  return nccl;
}

std::string mtl_dist_nccl_sizes() {
  return "ProcessGroupNCCL=" + std::to_string(sizeof(c10d::ProcessGroupNCCL)) + "\n" +
         "ProcessGroupNCCL::Options=" + std::to_string(sizeof(c10d::ProcessGroupNCCL::Options)) + "\n";
}
