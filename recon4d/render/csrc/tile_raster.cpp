// CPU tile rasterizer for projected 2D Gaussians: forward and hand-written backward.
//
// Math matches gsplat's "classic" rasterizer: pixel centres at (x + 0.5, y + 0.5); per Gaussian
// sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with (a, b, c) the 2D conic, alpha = min(0.999, o exp(-sigma)),
// Gaussians with alpha < 1/255 are skipped, compositing is front to back and a pixel stops before the
// Gaussian that would take its transmittance to 1e-4 or below.
//
// Layout: the image is cut into square tiles; each tile lists the Gaussians whose pixel bounding box
// touches it, in global depth order. Each thread owns whole tiles, so no atomics are needed: the
// backward pass writes one gradient row per (tile, Gaussian) entry and PyTorch sums them per Gaussian.
// Inside a tile the loop runs over Gaussians outside and pixels inside, with branch-free updates, so
// the compiler can vectorise the pixel loop (including expf).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr float kAlphaThreshold = 1.f / 255.f;
constexpr float kMaxAlpha = 0.999f;
constexpr float kMinTransmittance = 1e-4f;

struct TileGrid {
  int64_t width, height, tile, tiles_x, tiles_y;
  TileGrid(int64_t w, int64_t h, int64_t t)
      : width(w), height(h), tile(t), tiles_x((w + t - 1) / t), tiles_y((h + t - 1) / t) {}
  int64_t count() const { return tiles_x * tiles_y; }
};

// Pixel range [lo, hi) along one axis of the pixels whose centre lies within `radius` of `mean`,
// clipped to [tile_lo, tile_hi).
inline void pixel_span(float mean, float radius, int64_t tile_lo, int64_t tile_hi, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(tile_lo, (int64_t)std::ceil(mean - radius - 0.5f));
  hi = std::min<int64_t>(tile_hi, (int64_t)std::floor(mean + radius - 0.5f) + 1);
}

}  // namespace

// means2d [N,2] f32, radii [N,2] i32 (0 = culled), depth_order [N] i64 (front to back).
// Returns offsets [tiles+1] i32 and gaussian_ids [M] i32 (per tile, in depth order).
std::vector<torch::Tensor> bin_gaussians(torch::Tensor means2d, torch::Tensor radii, torch::Tensor depth_order,
                                         int64_t width, int64_t height, int64_t tile) {
  TileGrid grid(width, height, tile);
  const int64_t n = means2d.size(0);
  const float* mean = means2d.data_ptr<float>();
  const int* rad = radii.data_ptr<int>();
  const int64_t* order = depth_order.data_ptr<int64_t>();
  std::vector<int> counts(grid.count() + 1, 0);
  std::vector<int> boxes(4 * (size_t)n, 0);
  for (int64_t k = 0; k < n; k++) {
    const int64_t g = order[k];
    const int rx = rad[2 * g], ry = rad[2 * g + 1];
    if (rx <= 0 && ry <= 0) continue;
    const float mx = mean[2 * g], my = mean[2 * g + 1];
    const int x0 = (int)std::clamp<int64_t>((int64_t)std::floor((mx - rx) / tile), 0, grid.tiles_x);
    const int x1 = (int)std::clamp<int64_t>((int64_t)std::ceil((mx + rx) / tile), 0, grid.tiles_x);
    const int y0 = (int)std::clamp<int64_t>((int64_t)std::floor((my - ry) / tile), 0, grid.tiles_y);
    const int y1 = (int)std::clamp<int64_t>((int64_t)std::ceil((my + ry) / tile), 0, grid.tiles_y);
    int* box = &boxes[4 * k];
    box[0] = x0; box[1] = x1; box[2] = y0; box[3] = y1;
    for (int y = y0; y < y1; y++)
      for (int x = x0; x < x1; x++) counts[y * grid.tiles_x + x + 1]++;
  }
  for (int64_t t = 0; t < grid.count(); t++) counts[t + 1] += counts[t];
  auto offsets = torch::empty({grid.count() + 1}, torch::kInt32);
  std::copy(counts.begin(), counts.end(), offsets.data_ptr<int>());
  auto ids = torch::empty({(int64_t)counts[grid.count()]}, torch::kInt32);
  int* id = ids.data_ptr<int>();
  std::vector<int> fill(counts.begin(), counts.end() - 1);
  for (int64_t k = 0; k < n; k++) {
    const int* box = &boxes[4 * k];
    for (int y = box[2]; y < box[3]; y++)
      for (int x = box[0]; x < box[1]; x++) id[fill[y * grid.tiles_x + x]++] = (int)order[k];
  }
  return {offsets, ids};
}

// Returns features [H,W,D] (premultiplied, no background), transmittance [H,W] (final T),
// end [H,W] i32 (one past the last contributing entry of the pixel's tile list).
std::vector<torch::Tensor> rasterize_forward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor features,
                                             torch::Tensor opacities, torch::Tensor radii, torch::Tensor offsets,
                                             torch::Tensor ids, int64_t width, int64_t height, int64_t tile) {
  TileGrid grid(width, height, tile);
  const int64_t dims = features.size(1);
  auto out_features = torch::zeros({height, width, dims}, torch::kFloat32);
  auto out_transmittance = torch::ones({height, width}, torch::kFloat32);
  auto out_end = torch::zeros({height, width}, torch::kInt32);
  const float* mean = means2d.data_ptr<float>();
  const float* conic = conics.data_ptr<float>();
  const float* feat = features.data_ptr<float>();
  const float* opac = opacities.data_ptr<float>();
  const int* rad = radii.data_ptr<int>();
  const int* off = offsets.data_ptr<int>();
  const int* id = ids.data_ptr<int>();
  float* of = out_features.data_ptr<float>();
  float* ot = out_transmittance.data_ptr<float>();
  int* oe = out_end.data_ptr<int>();

  at::parallel_for(0, grid.count(), 1, [&](int64_t begin, int64_t end) {
    const int64_t pixels = tile * tile;
    std::vector<float> trans(pixels), acc(pixels * dims), alive(pixels);
    std::vector<int> last(pixels);
    for (int64_t t = begin; t < end; t++) {
      const int64_t tx0 = (t % grid.tiles_x) * tile, ty0 = (t / grid.tiles_x) * tile;
      const int64_t tx1 = std::min(width, tx0 + tile), ty1 = std::min(height, ty0 + tile);
      std::fill(trans.begin(), trans.end(), 1.f);
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(last.begin(), last.end(), off[t]);
      // Pixels outside the image count as finished so that partial tiles can stop early too.
      int64_t remaining = 0;
      for (int64_t y = 0; y < tile; y++)
        for (int64_t x = 0; x < tile; x++) {
          const bool inside = ty0 + y < ty1 && tx0 + x < tx1;
          alive[y * tile + x] = inside ? 1.f : 0.f;
          remaining += inside;
        }
      for (int64_t k = off[t]; k < off[t + 1] && remaining > 0; k++) {
        const int g = id[k];
        const float mx = mean[2 * g], my = mean[2 * g + 1];
        const float ca = conic[3 * g], cb = conic[3 * g + 1], cc = conic[3 * g + 2], o = opac[g];
        const float* fg = feat + (size_t)g * dims;
        int64_t x0, x1, y0, y1;
        pixel_span(mx, (float)rad[2 * g], tx0, tx1, x0, x1);
        pixel_span(my, (float)rad[2 * g + 1], ty0, ty1, y0, y1);
        for (int64_t y = y0; y < y1; y++) {
          const float dy = my - (y + 0.5f);
          const int64_t row = (y - ty0) * tile - tx0;
          int64_t finished = 0;
          for (int64_t x = x0; x < x1; x++) {
            const int64_t p = row + x;
            const float dx = mx - (x + 0.5f);
            const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
            const float alpha = std::min(kMaxAlpha, o * std::exp(-sigma));
            const bool valid = alive[p] > 0.f && sigma >= 0.f && alpha >= kAlphaThreshold;
            const float next = trans[p] * (1.f - alpha);
            const bool stop = valid && next <= kMinTransmittance;
            const bool blend = valid && !stop;
            const float weight = blend ? alpha * trans[p] : 0.f;
            for (int64_t d = 0; d < dims; d++) acc[d * pixels + p] += weight * fg[d];
            trans[p] = blend ? next : trans[p];
            last[p] = blend ? (int)(k + 1) : last[p];
            alive[p] = stop ? 0.f : alive[p];
            finished += stop;
          }
          remaining -= finished;
        }
      }
      for (int64_t y = ty0; y < ty1; y++)
        for (int64_t x = tx0; x < tx1; x++) {
          const int64_t p = (y - ty0) * tile + (x - tx0);
          const size_t q = (size_t)y * width + x;
          for (int64_t d = 0; d < dims; d++) of[q * dims + d] = acc[d * pixels + p];
          ot[q] = trans[p];
          oe[q] = last[p];
        }
    }
  });
  return {out_features, out_transmittance, out_end};
}

// Gradients of a loss given v_features [H,W,D] and v_alpha [H,W] (alpha = 1 - transmittance).
// Returns per-entry gradient rows [M, 6 + D]: d/d(mean x, mean y, conic a, b, c, opacity, features...),
// summed per Gaussian by the caller.
torch::Tensor rasterize_backward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor features,
                                 torch::Tensor opacities, torch::Tensor radii, torch::Tensor offsets,
                                 torch::Tensor ids, torch::Tensor transmittance, torch::Tensor pixel_end,
                                 torch::Tensor v_features, torch::Tensor v_alpha, int64_t width, int64_t height,
                                 int64_t tile) {
  TileGrid grid(width, height, tile);
  const int64_t dims = features.size(1);
  const int64_t stride = 6 + dims;
  auto entry_grads = torch::zeros({ids.size(0), stride}, torch::kFloat32);
  const float* mean = means2d.data_ptr<float>();
  const float* conic = conics.data_ptr<float>();
  const float* feat = features.data_ptr<float>();
  const float* opac = opacities.data_ptr<float>();
  const int* rad = radii.data_ptr<int>();
  const int* off = offsets.data_ptr<int>();
  const int* id = ids.data_ptr<int>();
  const float* tfinal = transmittance.data_ptr<float>();
  const int* pend = pixel_end.data_ptr<int>();
  const float* vf = v_features.data_ptr<float>();
  const float* va = v_alpha.data_ptr<float>();
  float* eg = entry_grads.data_ptr<float>();

  at::parallel_for(0, grid.count(), 1, [&](int64_t begin, int64_t end) {
    const int64_t pixels = tile * tile;
    // Per pixel: transmittance before the current Gaussian (walking back to front), the colour
    // composited behind it, its final transmittance, upstream gradients, and its end index.
    std::vector<float> trans(pixels), behind(pixels * dims), tf(pixels), vfeat(pixels * dims), valpha(pixels);
    std::vector<int> last(pixels);
    for (int64_t t = begin; t < end; t++) {
      const int64_t tx0 = (t % grid.tiles_x) * tile, ty0 = (t / grid.tiles_x) * tile;
      const int64_t tx1 = std::min(width, tx0 + tile), ty1 = std::min(height, ty0 + tile);
      std::fill(behind.begin(), behind.end(), 0.f);
      std::fill(last.begin(), last.end(), off[t]);
      int max_end = off[t];
      for (int64_t y = ty0; y < ty1; y++)
        for (int64_t x = tx0; x < tx1; x++) {
          const int64_t p = (y - ty0) * tile + (x - tx0);
          const size_t q = (size_t)y * width + x;
          tf[p] = trans[p] = tfinal[q];
          last[p] = pend[q];
          max_end = std::max(max_end, pend[q]);
          valpha[p] = va[q];
          for (int64_t d = 0; d < dims; d++) vfeat[d * pixels + p] = vf[q * dims + d];
        }
      for (int64_t k = max_end - 1; k >= off[t]; k--) {
        const int g = id[k];
        const float mx = mean[2 * g], my = mean[2 * g + 1];
        const float ca = conic[3 * g], cb = conic[3 * g + 1], cc = conic[3 * g + 2], o = opac[g];
        const float* fg = feat + (size_t)g * dims;
        int64_t x0, x1, y0, y1;
        pixel_span(mx, (float)rad[2 * g], tx0, tx1, x0, x1);
        pixel_span(my, (float)rad[2 * g + 1], ty0, ty1, y0, y1);
        float g_mx = 0.f, g_my = 0.f, g_ca = 0.f, g_cb = 0.f, g_cc = 0.f, g_o = 0.f;
        float* row_grad = eg + (size_t)k * stride;
        for (int64_t y = y0; y < y1; y++) {
          const float dy = my - (y + 0.5f);
          const int64_t row = (y - ty0) * tile - tx0;
          for (int64_t x = x0; x < x1; x++) {
            const int64_t p = row + x;
            const float dx = mx - (x + 0.5f);
            const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
            const float vis = std::exp(-sigma);
            const float raw_alpha = o * vis;
            const float alpha = std::min(kMaxAlpha, raw_alpha);
            const bool valid = k < last[p] && sigma >= 0.f && alpha >= kAlphaThreshold;
            const float inv_one_minus = 1.f / (1.f - alpha);
            const float t_before = valid ? trans[p] * inv_one_minus : trans[p];
            const float weight = alpha * t_before;
            float v_a = tf[p] * inv_one_minus * valpha[p];
            for (int64_t d = 0; d < dims; d++) {
              const float upstream = vfeat[d * pixels + p];
              const float b = behind[d * pixels + p];
              row_grad[6 + d] += valid ? weight * upstream : 0.f;
              v_a += (fg[d] * t_before - b * inv_one_minus) * upstream;
              behind[d * pixels + p] = valid ? b + fg[d] * weight : b;
            }
            trans[p] = t_before;
            // Where the 0.999 clamp is active alpha no longer depends on sigma or opacity.
            const float v_sigma = (valid && raw_alpha <= kMaxAlpha) ? -raw_alpha * v_a : 0.f;
            g_mx += v_sigma * (ca * dx + cb * dy);
            g_my += v_sigma * (cb * dx + cc * dy);
            g_ca += 0.5f * v_sigma * dx * dx;
            g_cb += v_sigma * dx * dy;
            g_cc += 0.5f * v_sigma * dy * dy;
            g_o += (valid && raw_alpha <= kMaxAlpha) ? vis * v_a : 0.f;
          }
        }
        row_grad[0] = g_mx; row_grad[1] = g_my;
        row_grad[2] = g_ca; row_grad[3] = g_cb; row_grad[4] = g_cc;
        row_grad[5] = g_o;
      }
    }
  });
  return entry_grads;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bin_gaussians", &bin_gaussians, "Bin projected Gaussians into screen tiles in depth order");
  m.def("rasterize_forward", &rasterize_forward, "Tile rasterizer forward pass");
  m.def("rasterize_backward", &rasterize_backward, "Tile rasterizer backward pass");
}
