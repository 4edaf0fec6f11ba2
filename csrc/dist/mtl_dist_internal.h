// What mtl_dist.cpp needs from the NCCL translation unit (mtl_dist_nccl.cpp), which build.rs
// compiles only where the CUDA headers ProcessGroupNCCL.hpp includes are present.
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <string>

#ifndef MTL_DIST_HAS_NCCL
#define MTL_DIST_HAS_NCCL 0
#endif

// A ProcessGroupNCCL on cuda:`device`, its communicator created eagerly.
c10::intrusive_ptr<c10d::Backend> mtl_dist_make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                     int world, int device, std::chrono::milliseconds timeout);

// "Name=bytes" lines for the NCCL classes ("" without NCCL).
std::string mtl_dist_nccl_sizes();
