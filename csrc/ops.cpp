// The one place where the hydrogen operator schemas are declared.
// Device implementations register under TORCH_LIBRARY_IMPL in csrc/cpu and csrc/cuda.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An empty Python module: importing hydrogen_ops._C loads this library,
// whose static initialisers register the operators with the dispatcher.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(hydrogen, m) {
  m.def(
      "prefix_attention(Tensor q, Tensor k, Tensor v, Tensor? kv_lens=None, Tensor? seq_to_prefix=None, "
      "float? scale=None, ScalarType? out_dtype=None) -> (Tensor out, Tensor lse)");
  m.def(
      "suffix_attention(Tensor q, Tensor k, Tensor v, Tensor? kv_lens=None, bool causal=True, "
      "float? scale=None, ScalarType? out_dtype=None) -> (Tensor out, Tensor lse)");
  m.def("merge_attention(Tensor[] outs, Tensor[] lses, ScalarType? out_dtype=None) -> (Tensor out, Tensor lse)");
  // The whole decode attention in one call: every shared level and the suffix, merged.
  m.def(
      "hydragen_attention(Tensor q, Tensor[] prefix_k, Tensor[] prefix_v, Tensor?[] prefix_kv_lens, "
      "Tensor?[] seq_to_prefix, Tensor? suffix_k=None, Tensor? suffix_v=None, Tensor? suffix_kv_lens=None, "
      "bool causal=True, float? scale=None, ScalarType? out_dtype=None) -> (Tensor out, Tensor lse)");
}
