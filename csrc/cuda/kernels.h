// Plain C++/CUDA interface between the torch-facing launcher (attention_cuda.cpp) and the
// kernels (*.cu). No torch headers here: the .cu files stay cheap to compile.
//
// Conventions shared by every kernel:
//  * q, k, v are [batch, heads, seq, head_dim] with the last dimension contiguous; the
//    other strides are given in elements. The launcher guarantees 16-byte aligned base
//    pointers and strides that are multiples of 16 bytes (it copies the tensor otherwise).
//  * out is contiguous [B, Hq, Lq, D] (dtype out_type) and lse contiguous float32
//    [B, Hq, Lq], natural log. A row that sees no key gets out = 0 and lse = -inf.
//  * kv_lens / seq_to_prefix are read on the device (no host sync). Out-of-range values
//    never cause an out-of-bounds access: lengths are clamped to [0, L] and a sequence
//    whose prefix index is outside [0, P) sees an empty prefix (out 0, lse -inf).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hydrogen {
namespace cuda {

enum class ElemType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// A device-resident 1-D int32 or int64 tensor (contiguous); ptr == nullptr means absent.
struct IndexRef {
  const void* ptr = nullptr;
  int is_i64 = 0;
};

// Rows per CTA of the tensor-core kernel and of the SIMT decode kernel.
constexpr int kTcBlockM = 64;
constexpr int kDecodeRows = 16;
// Most KV splits (flash-decoding) the launcher may request; the combine is one merge launch.
constexpr int kMaxSplits = 16;
// Most segments merged by one launch of the merge kernel.
constexpr int kMaxMergeInputs = 16;

// Tiling of the tensor-core kernel (mode):
//   kModeSingle: one prefix shared by all sequences (prefix_attention without seq_to_prefix);
//                tile t of kv head h covers stacked rows [t*BM, (t+1)*BM) of B*G*Lq rows.
//   kModeBucket: sequences grouped by prefix on the device (launch_prefix_buckets); bucket P
//                holds sequences with an invalid prefix index (they see no key).
//   kModeSuffix: per-sequence keys (suffix_attention); tile t = (b, row chunk).
enum TcMode : int { kModeSingle = 0, kModeBucket = 1, kModeSuffix = 2 };

struct AttnParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t q_sb = 0, q_sh = 0, q_sl = 0;
  int64_t k_sb = 0, k_sh = 0, k_sl = 0;
  int64_t v_sb = 0, v_sh = 0, v_sl = 0;

  void* out = nullptr;  // contiguous [B, Hq, Lq, D] (or [splits, B, Hq, Lq, D] partials)
  ElemType out_type = ElemType::kF32;
  float* lse = nullptr;          // contiguous [B, Hq, Lq] (or [splits, B, Hq, Lq])
  int64_t out_split_stride = 0;  // elements between the partial outputs of two splits
  int64_t lse_split_stride = 0;

  int64_t batch = 0;  // B
  int q_heads = 0;    // Hq
  int kv_heads = 0;   // Hkv
  int group = 0;      // Hq / Hkv
  int q_len = 0;      // Lq
  int kv_len = 0;     // padded key length L (Lp or Ls)
  int64_t num_kv = 0; // P (prefix) or B (suffix)

  IndexRef kv_lens;        // [num_kv]
  IndexRef seq_to_prefix;  // [B] (prefix only)
  int kv_from_batch = 0;   // 1: sequence b reads kv batch b (suffix); 0: prefix (via seq_to_prefix, else 0)
  int causal = 0;          // bottom-right aligned causal mask (suffix only)
  float scale_log2 = 0.f;  // scale * log2(e)
  int keys_per_split = 0;  // multiple of the kernel's key block; split s covers [s*kps, (s+1)*kps)

  // Tensor-core kernel only.
  int mode = kModeSingle;
  int64_t tiles_per_seq = 0;           // kModeSuffix
  const int* bucket_seq_off = nullptr;  // kModeBucket: [P + 2] offsets into bucket_seqs
  const int* bucket_tile_off = nullptr; // kModeBucket: [P + 2] first tile of each bucket
  const int* bucket_seqs = nullptr;     // kModeBucket: [B] sequence ids grouped by bucket

  // SIMT decode kernel only.
  int row_chunks = 1;  // ceil(G * Lq / kDecodeRows)
};

struct MergeParams {
  int n = 0;
  const void* out[kMaxMergeInputs] = {};
  const float* lse[kMaxMergeInputs] = {};
  int64_t o_sb[kMaxMergeInputs] = {}, o_sh[kMaxMergeInputs] = {}, o_sl[kMaxMergeInputs] = {};
  int64_t l_sb[kMaxMergeInputs] = {}, l_sh[kMaxMergeInputs] = {}, l_sl[kMaxMergeInputs] = {};
  int64_t batch = 0, heads = 0, len = 0, dim = 0;
  void* dst = nullptr;  // contiguous [B, H, L, D]
  ElemType dst_type = ElemType::kF32;
  float* dst_lse = nullptr;  // contiguous [B, H, L]
};

// Head dims with compiled kernels.
bool head_dim_supported(int head_dim);

// Key-block size of each kernel (the launcher rounds keys_per_split to it).
int tc_block_n(int head_dim);
// Whether the tensor-core kernel runs for this input type and head dim on a device that
// gives a block smem_optin_bytes of shared memory (16-bit inputs, and its static plus
// dynamic shared memory fit); else the launcher takes the SIMT decode kernel, which needs less.
bool tensor_cores_fit(ElemType in_type, int head_dim, int64_t smem_optin_bytes);
int decode_block_n(ElemType t, int head_dim);

// Groups the B sequences by prefix (counting sort on the device). ws holds
// (P + 2) + (P + 2) + (P + 1) + B int32: seq_off, tile_off, cursor, seqs.
// rows_per_seq = G * Lq; a bucket of n sequences gets ceil(n * rows_per_seq / kTcBlockM) tiles.
cudaError_t launch_prefix_buckets(
    IndexRef seq_to_prefix, int64_t batch, int64_t num_prefix, int64_t rows_per_seq, int* ws, cudaStream_t stream);

// Tensor-core (mma.sync m16n8k16) attention, bf16/fp16 inputs. grid = (tiles, Hkv, splits).
cudaError_t launch_attention_tc(
    const AttnParams& p, ElemType in_type, int head_dim, int64_t tiles, int splits, cudaStream_t stream);

// SIMT split-KV decode attention, any input type. grid = (B * Hkv * row_chunks, splits).
cudaError_t launch_attention_decode(
    const AttnParams& p, ElemType in_type, int head_dim, int splits, cudaStream_t stream);

// N-way LSE merge (n <= kMaxMergeInputs). vec8: every input row is 16-byte aligned and
// D % 8 == 0 (8 elements per thread), else one element per thread.
cudaError_t launch_merge(const MergeParams& p, ElemType in_type, bool vec8, cudaStream_t stream);

}  // namespace cuda
}  // namespace hydrogen
