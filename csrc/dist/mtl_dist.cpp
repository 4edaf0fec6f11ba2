// c10d for the Rust engine (see mtl_dist.h): TCPStore, ProcessGroupGloo and the collectives,
// all of them libtorch's own code, reached through its headers. The torch wheel ships the
// c10d headers but not gloo's; gloo_shim/ stands in for the few gloo declarations
// ProcessGroupGloo.hpp names (see gloo_shim/gloo_shim.h for the contract), and build.rs checks
// the sizes of the classes constructed here against the library (docs/DISTRIBUTED.md).
#include "mtl_dist.h"

#include <ATen/ATen.h>
#include <c10/util/Logging.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "mtl_dist_internal.h"

struct mtl_store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct mtl_group {
  c10::intrusive_ptr<c10d::Backend> backend;
  int world;
};

namespace {

thread_local std::string last_error;
mtl_dist_fatal_fn fatal_handler = nullptr;

std::string message_of(const std::exception& e) {
  if (auto* c10 = dynamic_cast<const c10::Error*>(&e)) {
    return c10->what_without_backtrace();
  }
  return e.what();
}

// Runs `f`, turning an exception into -1 and the thread's last error.
template <class F>
int guarded(F&& f) {
  try {
    f();
    last_error.clear();
    return 0;
  } catch (const std::exception& e) {
    last_error = message_of(e);
    return -1;
  }
}

// Runs a collective; a failure is fatal (c10d leaves the group unusable after one).
template <class F>
void collective(const char* what, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    const std::string message = message_of(e);
    if (fatal_handler != nullptr) {
      fatal_handler(what, message.c_str());
    }
    std::fprintf(stderr, "error: %s failed: %s\n", what, message.c_str());
    std::abort();
  }
}

at::Tensor& tensor_of(mtl_tensor t) {
  return *static_cast<at::Tensor*>(t);
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 1:
      return c10d::ReduceOp::MAX;
    case 2:
      return c10d::ReduceOp::MIN;
    default:
      return c10d::ReduceOp::SUM;
  }
}

void all_reduce(mtl_group* g, at::Tensor& t, int op) {
  std::vector<at::Tensor> ts{t};
  c10d::AllreduceOptions opts;
  opts.reduceOp = reduce_op(op);
  g->backend->allreduce(ts, opts)->wait();
}

char* copy_out(const std::vector<uint8_t>& bytes, size_t* len) {
  char* out = static_cast<char*>(std::malloc(bytes.empty() ? 1 : bytes.size()));
  if (out == nullptr) {
    throw std::bad_alloc();
  }
  if (!bytes.empty()) {
    std::memcpy(out, bytes.data(), bytes.size());
  }
  *len = bytes.size();
  return out;
}

// The sum over ranks, differentiable: its backward sums the incoming gradients over ranks, so
// a statistic computed from every rank's batch (synchronized BatchNorm) gets the gradient of the
// loss summed over all ranks. torch.distributed.nn.functional.all_reduce, in C++.
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, int64_t group) {
    ctx->saved_data["group"] = group;
    at::Tensor out = input.clone(at::MemoryFormat::Contiguous);
    collective("all-reduce (synchronized statistics)",
               [&] { all_reduce(reinterpret_cast<mtl_group*>(group), out, 0); });
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* g = reinterpret_cast<mtl_group*>(ctx->saved_data["group"].toInt());
    at::Tensor grad = grads[0].clone(at::MemoryFormat::Contiguous);
    collective("all-reduce (gradient of synchronized statistics)", [&] { all_reduce(g, grad, 0); });
    return {grad, at::Tensor()};
  }
};

}  // namespace

#if !MTL_DIST_HAS_NCCL
c10::intrusive_ptr<c10d::Backend> mtl_dist_make_nccl(const c10::intrusive_ptr<c10d::Store>&, int, int, int,
                                                     std::chrono::milliseconds) {
  TORCH_CHECK(false, "this build has no NCCL backend (the CUDA headers were absent when it was built)");
}

std::string mtl_dist_nccl_sizes() {
  return "";
}
#endif

extern "C" {

const char* mtl_dist_last_error(void) {
  return last_error.c_str();
}

void mtl_dist_set_fatal_handler(mtl_dist_fatal_fn handler) {
  fatal_handler = handler;
}

mtl_store* mtl_store_connect(const char* host, uint16_t port, int is_server, int wait_workers,
                             int64_t timeout_ms) {
  mtl_store* out = nullptr;
  guarded([&] {
    c10d::TCPStoreOptions so;
    so.port = port;
    so.isServer = is_server != 0;
    if (wait_workers > 0) {
      so.numWorkers = static_cast<size_t>(wait_workers);
    }
    so.waitWorkers = wait_workers > 0;
    so.timeout = std::chrono::milliseconds(timeout_ms);
    auto tcp = c10::make_intrusive<c10d::TCPStore>(host, so);
    out = new mtl_store{tcp};
  });
  return out;
}

void mtl_store_free(mtl_store* store) {
  delete store;
}

int mtl_store_set(mtl_store* store, const char* key, const char* value, size_t len) {
  return guarded([&] { store->store->set(key, std::vector<uint8_t>(value, value + len)); });
}

int mtl_store_get(mtl_store* store, const char* key, char** value, size_t* len) {
  return guarded([&] { *value = copy_out(store->store->get(key), len); });
}

int mtl_store_add(mtl_store* store, const char* key, int64_t delta, int64_t* result) {
  return guarded([&] { *result = store->store->add(key, delta); });
}

int mtl_store_check(mtl_store* store, const char* key, int* exists) {
  return guarded([&] { *exists = store->store->check({key}) ? 1 : 0; });
}

int mtl_store_set_once(mtl_store* store, const char* key, const char* desired, size_t len, char** current,
                       size_t* current_len) {
  return guarded([&] {
    // compareSet with an empty expected value sets an absent key (and returns what is there).
    auto now = store->store->compareSet(key, {}, std::vector<uint8_t>(desired, desired + len));
    *current = copy_out(now, current_len);
  });
}

void mtl_dist_free(void* p) {
  std::free(p);
}

mtl_group* mtl_group_new(mtl_store* store, const char* prefix, const char* backend, int rank, int world,
                         int device_index, int64_t timeout_ms) {
  mtl_group* out = nullptr;
  guarded([&] {
    auto scoped = c10::make_intrusive<c10d::PrefixStore>(prefix, store->store);
    const auto timeout = std::chrono::milliseconds(timeout_ms);
    c10::intrusive_ptr<c10d::Backend> b;
    if (std::strcmp(backend, "nccl") == 0) {
      b = mtl_dist_make_nccl(scoped, rank, world, device_index, timeout);
    } else {
      auto opts = c10d::ProcessGroupGloo::Options::create_default(timeout);
      if (opts->devices.empty()) {  // create_default normally finds one (GLOO_SOCKET_IFNAME, hostname, lo)
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      b = c10::make_intrusive<c10d::ProcessGroupGloo>(scoped, rank, world, opts);
    }
    out = new mtl_group{b, world};
  });
  return out;
}

void mtl_group_free(mtl_group* group) {
  delete group;
}

void mtl_group_all_reduce(mtl_group* group, mtl_tensor tensor, int op) {
  collective("all-reduce", [&] { all_reduce(group, tensor_of(tensor), op); });
}

void mtl_group_broadcast(mtl_group* group, mtl_tensor tensor, int root) {
  collective("broadcast", [&] {
    std::vector<at::Tensor> ts{tensor_of(tensor)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    group->backend->broadcast(ts, opts)->wait();
  });
}

void mtl_group_all_gather(mtl_group* group, mtl_tensor* outputs, mtl_tensor input) {
  collective("all-gather", [&] {
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < group->world; ++r) {
      out[0].push_back(tensor_of(outputs[r]));
    }
    std::vector<at::Tensor> in{tensor_of(input)};
    group->backend->allgather(out, in)->wait();
  });
}

void mtl_group_barrier(mtl_group* group) {
  collective("barrier", [&] { group->backend->barrier()->wait(); });
}

mtl_tensor mtl_group_all_reduce_autograd(mtl_group* group, mtl_tensor input) {
  at::Tensor out = AllReduceSum::apply(tensor_of(input), reinterpret_cast<int64_t>(group));
  return new at::Tensor(std::move(out));
}

void mtl_dist_set_log_level(int level) {
  FLAGS_caffe2_log_level = level;
}

int mtl_dist_has_nccl(void) {
  return MTL_DIST_HAS_NCCL;
}

const char* mtl_dist_compiled_sizes(void) {
  static const std::string sizes = [] {
    std::string s = "TCPStore=" + std::to_string(sizeof(c10d::TCPStore)) + "\n" +
                    "ProcessGroupGloo::Options=" + std::to_string(sizeof(c10d::ProcessGroupGloo::Options)) + "\n" +
                    "ProcessGroupGloo=" + std::to_string(sizeof(c10d::ProcessGroupGloo)) + "\n";
    return s + mtl_dist_nccl_sizes();
  }();
  return sizes.c_str();
}

}  // extern "C"
