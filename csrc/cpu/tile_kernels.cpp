#include "tile_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

namespace hydrogen::cpu {
namespace {

// GCC/Clang vector extensions: one source compiles to SSE, AVX2 or AVX-512 code
// depending on the target attribute of the function it is inlined into.
typedef float f4 __attribute__((vector_size(16)));
typedef int32_t i4 __attribute__((vector_size(16)));
typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef float f16 __attribute__((vector_size(64)));
typedef int32_t i16 __attribute__((vector_size(64)));

#define HYDROGEN_INLINE inline __attribute__((always_inline))

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <class V>
constexpr int lanes() {
  return sizeof(V) / sizeof(float);
}

template <class V>
HYDROGEN_INLINE V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <class V>
HYDROGEN_INLINE void store(float* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// A lane-0 vector shuffled to all lanes: GCC then emits one broadcast in every ISA
// variant (a generic `x + V{}` is lowered before inlining, into lane-by-lane inserts).
template <class V>
HYDROGEN_INLINE V splat(float x) {
  const V v = {x};
  if constexpr (lanes<V>() == 16) {
    return __builtin_shufflevector(v, v, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  } else if constexpr (lanes<V>() == 8) {
    return __builtin_shufflevector(v, v, 0, 0, 0, 0, 0, 0, 0, 0);
  } else {
    return __builtin_shufflevector(v, v, 0, 0, 0, 0);
  }
}

// Horizontal sum by halving: 4 adds for 16 lanes instead of a 16-step lane loop.
template <class V>
HYDROGEN_INLINE float hsum(V v) {
  if constexpr (lanes<V>() == 16) {
    return hsum(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
  } else if constexpr (lanes<V>() == 8) {
    return hsum(__builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7));
  } else {
    return (v[0] + v[2]) + (v[1] + v[3]);
  }
}

// exp(x) for x <= 0 (NaN and -inf allowed) to about 1 ulp: 2^n * P(r) with Cody-Waite
// reduction and a degree-7 Taylor polynomial on |r| <= ln2/2. Results below FLT_MIN
// flush to 0: softmax weights are relative to the row maximum, whose weight is 1.
template <class V, class VI>
HYDROGEN_INLINE V exp_nonpositive(V x) {
  const VI underflow = x < splat<V>(-87.3f);
  x = underflow ? splat<V>(-87.3f) : x;
  const V magic = splat<V>(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const V n = (x * 1.44269504088896341f + magic) - magic;
  const V r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  V p = splat<V>(1.0f / 5040);
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  const V result = p * (V)bits;
  return (V)((VI)result & ~underflow);
}

// Spreads the prefetches of a PrefetchRange evenly over `steps` calls of step(); the
// kernels call it once per inner-loop iteration so that the requests trickle out
// instead of filling the miss queues in bursts.
class Prefetcher {
 public:
  Prefetcher(const PrefetchRange& r, int64_t steps) : r_(r), lines_per_row_((r.row_bytes + 63) / 64) {
    const int64_t total = r.rows * lines_per_row_;
    per_step_ = steps > 0 ? (total + steps - 1) / steps : 0;
  }
  HYDROGEN_INLINE void step() {
    for (int64_t n = 0; n < per_step_ && row_ < r_.rows; ++n) {
      __builtin_prefetch(r_.base + row_ * r_.row_stride + line_ * 64, 0, 2);
      if (++line_ == lines_per_row_) {
        line_ = 0;
        ++row_;
      }
    }
  }

 private:
  PrefetchRange r_;
  int64_t lines_per_row_, per_step_ = 0, row_ = 0, line_ = 0;
};

// MR keys x (NV vectors of rows) register tile of s_t = K q_t; kb points at the first of MR key rows.
template <class V, int MR, int NV>
HYDROGEN_INLINE void scores_t_block(
    const float* kb, int64_t ldk, int64_t dim, const float* q_t, int64_t rows, float* s_t, int64_t r0,
    Prefetcher& prefetch) {
  constexpr int W = lanes<V>();
  V acc[MR][NV] = {};
  for (int64_t d = 0; d < dim; ++d) {
    prefetch.step();
    V b[NV];
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) b[u] = load<V>(q_t + d * rows + r0 + u * W);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V a = splat<V>(kb[i * ldk + d]);
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) acc[i][u] += a * b[u];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) store(s_t + i * rows + r0 + u * W, acc[i][u]);
}

template <class V, int MR, int NV>
HYDROGEN_INLINE void scores_t_impl(
    const float* k, int64_t ldk, int64_t keys, int64_t dim, const float* q_t, int64_t rows, float* s_t,
    const PrefetchRange& next) {
  constexpr int W = lanes<V>();
  Prefetcher prefetch(next, (rows / (W * NV) + 1) * keys / MR * dim);
  // Row strips outermost: a strip of q_t stays in L1 while the key tile streams past it.
  // Full strips of NV vectors, then single-vector strips for the rest of the rows.
  int64_t r0 = 0;
  for (; r0 + W * NV <= rows; r0 += W * NV) {
    int64_t j = 0;
    for (; j + MR <= keys; j += MR) scores_t_block<V, MR, NV>(k + j * ldk, ldk, dim, q_t, rows, s_t + j * rows, r0, prefetch);
    for (; j < keys; ++j) scores_t_block<V, 1, NV>(k + j * ldk, ldk, dim, q_t, rows, s_t + j * rows, r0, prefetch);
  }
  for (; r0 < rows; r0 += W) {
    int64_t j = 0;
    for (; j + MR <= keys; j += MR) scores_t_block<V, MR, 1>(k + j * ldk, ldk, dim, q_t, rows, s_t + j * rows, r0, prefetch);
    for (; j < keys; ++j) scores_t_block<V, 1, 1>(k + j * ldk, ldk, dim, q_t, rows, s_t + j * rows, r0, prefetch);
  }
}

template <class V, class VI>
HYDROGEN_INLINE void softmax_t_impl(
    float* s_t, int64_t keys, int64_t rows, const float* limit, float* m_io, float* l_io, float* alpha_out) {
  constexpr int W = lanes<V>();
  for (int64_t r0 = 0; r0 < rows; r0 += W) {
    const V lim = load<V>(limit + r0);
    V vmax = load<V>(m_io + r0);
    for (int64_t j = 0; j < keys; ++j) {
      const V x = load<V>(s_t + j * rows + r0);
      const V xm = splat<V>(static_cast<float>(j)) < lim ? x : splat<V>(kNegInf);
      vmax = xm > vmax ? xm : vmax;
    }
    const V m_old = load<V>(m_io + r0);
    const VI none = vmax == splat<V>(kNegInf);  // no visible key yet: keep the row at zero
    const V shift = none ? V{} : vmax;
    const V alpha = none ? splat<V>(1.0f) : exp_nonpositive<V, VI>(m_old - shift);
    V sum = V{};
    for (int64_t j = 0; j < keys; ++j) {
      const V x = load<V>(s_t + j * rows + r0);
      const V e = exp_nonpositive<V, VI>(x - shift);
      const V p = splat<V>(static_cast<float>(j)) < lim ? e : V{};
      sum += p;
      store(s_t + j * rows + r0, p);
    }
    store(m_io + r0, vmax);
    store(l_io + r0, load<V>(l_io + r0) * alpha + sum);
    store(alpha_out + r0, alpha);
  }
}

// MR rows x (NV vectors of head_dim) register tile of acc += p_t^T V, at columns c0.
template <class V, int MR, int NV>
HYDROGEN_INLINE void accumulate_t_block(
    const float* p_t, int64_t keys, int64_t rows, const float* v, int64_t ldv, int64_t dim_padded, float* acc_out,
    int64_t r0, int64_t c0, Prefetcher& prefetch) {
  constexpr int W = lanes<V>();
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) acc[i][u] = load<V>(acc_out + (r0 + i) * dim_padded + c0 + u * W);
  for (int64_t j = 0; j < keys; ++j) {
    prefetch.step();
    V b[NV];
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) b[u] = load<V>(v + j * ldv + c0 + u * W);
    const float* pj = p_t + j * rows + r0;
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V a = splat<V>(pj[i]);
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) acc[i][u] += a * b[u];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) store(acc_out + (r0 + i) * dim_padded + c0 + u * W, acc[i][u]);
}

// One column strip over all rows: blocks of MR rows, then of 4 and 1 (rows % 4 == 0).
// (A helper, not a lambda: a lambda would not inherit the ISA target attribute.)
template <class V, int MR, int NV>
HYDROGEN_INLINE void accumulate_t_strip(
    const float* p_t, int64_t keys, int64_t rows, const float* v, int64_t ldv, int64_t dim_padded, float* acc_out,
    int64_t c0, Prefetcher& prefetch) {
  int64_t r0 = 0;
  for (; r0 + MR <= rows; r0 += MR) accumulate_t_block<V, MR, NV>(p_t, keys, rows, v, ldv, dim_padded, acc_out, r0, c0, prefetch);
  for (; r0 + 4 <= rows; r0 += 4) accumulate_t_block<V, 4, NV>(p_t, keys, rows, v, ldv, dim_padded, acc_out, r0, c0, prefetch);
  for (; r0 < rows; ++r0) accumulate_t_block<V, 1, NV>(p_t, keys, rows, v, ldv, dim_padded, acc_out, r0, c0, prefetch);
}

template <class V, int MR, int NV>
HYDROGEN_INLINE void accumulate_t_impl(
    const float* p_t, int64_t keys, int64_t rows, const float* v, int64_t ldv, int64_t dim_padded, float* acc_out,
    const PrefetchRange& next) {
  constexpr int W = lanes<V>();
  Prefetcher prefetch(next, (dim_padded / (W * NV) + 1) * (rows / MR) * keys);
  // Column strips of NV vectors, then single-vector strips for the rest of head_dim.
  int64_t c0 = 0;
  for (; c0 + W * NV <= dim_padded; c0 += W * NV) {
    accumulate_t_strip<V, MR, NV>(p_t, keys, rows, v, ldv, dim_padded, acc_out, c0, prefetch);
  }
  for (; c0 < dim_padded; c0 += W) accumulate_t_strip<V, MR, 1>(p_t, keys, rows, v, ldv, dim_padded, acc_out, c0, prefetch);
}

template <class V>
HYDROGEN_INLINE float dot(const float* a, const float* b, int64_t n) {
  constexpr int W = lanes<V>();
  V acc0 = V{}, acc1 = V{};
  int64_t d = 0;
  for (; d + 2 * W <= n; d += 2 * W) {
    acc0 += load<V>(a + d) * load<V>(b + d);
    acc1 += load<V>(a + d + W) * load<V>(b + d + W);
  }
  for (; d + W <= n; d += W) acc0 += load<V>(a + d) * load<V>(b + d);
  float s = hsum<V>(acc0 + acc1);
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}

template <class V>
HYDROGEN_INLINE void scores_rows_impl(
    const float* q, int64_t rows, int64_t dim, const float* k, int64_t ldk, int64_t keys, float* s, int64_t lds) {
  for (int64_t j = 0; j < keys; ++j)
    for (int64_t r = 0; r < rows; ++r) s[r * lds + j] = dot<V>(q + r * dim, k + j * ldk, dim);
}

template <class V, class VI>
HYDROGEN_INLINE float softmax_row_impl(float* s, int64_t n_valid, int64_t n, float* m_io, float* l_io) {
  constexpr int W = lanes<V>();
  float m_new = *m_io;
  // A NaN score makes the max NaN, and it stays NaN: the row's sum and output become NaN
  // (NaN in, NaN out) instead of the row passing for one that saw no key.
  for (int64_t j = 0; j < n_valid; ++j) m_new = (s[j] > m_new || s[j] != s[j]) ? s[j] : m_new;
  if (m_new == kNegInf) {
    std::memset(s, 0, sizeof(float) * n);
    return 1.0f;
  }
  const float alpha = std::exp(*m_io - m_new);  // exp(-inf) = 0 for a row's first keys
  V vsum = V{};
  int64_t j = 0;
  for (; j + W <= n_valid; j += W) {
    const V p = exp_nonpositive<V, VI>(load<V>(s + j) - m_new);
    vsum += p;
    store(s + j, p);
  }
  float sum = hsum<V>(vsum);
  for (; j < n_valid; ++j) {
    s[j] = std::exp(s[j] - m_new);
    sum += s[j];
  }
  std::memset(s + n_valid, 0, sizeof(float) * (n - n_valid));
  *m_io = m_new;
  *l_io = *l_io * alpha + sum;
  return alpha;
}

template <class V>
HYDROGEN_INLINE void accumulate_rows_impl(
    const float* p, int64_t lds, int64_t rows, int64_t keys, const float* v, int64_t ldv, int64_t dim, float* acc) {
  constexpr int W = lanes<V>();
  constexpr int U = 4;  // vectors of one row's accumulator held in registers across all keys
  for (int64_t r = 0; r < rows; ++r) {
    const float* pr = p + r * lds;
    float* a = acc + r * dim;
    int64_t c0 = 0;
    for (; c0 + U * W <= dim; c0 += U * W) {
      V sum[U];
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) sum[u] = load<V>(a + c0 + u * W);
      for (int64_t j = 0; j < keys; ++j) {
        const V w = splat<V>(pr[j]);
#pragma GCC unroll 4
        for (int u = 0; u < U; ++u) sum[u] += w * load<V>(v + j * ldv + c0 + u * W);
      }
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) store(a + c0 + u * W, sum[u]);
    }
    for (; c0 + W <= dim; c0 += W) {
      V sum = load<V>(a + c0);
      for (int64_t j = 0; j < keys; ++j) sum += splat<V>(pr[j]) * load<V>(v + j * ldv + c0);
      store(a + c0, sum);
    }
    for (; c0 < dim; ++c0) {
      float sum = a[c0];
      for (int64_t j = 0; j < keys; ++j) sum += pr[j] * v[j * ldv + c0];
      a[c0] = sum;
    }
  }
}

// Half to float from the bits: normal, subnormal, zero, inf and NaN.
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  float magnitude;
  if (exp == 0) {
    magnitude = std::ldexp(static_cast<float>(mant), -24);  // zero or subnormal
  } else if (exp == 31) {
    magnitude = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    uint32_t bits = ((exp + 112u) << 23) | (mant << 13);
    std::memcpy(&magnitude, &bits, sizeof(float));
  }
  uint32_t out;
  std::memcpy(&out, &magnitude, sizeof(float));
  out |= sign;
  float result;
  std::memcpy(&result, &out, sizeof(float));
  return result;
}

void generic_half_to_float(const uint16_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = half_bits_to_float(src[i]);
}

#if defined(__x86_64__)
__attribute__((target("avx2,f16c"))) void avx2_half_to_float(const uint16_t* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
  for (; i < n; ++i) dst[i] = half_bits_to_float(src[i]);
}

// GCC's own header trips -Wmaybe-uninitialized inside _mm512_cvtph_ps.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) void avx512_half_to_float(const uint16_t* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  }
  for (; i < n; ++i) dst[i] = half_bits_to_float(src[i]);
}
#pragma GCC diagnostic pop
#endif

// One set of entry points per ISA, with (keys or rows) x (vectors) register tiles for
// the two products: scores SMR x SNV, accumulate AMR x ANV.
#define HYDROGEN_DEFINE_KERNELS(NAME, TARGET, V, VI, SMR, SNV, AMR, ANV)                                                        \
  TARGET void NAME##_scores_t(                                                                                      \
      const float* k, int64_t ldk, int64_t keys, int64_t dim, const float* q_t, int64_t rows, float* s_t,           \
      const PrefetchRange& next) {                                                                                  \
    scores_t_impl<V, SMR, SNV>(k, ldk, keys, dim, q_t, rows, s_t, next);                                              \
  }                                                                                                                 \
  TARGET void NAME##_softmax_t(                                                                                     \
      float* s_t, int64_t keys, int64_t rows, const float* limit, float* m, float* l, float* alpha) {               \
    softmax_t_impl<V, VI>(s_t, keys, rows, limit, m, l, alpha);                                                     \
  }                                                                                                                 \
  TARGET void NAME##_accumulate_t(                                                                                  \
      const float* p_t, int64_t keys, int64_t rows, const float* v, int64_t ldv, int64_t dim_padded, float* acc,    \
      const PrefetchRange& next) {                                                                                  \
    accumulate_t_impl<V, AMR, ANV>(p_t, keys, rows, v, ldv, dim_padded, acc, next);                                   \
  }                                                                                                                 \
  TARGET void NAME##_scores_rows(                                                                                   \
      const float* q, int64_t rows, int64_t dim, const float* k, int64_t ldk, int64_t keys, float* s, int64_t lds) { \
    scores_rows_impl<V>(q, rows, dim, k, ldk, keys, s, lds);                                                        \
  }                                                                                                                 \
  TARGET float NAME##_softmax_row(float* s, int64_t n_valid, int64_t n, float* m, float* l) {                       \
    return softmax_row_impl<V, VI>(s, n_valid, n, m, l);                                                            \
  }                                                                                                                 \
  TARGET void NAME##_accumulate_rows(                                                                               \
      const float* p, int64_t lds, int64_t rows, int64_t keys, const float* v, int64_t ldv, int64_t dim, float* acc) { \
    accumulate_rows_impl<V>(p, lds, rows, keys, v, ldv, dim, acc);                                                  \
  }                                                                                                                 \
  const TileKernels NAME##_kernels{#NAME,              NAME##_scores_t,                                                \
                                   NAME##_softmax_t,   NAME##_accumulate_t, NAME##_scores_rows,                        \
                                   NAME##_softmax_row, NAME##_accumulate_rows, NAME##_half_to_float};

// 16 accumulator zmm on AVX-512 (8 loads per 16 FMAs); 8 of the 16 ymm/xmm registers otherwise.
HYDROGEN_DEFINE_KERNELS(generic, , f4, i4, 4, 2, 4, 2)
#if defined(__x86_64__)
HYDROGEN_DEFINE_KERNELS(avx2, __attribute__((target("avx2,fma"))), f8, i8, 4, 2, 4, 2)
HYDROGEN_DEFINE_KERNELS(avx512, __attribute__((target("avx512f"))), f16, i16, 6, 4, 6, 4)
#endif

static_assert(kRowPad % 32 == 0 && kColPad % 32 == 0, "padding must fit every register tile");

const TileKernels& select_kernels() {
  const char* forced = std::getenv("HYDROGEN_CPU_ISA");
  const std::string want = forced ? forced : "";
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool has_avx512 = __builtin_cpu_supports("avx512f");
  const bool has_avx2 =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (want == "avx512" && !has_avx512) throw std::runtime_error("HYDROGEN_CPU_ISA=avx512 but this CPU lacks AVX-512F");
  if (want == "avx2" && !has_avx2) throw std::runtime_error("HYDROGEN_CPU_ISA=avx2 but this CPU lacks AVX2/FMA/F16C");
  if (want == "avx512" || (want.empty() && has_avx512)) return avx512_kernels;
  if (want == "avx2" || (want.empty() && has_avx2)) return avx2_kernels;
#endif
  if (!want.empty() && want != "generic") {
    throw std::runtime_error("HYDROGEN_CPU_ISA must be one of generic, avx2, avx512, got " + want);
  }
  return generic_kernels;
}

}  // namespace

const TileKernels& tile_kernels() {
  static const TileKernels& chosen = select_kernels();
  return chosen;
}

}  // namespace hydrogen::cpu
