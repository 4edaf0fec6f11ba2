// The C interface between src/dist/ (Rust) and libtorch's c10d (C++): a TCPStore, one
// process-group backend (ProcessGroupGloo on CPU, ProcessGroupNCCL on CUDA) and its
// collectives over tch tensors. Every collective here is c10d's own; this file only adapts
// calling conventions. Tensors are tch's `torch::Tensor*` (torch-sys's `C_tensor`).
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef void* mtl_tensor;  // torch::Tensor*, owned by the caller
typedef struct mtl_store mtl_store;
typedef struct mtl_group mtl_group;

// The message of the last failed call on this thread ("" if none). Valid until the next call.
const char* mtl_dist_last_error(void);

// Called (and never returning) when a collective fails: the group is unusable afterwards.
// Rust installs it before creating a group; it names the rank that went away and exits.
typedef void (*mtl_dist_fatal_fn)(const char* what, const char* message);
void mtl_dist_set_fatal_handler(mtl_dist_fatal_fn handler);

// --- store: every call returns 0 on success, -1 with mtl_dist_last_error() set.
// `wait_workers` > 0: this is one of that many ranks taking part in the rendezvous (the
// server waits until all have connected); 0: an extra client (a watcher's own connection).
mtl_store* mtl_store_connect(const char* host, uint16_t port, int is_server, int wait_workers,
                             int64_t timeout_ms);
void mtl_store_free(mtl_store* store);
int mtl_store_set(mtl_store* store, const char* key, const char* value, size_t len);
// `*value` is malloc'd (free it with mtl_dist_free); the call waits for the key up to the timeout.
int mtl_store_get(mtl_store* store, const char* key, char** value, size_t* len);
int mtl_store_add(mtl_store* store, const char* key, int64_t delta, int64_t* result);
int mtl_store_check(mtl_store* store, const char* key, int* exists);
// Sets `key` to `desired` if it is absent; `*current` (malloc'd) receives the value it now has.
int mtl_store_set_once(mtl_store* store, const char* key, const char* desired, size_t len, char** current,
                       size_t* current_len);
void mtl_dist_free(void* p);

// --- group. `backend`: "gloo" or "nccl" (device `cuda:device_index`). Keys go under `prefix`.
mtl_group* mtl_group_new(mtl_store* store, const char* prefix, const char* backend, int rank, int world,
                         int device_index, int64_t timeout_ms);
void mtl_group_free(mtl_group* group);
// In place; op: 0 sum, 1 max, 2 min. Blocks until the result is usable on the tensor's device.
void mtl_group_all_reduce(mtl_group* group, mtl_tensor tensor, int op);
void mtl_group_broadcast(mtl_group* group, mtl_tensor tensor, int root);
// `outputs`: `world` tensors shaped like `input`, filled in rank order.
void mtl_group_all_gather(mtl_group* group, mtl_tensor* outputs, mtl_tensor input);
void mtl_group_barrier(mtl_group* group);
// A new tensor: the sum over ranks of `input`, whose backward is the sum over ranks of the
// incoming gradient (torch.distributed.nn.functional.all_reduce). Caller owns the result.
mtl_tensor mtl_group_all_reduce_autograd(mtl_group* group, mtl_tensor input);

// libtorch's own log lines (c10d warns, with a backtrace, about every lost connection) at
// `level` and above only: 0 info, 1 warning, 2 error, 3 fatal.
void mtl_dist_set_log_level(int level);

// --- the build. Whether the NCCL backend was compiled in (its headers were present).
int mtl_dist_has_nccl(void);
// sizeof() of the c10d classes this build constructs, as "Name=bytes" lines (static string).
const char* mtl_dist_compiled_sizes(void);

#ifdef __cplusplus
}
#endif
