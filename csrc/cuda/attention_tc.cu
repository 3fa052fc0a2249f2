// Tensor-core attention for bf16/fp16 (mma.sync.m16n8k16, fp32 accumulation), sm_80+.
//
// Used for the shared prefix (Hydragen): every query row of every sequence mapped to a
// prefix, times the G query heads of one GQA group, times Lq, is stacked into one tall
// matrix. A CTA owns BM = 64 stacked rows of one kv head (4 warps x 16 rows); each K/V
// block of BN keys is copied into shared memory once (cp.async, double buffered) and used
// by all 64 rows: a matrix-matrix product instead of B matrix-vector products.
// Also used by suffix_attention when G * Lq is large (per-sequence tiles, causal mask).
//
// grid = (tiles, Hkv, splits). Split s covers keys [s*kps, (s+1)*kps) (flash-decoding
// style, to fill the GPU when there are few tiles); with splits > 1 the kernel writes fp32
// partials + lse that the launcher merges.
//
// Without a host sync the number of sequences per prefix is unknown on the host, so with
// seq_to_prefix the launcher runs prefix_bucket_kernel (a one-CTA counting sort) and
// launches ceil(B*G*Lq/BM) + P + 1 tiles per kv head, an upper bound of the real count;
// each CTA finds its bucket by binary search over the tile offsets and exits if none.
#include "common.cuh"

namespace hydrogen {
namespace cuda {
namespace {

template <typename T>
struct Mma;
template <>
struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);  // .x (low 16 bits) = lo
    return *reinterpret_cast<uint32_t*>(&h);
  }
  // (x, y) ~= hi + lo with both halves representable: the residual error is ~2^-16 relative.
  static __device__ __forceinline__ void split(float x, float y, uint32_t& hi, uint32_t& lo) {
    __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    const float2 hf = __bfloat1622float2(h);
    __nv_bfloat162 l = __floats2bfloat162_rn(x - hf.x, y - hf.y);
    hi = *reinterpret_cast<uint32_t*>(&h);
    lo = *reinterpret_cast<uint32_t*>(&l);
  }
};
template <>
struct Mma<__half> {
  static __device__ __forceinline__ void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ void split(float x, float y, uint32_t& hi, uint32_t& lo) {
    __half2 h = __floats2half2_rn(x, y);
    const float2 hf = __half22float2(h);
    __half2 l = __floats2half2_rn(x - hf.x, y - hf.y);
    hi = *reinterpret_cast<uint32_t*>(&h);
    lo = *reinterpret_cast<uint32_t*>(&l);
  }
};

__device__ __forceinline__ void ldsm_x4(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

constexpr int tc_bn(int D) { return D <= 128 ? 64 : 32; }  // keys per block
constexpr int tc_row_stride(int D) { return D + 8; }          // smem row stride (elements): +16 B, ldmatrix conflict-free
// Dynamic shared memory: Q + 2 stages of K and V, 16-bit elements.
constexpr size_t tc_smem_bytes(int D) { return static_cast<size_t>(kTcBlockM + 4 * tc_bn(D)) * tc_row_stride(D) * 2; }

template <int D>
struct TcCfg {
  static constexpr int kThreads = 128;
  static constexpr int BM = kTcBlockM;             // 4 warps x 16 rows
  static constexpr int BN = tc_bn(D);
  static constexpr int SD = tc_row_stride(D);
  static constexpr int CH = D / 8;                 // 16-byte chunks per row
  static constexpr int NT_S = BN / 8;              // n-tiles of S per warp
  static constexpr int NT_O = D / 8;               // n-tiles of O per warp
  static constexpr size_t kSmem = tc_smem_bytes(D);
  static_assert(D % 16 == 0, "head_dim must be a multiple of 16");
  static_assert(BM == 16 * (kThreads / 32), "one warp per 16 rows");
};

template <typename T, int D>
__global__ void __launch_bounds__(128) attention_tc_kernel(const AttnParams p) {
  using C = TcCfg<D>;
  constexpr int BM = C::BM, BN = C::BN, SD = C::SD, CH = C::CH;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * SD;       // [2][BN][SD]
  T* sV = sK + 2 * BN * SD;   // [2][BN][SD]
  __shared__ int64_t s_qoff[BM];
  __shared__ int64_t s_orow[BM];  // row of out/lse ((b*Hq + hq)*Lq + i), -1: no row
  __shared__ int s_qi[BM];        // query position i (causal mask)
  __shared__ int s_imax;

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int hkv = blockIdx.y;
  const int split = blockIdx.z;
  const int64_t tile = blockIdx.x;
  const int64_t Lq = p.q_len;
  const int64_t rows_per_seq = static_cast<int64_t>(p.group) * Lq;

  // ---- Which rows and which keys this CTA owns (uniform across the CTA). ----
  int64_t nrows, row_base, seq_base = 0, fixed_b = 0, kvb = 0;
  bool kv_valid = true;
  if (p.mode == kModeSingle) {
    nrows = p.batch * rows_per_seq;
    row_base = tile * BM;
    if (row_base >= nrows) return;
  } else if (p.mode == kModeBucket) {
    const int64_t nb = p.num_kv + 1;  // buckets 0..P-1 plus bucket P: invalid prefix index
    if (tile >= p.bucket_tile_off[nb]) return;
    int64_t lo = 0, hi = nb - 1;  // largest bucket with tile_off[bucket] <= tile
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) >> 1;
      if (p.bucket_tile_off[mid] <= tile) lo = mid; else hi = mid - 1;
    }
    seq_base = p.bucket_seq_off[lo];
    nrows = (p.bucket_seq_off[lo + 1] - seq_base) * rows_per_seq;
    row_base = (tile - p.bucket_tile_off[lo]) * BM;
    if (row_base >= nrows) return;
    kvb = lo;
    kv_valid = lo < p.num_kv;
  } else {  // kModeSuffix
    fixed_b = tile / p.tiles_per_seq;
    if (fixed_b >= p.batch) return;
    row_base = (tile - fixed_b * p.tiles_per_seq) * BM;
    nrows = rows_per_seq;
    kvb = fixed_b;
  }

  if (tid == 0) s_imax = 0;
  __syncthreads();
  for (int lr = tid; lr < BM; lr += C::kThreads) {
    const int64_t r = row_base + lr;
    if (r < nrows) {
      const int64_t s = r / rows_per_seq;
      const int64_t rem = r - s * rows_per_seq;
      const int64_t g = rem / Lq;
      const int i = static_cast<int>(rem - g * Lq);
      int64_t b;
      if (p.mode == kModeSingle) b = s;
      else if (p.mode == kModeBucket) b = p.bucket_seqs[seq_base + s];
      else b = fixed_b;
      const int64_t hq = static_cast<int64_t>(hkv) * p.group + g;
      s_qoff[lr] = b * p.q_sb + hq * p.q_sh + static_cast<int64_t>(i) * p.q_sl;
      s_orow[lr] = (b * p.q_heads + hq) * Lq + i;
      s_qi[lr] = i;
      atomicMax(&s_imax, i);
    } else {
      s_qoff[lr] = 0;
      s_orow[lr] = -1;
      s_qi[lr] = 0;
    }
  }
  __syncthreads();

  const int kv_len = kv_valid ? clamp_len(p.kv_lens, kvb, p.kv_len) : 0;
  int kv_end = kv_len;
  if (p.causal) {  // the last key any row of this tile can see, + 1
    const int64_t e = static_cast<int64_t>(kv_len) - Lq + s_imax + 1;
    kv_end = e < 0 ? 0 : (e > kv_len ? kv_len : static_cast<int>(e));
  }
  const int64_t key_begin = static_cast<int64_t>(split) * p.keys_per_split;
  const int64_t key_end64 = key_begin + p.keys_per_split < kv_end ? key_begin + p.keys_per_split : kv_end;
  const int key_end = static_cast<int>(key_end64);
  const int nblk = key_end64 > key_begin ? static_cast<int>((key_end64 - key_begin + BN - 1) / BN) : 0;

  const T* qp = static_cast<const T*>(p.q);
  const T* kbase = static_cast<const T*>(p.k);
  const T* vbase = static_cast<const T*>(p.v);
  if (nblk > 0) {
    kbase += kvb * p.k_sb + static_cast<int64_t>(hkv) * p.k_sh;
    vbase += kvb * p.v_sb + static_cast<int64_t>(hkv) * p.v_sh;
  }

  // Loads key block blk (keys key_begin + blk*BN + [0, BN)) into stage st; keys >= key_end are zero-filled.
  auto load_kv = [&](int blk, int st) {
    const int64_t n0 = key_begin + static_cast<int64_t>(blk) * BN;
    T* dk = sK + st * BN * SD;
    T* dv = sV + st * BN * SD;
    for (int c = tid; c < BN * CH; c += C::kThreads) {
      const int row = c / CH, ch = c - (c / CH) * CH;
      const int64_t key = n0 + row;
      const bool ok = key < key_end;
      const T* srck = ok ? kbase + key * p.k_sl + ch * 8 : static_cast<const T*>(p.k);
      const T* srcv = ok ? vbase + key * p.v_sl + ch * 8 : static_cast<const T*>(p.v);
      cp_async16(smem_u32(dk + row * SD + ch * 8), srck, ok);
      cp_async16(smem_u32(dv + row * SD + ch * 8), srcv, ok);
    }
  };

  float acc_o[C::NT_O][4];
#pragma unroll
  for (int i = 0; i < C::NT_O; ++i) acc_o[i][0] = acc_o[i][1] = acc_o[i][2] = acc_o[i][3] = 0.f;
  float m_r[2] = {-INFINITY, -INFINITY};  // running max (log2 domain) of rows g and g + 8
  float l_r[2] = {0.f, 0.f};              // this thread's partial row sums

  const int g_row = lane >> 2;  // fragment row within the warp's 16 rows
  const bool warp_active = row_base + warp * 16 < nrows;
  const int lim_base = kv_len - static_cast<int>(Lq);
  const int lim0 = lim_base + s_qi[warp * 16 + g_row];      // causal: last visible key of row g
  const int lim1 = lim_base + s_qi[warp * 16 + g_row + 8];  // and of row g + 8

  if (nblk > 0) {
    // Q tile (rows without a query are zero-filled), in the same group as key block 0.
    for (int c = tid; c < BM * CH; c += C::kThreads) {
      const int row = c / CH, ch = c - (c / CH) * CH;
      const bool ok = s_orow[row] >= 0;
      cp_async16(smem_u32(sQ + row * SD + ch * 8), ok ? qp + s_qoff[row] + ch * 8 : qp, ok);
    }
    load_kv(0, 0);
    cp_async_commit();

    // ldmatrix lane addresses (see the fragment layouts of mma.m16n8k16):
    //  Q (A, x4): matrices (rows 0-7|8-15) x (k 0-7|8-15): row = lane % 16, col = (lane / 16) * 8.
    //  K (B of S = Q K^T, x4, non-trans): key = lane % 8 + (lane / 16) * 8, col = ((lane / 8) % 2) * 8
    //     -> regs {b0, b1} of n-tile 2j and {b0, b1} of n-tile 2j + 1.
    //  V (B of O = P V, x4, trans): key = lane % 8 + ((lane / 8) % 2) * 8, col = (lane / 16) * 8
    //     -> regs {b0, b1} of d-tile 2j and {b0, b1} of d-tile 2j + 1.
    const uint32_t q_addr = smem_u32(sQ + (warp * 16 + (lane & 15)) * SD + (lane >> 4) * 8);
    const uint32_t k_addr0 = smem_u32(sK + ((lane & 7) + (lane >> 4) * 8) * SD + ((lane >> 3) & 1) * 8);
    const uint32_t v_addr0 = smem_u32(sV + ((lane & 7) + ((lane >> 3) & 1) * 8) * SD + (lane >> 4) * 8);
    constexpr uint32_t kStageBytes = BN * SD * 2;

    for (int it = 0; it < nblk; ++it) {
      if (it + 1 < nblk) {
        load_kv(it + 1, (it + 1) & 1);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();

      if (warp_active) {
        const int st = it & 1;
        const uint32_t k_addr = k_addr0 + st * kStageBytes;
        const uint32_t v_addr = v_addr0 + st * kStageBytes;
        float acc_s[C::NT_S][4];
#pragma unroll
        for (int i = 0; i < C::NT_S; ++i) acc_s[i][0] = acc_s[i][1] = acc_s[i][2] = acc_s[i][3] = 0.f;

        // S = Q K^T (16 x BN per warp).
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          uint32_t a[4];
          ldsm_x4(a, q_addr + kk * 32);
#pragma unroll
          for (int j = 0; j < BN / 16; ++j) {
            uint32_t b[4];
            ldsm_x4(b, k_addr + (j * 16 * SD + kk * 16) * 2);
            Mma<T>::run(acc_s[2 * j], a, b[0], b[1]);
            Mma<T>::run(acc_s[2 * j + 1], a, b[2], b[3]);
          }
        }

        // Scale (log2 domain), mask, online softmax. Element e of n-tile nt: row g_row + (e / 2) * 8,
        // key n0 + nt * 8 + (lane % 4) * 2 + e % 2.
        const int n0 = static_cast<int>(key_begin) + it * BN;
        const bool need_mask = p.causal || n0 + BN > key_end;
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < C::NT_S; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float s = acc_s[nt][e] * p.scale_log2;
            if (need_mask) {
              const int key = n0 + nt * 8 + (lane & 3) * 2 + (e & 1);
              const int lim = (e < 2) ? lim0 : lim1;
              if (key >= key_end || (p.causal && key > lim)) s = -INFINITY;
            }
            acc_s[nt][e] = s;
            mx[e >> 1] = fmaxf(mx[e >> 1], s);
          }
        }
        float alpha[2], m_use[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
          mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
          const float m_new = fmaxf(m_r[h], mx[h]);
          m_use[h] = m_new == -INFINITY ? 0.f : m_new;  // no key yet: avoid (-inf) - (-inf)
          alpha[h] = exp2f(m_r[h] - m_use[h]);
          m_r[h] = m_new;
        }
        float rs[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < C::NT_S; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float pe = exp2f(acc_s[nt][e] - m_use[e >> 1]);
            acc_s[nt][e] = pe;
            rs[e >> 1] += pe;
          }
        }
        l_r[0] = l_r[0] * alpha[0] + rs[0];
        l_r[1] = l_r[1] * alpha[1] + rs[1];
#pragma unroll
        for (int dt = 0; dt < C::NT_O; ++dt) {
          acc_o[dt][0] *= alpha[0];
          acc_o[dt][1] *= alpha[0];
          acc_o[dt][2] *= alpha[1];
          acc_o[dt][3] *= alpha[1];
        }

        // O += P V. A fragment of key step kk from S n-tiles 2kk (k 0-7) and 2kk+1 (k 8-15).
        // P is split into hi + lo 16-bit halves (two MMAs) so that it is not rounded to 8/11
        // mantissa bits: the result then matches an fp32 softmax(QK^T) V to ~2^-16, and the
        // only rounding of the output is the final one (V itself is exact in bf16/fp16).
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
          uint32_t a[4], a_lo[4];
          Mma<T>::split(acc_s[2 * kk][0], acc_s[2 * kk][1], a[0], a_lo[0]);
          Mma<T>::split(acc_s[2 * kk][2], acc_s[2 * kk][3], a[1], a_lo[1]);
          Mma<T>::split(acc_s[2 * kk + 1][0], acc_s[2 * kk + 1][1], a[2], a_lo[2]);
          Mma<T>::split(acc_s[2 * kk + 1][2], acc_s[2 * kk + 1][3], a[3], a_lo[3]);
#pragma unroll
          for (int j = 0; j < D / 16; ++j) {
            uint32_t b[4];
            ldsm_x4_trans(b, v_addr + (kk * 16 * SD + j * 16) * 2);
            Mma<T>::run(acc_o[2 * j], a, b[0], b[1]);
            Mma<T>::run(acc_o[2 * j + 1], a, b[2], b[3]);
            Mma<T>::run(acc_o[2 * j], a_lo, b[0], b[1]);
            Mma<T>::run(acc_o[2 * j + 1], a_lo, b[2], b[3]);
          }
        }
      }
      __syncthreads();  // everyone is done with stage it & 1 before it is refilled
    }
  }

  // ---- Epilogue: normalise, write out (row-major, 2 elements per store) and lse. ----
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l_r[h] += __shfl_xor_sync(0xffffffffu, l_r[h], 1);
    l_r[h] += __shfl_xor_sync(0xffffffffu, l_r[h], 2);
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t orow = s_orow[warp * 16 + g_row + h * 8];
    if (orow < 0) continue;
    const float inv = row_reciprocal(l_r[h]);
    const int64_t obase = split * p.out_split_stride + orow * D + (lane & 3) * 2;
#pragma unroll
    for (int dt = 0; dt < C::NT_O; ++dt) {
      store2(p.out, p.out_type, obase + dt * 8, normalized(acc_o[dt][2 * h], l_r[h], inv),
             normalized(acc_o[dt][2 * h + 1], l_r[h], inv));
    }
    if ((lane & 3) == 0) p.lse[split * p.lse_split_stride + orow] = finish_lse(m_r[h], l_r[h]);
  }
}

// One CTA: counting sort of the sequences by prefix. Buckets 0..P-1 are the prefixes,
// bucket P collects sequences whose seq_to_prefix is out of range (they see no key).
constexpr int kBucketThreads = 1024;
__global__ void __launch_bounds__(kBucketThreads)
    prefix_bucket_kernel(IndexRef s2p, int64_t batch, int64_t num_prefix, int64_t rows_per_seq, int* ws) {
  const int64_t nb = num_prefix + 1;
  int* seq_off = ws;              // [nb + 1]
  int* tile_off = seq_off + nb + 1;  // [nb + 1]
  int* cursor = tile_off + nb + 1;   // [nb], first used as counts
  int* seqs = cursor + nb;           // [batch]
  __shared__ int64_t s_cnt[kBucketThreads];
  __shared__ int64_t s_til[kBucketThreads];
  const int tid = threadIdx.x;

  for (int64_t i = tid; i < nb; i += kBucketThreads) cursor[i] = 0;
  __syncthreads();
  for (int64_t b = tid; b < batch; b += kBucketThreads) {
    int64_t pfx = load_index(s2p, b);
    if (pfx < 0 || pfx >= num_prefix) pfx = num_prefix;
    atomicAdd(&cursor[pfx], 1);
  }
  __syncthreads();

  // Exclusive scans of counts and tiles: each thread owns a contiguous chunk of buckets.
  const int64_t chunk = (nb + kBucketThreads - 1) / kBucketThreads;
  const int64_t lo = tid * chunk;
  const int64_t hi = lo + chunk < nb ? lo + chunk : nb;
  int64_t c_sum = 0, t_sum = 0;
  for (int64_t i = lo; i < hi; ++i) {
    const int64_t c = cursor[i];
    c_sum += c;
    t_sum += (c * rows_per_seq + kTcBlockM - 1) / kTcBlockM;
  }
  s_cnt[tid] = c_sum;
  s_til[tid] = t_sum;
  __syncthreads();
  for (int off = 1; off < kBucketThreads; off <<= 1) {  // Hillis-Steele inclusive scan
    int64_t a = 0, t = 0;
    if (tid >= off) {
      a = s_cnt[tid - off];
      t = s_til[tid - off];
    }
    __syncthreads();
    s_cnt[tid] += a;
    s_til[tid] += t;
    __syncthreads();
  }
  int64_t c_run = tid > 0 ? s_cnt[tid - 1] : 0;
  int64_t t_run = tid > 0 ? s_til[tid - 1] : 0;
  for (int64_t i = lo; i < hi; ++i) {
    const int64_t c = cursor[i];
    seq_off[i] = static_cast<int>(c_run);
    tile_off[i] = static_cast<int>(t_run);
    c_run += c;
    t_run += (c * rows_per_seq + kTcBlockM - 1) / kTcBlockM;
  }
  if (tid == kBucketThreads - 1) {
    seq_off[nb] = static_cast<int>(s_cnt[kBucketThreads - 1]);
    tile_off[nb] = static_cast<int>(s_til[kBucketThreads - 1]);
  }
  __syncthreads();
  for (int64_t i = lo; i < hi; ++i) cursor[i] = seq_off[i];
  __syncthreads();
  for (int64_t b = tid; b < batch; b += kBucketThreads) {
    int64_t pfx = load_index(s2p, b);
    if (pfx < 0 || pfx >= num_prefix) pfx = num_prefix;
    const int pos = atomicAdd(&cursor[pfx], 1);
    seqs[pos] = static_cast<int>(b);
  }
}

template <typename T, int D>
cudaError_t launch_tc_typed(const AttnParams& p, int64_t tiles, int splits, cudaStream_t stream) {
  static bool smem_set[64] = {};
  const size_t smem = TcCfg<D>::kSmem;
  cudaError_t e = ensure_smem(attention_tc_kernel<T, D>, smem, smem_set);
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(p.kv_heads), static_cast<unsigned>(splits));
  attention_tc_kernel<T, D><<<grid, TcCfg<D>::kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_tc_dim(const AttnParams& p, int head_dim, int64_t tiles, int splits, cudaStream_t stream) {
  switch (head_dim) {
    case 32: return launch_tc_typed<T, 32>(p, tiles, splits, stream);
    case 64: return launch_tc_typed<T, 64>(p, tiles, splits, stream);
    case 80: return launch_tc_typed<T, 80>(p, tiles, splits, stream);
    case 96: return launch_tc_typed<T, 96>(p, tiles, splits, stream);
    case 128: return launch_tc_typed<T, 128>(p, tiles, splits, stream);
    case 256: return launch_tc_typed<T, 256>(p, tiles, splits, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

int tc_block_n(int head_dim) { return tc_bn(head_dim); }

bool tensor_cores_fit(ElemType in_type, int head_dim, int64_t smem_optin_bytes) {
  if (in_type == ElemType::kF32 || !head_dim_supported(head_dim)) return false;
  // The kernel's static shared memory, the same for every instantiation and device: asked
  // once (thread-safe static initialisation); a failed query leaves only its own error.
  static const int64_t static_bytes = [] {
    cudaFuncAttributes attr;
    if (cudaFuncGetAttributes(&attr, attention_tc_kernel<__nv_bfloat16, 64>) != cudaSuccess) {
      (void)cudaGetLastError();
      return int64_t{-1};
    }
    return static_cast<int64_t>(attr.sharedSizeBytes);
  }();
  return static_bytes >= 0 && static_bytes + static_cast<int64_t>(tc_smem_bytes(head_dim)) <= smem_optin_bytes;
}

cudaError_t launch_prefix_buckets(
    IndexRef seq_to_prefix, int64_t batch, int64_t num_prefix, int64_t rows_per_seq, int* ws, cudaStream_t stream) {
  prefix_bucket_kernel<<<1, kBucketThreads, 0, stream>>>(seq_to_prefix, batch, num_prefix, rows_per_seq, ws);
  return cudaGetLastError();
}

cudaError_t launch_attention_tc(
    const AttnParams& p, ElemType in_type, int head_dim, int64_t tiles, int splits, cudaStream_t stream) {
  if (tiles <= 0 || p.kv_heads <= 0 || splits <= 0) return cudaSuccess;
  if (in_type == ElemType::kBF16) return launch_tc_dim<__nv_bfloat16>(p, head_dim, tiles, splits, stream);
  if (in_type == ElemType::kF16) return launch_tc_dim<__half>(p, head_dim, tiles, splits, stream);
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace hydrogen
