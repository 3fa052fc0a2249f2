// Meta kernels: what torch.compile, FakeTensor and opcheck run instead of a device kernel.
// They apply the same shape rules as the CPU and CUDA kernels (attention_args.cpp), on
// symbolic sizes, so that an input the real kernels refuse is refused at trace time too,
// and allocate outputs of the right shape and dtype.
#include <torch/library.h>

#include "attention_args.h"

namespace hydrogen {
namespace {

std::tuple<at::Tensor, at::Tensor> prefix_attention_meta(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& kv_lens,
    const c10::optional<at::Tensor>& seq_to_prefix, c10::optional<double> scale,
    c10::optional<at::ScalarType> out_dtype) {
  const char* op = "prefix_attention";
  check_prefix_shapes(q, k, v, kv_lens, seq_to_prefix);
  check_scale(op, scale);
  return allocate_outputs(op, q, out_dtype);
}

std::tuple<at::Tensor, at::Tensor> suffix_attention_meta(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& kv_lens,
    bool /*causal*/, c10::optional<double> scale, c10::optional<at::ScalarType> out_dtype) {
  const char* op = "suffix_attention";
  check_suffix_shapes(q, k, v, kv_lens);
  check_scale(op, scale);
  return allocate_outputs(op, q, out_dtype);
}

std::tuple<at::Tensor, at::Tensor> merge_attention_meta(
    at::TensorList outs, at::TensorList lses, c10::optional<at::ScalarType> out_dtype) {
  check_merge_args(outs, lses);
  return allocate_outputs("merge_attention", outs[0], out_dtype);
}

std::tuple<at::Tensor, at::Tensor> hydragen_attention_meta(
    const at::Tensor& q, at::TensorList prefix_k, at::TensorList prefix_v,
    const c10::List<c10::optional<at::Tensor>>& prefix_kv_lens,
    const c10::List<c10::optional<at::Tensor>>& seq_to_prefix, const c10::optional<at::Tensor>& suffix_k,
    const c10::optional<at::Tensor>& suffix_v, const c10::optional<at::Tensor>& suffix_kv_lens, bool /*causal*/,
    c10::optional<double> scale, c10::optional<at::ScalarType> out_dtype) {
  const char* op = "hydragen_attention";
  check_hydragen_shapes(q, prefix_k, prefix_v, prefix_kv_lens, seq_to_prefix, suffix_k, suffix_v, suffix_kv_lens);
  check_scale(op, scale);
  return allocate_outputs(op, q, out_dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(hydrogen, Meta, m) {
  m.impl("hydragen_attention", &hydragen_attention_meta);
  m.impl("prefix_attention", &prefix_attention_meta);
  m.impl("suffix_attention", &suffix_attention_meta);
  m.impl("merge_attention", &merge_attention_meta);
}

}  // namespace hydrogen
