// Ends a trace begun by tch's `atm_create_for_tracing` with the outputs packed into one tuple.
//
// tch's own `atm_end_tracing` registers every output tensor as a separate graph output, and a
// TorchScript method must have exactly one (libtorch refuses to run or save the module
// otherwise). This is that function with one change: the outputs go through a
// `prim::TupleConstruct` first, as `torch.jit.trace` does for a Python function returning a
// tuple. Built by build.rs against the libtorch tch links; called from src/model/export.rs.
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/csrc/jit/passes/fixup_trace_scope_blocks.h>
#include <torch/csrc/jit/passes/normalize_ops.h>
#include <torch/script.h>

#include <cstring>
#include <stdexcept>
#include <vector>

// Returns nullptr on success, or an error message the caller frees with free().
extern "C" char *mtl_end_tracing_tuple(torch::jit::script::Module *module, const char *method,
                                       torch::Tensor **outputs, int count) {
  try {
    auto state = torch::jit::tracer::getTracingState();
    if (state == nullptr) {
      throw std::invalid_argument("not tracing");
    }
    auto &graph = state->graph;
    std::vector<torch::jit::Value *> values;
    for (int i = 0; i < count; ++i) {
      values.push_back(state->getOutput(*outputs[i], i));
    }
    graph->registerOutput(graph->insertNode(graph->createTuple(values))->output());
    torch::jit::FixupTraceScopeBlocks(graph, module);
    torch::jit::NormalizeOps(graph);
    torch::jit::tracer::setTracingState(nullptr);
    auto function = module->_ivalue()->compilation_unit()->create_function(method, graph);
    module->type()->addMethod(function);
    return nullptr;
  } catch (const std::exception &e) {
    torch::jit::tracer::setTracingState(nullptr);
    return strdup(e.what());
  }
}
