#include "attention_args.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>


namespace hydrogen {

bool is_supported_float(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf;
}

std::ostream& operator<<(std::ostream& os, const OpName& name) {
  os << name.op;
  if (name.part != nullptr) os << ": " << name.part;
  if (name.index >= 0) os << " " << name.index;
  return os;
}

SymAttentionDims check_qkv(const OpName& op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool paged) {
  const char* kv_layout = paged ? "[num_blocks, block_size, kv_heads, head_dim]" : "[n, kv_heads, kv_len, head_dim]";
  TORCH_CHECK_VALUE(q.dim() == 4, op, ": q must have rank 4 [batch, q_heads, q_len, head_dim], got shape ", q.sym_sizes());
  TORCH_CHECK_VALUE(k.dim() == 4, op, ": k must have rank 4 ", kv_layout, ", got shape ", k.sym_sizes());
  TORCH_CHECK_VALUE(v.dim() == 4, op, ": v must have rank 4 ", kv_layout, ", got shape ", v.sym_sizes());
  TORCH_CHECK_VALUE(
      is_supported_float(q.scalar_type()), op, ": q must be float32, bfloat16 or float16, got ", q.scalar_type());
  TORCH_CHECK_VALUE(
      k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
      ": q, k and v must share one dtype, got q ", q.scalar_type(), ", k ", k.scalar_type(), ", v ", v.scalar_type());
  TORCH_CHECK_VALUE(
      k.device() == q.device() && v.device() == q.device(), op, ": q, k and v must be on one device, got q on ",
      q.device(), ", k on ", k.device(), ", v on ", v.device());
  TORCH_CHECK_VALUE(
      k.sym_sizes() == v.sym_sizes(), op, ": k and v must have the same shape, got k ", k.sym_sizes(), " and v ",
      v.sym_sizes());
  SymAttentionDims d{q.sym_size(0), q.sym_size(1), q.sym_size(2), q.sym_size(3),
                     k.sym_size(0), k.sym_size(paged ? 2 : 1), k.sym_size(paged ? 1 : 2)};
  TORCH_CHECK_VALUE(d.head_dim > 0, op, ": head_dim must be positive, got q shape ", q.sym_sizes());
  TORCH_CHECK_VALUE(
      d.head_dim <= kMaxHeadDim, op, ": head_dim must be at most ", kMaxHeadDim, ", got q shape ", q.sym_sizes());
  TORCH_CHECK_VALUE(
      k.sym_size(3) == d.head_dim, op, ": k and v head_dim (", k.sym_size(3), ") must equal q head_dim (", d.head_dim,
      ")");
  TORCH_CHECK_VALUE(d.kv_heads > 0, op, ": k and v must have at least one kv head, got shape ", k.sym_sizes());
  TORCH_CHECK_VALUE(
      d.q_heads % d.kv_heads == 0, op, ": q_heads (", d.q_heads, ") must be a multiple of kv_heads (", d.kv_heads,
      ")");
  return d;
}

namespace {

// Checks an optional 1-D integer length/index tensor of `expected_numel` entries on q's device.
void check_index_tensor(
    const OpName& op, const char* name, const c10::optional<at::Tensor>& t, const c10::SymInt& expected_numel,
    const at::Tensor& q) {
  if (!t.has_value()) {
    return;
  }
  const at::Tensor& x = *t;
  TORCH_CHECK_VALUE(
      x.scalar_type() == at::kInt || x.scalar_type() == at::kLong, op, ": ", name,
      " must be an int32 or int64 tensor, got ", x.scalar_type());
  TORCH_CHECK_VALUE(
      x.dim() == 1 && x.sym_size(0) == expected_numel, op, ": ", name, " must have shape [", expected_numel,
      "], got ", x.sym_sizes());
  TORCH_CHECK_VALUE(
      x.device() == q.device(), op, ": ", name, " must be on q's device (", q.device(), "), got ", x.device());
}

}  // namespace

AttentionDims concrete(const SymAttentionDims& d) {
  return {d.batch.expect_int(),    d.q_heads.expect_int(),  d.q_len.expect_int(),  d.head_dim.expect_int(),
          d.kv_batch.expect_int(), d.kv_heads.expect_int(), d.kv_len.expect_int()};
}

SymAttentionDims check_prefix_shapes(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& kv_lens,
    const c10::optional<at::Tensor>& seq_to_prefix, const OpName& op) {
  SymAttentionDims d = check_qkv(op, q, k, v);
  check_index_tensor(op, "kv_lens", kv_lens, d.kv_batch, q);
  check_index_tensor(op, "seq_to_prefix", seq_to_prefix, d.batch, q);
  TORCH_CHECK_VALUE(
      seq_to_prefix.has_value() || d.kv_batch == 1, op,
      ": seq_to_prefix is required when k and v hold more than one prefix (got ", d.kv_batch, ")");
  return d;
}

SymAttentionDims check_suffix_shapes(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& kv_lens,
    const OpName& op) {
  SymAttentionDims d = check_qkv(op, q, k, v);
  TORCH_CHECK_VALUE(
      d.kv_batch == d.batch, op, ": k and v must hold one sequence per query sequence: expected k.shape[0] == ",
      d.batch, ", got ", d.kv_batch);
  check_index_tensor(op, "kv_lens", kv_lens, d.batch, q);
  return d;
}

SymAttentionDims check_paged_shapes(
    const char* op, const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
    const at::Tensor& block_table, const at::Tensor& kv_lens, const c10::optional<at::Tensor>& seq_to_prefix,
    bool per_sequence) {
  SymAttentionDims d = check_qkv(op, q, k_pages, v_pages, /*paged=*/true);
  TORCH_CHECK_VALUE(d.kv_len > 0, op, ": block_size (k_pages.shape[1]) must be positive, got ", k_pages.sym_sizes());
  TORCH_CHECK_VALUE(
      block_table.scalar_type() == at::kInt || block_table.scalar_type() == at::kLong, op,
      ": block_table must be an int32 or int64 tensor, got ", block_table.scalar_type());
  TORCH_CHECK_VALUE(
      block_table.dim() == 2, op, ": block_table must have rank 2 [n, max_blocks], got shape ", block_table.sym_sizes());
  TORCH_CHECK_VALUE(
      block_table.device() == q.device(), op, ": block_table must be on q's device (", q.device(), "), got ",
      block_table.device());
  const c10::SymInt n = block_table.sym_size(0);
  d.kv_len = block_table.sym_size(1) * d.kv_len;  // max_blocks * block_size
  d.kv_batch = n;
  if (per_sequence) {
    TORCH_CHECK_VALUE(
        n == d.batch, op, ": block_table must hold one row per query sequence: expected block_table.shape[0] == ",
        d.batch, ", got ", n);
  } else {
    check_index_tensor(op, "seq_to_prefix", seq_to_prefix, d.batch, q);
    TORCH_CHECK_VALUE(
        seq_to_prefix.has_value() || n == 1, op,
        ": seq_to_prefix is required when block_table holds more than one prefix (got ", n, ")");
  }
  check_index_tensor(op, "kv_lens", kv_lens, n, q);
  return d;
}

AttentionDims check_paged_args(
    const char* op, const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
    const at::Tensor& block_table, const at::Tensor& kv_lens, const c10::optional<at::Tensor>& seq_to_prefix,
    bool per_sequence) {
  return concrete(check_paged_shapes(op, q, k_pages, v_pages, block_table, kv_lens, seq_to_prefix, per_sequence));
}

std::vector<SymAttentionDims> check_hydragen_shapes(
    const at::Tensor& q, at::TensorList prefix_k, at::TensorList prefix_v,
    const c10::List<c10::optional<at::Tensor>>& prefix_kv_lens,
    const c10::List<c10::optional<at::Tensor>>& seq_to_prefix, const c10::optional<at::Tensor>& suffix_k,
    const c10::optional<at::Tensor>& suffix_v, const c10::optional<at::Tensor>& suffix_kv_lens) {
  const char* op = "hydragen_attention";
  const size_t n = prefix_k.size();
  TORCH_CHECK_VALUE(
      prefix_v.size() == n && prefix_kv_lens.size() == n && seq_to_prefix.size() == n, op,
      ": the per-level lists prefix_k, prefix_v, prefix_kv_lens and seq_to_prefix must have one length, got ",
      n, ", ", prefix_v.size(), ", ", prefix_kv_lens.size(), " and ", seq_to_prefix.size());
  TORCH_CHECK_VALUE(
      suffix_k.has_value() == suffix_v.has_value(), op, ": give suffix_k and suffix_v together (got ",
      suffix_k.has_value() ? "suffix_k only" : "suffix_v only", ")");
  TORCH_CHECK_VALUE(
      suffix_k.has_value() || !suffix_kv_lens.has_value(), op, ": suffix_kv_lens is given without a suffix");
  TORCH_CHECK_VALUE(n > 0 || suffix_k.has_value(), op, ": give at least one prefix level or a suffix");
  std::vector<SymAttentionDims> dims;
  for (size_t i = 0; i < n; ++i) {
    dims.push_back(check_prefix_shapes(
        q, prefix_k[i], prefix_v[i], prefix_kv_lens.get(i), seq_to_prefix.get(i),
        OpName(op, "prefix level", static_cast<int64_t>(i))));
  }
  if (suffix_k.has_value()) {
    dims.push_back(check_suffix_shapes(q, *suffix_k, *suffix_v, suffix_kv_lens, OpName(op, "suffix")));
  }
  return dims;
}

AttentionDims check_prefix_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& kv_lens,
    const c10::optional<at::Tensor>& seq_to_prefix) {
  return concrete(check_prefix_shapes(q, k, v, kv_lens, seq_to_prefix));
}

AttentionDims check_suffix_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& kv_lens) {
  return concrete(check_suffix_shapes(q, k, v, kv_lens));
}

void check_merge_args(const at::TensorList& outs, const at::TensorList& lses) {
  const char* op = "merge_attention";
  TORCH_CHECK_VALUE(!outs.empty(), op, ": outs must hold at least one tensor");
  TORCH_CHECK_VALUE(
      outs.size() == lses.size(), op, ": outs and lses must have the same length, got ", outs.size(), " and ",
      lses.size());
  const at::Tensor& first = outs[0];
  TORCH_CHECK_VALUE(first.dim() == 4, op, ": outs[0] must have rank 4 [batch, heads, q_len, head_dim], got shape ",
                    first.sym_sizes());
  TORCH_CHECK_VALUE(
      is_supported_float(first.scalar_type()), op, ": outs must be float32, bfloat16 or float16, got ",
      first.scalar_type());
  TORCH_CHECK_VALUE(first.sym_size(3) > 0, op, ": head_dim of outs must be positive, got shape ", first.sym_sizes());
  auto lse_shape = first.sym_sizes().slice(0, 3);
  for (size_t i = 0; i < outs.size(); ++i) {
    TORCH_CHECK_VALUE(
        outs[i].sym_sizes() == first.sym_sizes(), op, ": outs[", i, "] has shape ", outs[i].sym_sizes(),
        ", expected ", first.sym_sizes());
    TORCH_CHECK_VALUE(
        outs[i].scalar_type() == first.scalar_type(), op, ": outs[", i, "] has dtype ", outs[i].scalar_type(),
        ", expected ", first.scalar_type(), " like outs[0]");
    TORCH_CHECK_VALUE(
        lses[i].sym_sizes() == lse_shape, op, ": lses[", i, "] has shape ", lses[i].sym_sizes(), ", expected ",
        lse_shape);
    TORCH_CHECK_VALUE(
        lses[i].scalar_type() == at::kFloat, op, ": lses[", i, "] must be float32, got ", lses[i].scalar_type());
    TORCH_CHECK_VALUE(
        outs[i].device() == first.device() && lses[i].device() == first.device(), op, ": outs[", i, "] and lses[", i,
        "] must be on ", first.device(), " like outs[0], got ", outs[i].device(), " and ", lses[i].device());
  }
}

void check_scale(const char* op, c10::optional<double> scale) {
  if (!scale.has_value()) return;
  TORCH_CHECK_VALUE(
      std::isfinite(*scale) && std::abs(*scale) <= std::numeric_limits<float>::max(), op,
      ": scale must be finite in float32 (|scale| <= 3.4e38), got ", *scale);
}

double resolve_scale(const char* op, c10::optional<double> scale, int64_t head_dim) {
  check_scale(op, scale);
  return scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

at::ScalarType resolve_out_dtype(const char* op, c10::optional<at::ScalarType> requested, at::ScalarType fallback) {
  if (!requested.has_value()) {
    return fallback;
  }
  TORCH_CHECK_VALUE(
      is_supported_float(*requested), op, ": out_dtype must be float32, bfloat16 or float16, got ", *requested);
  return *requested;
}

std::tuple<at::Tensor, at::Tensor> allocate_outputs(
    const char* op, const at::Tensor& like, c10::optional<at::ScalarType> out_dtype) {
  at::Tensor out =
      at::empty_symint(like.sym_sizes(), like.options().dtype(resolve_out_dtype(op, out_dtype, like.scalar_type())));
  at::Tensor lse = at::empty_symint(like.sym_sizes().slice(0, 3), like.options().dtype(at::kFloat));
  return {out, lse};
}

}  // namespace hydrogen
