// Fused N-way log-sum-exp merge (bandwidth bound). Each thread owns VEC consecutive
// elements of one row (b, h, l): it reads the N lses of the row (strided, any layout),
// then the N output slices (vectorised: 16 bytes per load for 16-bit types), and writes
//   out = sum_i w_i out_i / sum_i w_i,  w_i = exp(lse_i - max_j lse_j),  lse = max + log(sum w)
// A segment with lse = -inf is empty and is not read; a row with no segment gets out 0 and
// lse -inf. A NaN or +inf lse is not a valid result: the row becomes NaN (NaN in, NaN out).
// Accumulation in fp32.
#include "common.cuh"

namespace hydrogen {
namespace cuda {
namespace {

template <typename T, int VEC>
__global__ void __launch_bounds__(256) merge_kernel(const MergeParams p) {
  const int64_t D = p.dim;
  const int64_t cpr = D >= VEC ? D / VEC : 1;  // chunks per row (1 when D == 0: lse only)
  const int64_t rows = p.batch * p.heads * p.len;
  const int64_t total = rows * cpr;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = idx % cpr;
    const int64_t row = idx / cpr;
    const int64_t l = row % p.len;
    const int64_t h = (row / p.len) % p.heads;
    const int64_t b = row / (p.len * p.heads);
    const bool has_data = c * VEC < D;

    float lse_v[kMaxMergeInputs];
    float m = -INFINITY;
    bool poisoned = false;  // a NaN or +inf lse
#pragma unroll
    for (int i = 0; i < kMaxMergeInputs; ++i) {
      if (i < p.n) {
        const float x = p.lse[i][b * p.l_sb[i] + h * p.l_sh[i] + l * p.l_sl[i]];
        lse_v[i] = x;
        poisoned = poisoned || isnan(x) || x == INFINITY;
        m = fmaxf(m, x);
      }
    }
    float acc[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[e] = 0.f;
    float sum = 0.f;
    if (!poisoned && m != -INFINITY) {
#pragma unroll
      for (int i = 0; i < kMaxMergeInputs; ++i) {
        if (i < p.n && lse_v[i] != -INFINITY) {
          const float w = expf(lse_v[i] - m);
          sum += w;
          if (has_data && w > 0.f) {  // like the CPU: a segment whose weight underflows is not read
            const T* src = static_cast<const T*>(p.out[i]) + b * p.o_sb[i] + h * p.o_sh[i] + l * p.o_sl[i] + c * VEC;
            float f[VEC];
            if constexpr (VEC == 8) {
              load8(src, f);
            } else {
              f[0] = Cvt<T>::to_f(src[0]);
            }
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[e] = fmaf(w, f[e], acc[e]);
          }
        }
      }
    }
    const float inv = poisoned ? NAN : (sum > 0.f ? 1.f / sum : 0.f);
    if (has_data) {
      const int64_t o = row * D + c * VEC;
      if constexpr (VEC == 8) {
        float f[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) f[e] = acc[e] * inv;
        store8(p.dst, p.dst_type, o, f);
      } else {
        store1(p.dst, p.dst_type, o, acc[0] * inv);
      }
    }
    if (c == 0) p.dst_lse[row] = poisoned ? NAN : (sum > 0.f ? m + logf(sum) : -INFINITY);
  }
}

template <typename T>
cudaError_t launch_merge_typed(const MergeParams& p, bool vec8, cudaStream_t stream) {
  const int64_t rows = p.batch * p.heads * p.len;
  const int64_t vec = vec8 ? 8 : 1;
  const int64_t cpr = p.dim >= vec ? p.dim / vec : 1;
  const int64_t total = rows * cpr;
  if (total <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > (int64_t{1} << 30)) blocks = int64_t{1} << 30;  // grid-stride loop covers the rest
  if (vec8) {
    merge_kernel<T, 8><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  } else {
    merge_kernel<T, 1><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_merge(const MergeParams& p, ElemType in_type, bool vec8, cudaStream_t stream) {
  if (p.n <= 0 || p.n > kMaxMergeInputs) return cudaErrorInvalidValue;
  switch (in_type) {
    case ElemType::kF32: return launch_merge_typed<float>(p, vec8, stream);
    case ElemType::kBF16: return launch_merge_typed<__nv_bfloat16>(p, vec8, stream);
    case ElemType::kF16: return launch_merge_typed<__half>(p, vec8, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace hydrogen
