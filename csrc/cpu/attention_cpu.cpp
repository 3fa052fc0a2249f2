// CPU implementations of the hydrogen ops.
//
// Every attention op shares one loop: a work item is a set of stacked query rows that
// read the same list of K/V segments, in order, through one online softmax. For prefix
// attention the rows are every (sequence mapped to the prefix) x (query head of the GQA
// group) x (query position) and the list is the prefix; for suffix attention they are
// one sequence's group heads x positions and the list is its suffix; the fused
// hydragen_attention op also runs one pass per sequence over [levels | suffix] for the
// levels that sharing would not pay for (see sharing_pays).
// For each KV tile the item converts K and V to fp32 once (fp32 is read in place), then
// runs a register-blocked product over all its rows, an online softmax and a second
// product. The [rows, keys] score matrix exists only one tile at a time, and the next
// tile is prefetched while the current one is computed.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "../attention_args.h"
#include "tile_kernels.h"

namespace hydrogen {
namespace {

using cpu::kColPad;
using cpu::kRowPad;

constexpr int64_t kKeyTile = 256;      // keys per tile: K^T and V tiles stay in L2
constexpr int64_t kMaxItemRows = 512;  // stacked rows per work item

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// One K/V sequence attended by a work item, with group = Hq / Hkv query heads per kv
// head: keys [0, len) of k[index], v[index] ([N, Hkv, L, D], last dim contiguous), or,
// when `blocks` is set, of pages [num_blocks, block_size, Hkv, D]: key j lies in page
// blocks[j / block_size], row j % block_size.
struct KvSegment {
  const at::Tensor* k;
  const at::Tensor* v;
  int64_t index;
  int64_t len;
  int64_t group;
  bool causal;  // bottom-right aligned: query i sees keys j <= len - Lq + i
  const int64_t* blocks = nullptr;
  int64_t block_size = 0;
};

// Where the keys (or values) of one kv head of a segment lie: row(j) points at key j.
template <typename T>
struct KvRows {
  const T* base;
  int64_t head_offset, row_stride, page_stride;
  const int64_t* blocks;
  int64_t block_size;

  KvRows(const KvSegment& seg, const at::Tensor& t, int64_t kv_head) : blocks(seg.blocks), block_size(seg.block_size) {
    const at::IntArrayRef st = t.strides();
    base = t.data_ptr<T>();
    if (blocks == nullptr) {
      base += seg.index * st[0];
      head_offset = kv_head * st[1];
      row_stride = st[2];
      page_stride = 0;
    } else {
      head_offset = kv_head * st[2];
      row_stride = st[1];
      page_stride = st[0];
    }
  }
  const T* row(int64_t j) const {
    if (blocks == nullptr) return base + head_offset + j * row_stride;
    return base + blocks[j / block_size] * page_stride + head_offset + (j % block_size) * row_stride;
  }
  // Rows [j, j + n) lie at one stride from row(j) (no page boundary between them).
  bool one_run(int64_t j, int64_t n) const { return blocks == nullptr || j / block_size == (j + n - 1) / block_size; }
  // How many of the rows from j on can be prefetched at one stride.
  int64_t run_from(int64_t j, int64_t n) const {
    return blocks == nullptr ? n : std::min(n, block_size - j % block_size);
  }
};

// Rows of one work item: stacked rows [row_begin, row_end) of the list
// seqs[s] x heads hb * block + j (j < block) x query positions i, in that nesting order.
// `block` divides every segment's group, so all rows of an item share each segment's kv head.
struct WorkItem {
  const KvSegment* segs;
  int64_t n_segs;
  int64_t head_block;
  int64_t block;
  const int64_t* seqs;
  int64_t row_begin, row_end;
};

struct Problem {
  int64_t q_heads, q_len, head_dim;
  float scale;
  const at::Tensor* q;
  at::Tensor* out;
  at::Tensor* lse;
};

// Keys of a segment visible to query position i.
int64_t visible_keys(const KvSegment& seg, int64_t q_len, int64_t i) {
  if (!seg.causal) return seg.len;
  return std::clamp<int64_t>(seg.len - q_len + i + 1, 0, seg.len);
}

template <typename T>
float to_float(T x) {
  return static_cast<float>(x);
}

// dst = src * mul; mul == 0 marks a row that saw no key and writes exact zeros, whatever
// src holds (0 * a NaN value of a key loaded for other rows of the tile is NaN).
template <typename T>
void store_row(void* base, int64_t offset, const float* src, float mul, int64_t n) {
  T* dst = static_cast<T*>(base) + offset;
  if (mul == 0.0f) {
    std::fill(dst, dst + n, T(0));
    return;
  }
  for (int64_t d = 0; d < n; ++d) dst[d] = static_cast<T>(src[d] * mul);
}

void store_out_row(at::Tensor& out, int64_t offset, const float* src, float mul, int64_t n) {
  switch (out.scalar_type()) {
    case at::kFloat: return store_row<float>(out.data_ptr(), offset, src, mul, n);
    case at::kBFloat16: return store_row<at::BFloat16>(out.data_ptr(), offset, src, mul, n);
    case at::kHalf: return store_row<at::Half>(out.data_ptr(), offset, src, mul, n);
    default: TORCH_CHECK(false, "hydrogen: unsupported output dtype ", out.scalar_type());
  }
}

// Calls fn(T{}) with T the C++ type of one of the supported float dtypes.
template <typename Fn>
void dispatch_float(at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kFloat: return fn(float{});
    case at::kBFloat16: return fn(at::BFloat16{});
    case at::kHalf: return fn(at::Half{});
    default: TORCH_CHECK(false, "hydrogen: unsupported dtype ", dtype);
  }
}

// Per-thread scratch, kept across calls (fresh pages would fault on every decode step)
// and grown when an item needs more.
struct Workspace {
  std::vector<float> q, k, v, scores, acc, m, l, tile_limit, alpha;
  std::vector<int64_t> out_offset, limit, pos;
  void reserve(int64_t rows, int64_t dim) {
    const int64_t dim_p = round_up(dim, kColPad);
    for (auto [buf, size] : {std::pair{&q, rows * dim}, {&k, kKeyTile * dim},
                             {&v, kKeyTile * dim_p}, {&scores, rows * kKeyTile}, {&acc, rows * dim_p},
                             {&m, rows}, {&l, rows}, {&tile_limit, rows}, {&alpha, rows}}) {
      if (static_cast<int64_t>(buf->size()) < size) buf->resize(size);
    }
    for (auto* buf : {&out_offset, &limit, &pos}) {
      if (static_cast<int64_t>(buf->size()) < rows) buf->resize(rows);
    }
  }
};

// Rows [j0, j0 + n) of K or V as fp32 rows: fp32 rows at one stride are read in place
// (when `in_place_ok`); other dtypes, and rows spread over pages, are copied once into
// `buf` (a tile of scratch, not a copy of the sequence) with leading dimension ld
// (columns D..ld zero-filled).
template <typename T>
const float* tile_as_float(
    const KvRows<T>& rows, int64_t j0, int64_t n, int64_t D, int64_t ld, bool in_place_ok, float* buf,
    int64_t* ld_out) {
  if constexpr (std::is_same_v<T, float>) {
    if (in_place_ok && rows.one_run(j0, n)) {
      *ld_out = rows.row_stride;
      return rows.row(j0);
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    const T* row = rows.row(j0 + j);
    float* out = buf + j * ld;
    if constexpr (std::is_same_v<T, at::Half>) {
      cpu::tile_kernels().half_to_float(reinterpret_cast<const uint16_t*>(row), D, out);
    } else {
      for (int64_t c = 0; c < D; ++c) out[c] = to_float(row[c]);
    }
    std::fill(out + D, out + ld, 0.0f);
  }
  *ld_out = ld;
  return buf;
}

// Folds the keys of one segment into the item's online softmax (ws.m, ws.l, ws.acc).
template <typename T>
void attend_segment(
    const Problem& pb, const WorkItem& item, const KvSegment& seg, int64_t rows, int64_t rows_p, int64_t Dp,
    bool stacked, Workspace& ws) {
  const cpu::TileKernels& kern = cpu::tile_kernels();
  const int64_t D = pb.head_dim;
  int64_t max_limit = 0;
  for (int64_t r = 0; r < rows_p; ++r) {
    ws.limit[r] = r < rows ? visible_keys(seg, pb.q_len, ws.pos[r]) : 0;  // padding rows see nothing
    max_limit = std::max(max_limit, ws.limit[r]);
  }
  const int64_t kv_head = item.head_block * item.block / seg.group;
  const KvRows<T> k(seg, *seg.k, kv_head), v(seg, *seg.v, kv_head);
  for (int64_t j0 = 0; j0 < max_limit; j0 += kKeyTile) {
    const int64_t nk = std::min(kKeyTile, max_limit - j0);
    // The tile is converted to fp32 once (fp32 is read in place); every row of the item reads it.
    int64_t ldk = 0, ldv = 0;
    const float* kt = tile_as_float(k, j0, nk, D, D, true, ws.k.data(), &ldk);
    const float* vt = tile_as_float(v, j0, nk, D, Dp, Dp == D, ws.v.data(), &ldv);
    // While this tile is computed, the next one's rows (up to a page boundary) are fetched into cache.
    const int64_t next_rows = k.run_from(j0 + nk, std::min(kKeyTile, std::max<int64_t>(max_limit - j0 - nk, 0)));
    const int64_t row_bytes = D * int64_t(sizeof(T));
    const bool more = next_rows > 0;  // past the last key there is no page to look up
    const cpu::PrefetchRange next_k{
        more ? reinterpret_cast<const char*>(k.row(j0 + nk)) : nullptr, k.row_stride * int64_t(sizeof(T)),
        next_rows, row_bytes};
    const cpu::PrefetchRange next_v{
        more ? reinterpret_cast<const char*>(v.row(j0 + nk)) : nullptr, v.row_stride * int64_t(sizeof(T)),
        next_rows, row_bytes};
    if (stacked) {
      for (int64_t r = 0; r < rows_p; ++r) {
        ws.tile_limit[r] = static_cast<float>(std::clamp<int64_t>(ws.limit[r] - j0, 0, nk));  // exact: <= kKeyTile
      }
      kern.scores_t(kt, ldk, nk, D, ws.q.data(), rows_p, ws.scores.data(), next_k);
      kern.softmax_t(ws.scores.data(), nk, rows_p, ws.tile_limit.data(), ws.m.data(), ws.l.data(), ws.alpha.data());
    } else {
      kern.scores_rows(ws.q.data(), rows, D, kt, ldk, nk, ws.scores.data(), kKeyTile);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t n_valid = std::clamp<int64_t>(ws.limit[r] - j0, 0, nk);
        ws.alpha[r] = kern.softmax_row(ws.scores.data() + r * kKeyTile, n_valid, nk, &ws.m[r], &ws.l[r]);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      if (ws.alpha[r] == 1.0f) continue;
      float* o = ws.acc.data() + r * Dp;
      for (int64_t c = 0; c < D; ++c) o[c] *= ws.alpha[r];
    }
    if (stacked) {
      kern.accumulate_t(ws.scores.data(), nk, rows_p, vt, ldv, Dp, ws.acc.data(), next_v);
    } else {
      kern.accumulate_rows(ws.scores.data(), kKeyTile, rows, nk, vt, ldv, D, ws.acc.data());
    }
  }
}

template <typename T>
void run_item(const Problem& pb, const WorkItem& item, Workspace& ws) {
  const int64_t D = pb.head_dim, Lq = pb.q_len, block = item.block;
  const int64_t rows = item.row_end - item.row_begin;
  // Few rows (one sequence's decode): dot-product kernels. Many rows: the stacked
  // layout, padded to whole register tiles.
  const bool stacked = rows > cpu::kFewRows;
  const int64_t rows_p = stacked ? round_up(rows, kRowPad) : rows;
  const int64_t Dp = stacked ? round_up(D, kColPad) : D;
  const T* q = pb.q->data_ptr<T>();
  const at::IntArrayRef qs = pb.q->strides();

  // Gather the stacked, pre-scaled query rows (transposed for the stacked layout).
  for (int64_t r = 0; r < rows_p; ++r) {
    if (r >= rows) {  // padding rows hold zeros
      for (int64_t c = 0; c < D; ++c) ws.q[c * rows_p + r] = 0.0f;
      continue;
    }
    const int64_t row = item.row_begin + r;
    const int64_t i = row % Lq, j = (row / Lq) % block, b = item.seqs[row / (Lq * block)];
    const int64_t hq = item.head_block * block + j;
    ws.out_offset[r] = (b * pb.q_heads + hq) * Lq + i;
    ws.pos[r] = i;
    const T* src = q + b * qs[0] + hq * qs[1] + i * qs[2];
    for (int64_t c = 0; c < D; ++c) ws.q[stacked ? c * rows_p + r : r * D + c] = to_float(src[c]) * pb.scale;
  }
  std::fill(ws.acc.begin(), ws.acc.begin() + rows_p * Dp, 0.0f);
  std::fill(ws.m.begin(), ws.m.begin() + rows_p, -std::numeric_limits<float>::infinity());
  std::fill(ws.l.begin(), ws.l.begin() + rows_p, 0.0f);
  for (int64_t s = 0; s < item.n_segs; ++s) attend_segment<T>(pb, item, item.segs[s], rows, rows_p, Dp, stacked, ws);

  float* lse = pb.lse->data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const bool empty = ws.l[r] == 0.0f;
    store_out_row(*pb.out, ws.out_offset[r] * D, ws.acc.data() + r * Dp, empty ? 0.0f : 1.0f / ws.l[r], D);
    lse[ws.out_offset[r]] = empty ? -std::numeric_limits<float>::infinity() : ws.m[r] + std::log(ws.l[r]);
  }
}

// Splits the stacked rows of `seqs` over one segment list into items (per head block, then
// row chunks) so that every thread gets work; n_groups is how many (list, head block)
// groups the whole call has.
void add_items(
    std::vector<WorkItem>& items, const KvSegment* segs, int64_t n_segs, int64_t block, const int64_t* seqs,
    int64_t n_seqs, const Problem& pb, int64_t n_groups) {
  const int64_t rows = n_seqs * block * pb.q_len;
  const int64_t want_items = 4 * at::get_num_threads();
  const int64_t splits = std::max<int64_t>(1, (want_items + n_groups - 1) / n_groups);
  const int64_t chunk = std::min(kMaxItemRows, round_up((rows + splits - 1) / splits, kRowPad));
  for (int64_t h = 0; h < pb.q_heads / block; ++h) {
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      items.push_back({segs, n_segs, h, block, seqs, r0, std::min(rows, r0 + chunk)});
    }
  }
}

void run_items(const Problem& pb, const std::vector<WorkItem>& items) {
  int64_t max_rows = 0;
  for (const WorkItem& it : items) max_rows = std::max(max_rows, it.row_end - it.row_begin);
  max_rows = round_up(max_rows, kRowPad);
  dispatch_float(pb.q->scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
      thread_local Workspace ws;
      ws.reserve(max_rows, pb.head_dim);
      for (int64_t i = begin; i < end; ++i) run_item<T>(pb, items[i], ws);
    });
  });
}

// Reads a validated length tensor into host int64 values, checking each against [0, max_len].
std::vector<int64_t> read_lengths(
    const char* op, const c10::optional<at::Tensor>& lens, int64_t n, int64_t max_len, const char* what) {
  if (!lens.has_value()) return std::vector<int64_t>(n, max_len);
  at::Tensor t = lens->to(at::kLong).contiguous();
  const int64_t* p = t.data_ptr<int64_t>();
  std::vector<int64_t> out(p, p + n);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(
        out[i] >= 0 && out[i] <= max_len, op, ": kv_lens[", i, "] = ", out[i], " is outside [0, ", max_len, "] (",
        what, ")");
  }
  return out;
}

at::Tensor last_dim_contiguous(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// One prefix level as the CPU kernels read it: K/V with the last dim contiguous, and the
// host copies of its lengths and of each sequence's prefix index; for paged K/V also the
// host copy of the block table.
struct PrefixLevel {
  at::Tensor k, v;
  AttentionDims dims;
  std::vector<int64_t> lens;           // [P]
  std::vector<int64_t> seq_to_prefix;  // [B]
  std::vector<int64_t> blocks;         // paged: [P, max_blocks]; empty: dense
  int64_t max_blocks = 0, block_size = 0;

  KvSegment segment(int64_t p, bool causal) const {
    KvSegment seg{&k, &v, p, lens[p], dims.group(), causal};
    if (!blocks.empty()) {
      seg.blocks = blocks.data() + p * max_blocks;
      seg.block_size = block_size;
    }
    return seg;
  }
};

// Reads a block table into host int64 values, checking every entry that a length uses
// against [0, num_blocks) (unused entries may hold anything, as in a serving engine).
std::vector<int64_t> read_block_table(
    const char* op, const at::Tensor& table, const std::vector<int64_t>& lens, int64_t num_blocks,
    int64_t block_size) {
  at::Tensor t = table.to(at::kLong).contiguous();
  const int64_t n = t.size(0), max_blocks = t.size(1);
  const int64_t* p = t.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j * block_size < lens[i]; ++j) {
      const int64_t blk = p[i * max_blocks + j];
      TORCH_CHECK_VALUE(
          blk >= 0 && blk < num_blocks, op, ": block_table[", i, ", ", j, "] = ", blk, " is outside [0, ", num_blocks,
          ") (the number of pages)");
    }
  }
  return std::vector<int64_t>(p, p + n * max_blocks);
}

PrefixLevel read_prefix_level(
    const char* op, const AttentionDims& d, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& kv_lens, const c10::optional<at::Tensor>& seq_to_prefix) {
  PrefixLevel lvl{last_dim_contiguous(k), last_dim_contiguous(v), d,
                  read_lengths(op, kv_lens, d.kv_batch, d.kv_len, "the padded prefix length"),
                  std::vector<int64_t>(d.batch, 0)};
  if (seq_to_prefix.has_value()) {
    at::Tensor map = seq_to_prefix->to(at::kLong).contiguous();
    const int64_t* p = map.data_ptr<int64_t>();
    for (int64_t b = 0; b < d.batch; ++b) {
      TORCH_CHECK_VALUE(
          p[b] >= 0 && p[b] < d.kv_batch, op, ": seq_to_prefix[", b, "] = ", p[b], " is outside [0, ", d.kv_batch,
          ") (the number of prefixes in k and v)");
      lvl.seq_to_prefix[b] = p[b];
    }
  }
  return lvl;
}

// Prefix attention of one level: the stacked rows of prefix p are all its sequences' queries.
void run_prefix_level(const Problem& pb, const PrefixLevel& lvl) {
  const AttentionDims& d = lvl.dims;
  std::vector<std::vector<int64_t>> seqs(d.kv_batch);
  for (int64_t b = 0; b < d.batch; ++b) seqs[lvl.seq_to_prefix[b]].push_back(b);
  std::vector<KvSegment> segs;
  for (int64_t p = 0; p < d.kv_batch; ++p) segs.push_back(lvl.segment(p, false));
  std::vector<WorkItem> items;
  int64_t n_groups = 0;
  for (int64_t p = 0; p < d.kv_batch; ++p) n_groups += seqs[p].empty() ? 0 : d.kv_heads;
  for (int64_t p = 0; p < d.kv_batch; ++p) {
    if (!seqs[p].empty()) add_items(items, &segs[p], 1, d.group(), seqs[p].data(), seqs[p].size(), pb, n_groups);
  }
  run_items(pb, items);
}

// One pass per sequence over its own list of segments (each list as long as the others).
void run_per_sequence(const Problem& pb, int64_t batch, const std::vector<KvSegment>& segs, int64_t per_seq) {
  int64_t block = 0;
  for (const KvSegment& seg : segs) block = std::gcd(block, seg.group);
  std::vector<int64_t> seq_ids(batch);
  std::iota(seq_ids.begin(), seq_ids.end(), 0);
  std::vector<WorkItem> items;
  const int64_t n_groups = batch * (pb.q_heads / block);
  for (int64_t b = 0; b < batch; ++b) {
    add_items(items, segs.data() + b * per_seq, per_seq, block, &seq_ids[b], 1, pb, n_groups);
  }
  run_items(pb, items);
}

std::tuple<at::Tensor, at::Tensor> prefix_attention_cpu(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const c10::optional<at::Tensor>& kv_lens,
    const c10::optional<at::Tensor>& seq_to_prefix, c10::optional<double> scale,
    c10::optional<at::ScalarType> out_dtype) {
  const char* op = "prefix_attention";
  const AttentionDims d = check_prefix_args(q_in, k_in, v_in, kv_lens, seq_to_prefix);
  const float sc = static_cast<float>(resolve_scale(op, scale, d.head_dim));
  auto [out, lse] = allocate_outputs(op, q_in, out_dtype);
  const at::Tensor q = last_dim_contiguous(q_in);
  const PrefixLevel lvl = read_prefix_level(op, d, k_in, v_in, kv_lens, seq_to_prefix);
  run_prefix_level(Problem{d.q_heads, d.q_len, d.head_dim, sc, &q, &out, &lse}, lvl);
  return {out, lse};
}

// Paged prefix attention: a prefix level whose K/V lie in pages listed by a block table.
std::tuple<at::Tensor, at::Tensor> paged_prefix_attention_cpu(
    const at::Tensor& q_in, const at::Tensor& k_pages, const at::Tensor& v_pages, const at::Tensor& block_table,
    const at::Tensor& kv_lens, const c10::optional<at::Tensor>& seq_to_prefix, c10::optional<double> scale,
    c10::optional<at::ScalarType> out_dtype) {
  const char* op = "paged_prefix_attention";
  const AttentionDims d =
      check_paged_args(op, q_in, k_pages, v_pages, block_table, kv_lens, seq_to_prefix, /*per_sequence=*/false);
  const float sc = static_cast<float>(resolve_scale(op, scale, d.head_dim));
  auto [out, lse] = allocate_outputs(op, q_in, out_dtype);
  const at::Tensor q = last_dim_contiguous(q_in);
  PrefixLevel lvl = read_prefix_level(op, d, k_pages, v_pages, kv_lens, seq_to_prefix);
  lvl.block_size = k_pages.size(1);
  lvl.max_blocks = block_table.size(1);
  lvl.blocks = read_block_table(op, block_table, lvl.lens, k_pages.size(0), lvl.block_size);
  run_prefix_level(Problem{d.q_heads, d.q_len, d.head_dim, sc, &q, &out, &lse}, lvl);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> paged_suffix_attention_cpu(
    const at::Tensor& q_in, const at::Tensor& k_pages, const at::Tensor& v_pages, const at::Tensor& block_table,
    const at::Tensor& kv_lens, bool causal, c10::optional<double> scale, c10::optional<at::ScalarType> out_dtype) {
  const char* op = "paged_suffix_attention";
  const AttentionDims d =
      check_paged_args(op, q_in, k_pages, v_pages, block_table, kv_lens, c10::nullopt, /*per_sequence=*/true);
  const float sc = static_cast<float>(resolve_scale(op, scale, d.head_dim));
  auto [out, lse] = allocate_outputs(op, q_in, out_dtype);
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_pages), v = last_dim_contiguous(v_pages);
  const std::vector<int64_t> lens = read_lengths(op, kv_lens, d.batch, d.kv_len, "max_blocks * block_size");
  const int64_t block_size = k.size(1), max_blocks = block_table.size(1);
  const std::vector<int64_t> blocks = read_block_table(op, block_table, lens, k.size(0), block_size);
  std::vector<KvSegment> segs;
  for (int64_t b = 0; b < d.batch; ++b) {
    segs.push_back({&k, &v, b, lens[b], d.group(), causal, blocks.data() + b * max_blocks, block_size});
  }
  run_per_sequence(Problem{d.q_heads, d.q_len, d.head_dim, sc, &q, &out, &lse}, d.batch, segs, 1);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> suffix_attention_cpu(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const c10::optional<at::Tensor>& kv_lens,
    bool causal, c10::optional<double> scale, c10::optional<at::ScalarType> out_dtype) {
  const char* op = "suffix_attention";
  const AttentionDims d = check_suffix_args(q_in, k_in, v_in, kv_lens);
  const float sc = static_cast<float>(resolve_scale(op, scale, d.head_dim));
  auto [out, lse] = allocate_outputs(op, q_in, out_dtype);
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in), v = last_dim_contiguous(v_in);
  const std::vector<int64_t> lens = read_lengths(op, kv_lens, d.batch, d.kv_len, "the padded suffix length");
  std::vector<KvSegment> segs;
  for (int64_t b = 0; b < d.batch; ++b) segs.push_back({&k, &v, b, lens[b], d.group(), causal});
  run_per_sequence(Problem{d.q_heads, d.q_len, d.head_dim, sc, &q, &out, &lse}, d.batch, segs, 1);
  return {out, lse};
}

template <typename T>
void merge_rows(
    const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& lses, at::Tensor& out, at::Tensor& lse,
    int64_t rows, int64_t D) {
  const int64_t n = static_cast<int64_t>(outs.size());
  std::vector<const T*> out_ptrs(n);
  std::vector<const float*> lse_ptrs(n);
  for (int64_t i = 0; i < n; ++i) {
    out_ptrs[i] = outs[i].data_ptr<T>();
    lse_ptrs[i] = lses[i].data_ptr<float>();
  }
  const float neg_inf = -std::numeric_limits<float>::infinity();
  float* lse_out = lse.data_ptr<float>();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(D), weight(n);
    for (int64_t r = begin; r < end; ++r) {
      // -inf marks an empty segment; a NaN or +inf lse is not a valid result and makes
      // the row NaN (NaN in, NaN out).
      float m = neg_inf;
      bool poisoned = false;
      for (int64_t i = 0; i < n; ++i) {
        const float x = lse_ptrs[i][r];
        poisoned = poisoned || std::isnan(x) || x == -neg_inf;
        m = std::max(m, x);
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      if (poisoned) {
        const float nan = std::numeric_limits<float>::quiet_NaN();
        store_out_row(out, r * D, acc.data(), nan, D);
        lse_out[r] = nan;
        continue;
      }
      if (m == neg_inf) {
        store_out_row(out, r * D, acc.data(), 0.0f, D);
        lse_out[r] = neg_inf;
        continue;
      }
      float total = 0.0f;
      for (int64_t i = 0; i < n; ++i) {
        const float x = lse_ptrs[i][r];
        weight[i] = x == neg_inf ? 0.0f : std::exp(x - m);
        total += weight[i];
      }
      for (int64_t i = 0; i < n; ++i) {
        if (weight[i] == 0.0f) continue;
        const T* src = out_ptrs[i] + r * D;
        for (int64_t c = 0; c < D; ++c) acc[c] += weight[i] * to_float(src[c]);
      }
      store_out_row(out, r * D, acc.data(), 1.0f / total, D);
      lse_out[r] = m + std::log(total);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> merge_attention_cpu(
    at::TensorList outs_in, at::TensorList lses_in, c10::optional<at::ScalarType> out_dtype) {
  const char* op = "merge_attention";
  check_merge_args(outs_in, lses_in);
  std::vector<at::Tensor> outs, lses;
  for (size_t i = 0; i < outs_in.size(); ++i) {
    outs.push_back(outs_in[i].contiguous());
    lses.push_back(lses_in[i].contiguous());
  }
  const at::Tensor& first = outs[0];
  auto [out, lse] = allocate_outputs(op, first, out_dtype);
  const int64_t D = first.size(3), rows = first.numel() / D;
  dispatch_float(first.scalar_type(), [&](auto tag) { merge_rows<decltype(tag)>(outs, lses, out, lse, rows, D); });
  return {out, lse};
}

// How hydragen_attention treats a shared level: HYDROGEN_SHARING=auto (default) asks the
// cost model, always shares every level, never folds every level into the per-sequence pass.
enum class Sharing { kAuto, kAlways, kNever };

Sharing sharing_mode() {
  const char* env = std::getenv("HYDROGEN_SHARING");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return Sharing::kAuto;
  if (std::strcmp(env, "always") == 0) return Sharing::kAlways;
  if (std::strcmp(env, "never") == 0) return Sharing::kNever;
  TORCH_CHECK_VALUE(false, "hydragen_attention: HYDROGEN_SHARING must be auto, always or never, got '", env, "'");
}

// The cost model, in bytes moved (decode attention is memory bound). Sharing a level
// reads each used prefix once instead of once per sequence, but writes and merges one
// more float32 partial result and costs one more pass (a fixed cost, counted as
// kPassOverheadBytes). A level is shared when that is cheaper.
constexpr int64_t kPassOverheadBytes = 128 * 1024;

bool sharing_pays(const PrefixLevel& lvl, int64_t elem_size, Sharing mode) {
  if (mode != Sharing::kAuto) return mode == Sharing::kAlways;
  const AttentionDims& d = lvl.dims;
  const int64_t key_bytes = 2 * d.kv_heads * d.head_dim * elem_size;  // one key and its value, every kv head
  std::vector<bool> used(d.kv_batch, false);
  int64_t per_sequence = 0, shared = 0;
  for (int64_t b = 0; b < d.batch; ++b) {
    const int64_t p = lvl.seq_to_prefix[b];
    per_sequence += lvl.lens[p] * key_bytes;
    if (!used[p]) shared += lvl.lens[p] * key_bytes;
    used[p] = true;
  }
  const int64_t partial = 3 * d.batch * d.q_heads * d.q_len * (d.head_dim + 1) * 4;  // write, read back, merge
  return shared + partial + kPassOverheadBytes < per_sequence;
}

std::tuple<at::Tensor, at::Tensor> hydragen_attention_cpu(
    const at::Tensor& q_in, at::TensorList prefix_k, at::TensorList prefix_v,
    const c10::List<c10::optional<at::Tensor>>& prefix_kv_lens,
    const c10::List<c10::optional<at::Tensor>>& seq_to_prefix, const c10::optional<at::Tensor>& suffix_k,
    const c10::optional<at::Tensor>& suffix_v, const c10::optional<at::Tensor>& suffix_kv_lens, bool causal,
    c10::optional<double> scale, c10::optional<at::ScalarType> out_dtype) {
  const char* op = "hydragen_attention";
  const std::vector<SymAttentionDims> dims =
      check_hydragen_shapes(q_in, prefix_k, prefix_v, prefix_kv_lens, seq_to_prefix, suffix_k, suffix_v, suffix_kv_lens);
  const at::Tensor q = last_dim_contiguous(q_in);
  const int64_t B = q.size(0), Hq = q.size(1), Lq = q.size(2), D = q.size(3);
  const float sc = static_cast<float>(resolve_scale(op, scale, D));
  auto [out, lse] = allocate_outputs(op, q, out_dtype);

  std::vector<PrefixLevel> levels;
  for (size_t i = 0; i < prefix_k.size(); ++i) {
    levels.push_back(read_prefix_level(
        op, concrete(dims[i]), prefix_k[i], prefix_v[i], prefix_kv_lens.get(i), seq_to_prefix.get(i)));
  }
  const Sharing mode = sharing_mode();
  std::vector<const PrefixLevel*> shared, folded;
  for (const PrefixLevel& lvl : levels) (sharing_pays(lvl, q.element_size(), mode) ? shared : folded).push_back(&lvl);

  // The per-sequence pass: the levels that are not shared, then the suffix, in key order.
  at::Tensor sk, sv;
  std::vector<int64_t> suffix_lens;
  if (suffix_k.has_value()) {
    const AttentionDims d = concrete(dims.back());
    sk = last_dim_contiguous(*suffix_k);
    sv = last_dim_contiguous(*suffix_v);
    suffix_lens = read_lengths(op, suffix_kv_lens, B, d.kv_len, "the padded suffix length");
  }
  const int64_t per_seq = static_cast<int64_t>(folded.size()) + (suffix_k.has_value() ? 1 : 0);
  std::vector<KvSegment> segs;
  for (int64_t b = 0; b < B && per_seq > 0; ++b) {
    for (const PrefixLevel* lvl : folded) segs.push_back(lvl->segment(lvl->seq_to_prefix[b], false));
    if (suffix_k.has_value()) segs.push_back({&sk, &sv, b, suffix_lens[b], Hq / sk.size(1), causal});
  }

  // One part is written straight into the output; several go through float32 partials
  // and one merge, rounded once.
  const size_t n_parts = shared.size() + (per_seq > 0 ? 1 : 0);
  std::vector<at::Tensor> outs, lses;
  auto part = [&]() -> Problem {
    if (n_parts == 1) return Problem{Hq, Lq, D, sc, &q, &out, &lse};
    outs.push_back(at::empty({B, Hq, Lq, D}, q.options().dtype(at::kFloat)));
    lses.push_back(at::empty({B, Hq, Lq}, q.options().dtype(at::kFloat)));
    return Problem{Hq, Lq, D, sc, &q, &outs.back(), &lses.back()};
  };
  outs.reserve(n_parts);  // Problems point into these vectors: no reallocation
  lses.reserve(n_parts);
  for (const PrefixLevel* lvl : shared) run_prefix_level(part(), *lvl);
  if (per_seq > 0) run_per_sequence(part(), B, segs, per_seq);
  if (n_parts > 1) merge_rows<float>(outs, lses, out, lse, B * Hq * Lq, D);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(hydrogen, CPU, m) {
  m.impl("hydragen_attention", &hydragen_attention_cpu);
  m.impl("paged_prefix_attention", &paged_prefix_attention_cpu);
  m.impl("paged_suffix_attention", &paged_suffix_attention_cpu);
  m.impl("prefix_attention", &prefix_attention_cpu);
  m.impl("suffix_attention", &suffix_attention_cpu);
  m.impl("merge_attention", &merge_attention_cpu);
}

}  // namespace hydrogen
