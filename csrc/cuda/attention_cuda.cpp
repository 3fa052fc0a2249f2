// CUDA implementations of the hydrogen ops: validation (shared with the CPU), output and
// workspace allocation (torch allocator), kernel selection, launch on the current stream.
//
// No host synchronisation: kv_lens / seq_to_prefix stay on the device, so the ops are CUDA
// graph capturable. Their values are therefore not validated here (the CPU raises a
// ValueError for them); instead the kernels make out-of-range values harmless:
//   * kv_lens[i] is clamped to [0, L] (L = the padded key length of k and v);
//   * a sequence whose seq_to_prefix is outside [0, P) sees an empty prefix: out 0, lse -inf.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <tuple>
#include <vector>

#include "../attention_args.h"
#include "kernels.h"

namespace hydrogen {
namespace {

using cuda::AttnParams;
using cuda::ElemType;
using cuda::IndexRef;
using cuda::MergeParams;

constexpr double kLog2e = 1.4426950408889634074;

ElemType elem_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ElemType::kF32;
    case at::kBFloat16: return ElemType::kBF16;
    case at::kHalf: return ElemType::kF16;
    default: TORCH_CHECK(false, "hydrogen: unsupported dtype ", t);
  }
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// The kernels read q/k/v rows with 16-byte copies: last dim contiguous, 16-byte aligned base,
// and every stride of a dimension with more than one entry a multiple of 16 bytes.
// Anything else is copied into a fresh contiguous tensor. (Expanded dims, stride 0, are fine.)
at::Tensor kernel_ready(const at::Tensor& t) {
  if (t.numel() == 0) return t;
  const int64_t esz = t.element_size();
  bool ok = aligned16(t.data_ptr()) && (t.size(3) == 1 || t.stride(3) == 1);
  for (int dim = 0; dim < 3 && ok; ++dim) {
    ok = t.size(dim) == 1 || (t.stride(dim) * esz) % 16 == 0;
  }
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

IndexRef index_ref(const c10::optional<at::Tensor>& t, at::Tensor& keep) {
  IndexRef r;
  if (!t.has_value()) return r;
  keep = t->contiguous();
  r.ptr = keep.data_ptr();
  r.is_i64 = keep.scalar_type() == at::kLong ? 1 : 0;
  return r;
}

void check_cuda_head_dim(const char* op, int64_t head_dim) {
  TORCH_CHECK_VALUE(
      head_dim <= INT_MAX && cuda::head_dim_supported(static_cast<int>(head_dim)), op, ": head_dim ", head_dim,
      " is not supported on CUDA (supported head_dim: 32, 64, 80, 96, 128, 256)");
}

void check_cuda_shapes(const char* op, const AttentionDims& d) {
  check_cuda_head_dim(op, d.head_dim);
  TORCH_CHECK_VALUE(
      d.q_heads <= 65535 && d.kv_heads <= 65535, op, ": at most 65535 heads are supported on CUDA, got q_heads ",
      d.q_heads, " and kv_heads ", d.kv_heads);
  TORCH_CHECK_VALUE(
      d.q_len < (int64_t{1} << 30) && d.kv_len < (int64_t{1} << 30), op,
      ": q_len and kv_len must be below 2^30 on CUDA, got ", d.q_len, " and ", d.kv_len);
  TORCH_CHECK_VALUE(
      d.group() * d.q_len <= INT_MAX, op, ": (q_heads / kv_heads) * q_len must fit in 32 bits on CUDA, got ",
      d.group(), " * ", d.q_len);
}

void fill_qkv(AttnParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  p.q = q.data_ptr();
  p.k = k.numel() ? k.data_ptr() : q.data_ptr();  // never dereferenced when there is no key
  p.v = v.numel() ? v.data_ptr() : q.data_ptr();
  p.q_sb = q.stride(0); p.q_sh = q.stride(1); p.q_sl = q.stride(2);
  p.k_sb = k.stride(0); p.k_sh = k.stride(1); p.k_sl = k.stride(2);
  p.v_sb = v.stride(0); p.v_sh = v.stride(1); p.v_sl = v.stride(2);
}

// The parameters both attention ops share: q/k/v views, sizes, kv_lens and the scale.
// kv_lens is made contiguous into lens_keep, which must outlive the launch.
AttnParams make_params(
    const AttentionDims& d, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& kv_lens, at::Tensor& lens_keep, double scale) {
  AttnParams p;
  fill_qkv(p, q, k, v);
  p.batch = d.batch;
  p.q_heads = static_cast<int>(d.q_heads);
  p.kv_heads = static_cast<int>(d.kv_heads);
  p.group = static_cast<int>(d.group());
  p.q_len = static_cast<int>(d.q_len);
  p.kv_len = static_cast<int>(d.kv_len);
  p.num_kv = d.kv_batch;
  p.kv_lens = index_ref(kv_lens, lens_keep);
  p.scale_log2 = static_cast<float>(scale * kLog2e);
  return p;
}

// Number of KV splits so that ~target CTAs run, each split >= 256 keys (a multiple of bn).
int choose_splits(int64_t ctas, int64_t kv_len, int bn, int64_t target, int* keys_per_split) {
  if (kv_len <= 0) {
    *keys_per_split = bn;
    return 1;
  }
  int64_t s = ctas >= target ? 1 : (target + ctas - 1) / std::max<int64_t>(ctas, 1);
  s = std::min<int64_t>({s, std::max<int64_t>(1, kv_len / 256), cuda::kMaxSplits});
  int64_t per = (kv_len + s - 1) / s;
  per = (per + bn - 1) / bn * bn;
  *keys_per_split = static_cast<int>(per);
  return static_cast<int>((kv_len + per - 1) / per);
}

// ---- merge ----

struct Segment {
  const void* out;
  const float* lse;
  int64_t o_sb, o_sh, o_sl, l_sb, l_sh, l_sl;
};

void launch_merge_group(
    const std::vector<Segment>& segs, size_t begin, size_t end, ElemType in_type, bool vec8, int64_t B, int64_t H,
    int64_t L, int64_t D, void* dst, ElemType dst_type, float* dst_lse, cudaStream_t stream) {
  MergeParams m;
  m.n = static_cast<int>(end - begin);
  for (size_t i = begin; i < end; ++i) {
    const int j = static_cast<int>(i - begin);
    m.out[j] = segs[i].out;
    m.lse[j] = segs[i].lse;
    m.o_sb[j] = segs[i].o_sb; m.o_sh[j] = segs[i].o_sh; m.o_sl[j] = segs[i].o_sl;
    m.l_sb[j] = segs[i].l_sb; m.l_sh[j] = segs[i].l_sh; m.l_sl[j] = segs[i].l_sl;
  }
  m.batch = B; m.heads = H; m.len = L; m.dim = D;
  m.dst = dst; m.dst_type = dst_type; m.dst_lse = dst_lse;
  C10_CUDA_CHECK(cuda::launch_merge(m, in_type, vec8, stream));
}

// Merges any number of segments into out/lse: groups of kMaxMergeInputs go to fp32
// intermediates (exact: the merge is associative), level by level.
void merge_segments(
    std::vector<Segment> segs, ElemType in_type, bool vec8, const at::Tensor& out, const at::Tensor& lse,
    cudaStream_t stream) {
  const int64_t B = out.size(0), H = out.size(1), L = out.size(2), D = out.size(3);
  std::vector<at::Tensor> keep;
  while (segs.size() > static_cast<size_t>(cuda::kMaxMergeInputs)) {
    const int64_t groups = (static_cast<int64_t>(segs.size()) + cuda::kMaxMergeInputs - 1) / cuda::kMaxMergeInputs;
    at::Tensor t_out = at::empty({groups, B, H, L, D}, out.options().dtype(at::kFloat));
    at::Tensor t_lse = at::empty({groups, B, H, L}, lse.options());
    std::vector<Segment> next;
    for (int64_t g = 0; g < groups; ++g) {
      const size_t b0 = static_cast<size_t>(g) * cuda::kMaxMergeInputs;
      const size_t b1 = std::min(segs.size(), b0 + cuda::kMaxMergeInputs);
      float* o = t_out.data_ptr<float>() + g * B * H * L * D;
      float* l = t_lse.data_ptr<float>() + g * B * H * L;
      launch_merge_group(segs, b0, b1, in_type, vec8, B, H, L, D, o, ElemType::kF32, l, stream);
      next.push_back({o, l, H * L * D, L * D, D, H * L, L, 1});
    }
    keep.push_back(t_out);
    keep.push_back(t_lse);
    segs.swap(next);
    in_type = ElemType::kF32;
    vec8 = D % 8 == 0;  // fresh contiguous fp32 buffers: aligned
  }
  launch_merge_group(
      segs, 0, segs.size(), in_type, vec8, B, H, L, D, out.data_ptr(), elem_type(out.scalar_type()),
      lse.data_ptr<float>(), stream);
}

// Runs an attention kernel; with splits > 1 into fp32 partials merged into out/lse.
void run_attention(
    AttnParams p, ElemType in_type, int head_dim, bool tensor_cores, int64_t tiles, int splits,
    const at::Tensor& out, const at::Tensor& lse, cudaStream_t stream) {
  const int64_t rows = lse.numel();
  if (splits <= 1) {
    p.out = out.data_ptr();
    p.out_type = elem_type(out.scalar_type());
    p.lse = lse.data_ptr<float>();
    p.out_split_stride = 0;
    p.lse_split_stride = 0;
    C10_CUDA_CHECK(
        tensor_cores ? cuda::launch_attention_tc(p, in_type, head_dim, tiles, 1, stream)
                     : cuda::launch_attention_decode(p, in_type, head_dim, 1, stream));
    return;
  }
  at::Tensor part = at::empty({splits, rows * head_dim}, out.options().dtype(at::kFloat));
  at::Tensor part_lse = at::empty({splits, rows}, lse.options());
  p.out = part.data_ptr();
  p.out_type = ElemType::kF32;
  p.lse = part_lse.data_ptr<float>();
  p.out_split_stride = rows * head_dim;
  p.lse_split_stride = rows;
  C10_CUDA_CHECK(
      tensor_cores ? cuda::launch_attention_tc(p, in_type, head_dim, tiles, splits, stream)
                   : cuda::launch_attention_decode(p, in_type, head_dim, splits, stream));
  const int64_t H = out.size(1), L = out.size(2), D = head_dim;
  std::vector<Segment> segs;
  for (int s = 0; s < splits; ++s) {
    segs.push_back(
        {part.data_ptr<float>() + s * rows * D, part_lse.data_ptr<float>() + s * rows, H * L * D, L * D, D, H * L, L,
         1});
  }
  merge_segments(segs, ElemType::kF32, D % 8 == 0, out, lse, stream);
}

// A positive attribute of the current device, cached per device in `cache` (no
// synchronisation; racing threads store the same value).
int device_attribute(cudaDeviceAttr attr, int (&cache)[64]) {
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= 0 && dev < 64 && cache[dev] > 0) return cache[dev];
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, attr, dev));
  n = n > 0 ? n : 1;
  if (dev >= 0 && dev < 64) cache[dev] = n;
  return n;
}

int num_sms() {
  static int cache[64] = {};
  return device_attribute(cudaDevAttrMultiProcessorCount, cache);
}

// Whether the tensor-core kernel serves this dtype and head dim on the current device.
bool use_tensor_cores(ElemType in_type, int head_dim) {
  static int cache[64] = {};
  return cuda::tensor_cores_fit(in_type, head_dim, device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, cache));
}

void run_decode(
    AttnParams& p, ElemType in_type, const AttentionDims& d, const at::Tensor& out, const at::Tensor& lse,
    cudaStream_t stream, const char* op) {
  const int64_t rows_per_seq = d.group() * d.q_len;
  p.row_chunks = static_cast<int>((rows_per_seq + cuda::kDecodeRows - 1) / cuda::kDecodeRows);
  const int64_t ctas = d.batch * d.kv_heads * p.row_chunks;
  TORCH_CHECK_VALUE(ctas <= INT_MAX, op, ": too many (sequence, kv head, row block) work items for one launch: ", ctas);
  const int D = static_cast<int>(d.head_dim);
  int kps = 0;
  const int splits = choose_splits(ctas, d.kv_len, cuda::decode_block_n(in_type, D), 4 * num_sms(), &kps);
  p.keys_per_split = kps;
  run_attention(p, in_type, D, /*tensor_cores=*/false, 0, splits, out, lse, stream);
}

std::tuple<at::Tensor, at::Tensor> prefix_attention_cuda(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const c10::optional<at::Tensor>& kv_lens,
    const c10::optional<at::Tensor>& seq_to_prefix, c10::optional<double> scale,
    c10::optional<at::ScalarType> out_dtype) {
  const char* op = "prefix_attention";
  const AttentionDims d = check_prefix_args(q_in, k_in, v_in, kv_lens, seq_to_prefix);
  const double sc = resolve_scale(op, scale, d.head_dim);
  check_cuda_shapes(op, d);
  c10::cuda::CUDAGuard guard(q_in.device());
  auto [out, lse] = allocate_outputs(op, q_in, out_dtype);
  if (lse.numel() == 0) return {out, lse};

  const at::Tensor q = kernel_ready(q_in), k = kernel_ready(k_in), v = kernel_ready(v_in);
  at::Tensor lens_keep, s2p_keep;
  AttnParams p = make_params(d, q, k, v, kv_lens, lens_keep, sc);
  p.seq_to_prefix = index_ref(seq_to_prefix, s2p_keep);
  p.kv_from_batch = 0;
  p.causal = 0;
  const ElemType in_type = elem_type(q.scalar_type());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const int D = static_cast<int>(d.head_dim);
  if (!use_tensor_cores(in_type, D)) {  // SIMT path (fp32, or too little shared memory)
    run_decode(p, in_type, d, out, lse, stream, op);
    return {out, lse};
  }

  // Tensor cores: the B * G * Lq rows of each kv head are stacked and tiled by kTcBlockM.
  const int64_t rows = d.batch * d.group() * d.q_len;
  const int64_t base_tiles = (rows + cuda::kTcBlockM - 1) / cuda::kTcBlockM;
  int64_t tiles = base_tiles;
  at::Tensor ws;
  if (seq_to_prefix.has_value()) {
    const int64_t P = d.kv_batch;
    // Upper bound: sum over buckets of ceil(n_p * G * Lq / BM) <= ceil(rows / BM) + (P + 1).
    tiles = base_tiles + P + 1;
    TORCH_CHECK_VALUE(tiles <= INT_MAX, op, ": too many row tiles for one launch: ", tiles);
    ws = at::empty({2 * (P + 2) + (P + 1) + d.batch}, q.options().dtype(at::kInt));
    int* w = ws.data_ptr<int>();
    C10_CUDA_CHECK(cuda::launch_prefix_buckets(p.seq_to_prefix, d.batch, P, d.group() * d.q_len, w, stream));
    p.mode = cuda::kModeBucket;
    p.bucket_seq_off = w;
    p.bucket_tile_off = w + (P + 2);
    p.bucket_seqs = w + 2 * (P + 2) + (P + 1);
  } else {
    TORCH_CHECK_VALUE(tiles <= INT_MAX, op, ": too many row tiles for one launch: ", tiles);
    p.mode = cuda::kModeSingle;
  }
  int kps = 0;
  const int splits = choose_splits(base_tiles * d.kv_heads, d.kv_len, cuda::tc_block_n(D), 2 * num_sms(), &kps);
  p.keys_per_split = kps;
  run_attention(p, in_type, D, /*tensor_cores=*/true, tiles, splits, out, lse, stream);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> suffix_attention_cuda(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const c10::optional<at::Tensor>& kv_lens,
    bool causal, c10::optional<double> scale, c10::optional<at::ScalarType> out_dtype) {
  const char* op = "suffix_attention";
  const AttentionDims d = check_suffix_args(q_in, k_in, v_in, kv_lens);
  const double sc = resolve_scale(op, scale, d.head_dim);
  check_cuda_shapes(op, d);
  c10::cuda::CUDAGuard guard(q_in.device());
  auto [out, lse] = allocate_outputs(op, q_in, out_dtype);
  if (lse.numel() == 0) return {out, lse};

  const at::Tensor q = kernel_ready(q_in), k = kernel_ready(k_in), v = kernel_ready(v_in);
  at::Tensor lens_keep;
  AttnParams p = make_params(d, q, k, v, kv_lens, lens_keep, sc);
  p.kv_from_batch = 1;
  p.causal = causal ? 1 : 0;
  const ElemType in_type = elem_type(q.scalar_type());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const int64_t rows_per_seq = d.group() * d.q_len;
  const int D = static_cast<int>(d.head_dim);
  if (rows_per_seq <= cuda::kDecodeRows || !use_tensor_cores(in_type, D)) {
    run_decode(p, in_type, d, out, lse, stream, op);
    return {out, lse};
  }
  // Many rows per sequence (suffix prefill / large GQA group): tensor-core tiles per sequence.
  p.mode = cuda::kModeSuffix;
  p.tiles_per_seq = (rows_per_seq + cuda::kTcBlockM - 1) / cuda::kTcBlockM;
  const int64_t tiles = d.batch * p.tiles_per_seq;
  TORCH_CHECK_VALUE(tiles <= INT_MAX, op, ": too many row tiles for one launch: ", tiles);
  int kps = 0;
  const int splits = choose_splits(tiles * d.kv_heads, d.kv_len, cuda::tc_block_n(D), 2 * num_sms(), &kps);
  p.keys_per_split = kps;
  run_attention(p, in_type, D, /*tensor_cores=*/true, tiles, splits, out, lse, stream);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> merge_attention_cuda(
    at::TensorList outs, at::TensorList lses, c10::optional<at::ScalarType> out_dtype) {
  const char* op = "merge_attention";
  check_merge_args(outs, lses);
  const at::Tensor& first = outs[0];
  c10::cuda::CUDAGuard guard(first.device());
  const int64_t D = first.size(3);
  auto [out, lse] = allocate_outputs(op, first, out_dtype);
  if (lse.numel() == 0) return {out, lse};

  // Partial outputs: last dim contiguous (else copied); lses: any strides.
  std::vector<at::Tensor> keep;
  std::vector<Segment> segs;
  bool vec8 = D % 8 == 0;
  for (size_t i = 0; i < outs.size(); ++i) {
    at::Tensor o = outs[i];
    if (D > 1 && o.stride(3) != 1) o = o.contiguous();
    keep.push_back(o);
    const at::Tensor& l = lses[i];
    segs.push_back({o.data_ptr(), l.data_ptr<float>(), o.stride(0), o.stride(1), o.stride(2), l.stride(0), l.stride(1),
                    l.stride(2)});
    if (D > 0) {
      vec8 = vec8 && aligned16(o.data_ptr());
      for (int dim = 0; dim < 3; ++dim) vec8 = vec8 && (o.size(dim) == 1 || o.stride(dim) % 8 == 0);
    }
  }
  merge_segments(segs, elem_type(first.scalar_type()), vec8, out, lse, c10::cuda::getCurrentCUDAStream());
  return {out, lse};
}

// Every level and the suffix into float32 partials, then one merge, rounded once.
std::tuple<at::Tensor, at::Tensor> hydragen_attention_cuda(
    const at::Tensor& q_in, at::TensorList prefix_k, at::TensorList prefix_v,
    const c10::List<c10::optional<at::Tensor>>& prefix_kv_lens,
    const c10::List<c10::optional<at::Tensor>>& seq_to_prefix, const c10::optional<at::Tensor>& suffix_k,
    const c10::optional<at::Tensor>& suffix_v, const c10::optional<at::Tensor>& suffix_kv_lens, bool causal,
    c10::optional<double> scale, c10::optional<at::ScalarType> out_dtype) {
  const char* op = "hydragen_attention";
  check_hydragen_shapes(q_in, prefix_k, prefix_v, prefix_kv_lens, seq_to_prefix, suffix_k, suffix_v, suffix_kv_lens);
  check_scale(op, scale);
  const at::ScalarType odt = resolve_out_dtype(op, out_dtype, q_in.scalar_type());
  check_cuda_head_dim(op, q_in.size(3));
  c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = kernel_ready(q_in);  // once for every level
  std::vector<at::Tensor> outs, lses;
  auto add = [&](std::tuple<at::Tensor, at::Tensor> part) {
    outs.push_back(std::get<0>(part));
    lses.push_back(std::get<1>(part));
  };
  for (size_t i = 0; i < prefix_k.size(); ++i) {
    add(prefix_attention_cuda(
        q, prefix_k[i], prefix_v[i], prefix_kv_lens.get(i), seq_to_prefix.get(i), scale, at::kFloat));
  }
  if (suffix_k.has_value()) add(suffix_attention_cuda(q, *suffix_k, *suffix_v, suffix_kv_lens, causal, scale, at::kFloat));
  return merge_attention_cuda(outs, lses, odt);
}

// The CUDA kernels read contiguous K/V only: say so, instead of the dispatcher's
// "could not run ... with arguments from the CUDA backend".
[[noreturn]] void paged_not_on_cuda(const char* op) {
  TORCH_CHECK_NOT_IMPLEMENTED(
      false, op, ": paged K/V is read by the CPU kernels only; on CUDA, gather the pages into "
      "[n, kv_heads, kv_len, head_dim] tensors and call the dense op");
}

std::tuple<at::Tensor, at::Tensor> paged_prefix_attention_cuda(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const c10::optional<at::Tensor>&, c10::optional<double>, c10::optional<at::ScalarType>) {
  paged_not_on_cuda("paged_prefix_attention");
}

std::tuple<at::Tensor, at::Tensor> paged_suffix_attention_cuda(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool,
    c10::optional<double>, c10::optional<at::ScalarType>) {
  paged_not_on_cuda("paged_suffix_attention");
}

}  // namespace
}  // namespace hydrogen

TORCH_LIBRARY_IMPL(hydrogen, CUDA, m) {
  m.impl("paged_prefix_attention", &hydrogen::paged_prefix_attention_cuda);
  m.impl("paged_suffix_attention", &hydrogen::paged_suffix_attention_cuda);
  m.impl("hydragen_attention", &hydrogen::hydragen_attention_cuda);
  m.impl("prefix_attention", &hydrogen::prefix_attention_cuda);
  m.impl("suffix_attention", &hydrogen::suffix_attention_cuda);
  m.impl("merge_attention", &hydrogen::merge_attention_cuda);
}
