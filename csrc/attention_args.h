// Argument checks shared by every device implementation, so that CPU and CUDA
// reject bad input with the same messages. Only metadata is inspected here;
// the values inside kv_lens / seq_to_prefix are checked by each device in its
// own way (the CPU reads them, CUDA clamps them without a host sync).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>
#include <vector>

namespace hydrogen {

// Sizes of one attention call, after validation.
struct AttentionDims {
  int64_t batch;     // B: query sequences
  int64_t q_heads;   // Hq
  int64_t q_len;     // Lq
  int64_t head_dim;  // D
  int64_t kv_batch;  // P for prefix attention, B for suffix attention
  int64_t kv_heads;  // Hkv
  int64_t kv_len;    // padded key length
  int64_t group() const { return q_heads / kv_heads; }
};

// Checks q [B, Hq, Lq, D], k and v [N, Hkv, L, D]: ranks, shapes, dtypes, devices.
AttentionDims check_qkv(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// Checks an optional 1-D integer length/index tensor of `expected_numel` entries on q's device.
void check_index_tensor(
    const char* op, const char* name, const c10::optional<at::Tensor>& t, int64_t expected_numel,
    const at::Tensor& q);

// Validates prefix_attention's arguments (including P == 1 when seq_to_prefix is None).
AttentionDims check_prefix_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& kv_lens,
    const c10::optional<at::Tensor>& seq_to_prefix);

// Validates suffix_attention's arguments (k and v hold one sequence per query sequence).
AttentionDims check_suffix_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& kv_lens);

// Validates merge_attention's lists: same length, same shapes, lse float32 [B, H, L].
void check_merge_args(const at::TensorList& outs, const at::TensorList& lses);

// 1/sqrt(D) unless given; a given scale must be finite.
double resolve_scale(const char* op, c10::optional<double> scale, int64_t head_dim);

// The dtype of the attention output: `requested` if given (a floating type), else `fallback`.
at::ScalarType resolve_out_dtype(const char* op, c10::optional<at::ScalarType> requested, at::ScalarType fallback);

// Uninitialised outputs of an attention op on q's device: out [B, Hq, Lq, D] in out_dtype
// (default q's dtype) and lse [B, Hq, Lq] float32.
std::tuple<at::Tensor, at::Tensor> allocate_outputs(
    const char* op, const at::Tensor& q, c10::optional<at::ScalarType> out_dtype);

// The dtypes the kernels accept for q, k, v and partial outputs.
bool is_supported_float(at::ScalarType dtype);

}  // namespace hydrogen
