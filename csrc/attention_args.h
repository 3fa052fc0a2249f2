// The shape rules of the hydrogen ops, written once and used by every implementation:
// the CPU and CUDA kernels and the Meta kernels that torch.compile and FakeTensor run.
// Only metadata is inspected, through symbolic sizes, so the same checks run on real
// tensors and on fake ones with dynamic shapes. The values inside kv_lens /
// seq_to_prefix are checked by each device in its own way (the CPU reads them, CUDA
// clamps them without a host sync).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <ATen/core/List.h>
#include <c10/util/Optional.h>

#include <ostream>
#include <tuple>
#include <vector>

namespace hydrogen {

// The largest head dim accepted: bounds per-thread scratch and shared memory.
constexpr int64_t kMaxHeadDim = 1024;

// The call an error message names: an op, or a part of one ("hydragen_attention: prefix
// level 1"). Formatted only when a check fails, so checking costs no string building.
struct OpName {
  const char* op;
  const char* part = nullptr;
  int64_t index = -1;
  OpName(const char* op_name) : op(op_name) {}  // NOLINT: implicit from a plain op name
  OpName(const char* op_name, const char* part_name, int64_t part_index = -1)
      : op(op_name), part(part_name), index(part_index) {}
};
std::ostream& operator<<(std::ostream& os, const OpName& name);

// Sizes of one attention call, after validation.
template <typename Int>
struct Dims {
  Int batch;     // B: query sequences
  Int q_heads;   // Hq
  Int q_len;     // Lq
  Int head_dim;  // D
  Int kv_batch;  // P for prefix attention, B for suffix attention
  Int kv_heads;  // Hkv
  Int kv_len;    // padded key length
  Int group() const { return q_heads / kv_heads; }
};
using AttentionDims = Dims<int64_t>;   // what the kernels use
using SymAttentionDims = Dims<c10::SymInt>;  // what the rules see (symbolic under torch.compile)

// Checks q [B, Hq, Lq, D] and k, v: ranks, shapes, dtypes, devices. k and v are
// [N, Hkv, L, D], or, when `paged`, pages [num_blocks, block_size, Hkv, D] (then the
// returned kv_batch and kv_len are those of the pages; the caller sets them from the
// block table).
SymAttentionDims check_qkv(
    const OpName& op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool paged = false);

// Validates prefix_attention's arguments (including P == 1 when seq_to_prefix is None).
// `op` names the call in error messages.
SymAttentionDims check_prefix_shapes(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& kv_lens,
    const c10::optional<at::Tensor>& seq_to_prefix, const OpName& op = "prefix_attention");

// Validates suffix_attention's arguments (k and v hold one sequence per query sequence).
SymAttentionDims check_suffix_shapes(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& kv_lens,
    const OpName& op = "suffix_attention");

// Validates paged_prefix_attention's (per_sequence false) or paged_suffix_attention's
// (per_sequence true) arguments: pages [num_blocks, block_size, Hkv, D], an integer
// block_table [N, max_blocks] and kv_lens [N] (N = P prefixes, or B sequences), and for
// prefixes seq_to_prefix as in prefix_attention. kv_len is max_blocks * block_size.
SymAttentionDims check_paged_shapes(
    const char* op, const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
    const at::Tensor& block_table, const at::Tensor& kv_lens, const c10::optional<at::Tensor>& seq_to_prefix,
    bool per_sequence);
AttentionDims check_paged_args(
    const char* op, const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
    const at::Tensor& block_table, const at::Tensor& kv_lens, const c10::optional<at::Tensor>& seq_to_prefix,
    bool per_sequence);

// Validates hydragen_attention's arguments: parallel per-level lists, each level as in
// prefix_attention, the optional suffix as in suffix_attention, at least one of them.
// Returns the dims of every level, then of the suffix when there is one.
std::vector<SymAttentionDims> check_hydragen_shapes(
    const at::Tensor& q, at::TensorList prefix_k, at::TensorList prefix_v,
    const c10::List<c10::optional<at::Tensor>>& prefix_kv_lens,
    const c10::List<c10::optional<at::Tensor>>& seq_to_prefix, const c10::optional<at::Tensor>& suffix_k,
    const c10::optional<at::Tensor>& suffix_v, const c10::optional<at::Tensor>& suffix_kv_lens);

// The sizes of real tensors (not symbolic).
AttentionDims concrete(const SymAttentionDims& d);

// The same checks for real tensors, returning concrete sizes.
AttentionDims check_prefix_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& kv_lens,
    const c10::optional<at::Tensor>& seq_to_prefix);
AttentionDims check_suffix_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& kv_lens);

// Validates merge_attention's lists: same length, same shapes, lse float32 [B, H, L].
void check_merge_args(const at::TensorList& outs, const at::TensorList& lses);

// A given scale must be finite in float32, where the kernels apply it.
void check_scale(const char* op, c10::optional<double> scale);

// 1/sqrt(D) unless given (checked by check_scale).
double resolve_scale(const char* op, c10::optional<double> scale, int64_t head_dim);

// The dtype of the attention output: `requested` if given (a floating type), else `fallback`.
at::ScalarType resolve_out_dtype(const char* op, c10::optional<at::ScalarType> requested, at::ScalarType fallback);

// Uninitialised outputs shaped like `like` [B, H, L, D] on its device: out in out_dtype
// (default `like`'s dtype) and lse [B, H, L] float32.
std::tuple<at::Tensor, at::Tensor> allocate_outputs(
    const char* op, const at::Tensor& like, c10::optional<at::ScalarType> out_dtype);

// The dtypes the kernels accept for q, k, v and partial outputs.
bool is_supported_float(at::ScalarType dtype);

}  // namespace hydrogen
