// SIMT split-KV ("flash-decoding") attention for few query rows per (sequence, kv head):
// suffix decode (Lq = 1 or small Lq, any dtype) and the float32 fallback of both ops.
//
// grid = (B * Hkv * row_chunks, splits), 128 threads. A CTA owns up to RM = 16 query rows
// (G heads of a GQA group x Lq positions, row r = g * Lq + i) of one sequence and kv head,
// and keys [s*kps, (s+1)*kps) of split s. K/V blocks of BN keys are copied into shared
// memory with 16-byte cp.async (double buffered), then
//   S phase:  thread t scores key t % BN against rows t / BN, t / BN + 128 / BN, ...
//   softmax:  one warp per row, online (running max / sum in shared memory)
//   PV phase: thread owns (row, 8-wide d chunk) outputs; when there are fewer than 128
//             such items, the keys are split into KS slices reduced once at the end.
// With splits > 1 the CTA writes fp32 partials that the launcher merges (merge kernel).
#include "common.cuh"

namespace hydrogen {
namespace cuda {
namespace {

template <typename T, int D>
struct DecCfg {
  static constexpr int kThreads = 128;
  static constexpr int RM = kDecodeRows;
  static constexpr int kBnRaw = 16384 / (D * static_cast<int>(sizeof(T)));
  static constexpr int BN = kBnRaw >= 64 ? 64 : (kBnRaw >= 32 ? 32 : 16);  // keys per block
  static constexpr int SD = D + 16 / static_cast<int>(sizeof(T));         // +16 B: odd 16-byte row stride
  static constexpr int NCH = D / 8;                                       // 8-element chunks per row
  static constexpr int CP = D * static_cast<int>(sizeof(T)) / 16;         // 16-byte copies per row
  static constexpr int RS = kThreads / BN;                                // S phase row step
  static constexpr int SROWS = (RM + RS - 1) / RS;                        // rows per thread in S phase
  static constexpr int MAXO = (RM * NCH + kThreads - 1) / kThreads;       // PV items per thread
  static constexpr size_t kQBytes = static_cast<size_t>(RM) * D * 4;
  static constexpr size_t kKVBytes = static_cast<size_t>(2) * BN * SD * sizeof(T);  // one of K, V (2 stages)
  static constexpr size_t kSBytes = static_cast<size_t>(RM) * BN * 4;
  static constexpr size_t kSmem = kQBytes + 2 * kKVBytes + kSBytes;
  static_assert(D % 8 == 0, "head_dim must be a multiple of 8");
  static_assert(kKVBytes >= kThreads * 8 * 4, "the final reduction reuses the K buffer");
  static_assert(kQBytes % 16 == 0 && kKVBytes % 16 == 0, "alignment");
};

template <typename T, int D>
__global__ void __launch_bounds__(128) attention_decode_kernel(const AttnParams p) {
  using C = DecCfg<T, D>;
  constexpr int RM = C::RM, BN = C::BN, SD = C::SD, NCH = C::NCH, CP = C::CP, NTH = C::kThreads;
  constexpr int EPC = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte copy
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* sQ = reinterpret_cast<float*>(smem_raw);                              // [RM][D], pre-scaled
  T* sK = reinterpret_cast<T*>(smem_raw + C::kQBytes);                         // [2][BN][SD]
  T* sV = reinterpret_cast<T*>(smem_raw + C::kQBytes + C::kKVBytes);           // [2][BN][SD]
  float* sS = reinterpret_cast<float*>(smem_raw + C::kQBytes + 2 * C::kKVBytes);  // [RM][BN]
  __shared__ float s_m[RM], s_l[RM], s_alpha[RM];

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int64_t x = blockIdx.x;
  const int split = blockIdx.y;
  const int chunk = static_cast<int>(x % p.row_chunks);
  const int64_t bh = x / p.row_chunks;
  const int hkv = static_cast<int>(bh % p.kv_heads);
  const int64_t b = bh / p.kv_heads;
  const int Lq = p.q_len;
  const int rows_per_seq = p.group * Lq;
  const int r0 = chunk * RM;
  const int R = rows_per_seq - r0 < RM ? rows_per_seq - r0 : RM;  // >= 1 by construction of the grid

  // Which keys: suffix reads kv batch b; prefix reads seq_to_prefix[b] (or prefix 0).
  int64_t kvb = 0;
  bool kv_valid = true;
  if (p.seq_to_prefix.ptr != nullptr) {
    const int64_t s = load_index(p.seq_to_prefix, b);
    kv_valid = s >= 0 && s < p.num_kv;
    kvb = kv_valid ? s : 0;
  } else if (p.kv_from_batch) {
    kvb = b;
  }
  const int kv_len = kv_valid ? clamp_len(p.kv_lens, kvb, p.kv_len) : 0;
  int kv_end = kv_len;
  if (p.causal) {
    int imax = 0;
    for (int r = 0; r < R; ++r) {
      const int i = (r0 + r) % Lq;
      imax = i > imax ? i : imax;
    }
    const int64_t e = static_cast<int64_t>(kv_len) - Lq + imax + 1;
    kv_end = e < 0 ? 0 : (e > kv_len ? kv_len : static_cast<int>(e));
  }
  const int64_t key_begin = static_cast<int64_t>(split) * p.keys_per_split;
  const int64_t key_end64 = key_begin + p.keys_per_split < kv_end ? key_begin + p.keys_per_split : kv_end;
  const int key_end = static_cast<int>(key_end64);
  const int nblk = key_end64 > key_begin ? static_cast<int>((key_end64 - key_begin + BN - 1) / BN) : 0;

  auto row_q_off = [&](int r) -> int64_t {
    const int rg = r0 + r;
    const int g = rg / Lq, i = rg - (rg / Lq) * Lq;
    return b * p.q_sb + (static_cast<int64_t>(hkv) * p.group + g) * p.q_sh + static_cast<int64_t>(i) * p.q_sl;
  };
  auto row_out = [&](int r) -> int64_t {
    const int rg = r0 + r;
    const int g = rg / Lq, i = rg - (rg / Lq) * Lq;
    return (b * p.q_heads + static_cast<int64_t>(hkv) * p.group + g) * Lq + i;
  };

  if (tid < RM) {
    s_m[tid] = -INFINITY;
    s_l[tid] = 0.f;
    s_alpha[tid] = 1.f;
  }
  {
    const T* qp = static_cast<const T*>(p.q);
    for (int idx = tid; idx < R * D; idx += NTH) {
      const int r = idx / D, d = idx - (idx / D) * D;
      sQ[r * D + d] = Cvt<T>::to_f(qp[row_q_off(r) + d]) * p.scale_log2;
    }
  }

  const T* kbase = static_cast<const T*>(p.k);
  const T* vbase = static_cast<const T*>(p.v);
  if (nblk > 0) {
    kbase += kvb * p.k_sb + static_cast<int64_t>(hkv) * p.k_sh;
    vbase += kvb * p.v_sb + static_cast<int64_t>(hkv) * p.v_sh;
  }
  auto load_kv = [&](int blk, int st) {
    const int64_t n0 = key_begin + static_cast<int64_t>(blk) * BN;
    T* dk = sK + st * BN * SD;
    T* dv = sV + st * BN * SD;
    for (int c = tid; c < BN * CP; c += NTH) {
      const int row = c / CP, cc = c - (c / CP) * CP;
      const int64_t key = n0 + row;
      const bool ok = key < key_end;
      const T* srck = ok ? kbase + key * p.k_sl + cc * EPC : static_cast<const T*>(p.k);
      const T* srcv = ok ? vbase + key * p.v_sl + cc * EPC : static_cast<const T*>(p.v);
      cp_async16(smem_u32(dk + row * SD + cc * EPC), srck, ok);
      cp_async16(smem_u32(dv + row * SD + cc * EPC), srcv, ok);
    }
  };

  // PV ownership.
  const int owners = R * NCH;
  const int KS = owners >= NTH ? 1 : NTH / owners;  // key slices
  const int my_ks = KS == 1 ? 0 : tid / owners;
  const bool pv_active = my_ks < KS;
  float acc[C::MAXO][8];
#pragma unroll
  for (int k = 0; k < C::MAXO; ++k)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[k][e] = 0.f;
  auto owned = [&](int k) -> int {  // item index, or owners when none
    if (KS == 1) return tid + k * NTH < owners ? tid + k * NTH : owners;
    return (k == 0 && pv_active) ? tid % owners : owners;
  };

  __syncthreads();  // s_m / s_l / sQ ready

  const int lim_base = kv_len - Lq;
  if (nblk > 0) {
    load_kv(0, 0);
    cp_async_commit();
  }
  for (int it = 0; it < nblk; ++it) {
    if (it + 1 < nblk) {
      load_kv(it + 1, (it + 1) & 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* Ks = sK + (it & 1) * BN * SD;
    const T* Vs = sV + (it & 1) * BN * SD;
    const int n0 = static_cast<int>(key_begin) + it * BN;

    // S phase.
    {
      const int j = tid % BN;
      const int rs = tid / BN;
      if (rs < R) {
        float sacc[C::SROWS];
#pragma unroll
        for (int k = 0; k < C::SROWS; ++k) sacc[k] = 0.f;
#pragma unroll
        for (int ch = 0; ch < NCH; ++ch) {
          float kf[8];
          load8(Ks + j * SD + ch * 8, kf);
#pragma unroll
          for (int k = 0; k < C::SROWS; ++k) {
            const int r = rs + k * C::RS;
            if (r < R) {
              const float4 qa = reinterpret_cast<const float4*>(sQ + r * D + ch * 8)[0];
              const float4 qb = reinterpret_cast<const float4*>(sQ + r * D + ch * 8)[1];
              sacc[k] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] + qb.y * kf[5] +
                         qb.z * kf[6] + qb.w * kf[7];
            }
          }
        }
        const int key = n0 + j;
#pragma unroll
        for (int k = 0; k < C::SROWS; ++k) {
          const int r = rs + k * C::RS;
          if (r < R) {
            bool ok = key < key_end;
            if (p.causal) ok = ok && key <= lim_base + (r0 + r) % Lq;
            sS[r * BN + j] = ok ? sacc[k] : -INFINITY;
          }
        }
      }
    }
    __syncthreads();

    // Online softmax, one warp per row.
    for (int r = warp; r < R; r += NTH / 32) {
      constexpr int PER = (BN + 31) / 32;
      float sv[PER];
      float mx = -INFINITY;
#pragma unroll
      for (int q = 0; q < PER; ++q) {
        const int j = lane + 32 * q;
        sv[q] = j < BN ? sS[r * BN + j] : -INFINITY;
        mx = fmaxf(mx, sv[q]);
      }
      mx = warp_max(mx);
      const float m_old = s_m[r];
      const float m_new = fmaxf(m_old, mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      float sum = 0.f;
#pragma unroll
      for (int q = 0; q < PER; ++q) {
        const int j = lane + 32 * q;
        if (j < BN) {
          const float e = exp2f(sv[q] - m_use);
          sS[r * BN + j] = e;
          sum += e;
        }
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float alpha = exp2f(m_old - m_use);
        s_l[r] = s_l[r] * alpha + sum;
        s_m[r] = m_new;
        s_alpha[r] = alpha;
      }
    }
    __syncthreads();

    // PV phase. Keys past key_end have p = 0 and zero-filled V rows.
#pragma unroll
    for (int k = 0; k < C::MAXO; ++k) {
      const int o = owned(k);
      if (o < owners) {
        const int r = o / NCH, ch = o - (o / NCH) * NCH;
        const float a = s_alpha[r];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[k][e] *= a;
        for (int j = my_ks; j < BN; j += KS) {
          const float pj = sS[r * BN + j];
          float vf[8];
          load8(Vs + j * SD + ch * 8, vf);
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[k][e] = fmaf(pj, vf[e], acc[k][e]);
        }
      }
    }
    __syncthreads();  // stage it & 1 and sS free for the next block
  }

  // Reduce the key slices (KS is uniform across the CTA).
  if (KS > 1) {
    float* red = reinterpret_cast<float*>(sK);  // [KS][owners][8] <= 128 * 8 floats
    if (pv_active) {
      const int o = tid % owners;
#pragma unroll
      for (int e = 0; e < 8; ++e) red[(my_ks * owners + o) * 8 + e] = acc[0][e];
    }
    __syncthreads();
    if (tid < owners) {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        float s = 0.f;
        for (int q = 0; q < KS; ++q) s += red[(q * owners + tid) * 8 + e];
        acc[0][e] = s;
      }
    }
  }
  const bool writer = KS == 1 || tid < owners;
  if (writer) {
#pragma unroll
    for (int k = 0; k < C::MAXO; ++k) {
      const int o = KS == 1 ? tid + k * NTH : (k == 0 ? tid : owners);
      if (o < owners) {
        const int r = o / NCH, ch = o - (o / NCH) * NCH;
        const float l = s_l[r];
        const float inv = row_reciprocal(l);
        float f[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) f[e] = normalized(acc[k][e], l, inv);
        const int64_t orow = row_out(r);
        store8(p.out, p.out_type, split * p.out_split_stride + orow * D + ch * 8, f);
        if (ch == 0) p.lse[split * p.lse_split_stride + orow] = finish_lse(s_m[r], l);
      }
    }
  }
}

template <typename T, int D>
cudaError_t launch_decode_typed(const AttnParams& p, int splits, cudaStream_t stream) {
  static bool smem_set[64] = {};
  using C = DecCfg<T, D>;
  cudaError_t e = ensure_smem(attention_decode_kernel<T, D>, C::kSmem, smem_set);
  if (e != cudaSuccess) return e;
  const int64_t gx = p.batch * p.kv_heads * p.row_chunks;
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(splits));
  attention_decode_kernel<T, D><<<grid, C::kThreads, C::kSmem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_decode_dim(const AttnParams& p, int head_dim, int splits, cudaStream_t stream) {
  switch (head_dim) {
    case 32: return launch_decode_typed<T, 32>(p, splits, stream);
    case 64: return launch_decode_typed<T, 64>(p, splits, stream);
    case 80: return launch_decode_typed<T, 80>(p, splits, stream);
    case 96: return launch_decode_typed<T, 96>(p, splits, stream);
    case 128: return launch_decode_typed<T, 128>(p, splits, stream);
    case 256: return launch_decode_typed<T, 256>(p, splits, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
int decode_bn(int head_dim) {
  switch (head_dim) {
    case 32: return DecCfg<T, 32>::BN;
    case 64: return DecCfg<T, 64>::BN;
    case 80: return DecCfg<T, 80>::BN;
    case 96: return DecCfg<T, 96>::BN;
    case 128: return DecCfg<T, 128>::BN;
    case 256: return DecCfg<T, 256>::BN;
    default: return 64;
  }
}

}  // namespace

bool head_dim_supported(int head_dim) {
  switch (head_dim) {
    case 32: case 64: case 80: case 96: case 128: case 256: return true;
    default: return false;
  }
}

int decode_block_n(ElemType t, int head_dim) {
  if (t == ElemType::kF32) return decode_bn<float>(head_dim);
  return decode_bn<__nv_bfloat16>(head_dim);
}

cudaError_t launch_attention_decode(
    const AttnParams& p, ElemType in_type, int head_dim, int splits, cudaStream_t stream) {
  if (p.batch <= 0 || p.kv_heads <= 0 || p.row_chunks <= 0 || splits <= 0) return cudaSuccess;
  switch (in_type) {
    case ElemType::kF32: return launch_decode_dim<float>(p, head_dim, splits, stream);
    case ElemType::kBF16: return launch_decode_dim<__nv_bfloat16>(p, head_dim, splits, stream);
    case ElemType::kF16: return launch_decode_dim<__half>(p, head_dim, splits, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace hydrogen
