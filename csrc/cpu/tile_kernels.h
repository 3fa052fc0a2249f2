// fp32 tile kernels for the CPU attention loop, compiled for several x86 ISAs and
// chosen once at run time. No torch headers: this file builds fast.
//
// Two layouts, picked by how many query rows a work item stacks:
// - stacked (many rows): queries are packed transposed, q_t [dim][rows], and scores are
//   kept transposed, s_t [keys][rows], so K and V are read row-major in place and the
//   online softmax vectorises across rows;
// - few rows (decode of one sequence): one dot product per (row, key), s [rows][keys].
#pragma once

#include <cstdint>

namespace hydrogen::cpu {

constexpr int64_t kRowPad = 32;  // stacked rows are padded to this multiple
constexpr int64_t kColPad = 32;  // head_dim of the stacked accumulator is padded to this multiple
constexpr int64_t kFewRows = 8;  // items with at most this many rows use the few-rows kernels

// Rows of the next tile, fetched into cache while the current tile is computed so that
// the next tile's copy finds them there instead of stalling on memory. Empty: rows == 0.
struct PrefetchRange {
  const char* base = nullptr;
  int64_t row_stride = 0;  // bytes between rows
  int64_t rows = 0;
  int64_t row_bytes = 0;
};

struct TileKernels {
  const char* isa;
  // s_t[j][r] = sum_d k[j*ldk + d] * q_t[d*rows + r], for j < keys, r < rows (rows % kRowPad == 0).
  void (*scores_t)(
      const float* k, int64_t ldk, int64_t keys, int64_t dim, const float* q_t, int64_t rows, float* s_t,
      const PrefetchRange& next);
  // Online-softmax step over the columns of s_t: key j counts for row r when j < limit[r].
  // Updates the running max m and sum l, turns s_t into probabilities (0 where masked) and
  // writes alpha[r], the factor by which row r's accumulator must be rescaled.
  void (*softmax_t)(float* s_t, int64_t keys, int64_t rows, const float* limit, float* m, float* l, float* alpha);
  // acc[r][d] += sum_j p_t[j][r] * v[j*ldv + d]; acc is [rows][dim_padded], dim_padded % kColPad == 0.
  void (*accumulate_t)(
      const float* p_t, int64_t keys, int64_t rows, const float* v, int64_t ldv, int64_t dim_padded, float* acc,
      const PrefetchRange& next);
  // s[r*lds + j] = dot(q[r*dim :], k[j*ldk :]) for r < rows, j < keys.
  void (*scores_rows)(
      const float* q, int64_t rows, int64_t dim, const float* k, int64_t ldk, int64_t keys, float* s, int64_t lds);
  // One row's online-softmax step: folds s[0:n_valid] into m and l, overwrites s[0:n]
  // with probabilities (0 past n_valid) and returns the rescaling factor of the row.
  float (*softmax_row)(float* s, int64_t n_valid, int64_t n, float* m, float* l);
  // acc[r*dim + d] += sum_j p[r*lds + j] * v[j*ldv + d].
  void (*accumulate_rows)(
      const float* p, int64_t lds, int64_t rows, int64_t keys, const float* v, int64_t ldv, int64_t dim, float* acc);
  // dst[i] = float(src[i]) for IEEE half-precision bits (hardware conversion where the ISA has it).
  void (*half_to_float)(const uint16_t* src, int64_t n, float* dst);
};

// The best kernels this CPU supports; HYDROGEN_CPU_ISA=generic|avx2|avx512 forces one.
const TileKernels& tile_kernels();

}  // namespace hydrogen::cpu
