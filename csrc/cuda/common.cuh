// Device helpers shared by the CUDA kernels (no torch headers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace hydrogen {
namespace cuda {

constexpr float kLn2 = 0.69314718055994530942f;

template <typename T>
struct Cvt;
template <>
struct Cvt<float> {
  static __device__ __forceinline__ float to_f(float x) { return x; }
};
template <>
struct Cvt<__nv_bfloat16> {
  static __device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
};
template <>
struct Cvt<__half> {
  static __device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
};

__device__ __forceinline__ int64_t load_index(const IndexRef& r, int64_t i) {
  return r.is_i64 ? static_cast<const int64_t*>(r.ptr)[i] : static_cast<int64_t>(static_cast<const int32_t*>(r.ptr)[i]);
}

// Valid key count of kv batch i: kv_lens[i] clamped to [0, max_len] (max_len when absent).
__device__ __forceinline__ int clamp_len(const IndexRef& r, int64_t i, int max_len) {
  if (r.ptr == nullptr) return max_len;
  int64_t x = load_index(r, i);
  x = x < 0 ? 0 : (x > max_len ? max_len : x);
  return static_cast<int>(x);
}

// 8 consecutive elements -> float. p must be 16-byte aligned.
__device__ __forceinline__ void load8(const float* p, float* f) {
  const float4 a = reinterpret_cast<const float4*>(p)[0];
  const float4 b = reinterpret_cast<const float4*>(p)[1];
  f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w;
  f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* f) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ void load8(const __half* p, float* f) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __half22float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// Stores 2 floats at element index idx of a buffer of type t (idx even: 4/8-byte aligned).
__device__ __forceinline__ void store2(void* base, ElemType t, int64_t idx, float a, float b) {
  if (t == ElemType::kF32) {
    *reinterpret_cast<float2*>(static_cast<float*>(base) + idx) = make_float2(a, b);
  } else if (t == ElemType::kBF16) {
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(base) + idx) = __floats2bfloat162_rn(a, b);
  } else {
    *reinterpret_cast<__half2*>(static_cast<__half*>(base) + idx) = __floats2half2_rn(a, b);
  }
}

// Stores 8 floats at element index idx (idx % 8 == 0, base 16-byte aligned).
__device__ __forceinline__ void store8(void* base, ElemType t, int64_t idx, const float* f) {
  if (t == ElemType::kF32) {
    float4* p = reinterpret_cast<float4*>(static_cast<float*>(base) + idx);
    p[0] = make_float4(f[0], f[1], f[2], f[3]);
    p[1] = make_float4(f[4], f[5], f[6], f[7]);
  } else if (t == ElemType::kBF16) {
    uint4 u;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4*>(static_cast<__nv_bfloat16*>(base) + idx) = u;
  } else {
    uint4 u;
    __half2* h = reinterpret_cast<__half2*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4*>(static_cast<__half*>(base) + idx) = u;
  }
}

__device__ __forceinline__ void store1(void* base, ElemType t, int64_t idx, float a) {
  if (t == ElemType::kF32) {
    static_cast<float*>(base)[idx] = a;
  } else if (t == ElemType::kBF16) {
    static_cast<__nv_bfloat16*>(base)[idx] = __float2bfloat16_rn(a);
  } else {
    static_cast<__half*>(base)[idx] = __float2half_rn(a);
  }
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global->shared async copy; when !valid nothing is read and the 16 bytes are zeroed.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Natural-log LSE from a running max m (log2 domain, scores pre-multiplied by log2 e) and
// sum l of 2^(s - m); -inf when the row saw no key.
__device__ __forceinline__ float finish_lse(float m, float l) {
  return l == 0.f ? -INFINITY : (m + log2f(l)) * kLn2;  // a NaN sum stays NaN: NaN in, NaN out
}

// 1/l for the normalisation of an output row; NaN for a row whose scores held a NaN (l
// is NaN), so that the NaN reaches the output.
__device__ __forceinline__ float row_reciprocal(float l) { return l == 0.f ? 0.f : 1.f / l; }

// An output element of a row with sum l: exactly 0 for a row that saw no key, whatever
// its accumulator holds (0 * a NaN value of a key loaded for other rows is NaN).
__device__ __forceinline__ float normalized(float acc, float l, float inv) { return l == 0.f ? 0.f : acc * inv; }

// Sets the dynamic shared memory limit of a kernel once per device.
template <typename Kernel>
inline cudaError_t ensure_smem(Kernel kernel, size_t bytes, bool* done_per_device) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  if (dev >= 0 && dev < 64 && done_per_device[dev]) return cudaSuccess;
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (e == cudaSuccess && dev >= 0 && dev < 64) done_per_device[dev] = true;
  return e;
}

}  // namespace cuda
}  // namespace hydrogen
