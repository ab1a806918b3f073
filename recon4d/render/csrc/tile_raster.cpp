// CPU tile rasterizer for projected 2D Gaussians: forward and hand-written backward.
//
// Math matches gsplat's "classic" rasterizer: pixel centres at (x + 0.5, y + 0.5); per Gaussian
// sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with (a, b, c) the 2D conic, alpha = min(0.999, o exp(-sigma)),
// Gaussians with alpha < 1/255 are skipped, compositing is front to back and a pixel stops before the
// Gaussian that would take its transmittance to 1e-4 or below.
//
// Layout: the image is cut into square tiles; each tile lists the Gaussians whose ellipse of alpha >= 1/255
// reaches it (within their pixel box), in global depth order. Tiles are independent: a thread owns a whole
// tile at a time and writes only that tile's pixels (forward) or that tile's entry rows (backward: one
// gradient row per (tile, Gaussian) entry, then summed per Gaussian in entry order), so no atomics are
// needed and every result is bit-identical for any thread count.
//
// Vectorisation: per Gaussian, a tile is swept row by row over a padded row of kLanes-multiple floats
// with the Gaussian's pixel box as a mask (box rows its ellipse misses are skipped). Each row loop runs over
// the hardware vectors that the box's columns touch (`Span`): with 8-float AVX2 vectors about half of a fitted
// scene's tile entries need one of a row's two. These fixed-length (template `kSpan`), aligned, branch-free
// loops vectorise, exp included (`exp_negative`, inline: a libmvec call made gcc spill the loop's registers).
// The row loops that take (float)x count x in 32-bit ints: AVX2 has no vector int64 -> float conversion
// (AVX-512DQ has), so with an int64_t index gcc left those loops scalar on AVX2 CPUs. The forward pass's
// compositing step is written with GCC vectors (`composite_row`), since gcc turned its selects into masked
// stores, which are slow on AMD Zen. Channels run in row loops of their own over
// per-row buffers (the backward pass four channels at a time), so the channel count stays a runtime value,
// and the backward pass keeps per-lane gradient sums across rows so that each entry needs one horizontal
// reduction per gradient, not one per row. Stop 57, on a 2-core AMD EPYC (AVX2), a fitted 180x235 frame with
// 24,000 Gaussians, one thread: forward 15.0 -> 8.9 ms, backward 16.8 -> 16.0 ms.
// Not <torch/extension.h>: these headers build in a third of its time (`recon4d.cpp.build_in_background`).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

namespace {

constexpr float kAlphaThreshold = 1.f / 255.f;
constexpr float kMaxAlpha = 0.999f;
constexpr float kMinTransmittance = 1e-4f;
// exp(-sigma) is taken of sigma clamped to [0, kMaxSigma]: any sigma above log(255) ~ 5.5 gives alpha below the
// cut-off anyway, any below 0 is masked out, and within the clamp `exp_negative` stays a normal float.
constexpr float kMaxSigma = 30.f;
// Floats per padded row unit: one AVX-512 vector (two AVX2 vectors), 64 bytes.
constexpr int64_t kLanes = 16;
// Tile entries (Gaussian x tile pairs, ~0.2-0.5 us each) per thread below which a parallel region costs
// more than it saves: waking a pool thread takes microseconds on an idle machine, up to a scheduler time
// slice on a busy one.
constexpr int64_t kMinEntriesPerThread = 2048;
// The forward pass checks whether a tile has finished every this many entries.
constexpr int64_t kDoneCheckInterval = 16;
// Packed per-Gaussian record: mean x, y, conic a, b, c, opacity, radius x, y, then the features.
constexpr int64_t kRecordHeader = 8;
// Records are fetched this many entries ahead (depth order makes them scattered in memory).
constexpr int64_t kPrefetchDistance = 4;

// exp(-sigma) for sigma in [0, kMaxSigma] (callers clamp), inline so that gcc keeps the row loops' registers
// instead of spilling them around a libmvec call: e^r (|r| <= ln 2 / 2) by Cephes' expf polynomial, times 2^n.
inline float exp_negative(float sigma) {
  const float x = -sigma;
  const float n = std::nearbyint(x * 1.44269504f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.f;
  int32_t bits;
  std::memcpy(&bits, &e, sizeof(bits));
  bits += (int32_t)n * (1 << 23);  // 2^n into the exponent; n >= -44 keeps it a normal float
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

struct TileGrid {
  int64_t width, height, tile, tiles_x, tiles_y, lanes;
  TileGrid(int64_t w, int64_t h, int64_t t)
      : width(w), height(h), tile(t), tiles_x((w + t - 1) / t), tiles_y((h + t - 1) / t),
        lanes((t + kLanes - 1) / kLanes * kLanes) {}
  int64_t count() const { return tiles_x * tiles_y; }
  int64_t padded_pixels() const { return tile * lanes; }
};

// Pixel bounds of tile t: [x0, x1) x [y0, y1), clipped to the image.
struct TileBounds {
  int64_t x0, y0, x1, y1;
  TileBounds(const TileGrid& grid, int64_t t)
      : x0((t % grid.tiles_x) * grid.tile), y0((t / grid.tiles_x) * grid.tile),
        x1(std::min(grid.width, x0 + grid.tile)), y1(std::min(grid.height, y0 + grid.tile)) {}
};

// Pixels of slack in the ellipse tests of binning and of the row skip, so that float rounding in them can
// only keep work that the per-pixel test then rejects, never drop a pixel it would accept.
constexpr float kEllipseMargin = 0.05f;

// sigma at which o exp(-sigma) falls to the alpha cut-off, padded by a relative 1e-4 for rounding.
inline float cutoff_level(float o) { return std::log(o / kAlphaThreshold) * 1.0001f + 1e-4f; }

// Pixel range [lo, hi) along one axis of the pixels whose centre lies within `radius` of `mean`,
// clipped to [tile_lo, tile_hi).
inline void pixel_span(float mean, float radius, int64_t tile_lo, int64_t tile_hi, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(tile_lo, (int64_t)std::ceil(mean - radius - 0.5f));
  hi = std::min<int64_t>(tile_hi, (int64_t)std::floor(mean + radius - 0.5f) + 1);
}

// One Gaussian as seen from one tile: conic, opacity, mean relative to the tile's first pixel centre,
// its pixel box in tile coordinates (columns [lx0, lx1), absolute rows [y0, y1)) and its features.
struct Splat {
  float mx_local, my, ca, cb, cc, o;
  int64_t lx0, lx1, y0, y1;
  const float* features;
  // Row test (`row_reaches`): the Gaussian's alpha reaches the cut-off where sigma <= level.
  float level, det;
  bool ellipse;
  Splat(const float* record, const TileBounds& b) {
    const float mx = record[0];
    my = record[1]; ca = record[2]; cb = record[3]; cc = record[4]; o = record[5];
    int64_t x0, x1;
    pixel_span(mx, record[6], b.x0, b.x1, x0, x1);
    pixel_span(my, record[7], b.y0, b.y1, y0, y1);
    lx0 = x0 - b.x0; lx1 = x1 - b.x0;
    mx_local = mx - (float)b.x0 - 0.5f;
    features = record + kRecordHeader;
    det = ca * cc - cb * cb;
    ellipse = ca > 0.f && det > 0.f && o >= kAlphaThreshold;
    level = ellipse ? cutoff_level(o) : 0.f;
  }
  // Whether any pixel of tile row y (absolute) in the box's columns can pass the alpha cut-off: the row of
  // the ellipse sigma = level, widened by kEllipseMargin, overlaps them. Rows that fail it would composite
  // nothing (every lane invalid), so skipping them changes no output bit.
  bool row_reaches(int64_t y) const {
    if (!ellipse) return true;
    const float dy = my - (y + 0.5f);
    // sigma over the row is least at dx = -cb dy / ca; the row is inside the ellipse within +- half of it.
    const float room = level - 0.5f * dy * dy * det / ca;
    if (room < 0.f) return false;
    const float half = std::sqrt(2.f * room / ca) + kEllipseMargin, centre = mx_local + cb * dy / ca;
    // Lanes x with dx = mx_local - x within centre - mx_local +- half, i.e. x within centre -+ half.
    return centre + half >= (float)lx0 && centre - half <= (float)(lx1 - 1);
  }
};

// [N, 8 + D] records so that each tile entry reads one contiguous record instead of five arrays.
std::vector<float> pack_records(const at::Tensor& means2d, const at::Tensor& conics,
                                const at::Tensor& opacities, const at::Tensor& radii,
                                const at::Tensor& features) {
  const int64_t n = means2d.size(0), dims = features.size(1), stride = kRecordHeader + dims;
  const float* mean = means2d.data_ptr<float>();
  const float* conic = conics.data_ptr<float>();
  const float* opac = opacities.data_ptr<float>();
  const int* rad = radii.data_ptr<int>();
  const float* feat = features.data_ptr<float>();
  std::vector<float> records(n * stride);
  for (int64_t g = 0; g < n; g++) {
    float* r = &records[g * stride];
    r[0] = mean[2 * g]; r[1] = mean[2 * g + 1];
    r[2] = conic[3 * g]; r[3] = conic[3 * g + 1]; r[4] = conic[3 * g + 2];
    r[5] = opac[g];
    r[6] = (float)rad[2 * g]; r[7] = (float)rad[2 * g + 1];
    std::copy(feat + g * dims, feat + (g + 1) * dims, r + kRecordHeader);
  }
  return records;
}

// 64-byte aligned scratch array, so that padded rows start on a vector boundary.
template <class T>
class Aligned {
 public:
  explicit Aligned(int64_t n) : storage_(new T[n + kLanes]) {
    void* p = storage_.get();
    size_t space = (n + kLanes) * sizeof(T);
    data_ = static_cast<T*>(std::align(64, n * sizeof(T), p, space));
  }
  T* get() const { return data_; }

 private:
  std::unique_ptr<T[]> storage_;
  T* data_;
};

// Threads for a sweep over `tiles` tiles holding `entries` entries: torch's intra-op thread count
// (torch.set_num_threads), capped so that each thread gets enough work, and 1 inside another parallel region.
int sweep_threads(int64_t tiles, int64_t entries) {
  if (at::in_parallel_region()) return 1;
  const int64_t useful = std::min<int64_t>(tiles, entries / kMinEntriesPerThread);
  return (int)std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), useful));
}

inline void prefetch_record(const float* records, const int* id, int64_t stride, int64_t k) {
  __builtin_prefetch(records + (size_t)id[k] * stride);
}

// One hardware vector of floats (ints): the compositing step below is written with GCC vectors, not as a loop
// for gcc to vectorise, because from `c ? v : a[x]` gcc makes masked stores (vmaskmovps), which on AMD Zen took
// about a quarter of the forward pass (perf, stop 57); vector selects are plain blends and stores. Wider GCC
// vectors than the hardware's are split element by element, hence the width per instruction set.
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif
typedef float FloatVector __attribute__((vector_size(kVectorBytes)));
typedef int32_t IntVector __attribute__((vector_size(kVectorBytes)));
constexpr int64_t kVectorFloats = kVectorBytes / sizeof(float);
static_assert(kLanes % kVectorFloats == 0, "padded rows hold whole vectors");

// Composites `lanes` pixels of one row (aligned to and a multiple of kVectorFloats: a whole padded row or a
// `Span` of it) over one Gaussian. In: `weight` the Gaussian's alpha per pixel (0 where it does not composite).
// Out: `weight` alpha x transmittance before it (0 where not blended); transmittance `trans`, end index `last`
// and `alive` (1 until the pixel has finished) updated. A pixel stops before the Gaussian that would take its
// transmittance to kMinTransmittance or below.
inline void composite_row(int64_t lanes, float* weight, float* trans, int32_t* last, float* alive, int32_t next_end) {
  const FloatVector zero = {};
  for (int64_t x = 0; x < lanes; x += kVectorFloats) {
    FloatVector* w = reinterpret_cast<FloatVector*>(weight + x);
    FloatVector* tr = reinterpret_cast<FloatVector*>(trans + x);
    IntVector* end = reinterpret_cast<IntVector*>(last + x);
    FloatVector* live = reinterpret_cast<FloatVector*>(alive + x);
    const FloatVector alpha = *w, before = *tr;
    const FloatVector next = before * (1.f - alpha);
    const IntVector valid = alpha > zero;
    const IntVector stop = valid & (next <= kMinTransmittance);
    const IntVector blend = valid & ~stop;
    *w = blend ? alpha * before : zero;
    *tr = blend ? next : before;
    *end = blend ? next_end + IntVector{} : *end;
    *live = stop ? zero : *live;
  }
}

// Channels back-propagated together through one row, so that d loss / d alpha stays in a register.
constexpr int kChannelBlock = 4;

// One row of the backward pass for channels [d0, d0 + C): feature gradients (per lane), d loss / d alpha
// of each pixel and the colour composited behind the current Gaussian.
// `width` lanes from `row` (a pixel offset into the tile's buffers); g_feat's channels are `lanes` apart.
template <int C>
inline void channel_rows(int64_t d0, int width, int64_t lanes, int64_t pixels, int64_t row, const float* features,
                         const float* vfeat, float* behind, float* g_feat, const float* __restrict w,
                         const float* __restrict t_before, const float* __restrict inv, float* __restrict v_alpha_px) {
  const float* up[C];
  float* bh[C];
  float* gf[C];
  float f[C];
  for (int c = 0; c < C; c++) {
    up[c] = vfeat + (d0 + c) * pixels + row;
    bh[c] = behind + (d0 + c) * pixels + row;
    gf[c] = g_feat + (d0 + c) * lanes;
    f[c] = features[d0 + c];
  }
#pragma omp simd aligned(w, t_before, inv, v_alpha_px : kVectorBytes)
  for (int x = 0; x < width; x++) {
    float v_a = v_alpha_px[x];
#pragma GCC unroll 8
    for (int c = 0; c < C; c++) {
      const float u = up[c][x], b = bh[c][x];
      gf[c][x] += w[x] * u;
      v_a += (f[c] * t_before[x] - b * inv[x]) * u;
      bh[c][x] = b + f[c] * w[x];
    }
    v_alpha_px[x] = v_a;
  }
}

}  // namespace

// Indices of `depths` [n] in ascending order, ties in index order (what a stable sort gives): an LSD radix
// sort over the floats' bit patterns mapped to unsigned keys of the same order, 8 bits per pass (24k depths:
// well under the 1.35 ms of torch.argsort(stable=True)). -0 sorts before +0 and NaNs at either end; only
// culled Gaussians (never binned) have such depths.
std::vector<int> depth_order(const float* depths, int64_t n) {
  std::vector<uint32_t> keys(n), keys_next(n);
  std::vector<int> order(n), order_next(n);
  for (int64_t i = 0; i < n; i++) {
    uint32_t bits;
    std::memcpy(&bits, depths + i, sizeof(bits));
    keys[i] = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
    order[i] = (int)i;
  }
  for (int shift = 0; shift < 32; shift += 8) {
    int64_t counts[257] = {0};
    for (int64_t i = 0; i < n; i++) counts[((keys[i] >> shift) & 0xFFu) + 1]++;
    for (int b = 0; b < 256; b++) counts[b + 1] += counts[b];
    for (int64_t i = 0; i < n; i++) {
      const int64_t to = counts[(keys[i] >> shift) & 0xFFu]++;
      keys_next[to] = keys[i];
      order_next[to] = order[i];
    }
    keys.swap(keys_next);
    order.swap(order_next);
  }
  return order;
}

// Tile columns [c0, c1) of tile row `row` that the ellipse sigma = level of one Gaussian reaches (pixel centres
// within it, widened by kEllipseMargin), clipped to [x0, x1). Doubles: the bounds must not lose a pixel.
// For offsets u = centre - mean, sigma = 0.5 a ux^2 + b ux uy + 0.5 c uy^2; over a band of uy the ellipse's
// right edge is concave in uy and peaks at its rightmost point (uy = -b ux_max / c), its left edge likewise.
inline void ellipse_columns(double mx, double my, double a, double b, double c, double level, int64_t row,
                            int64_t tile, int x0, int x1, int& c0, int& c1) {
  const double det = a * c - b * b, margin = kEllipseMargin;
  const double ux_max = std::sqrt(2.0 * level * c / det), uy_max = std::sqrt(2.0 * level * a / det);
  const double lo = std::max((double)(row * tile) + 0.5 - my, -uy_max - margin);
  const double hi = std::min((double)((row + 1) * tile) - 0.5 - my, uy_max + margin);
  c0 = c1 = x0;
  if (lo > hi) return;
  const auto edge = [&](double uy, double side) {
    const double room = std::max(0.0, 2.0 * level / a - uy * uy * det / (a * a));
    return -b * uy / a + side * std::sqrt(room);
  };
  const double right = mx + edge(std::clamp(-b * ux_max / c, lo, hi), 1.0) + margin;
  const double left = mx + edge(std::clamp(b * ux_max / c, lo, hi), -1.0) - margin;
  // Pixels X with centre X + 0.5 in [left, right], then their tiles.
  const int64_t first = (int64_t)std::ceil(left - 0.5), last = (int64_t)std::floor(right - 0.5);
  if (last < first) return;
  c0 = (int)std::clamp<int64_t>(first >= 0 ? first / tile : -1, x0, x1);
  c1 = (int)std::clamp<int64_t>(last >= 0 ? last / tile + 1 : 0, c0, x1);
}

// Tile rows [y0, y1) and columns [x0, x1) of the pixel box of Gaussian g (radii 0: culled, an empty box).
struct TileBox {
  int x0 = 0, x1 = 0, y0 = 0, y1 = 0;
  TileBox(const float* mean, const int* rad, int64_t g, const TileGrid& grid) {
    const int rx = rad[2 * g], ry = rad[2 * g + 1];
    if (rx <= 0 && ry <= 0) return;
    const float mx = mean[2 * g], my = mean[2 * g + 1];
    const int64_t tile = grid.tile;
    x0 = (int)std::clamp<int64_t>((int64_t)std::floor((mx - rx) / tile), 0, grid.tiles_x);
    x1 = (int)std::clamp<int64_t>((int64_t)std::ceil((mx + rx) / tile), 0, grid.tiles_x);
    y0 = (int)std::clamp<int64_t>((int64_t)std::floor((my - ry) / tile), 0, grid.tiles_y);
    y1 = (int)std::clamp<int64_t>((int64_t)std::ceil((my + ry) / tile), 0, grid.tiles_y);
  }
};

// Gaussians binned per thread below which binning stays on one thread (about 0.05 us each).
constexpr int64_t kMinGaussiansPerBinThread = 8192;

// Threads binning `gaussians` Gaussians would use now: as `sweep_threads`, capped by the Gaussians instead.
int bin_threads(int64_t gaussians) {
  if (at::in_parallel_region()) return 1;
  return (int)std::clamp<int64_t>(gaussians / kMinGaussiansPerBinThread, 1, at::get_num_threads());
}

// means2d [N,2] f32, conics [N,3] f32, opacities [N] f32 (as composited), radii [N,2] i32 (0 = culled),
// depths [N] f32 (camera z, for the order only). Returns offsets [tiles+1] i32 and gaussian_ids [M] i32 (per
// tile, front to back; equal depths in index order). A Gaussian is listed in the tiles of its pixel box that
// its ellipse of alpha >= 1/255 reaches: about a fifth fewer entries than the whole box on fitted scenes, with
// identical renders (the entries left out composite nothing). The Gaussians, in depth order, are cut into one
// contiguous chunk per thread; each thread counts and then lists its own chunk, and a tile lists chunk 0's
// entries before chunk 1's, so the lists are the serial ones for any thread count.
std::vector<at::Tensor> bin_gaussians(at::Tensor means2d, at::Tensor conics, at::Tensor opacities,
                                         at::Tensor radii, at::Tensor depths, int64_t width,
                                         int64_t height, int64_t tile) {
  TileGrid grid(width, height, tile);
  const int64_t n = means2d.size(0), tiles = grid.count();
  const float* mean = means2d.data_ptr<float>();
  const float* conic = conics.data_ptr<float>();
  const float* opac = opacities.data_ptr<float>();
  const int* rad = radii.data_ptr<int>();
  const std::vector<int> order = depth_order(depths.data_ptr<float>(), n);
  const int threads = bin_threads(n);
  // Per Gaussian in depth order: its tile box, and the first of its box rows' column spans [c0, c1) in `columns`.
  std::vector<TileBox> boxes;
  boxes.reserve(n);
  std::vector<int> row_start(n + 1, 0);
  for (int64_t k = 0; k < n; k++) {
    const TileBox& box = boxes.emplace_back(mean, rad, order[k], grid);
    row_start[k + 1] = row_start[k] + (box.y1 - box.y0);
  }
  std::vector<int> columns(2 * (size_t)row_start[n]);
  // counts[chunk * tiles + t]: entries of tile t from that chunk; then, in place, where the chunk's first goes.
  std::vector<int> counts((size_t)threads * tiles, 0);
  const auto chunk_begin = [&](int chunk) { return n * chunk / threads; };
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static, 1)
  for (int chunk = 0; chunk < threads; chunk++) {
    int* count = &counts[(size_t)chunk * tiles];
    for (int64_t k = chunk_begin(chunk); k < chunk_begin(chunk + 1); k++) {
      const int64_t g = order[k];
      const TileBox& box = boxes[k];
      const double a = conic[3 * g], b = conic[3 * g + 1], c = conic[3 * g + 2], o = opac[g];
      const bool ellipse = a > 0 && a * c - b * b > 0 && o >= kAlphaThreshold;
      const double level = ellipse ? cutoff_level((float)o) : 0.0;
      int* span = &columns[2 * (size_t)row_start[k]];
      for (int y = box.y0; y < box.y1; y++, span += 2) {
        int c0 = box.x0, c1 = box.x1;
        if (ellipse) ellipse_columns(mean[2 * g], mean[2 * g + 1], a, b, c, level, y, tile, box.x0, box.x1, c0, c1);
        span[0] = c0;
        span[1] = c1;
        for (int x = c0; x < c1; x++) count[y * grid.tiles_x + x]++;
      }
    }
  }
  auto offsets = at::empty({tiles + 1}, at::kInt);
  int* off = offsets.data_ptr<int>();
  int total = 0;
  for (int64_t t = 0; t < tiles; t++) {
    off[t] = total;
    for (int chunk = 0; chunk < threads; chunk++) {
      const int here = counts[(size_t)chunk * tiles + t];
      counts[(size_t)chunk * tiles + t] = total;
      total += here;
    }
  }
  off[tiles] = total;
  auto ids = at::empty({(int64_t)total}, at::kInt);
  int* id = ids.data_ptr<int>();
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static, 1)
  for (int chunk = 0; chunk < threads; chunk++) {
    int* fill = &counts[(size_t)chunk * tiles];
    for (int64_t k = chunk_begin(chunk); k < chunk_begin(chunk + 1); k++) {
      const TileBox& box = boxes[k];
      const int* span = &columns[2 * (size_t)row_start[k]];
      for (int y = box.y0; y < box.y1; y++, span += 2)
        for (int x = span[0]; x < span[1]; x++) id[fill[y * grid.tiles_x + x]++] = order[k];
    }
  }
  return {offsets, ids};
}

namespace {

// The hardware vectors of a padded tile row that a Gaussian's box columns [lx0, lx1) touch: lanes
// [first, first + width). On AVX2 (8-float vectors, 16-float rows) about half of the tile entries of a fitted
// scene need one vector of the two (stop 57).
struct Span {
  int first, width;
  Span(const Splat& s, int64_t lanes)
      : first((int)(s.lx0 / kVectorFloats * kVectorFloats)),
        width((int)std::clamp<int64_t>((s.lx1 + kVectorFloats - 1) / kVectorFloats * kVectorFloats - first, 0,
                                       lanes - first)) {}
};

// Composites one Gaussian over the rows of its box in one tile, over the lanes of `span` only (kSpan of them when
// known at compile time, else span.width): `weight` is row scratch, the other buffers the tile's state as in
// `forward_sweep`. Lanes outside the span are outside the box and would composite nothing.
template <int64_t kSpan>
inline void forward_rows(const Splat& s, const TileBounds& b, const Span& span, int64_t lanes, int64_t pixels,
                         int64_t dims, int next_end, float* trans, float* alive, int* last, float* acc, float* weight) {
  const float ca = s.ca, cb = s.cb, cc = s.cc, o = s.o, mx_local = s.mx_local;
  const int lx0 = (int)s.lx0, lx1 = (int)s.lx1, first = span.first;
  const int width = kSpan > 0 ? (int)kSpan : span.width;
  for (int64_t y = s.y0; y < s.y1; y++) {
    if (!s.row_reaches(y)) continue;
    const float dy = s.my - (y + 0.5f);
    const int64_t row = (y - b.y0) * lanes + first;
    float* tr = trans + row;
    float* al = alive + row;
    int* la = last + row;
#pragma omp simd aligned(al, weight : kVectorBytes)
    for (int i = 0; i < width; i++) {
      const int x = first + i;
      const float dx = mx_local - (float)x;
      const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
      const float alpha = std::min(kMaxAlpha, o * exp_negative(std::clamp(sigma, 0.f, kMaxSigma)));
      // `&`, not `&&`: a short-circuited load is control flow, which stops gcc vectorising.
      const bool valid = (x >= lx0) & (x < lx1) & (al[i] > 0.f) & (sigma >= 0.f) & (alpha >= kAlphaThreshold);
      weight[i] = valid ? alpha : 0.f;  // the alpha of each lane that may composite; the weight below
    }
    composite_row(width, weight, tr, la, al, next_end);
    for (int64_t d = 0; d < dims; d++) {
      float* ad = acc + d * pixels + row;
      const float f = s.features[d];
#pragma omp simd aligned(ad, weight : kVectorBytes)
      for (int i = 0; i < width; i++) ad[i] += weight[i] * f;
    }
  }
}

// Returns features [H,W,D] (premultiplied, no background), transmittance [H,W] (final T),
// end [H,W] i32 (one past the last contributing entry of the pixel's tile list).
// kFixedLanes: the padded row length when known at compile time (see `rasterize_forward`), else 0.
template <int64_t kFixedLanes>
std::vector<at::Tensor> forward_sweep(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& features,
                                      const at::Tensor& opacities, const at::Tensor& radii, const at::Tensor& offsets,
                                      const at::Tensor& ids, const TileGrid& grid) {
  const int64_t width = grid.width, height = grid.height, tile = grid.tile;
  const int64_t dims = features.size(1), stride = kRecordHeader + dims;
  auto out_features = at::empty({height, width, dims}, at::kFloat);
  auto out_transmittance = at::empty({height, width}, at::kFloat);
  auto out_end = at::empty({height, width}, at::kInt);
  const std::vector<float> records = pack_records(means2d, conics, opacities, radii, features);
  const float* rec = records.data();
  const int* off = offsets.data_ptr<int>();
  const int* id = ids.data_ptr<int>();
  float* of = out_features.data_ptr<float>();
  float* ot = out_transmittance.data_ptr<float>();
  int* oe = out_end.data_ptr<int>();
  const int threads = sweep_threads(grid.count(), ids.size(0));

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int64_t lanes = kFixedLanes > 0 ? kFixedLanes : grid.lanes, pixels = grid.padded_pixels();
    // Tile-local state over padded rows; pixels outside the image (or in the padding) start finished.
    Aligned<float> trans_buf(pixels), acc_buf(pixels * dims), alive_buf(pixels), weight_buf(lanes);
    Aligned<int> last_buf(pixels);
    float* trans = trans_buf.get();
    float* acc = acc_buf.get();
    float* alive = alive_buf.get();
    float* weight = weight_buf.get();
    int* last = last_buf.get();
    // Dynamic: tiles differ a lot in work, and a thread the OS parks for a while on a busy machine
    // holds up only the tile it is on instead of a fixed share of the image.
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < grid.count(); t++) {
      const TileBounds b(grid, t);
      std::fill(trans, trans + pixels, 1.f);
      std::fill(acc, acc + pixels * dims, 0.f);
      std::fill(last, last + pixels, off[t]);
      for (int64_t y = 0; y < tile; y++)
        for (int64_t x = 0; x < lanes; x++) alive[y * lanes + x] = (b.y0 + y < b.y1 && b.x0 + x < b.x1) ? 1.f : 0.f;
      for (int64_t k = off[t]; k < off[t + 1]; k++) {
        if ((k - off[t]) % kDoneCheckInterval == 0 && std::none_of(alive, alive + pixels, [](float a) { return a > 0.f; }))
          break;
        if (k + kPrefetchDistance < off[t + 1]) prefetch_record(rec, id, stride, k + kPrefetchDistance);
        const Splat s(rec + (size_t)id[k] * stride, b);
        const Span span(s, lanes);
        const int next_end = (int)(k + 1);
        // A box that misses the tile's pixels (rounding at its edge; it was binned by its radius) composites nothing.
        if (span.width == 0) continue;
        if (span.width == kFixedLanes)
          forward_rows<kFixedLanes>(s, b, span, lanes, pixels, dims, next_end, trans, alive, last, acc, weight);
        else if (span.width == kVectorFloats)
          forward_rows<kVectorFloats>(s, b, span, lanes, pixels, dims, next_end, trans, alive, last, acc, weight);
        else
          forward_rows<0>(s, b, span, lanes, pixels, dims, next_end, trans, alive, last, acc, weight);
      }
      for (int64_t y = b.y0; y < b.y1; y++)
        for (int64_t x = b.x0; x < b.x1; x++) {
          const int64_t p = (y - b.y0) * lanes + (x - b.x0);
          const size_t q = (size_t)y * width + x;
          for (int64_t d = 0; d < dims; d++) of[q * dims + d] = acc[d * pixels + p];
          ot[q] = trans[p];
          oe[q] = last[p];
        }
    }
  }
  return {out_features, out_transmittance, out_end};
}

}  // namespace

// Tiles of up to kLanes pixels (the default 16) sweep rows of exactly kLanes floats: with that length known at
// compile time every row loop is one straight-line run of vector instructions whose buffers stay in registers
// (forward 8.1 -> 6.1 ms, backward 18.5 -> 11.3 ms on one thread, a 24,000-Gaussian frame at 180x235); wider tiles
// take the same code with the row length at run time.
std::vector<at::Tensor> rasterize_forward(at::Tensor means2d, at::Tensor conics, at::Tensor features,
                                             at::Tensor opacities, at::Tensor radii, at::Tensor offsets,
                                             at::Tensor ids, int64_t width, int64_t height, int64_t tile) {
  const TileGrid grid(width, height, tile);
  return grid.lanes == kLanes ? forward_sweep<kLanes>(means2d, conics, features, opacities, radii, offsets, ids, grid)
                              : forward_sweep<0>(means2d, conics, features, opacities, radii, offsets, ids, grid);
}

// rows [M, G] summed per Gaussian id ids[k] -> [n, G], each sum in increasing k; Gaussians split over threads.
at::Tensor sum_entries(const at::Tensor& rows, const at::Tensor& ids, int64_t n) {
  const int64_t m = ids.size(0), width = rows.size(1);
  const int* id = ids.data_ptr<int>();
  const float* row = rows.data_ptr<float>();
  std::vector<int> start(n + 1, 0), entries(m);
  for (int64_t k = 0; k < m; k++) start[id[k] + 1]++;
  for (int64_t g = 0; g < n; g++) start[g + 1] += start[g];
  std::vector<int> fill(start.begin(), start.end() - 1);
  for (int64_t k = 0; k < m; k++) entries[fill[id[k]]++] = (int)k;
  auto sums = at::zeros({n, width}, at::kFloat);
  float* out = sums.data_ptr<float>();
  const int threads = sweep_threads(n, m);
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
  for (int64_t g = 0; g < n; g++) {
    float* to = out + g * width;
    for (int e = start[g]; e < start[g + 1]; e++) {
      const float* from = row + (size_t)entries[e] * width;
      for (int64_t j = 0; j < width; j++) to[j] += from[j];
    }
  }
  return sums;
}

namespace {

// One tile's state in the backward pass, per padded pixel (see `backward_sweep`).
struct BackwardTile {
  float *trans, *behind;
  const float *tf, *vfeat, *valpha;
  const int* last;
  int64_t lanes, pixels, dims;
};

// One Gaussian's row scratch (64-byte aligned, `lanes` floats each) and its per-lane gradient sums
// ((6 + dims) x lanes: mean x, y, conic a, b, c, opacity, then the features).
struct BackwardScratch {
  float *w, *t_before, *inv, *v_alpha_px, *vis_gated, *lane_grads;
};

// Back-propagates through one Gaussian (tile entry k) over the rows of its box, over the lanes of `span` only
// (kSpan of them when known at compile time, else span.width), and writes its gradients to `row_grad` [6 + dims].
// Walking back to front, it also takes the Gaussian out of the tile's transmittance and adds its colour to
// `behind`. row_end: per tile row, one past the last entry any of its pixels composited.
template <int64_t kSpan>
inline void backward_rows(const Splat& s, const TileBounds& b, const Span& span, int k, const int* row_end,
                          const BackwardTile& tile, const BackwardScratch& scratch, float* row_grad) {
  const float ca = s.ca, cb = s.cb, cc = s.cc, o = s.o, mx_local = s.mx_local;
  const int lx0 = (int)s.lx0, lx1 = (int)s.lx1, first = span.first;
  const int width = kSpan > 0 ? (int)kSpan : span.width;
  const int64_t lanes = tile.lanes, dims = tile.dims, grads = 6 + dims;
  float* w = scratch.w;
  float* t_before = scratch.t_before;
  float* inv = scratch.inv;
  float* v_alpha_px = scratch.v_alpha_px;
  float* vis_gated = scratch.vis_gated;
  // Gradient sums of the span's lanes: lane i of gradient j at lane_grads[j * lanes + first + i].
  float* lane_grads = scratch.lane_grads + first;
  for (int64_t j = 0; j < grads; j++) std::fill(lane_grads + j * lanes, lane_grads + j * lanes + width, 0.f);
  float *g_mx = lane_grads, *g_my = g_mx + lanes, *g_ca = g_my + lanes, *g_cb = g_ca + lanes,
        *g_cc = g_cb + lanes, *g_o = g_cc + lanes, *g_feat = g_o + lanes;
  for (int64_t y = s.y0; y < s.y1; y++) {
    if (k >= row_end[y - b.y0] || !s.row_reaches(y)) continue;
    const float dy = s.my - (y + 0.5f);
    const int64_t row = (y - b.y0) * lanes + first;
    float* tr = tile.trans + row;
    const float* tfr = tile.tf + row;
    const float* var = tile.valpha + row;
    const int* la = tile.last + row;
#pragma omp simd aligned(tr, la, w, t_before, inv, vis_gated : kVectorBytes)
    for (int i = 0; i < width; i++) {
      const int x = first + i;
      const float dx = mx_local - (float)x;
      const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
      const float vis = exp_negative(std::clamp(sigma, 0.f, kMaxSigma));
      const float raw_alpha = o * vis;
      const float alpha = std::min(kMaxAlpha, raw_alpha);
      const bool valid = (x >= lx0) & (x < lx1) & (k < la[i]) & (sigma >= 0.f) & (alpha >= kAlphaThreshold);
      const float inv_one_minus = 1.f / (1.f - alpha);
      const float after = tr[i];
      const float before = valid ? after * inv_one_minus : after;
      w[i] = valid ? alpha * before : 0.f;
      t_before[i] = before;
      inv[i] = inv_one_minus;
      // Where the 0.999 clamp is active alpha no longer depends on sigma or opacity.
      vis_gated[i] = (valid & (raw_alpha <= kMaxAlpha)) ? vis : 0.f;
      tr[i] = before;
    }
    // A loop of its own: folded into the one above, gcc gives up vectorising that one.
#pragma omp simd aligned(v_alpha_px, tfr, inv, var : kVectorBytes)
    for (int i = 0; i < width; i++) v_alpha_px[i] = tfr[i] * inv[i] * var[i];
    int64_t d = 0;
    for (; d + kChannelBlock <= dims; d += kChannelBlock)
      channel_rows<kChannelBlock>(d, width, lanes, tile.pixels, row, s.features, tile.vfeat, tile.behind, g_feat, w,
                                  t_before, inv, v_alpha_px);
    for (; d < dims; d++)
      channel_rows<1>(d, width, lanes, tile.pixels, row, s.features, tile.vfeat, tile.behind, g_feat, w, t_before,
                      inv, v_alpha_px);
#pragma omp simd aligned(g_mx, g_my, g_ca, g_cb, g_cc, g_o, vis_gated, v_alpha_px : kVectorBytes)
    for (int i = 0; i < width; i++) {
      const float dx = mx_local - (float)(first + i);
      const float v_sigma = -o * vis_gated[i] * v_alpha_px[i];
      g_mx[i] += v_sigma * (ca * dx + cb * dy);
      g_my[i] += v_sigma * (cb * dx + cc * dy);
      g_ca[i] += 0.5f * v_sigma * dx * dx;
      g_cb[i] += v_sigma * dx * dy;
      g_cc[i] += 0.5f * v_sigma * dy * dy;
      g_o[i] += vis_gated[i] * v_alpha_px[i];
    }
  }
  for (int64_t j = 0; j < grads; j++) {
    const float* lane = lane_grads + j * lanes;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum) aligned(lane : kVectorBytes)
    for (int i = 0; i < width; i++) sum += lane[i];
    row_grad[j] = sum;
  }
}

// Gradients of a loss given v_features [H,W,D] and v_alpha [H,W] (alpha = 1 - transmittance).
// Returns per-Gaussian gradients [N, 6 + D]: d/d(mean x, mean y, conic a, b, c, opacity, features...): the
// tile sweep writes one row per entry, then each Gaussian sums its entries' rows in entry order (the order
// a serial index_add gives, which on 2 threads took longer than the sum itself).
// kFixedLanes as in `forward_sweep`.
template <int64_t kFixedLanes>
at::Tensor backward_sweep(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& features,
                          const at::Tensor& opacities, const at::Tensor& radii, const at::Tensor& offsets,
                          const at::Tensor& ids, const at::Tensor& transmittance, const at::Tensor& pixel_end,
                          const at::Tensor& v_features, const at::Tensor& v_alpha, const TileGrid& grid) {
  const int64_t width = grid.width, tile = grid.tile;
  const int64_t dims = features.size(1), stride = kRecordHeader + dims, grads = 6 + dims;
  // Zeroed by the tile sweep itself: every entry row belongs to exactly one tile.
  auto entry_grads = at::empty({ids.size(0), grads}, at::kFloat);
  const std::vector<float> records = pack_records(means2d, conics, opacities, radii, features);
  const float* rec = records.data();
  const int* off = offsets.data_ptr<int>();
  const int* id = ids.data_ptr<int>();
  const float* tfinal = transmittance.data_ptr<float>();
  const int* pend = pixel_end.data_ptr<int>();
  const float* vf = v_features.data_ptr<float>();
  const float* va = v_alpha.data_ptr<float>();
  float* eg = entry_grads.data_ptr<float>();
  const int threads = sweep_threads(grid.count(), ids.size(0));

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int64_t lanes = kFixedLanes > 0 ? kFixedLanes : grid.lanes, pixels = grid.padded_pixels();
    // Per pixel: transmittance before the current Gaussian (walking back to front), the colour
    // composited behind it, its final transmittance, upstream gradients, and its end index. Pixels
    // outside the image get end = the tile's first entry, so no entry is valid there.
    Aligned<float> trans_buf(pixels), behind_buf(pixels * dims), tf_buf(pixels), vfeat_buf(pixels * dims),
        valpha_buf(pixels);
    Aligned<int> last_buf(pixels);
    // Per tile row: one past the last entry any of its pixels composited; rows are skipped for entries
    // behind that, where no pixel of theirs is affected.
    std::vector<int> row_end(tile);
    // Per row of the current Gaussian: weight (0 where not composited), transmittance before it,
    // 1 / (1 - alpha), d loss / d alpha, exp(-sigma) where alpha is differentiable (else 0); and per-lane
    // gradient sums over the Gaussian's rows: mean x, y, conic a, b, c, opacity, then the features.
    Aligned<float> w_buf(lanes), before_buf(lanes), inv_buf(lanes), v_alpha_buf(lanes), vis_buf(lanes),
        lane_grads_buf(grads * lanes);
    float* trans = trans_buf.get();
    float* behind = behind_buf.get();
    float* tf = tf_buf.get();
    float* vfeat = vfeat_buf.get();
    float* valpha = valpha_buf.get();
    int* last = last_buf.get();
    float* w = w_buf.get();
    float* t_before = before_buf.get();
    float* inv = inv_buf.get();
    float* v_alpha_px = v_alpha_buf.get();
    float* vis_gated = vis_buf.get();
    float* lane_grads = lane_grads_buf.get();
    const BackwardTile tile_state{trans, behind, tf, vfeat, valpha, last, lanes, pixels, dims};
    const BackwardScratch scratch{w, t_before, inv, v_alpha_px, vis_gated, lane_grads};
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < grid.count(); t++) {
      const TileBounds b(grid, t);
      std::fill(behind, behind + pixels * dims, 0.f);
      std::fill(trans, trans + pixels, 1.f);
      std::fill(tf, tf + pixels, 1.f);
      std::fill(valpha, valpha + pixels, 0.f);
      std::fill(vfeat, vfeat + pixels * dims, 0.f);
      std::fill(last, last + pixels, off[t]);
      std::fill(eg + (size_t)off[t] * grads, eg + (size_t)off[t + 1] * grads, 0.f);
      std::fill(row_end.begin(), row_end.end(), off[t]);
      for (int64_t y = b.y0; y < b.y1; y++)
        for (int64_t x = b.x0; x < b.x1; x++) {
          const int64_t p = (y - b.y0) * lanes + (x - b.x0);
          const size_t q = (size_t)y * width + x;
          tf[p] = trans[p] = tfinal[q];
          last[p] = pend[q];
          row_end[y - b.y0] = std::max(row_end[y - b.y0], pend[q]);
          valpha[p] = va[q];
          for (int64_t d = 0; d < dims; d++) vfeat[d * pixels + p] = vf[q * dims + d];
        }
      const int max_end = *std::max_element(row_end.begin(), row_end.end());
      for (int64_t k = max_end - 1; k >= off[t]; k--) {
        if (k - kPrefetchDistance >= off[t]) prefetch_record(rec, id, stride, k - kPrefetchDistance);
        const Splat s(rec + (size_t)id[k] * stride, b);
        const Span span(s, lanes);
        float* row_grad = eg + (size_t)k * grads;
        if (span.width == 0) continue;  // as in `forward_sweep`: its row of gradients stays zero
        if (span.width == kFixedLanes)
          backward_rows<kFixedLanes>(s, b, span, (int)k, row_end.data(), tile_state, scratch, row_grad);
        else if (span.width == kVectorFloats)
          backward_rows<kVectorFloats>(s, b, span, (int)k, row_end.data(), tile_state, scratch, row_grad);
        else
          backward_rows<0>(s, b, span, (int)k, row_end.data(), tile_state, scratch, row_grad);
      }
    }
  }
  return sum_entries(entry_grads, ids, means2d.size(0));
}

}  // namespace

// Row length fixed at compile time for tiles of up to kLanes pixels, as in `rasterize_forward`.
at::Tensor rasterize_backward(at::Tensor means2d, at::Tensor conics, at::Tensor features,
                                 at::Tensor opacities, at::Tensor radii, at::Tensor offsets,
                                 at::Tensor ids, at::Tensor transmittance, at::Tensor pixel_end,
                                 at::Tensor v_features, at::Tensor v_alpha, int64_t width, int64_t height,
                                 int64_t tile) {
  const TileGrid grid(width, height, tile);
  return grid.lanes == kLanes
             ? backward_sweep<kLanes>(means2d, conics, features, opacities, radii, offsets, ids, transmittance,
                                      pixel_end, v_features, v_alpha, grid)
             : backward_sweep<0>(means2d, conics, features, opacities, radii, offsets, ids, transmittance,
                                 pixel_end, v_features, v_alpha, grid);
}

// Kernels release the GIL: they touch no Python objects, and Python threads may run them side by side
// (recon4d.eval.reconstruction.refine_cameras searches several frames' cameras at once).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("vector_bytes", []() { return kVectorBytes; }, "Bytes per hardware vector the row loops were built for");
  m.def("bin_threads", &bin_threads, "Threads binning that many Gaussians would use now");
  m.def("sweep_threads", &sweep_threads, "Threads a forward/backward sweep over (tiles, entries) would use now");
  m.def("bin_gaussians", &bin_gaussians, py::call_guard<py::gil_scoped_release>(), "Bin projected Gaussians into screen tiles in depth order");
  m.def("rasterize_forward", &rasterize_forward, py::call_guard<py::gil_scoped_release>(), "Tile rasterizer forward pass");
  m.def("rasterize_backward", &rasterize_backward, py::call_guard<py::gil_scoped_release>(), "Tile rasterizer backward pass");
}
