// Separable blur of [N, H, W] float32 maps with an odd 1-D kernel (SSIM's Gaussian window), forward and its
// transpose (the backward pass), on the CPU. recon4d.image holds the contract; this replaces a padded,
// grouped convolution pair whose backward dominated the SSIM loss (320x180: 15 ms of a loss step).
//
// Borders: mode 0 repeats the edge pixel (replicate), mode 1 mirrors it (d c b a | a b c d, symmetric).
// The forward pass is y = V(H(x)) with H, V the horizontal and vertical 1-D passes over the padded map; the
// backward pass is its exact transpose H^T(V^T(g)): gradients that fall on padding are folded back onto the
// pixel the padding copied. Each pass is a banded matrix with the padding folded in (`AxisMatrix`), applied as
// gathers whose outputs stay in registers (`weighted_sum`): a 235x180 SSIM step's blurs, 15 maps forward and 9
// back, 4.4 -> 3.0 ms on one thread (stop 58), where the scatter loops stored and reloaded every output per tap.
//
// Threads: maps are independent; each is written by one thread, so results do not depend on the thread count.
//
// SSIM around the blur (Wang et al. 2004), element-wise and fused so that a loss step does not run some twenty
// small tensor ops forward and backward: the five local moments of x and y (x, y, x*x, y*y, x*y), the SSIM map
// from their blurred values, and the backward passes of both. Each element is independent: any thread count
// gives the same numbers.
// Not <torch/extension.h>: these headers build in a third of its time (`recon4d.cpp.build_in_background`).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/utils/pybind.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace {

// Map elements below which one thread does the whole batch (a 320x180 map takes ~0.1 ms per pass).
constexpr int64_t kMinElementsPerThread = 1 << 17;

inline int64_t source_index(int64_t q, int64_t n, int64_t mode) {
  if (mode == 0) return std::clamp<int64_t>(q, 0, n - 1);
  if (q < 0) q = -q - 1;
  if (q >= n) q = 2 * n - 1 - q;
  return std::clamp<int64_t>(q, 0, n - 1);  // maps shorter than the radius: stay inside
}

void check(const at::Tensor& maps, const at::Tensor& taps) {
  TORCH_CHECK(maps.dim() == 3 && maps.device().is_cpu() && maps.scalar_type() == at::kFloat && maps.is_contiguous(),
              "maps must be a contiguous float32 CPU tensor [N, H, W]");
  TORCH_CHECK(taps.dim() == 1 && taps.numel() % 2 == 1 && taps.scalar_type() == at::kFloat && taps.device().is_cpu(),
              "taps must be an odd-length float32 CPU vector");
}

// One axis of the blur as a matrix [n, n] over a line of n pixels, by rows (output pixel q: a list of input
// pixels and their weights). Padded-border taps are folded onto the pixel the padding copies, so the forward
// matrix B sums taps where one input pixel fills several padded places, and the backward pass uses its transpose
// B^T, built from the same entries: it is the exact transpose whatever the border mode.
// A row r <= q < n - r (the interior) is the band taps[j] at q - r + j (B) or the reversed taps (B^T, whose
// folded entries all belong to the border rows): `apply_horizontal` reads it from `band` instead of the list.
struct AxisMatrix {
  int64_t n, radius;
  std::vector<float> band;                                  // [length]: taps along q - r .. q + r
  std::vector<std::vector<std::pair<int64_t, float>>> rows;  // [n]: (input pixel, weight), ascending pixel
  size_t longest = 0;                                       // entries of the longest row

  AxisMatrix(int64_t n_, const float* taps, int64_t length, int64_t mode, bool transpose)
      : n(n_), radius(length / 2), band(taps, taps + length), rows(n_) {
    std::vector<std::vector<std::pair<int64_t, float>>> forward(n);
    for (int64_t q = 0; q < n; ++q) {
      for (int64_t j = 0; j < length; ++j) {
        const int64_t source = source_index(q + j - radius, n, mode);
        auto& row = forward[q];
        auto same = std::find_if(row.begin(), row.end(), [&](const auto& e) { return e.first == source; });
        if (same == row.end()) row.emplace_back(source, taps[j]);
        else same->second += taps[j];
      }
    }
    if (!transpose) {
      rows = std::move(forward);
    } else {
      std::reverse(band.begin(), band.end());
      for (int64_t q = 0; q < n; ++q)
        for (const auto& [source, weight] : forward[q]) rows[source].emplace_back(q, weight);
    }
    for (auto& row : rows) {
      std::sort(row.begin(), row.end());
      longest = std::max(longest, row.size());
    }
  }
};

// 8 floats at any alignment, as a GCC vector (split into two on 16-byte vector machines) that may alias floats.
typedef float Lanes __attribute__((vector_size(32), aligned(4), may_alias));
constexpr int64_t kLaneFloats = 8;

// target[c] = sum over k of weights[k] * sources[k][c0 + c] for c < V * 8: the V vectors of output stay in
// registers while every input is added, instead of a store and a reload of each output per input (the blur
// loops before stop 58). Written with vector types: as a loop, gcc vectorised it across k with gathers.
template <int V>
inline void weighted_vectors(const float* const* sources, const float* weights, int64_t count, int64_t c0,
                             float* target) {
  Lanes acc[V] = {};
  for (int64_t k = 0; k < count; ++k) {
    const float w = weights[k];
    const Lanes* s = reinterpret_cast<const Lanes*>(sources[k] + c0);
    for (int v = 0; v < V; ++v) acc[v] += w * s[v];
  }
  for (int v = 0; v < V; ++v) *reinterpret_cast<Lanes*>(target + v * kLaneFloats) = acc[v];
}

// target[c] = sum over k of weights[k] * sources[k][c] for c < width: 32 floats at a time, then 8, then one.
inline void weighted_sum(const float* const* sources, const float* weights, int64_t count, int64_t width,
                         float* target) {
  int64_t c = 0;
  for (; c + 4 * kLaneFloats <= width; c += 4 * kLaneFloats)
    weighted_vectors<4>(sources, weights, count, c, target + c);
  for (; c + kLaneFloats <= width; c += kLaneFloats) weighted_vectors<1>(sources, weights, count, c, target + c);
  for (; c < width; ++c) {
    float acc = 0.0f;
    for (int64_t k = 0; k < count; ++k) acc += weights[k] * sources[k][c];
    target[c] = acc;
  }
}

// out [height, width] = in blurred along rows (each row of out a weighted sum of rows of in; `axis` over height).
// Vectorised over the row: per output row, every weight's input row is read once.
void apply_vertical(const AxisMatrix& axis, const float* in, float* out, int64_t width) {
  std::vector<const float*> sources(axis.longest);
  std::vector<float> weights(sources.size());
  for (int64_t q = 0; q < axis.n; ++q) {
    int64_t count = 0;
    for (const auto& [source, weight] : axis.rows[q]) {
      sources[count] = in + source * width;
      weights[count++] = weight;
    }
    weighted_sum(sources.data(), weights.data(), count, width, out + q * width);
  }
}

// out [height, width] = each row of in blurred along itself (`axis` over width).
void apply_horizontal(const AxisMatrix& axis, const float* in, float* out, int64_t height) {
  const int64_t width = axis.n, length = (int64_t)axis.band.size(), radius = axis.radius;
  const float* band = axis.band.data();
  const int64_t border_end = std::min(radius, width), border_start = std::max(radius, width - radius);
  std::vector<const float*> shifted(length);
  for (int64_t i = 0; i < height; ++i) {
    const float* line = in + i * width;
    float* target = out + i * width;
    const auto border = [&](int64_t c) {
      float acc = 0.0f;
      for (const auto& [source, weight] : axis.rows[c]) acc += weight * line[source];
      target[c] = acc;
    };
    for (int64_t c = 0; c < border_end; ++c) border(c);
    for (int64_t c = border_start; c < width; ++c) border(c);
    // The interior: output radius + c takes tap j from shifted[j][c].
    for (int64_t j = 0; j < length; ++j) shifted[j] = line + j;
    weighted_sum(shifted.data(), band, length, width - 2 * radius, target + radius);
  }
}

struct Blur {
  int64_t height, width;
  AxisMatrix rows, columns;  // along the height and along the width
};

// Allocates an output like `input` and runs body(blur, input map, output map, scratch map) over its maps.
template <typename Body>
at::Tensor over_maps(const at::Tensor& input, at::Tensor taps, int64_t mode, bool transpose, Body body) {
  check(input, taps);
  taps = taps.contiguous();
  const int64_t height = input.size(1), width = input.size(2), length = taps.numel();
  const float* t = taps.data_ptr<float>();
  const Blur blur{height, width, AxisMatrix(height, t, length, mode, transpose),
                  AxisMatrix(width, t, length, mode, transpose)};
  auto out = at::empty_like(input);
  const float* in = input.data_ptr<float>();
  float* result = out.data_ptr<float>();
  const int64_t size = height * width;
  const int64_t grain = std::max<int64_t>(1, kMinElementsPerThread / std::max<int64_t>(size, 1));
  at::parallel_for(0, input.size(0), grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(size);
    for (int64_t m = begin; m < end; ++m) body(blur, in + m * size, result + m * size, scratch.data());
  });
  return out;
}

at::Tensor blur_forward(at::Tensor maps, at::Tensor taps, int64_t mode) {
  return over_maps(maps, taps, mode, false, [](const Blur& b, const float* x, float* y, float* scratch) {
    apply_horizontal(b.columns, x, scratch, b.height);
    apply_vertical(b.rows, scratch, y, b.width);
  });
}

at::Tensor blur_backward(at::Tensor grad, at::Tensor taps, int64_t mode) {
  return over_maps(grad, taps, mode, true, [](const Blur& b, const float* g, float* gx, float* scratch) {
    apply_vertical(b.rows, g, scratch, b.width);
    apply_horizontal(b.columns, scratch, gx, b.height);
  });
}

// Elements below which one thread does the whole element-wise pass.
constexpr int64_t kMinElementwisePerThread = 1 << 16;

void check_maps(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), name,
              " must be a contiguous float32 CPU tensor");
}

template <typename Body>
void elementwise(int64_t count, Body body) {
  at::parallel_for(0, count, kMinElementwisePerThread, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) body(e);
  });
}

// x, y [M...] -> the moments [5, M...]: x, y, x*x, y*y, x*y.
at::Tensor ssim_moments(at::Tensor x, at::Tensor y) {
  check_maps(x, "x");
  check_maps(y, "y");
  TORCH_CHECK(x.sizes() == y.sizes(), "x and y must have one shape");
  std::vector<int64_t> shape{5};
  for (auto size : x.sizes()) shape.push_back(size);
  auto out = at::empty(shape, x.options());
  const int64_t m = x.numel();
  const float* px = x.data_ptr<float>();
  const float* py = y.data_ptr<float>();
  float* o = out.data_ptr<float>();
  elementwise(m, [&](int64_t e) {
    const float a = px[e], b = py[e];
    o[e] = a;
    o[m + e] = b;
    o[2 * m + e] = a * a;
    o[3 * m + e] = b * b;
    o[4 * m + e] = a * b;
  });
  return out;
}

// The SSIM terms of one element from its blurred moments.
struct SsimTerms {
  float mx, my, a1, a2, b1, b2;
};

inline SsimTerms ssim_terms(const float* blurred, int64_t m, int64_t e, float c1, float c2) {
  const float mx = blurred[e], my = blurred[m + e];
  const float mxy = mx * my, mxx = mx * mx, myy = my * my;
  return {mx, my, 2.0f * mxy + c1, 2.0f * (blurred[4 * m + e] - mxy) + c2, mxx + myy + c1,
          (blurred[2 * m + e] - mxx) + (blurred[3 * m + e] - myy) + c2};
}

// blurred moments [5, M...] -> SSIM [M...] = (2 mx my + c1)(2 cov + c2) / ((mx^2 + my^2 + c1)(var_x + var_y + c2)).
at::Tensor ssim_map_forward(at::Tensor blurred, double c1, double c2) {
  check_maps(blurred, "blurred");
  TORCH_CHECK(blurred.dim() >= 2 && blurred.size(0) == 5, "blurred must hold 5 moments [5, ...]");
  auto out = at::empty(blurred.sizes().slice(1), blurred.options());
  const int64_t m = out.numel();
  const float* b = blurred.data_ptr<float>();
  float* o = out.data_ptr<float>();
  elementwise(m, [&](int64_t e) {
    const SsimTerms t = ssim_terms(b, m, e, float(c1), float(c2));
    o[e] = (t.a1 * t.a2) / (t.b1 * t.b2);
  });
  return out;
}

// d loss / d SSIM [M...] -> d loss / d blurred moments: [5, M...] in the order of ssim_moments, or with x_only
// [3, M...] of the moments x itself enters (x, x*x, x*y), when y needs no gradient: 3 maps to blur back, not 5.
at::Tensor ssim_map_backward(at::Tensor grad, at::Tensor blurred, double c1, double c2, bool x_only) {
  check_maps(grad, "grad");
  check_maps(blurred, "blurred");
  const int64_t m = grad.numel();
  TORCH_CHECK(blurred.numel() == 5 * m, "blurred must hold 5 moments of grad's shape");
  std::vector<int64_t> shape = blurred.sizes().vec();
  shape[0] = x_only ? 3 : 5;
  auto out = at::empty(shape, blurred.options());
  const float* g = grad.data_ptr<float>();
  const float* b = blurred.data_ptr<float>();
  float* o = out.data_ptr<float>();
  elementwise(m, [&](int64_t e) {
    const SsimTerms t = ssim_terms(b, m, e, float(c1), float(c2));
    const float denominator = t.b1 * t.b2;
    const float s = (t.a1 * t.a2) / denominator;
    const float d_a1 = g[e] * t.a2 / denominator, d_a2 = g[e] * t.a1 / denominator;
    const float d_b1 = -g[e] * s / t.b1, d_b2 = -g[e] * s / t.b2;
    o[e] = 2.0f * (t.my * (d_a1 - d_a2) + t.mx * (d_b1 - d_b2));
    if (x_only) {
      o[m + e] = d_b2;
      o[2 * m + e] = 2.0f * d_a2;
      return;
    }
    o[m + e] = 2.0f * (t.mx * (d_a1 - d_a2) + t.my * (d_b1 - d_b2));
    o[2 * m + e] = d_b2;
    o[3 * m + e] = d_b2;
    o[4 * m + e] = 2.0f * d_a2;
  });
  return out;
}

// d loss / d moments [5, M...] -> d loss / d x and / d y [M...] (an undefined tensor for one not asked for).
std::vector<at::Tensor> ssim_moments_backward(at::Tensor grad, at::Tensor x, at::Tensor y, bool need_x,
                                                 bool need_y) {
  check_maps(grad, "grad");
  check_maps(x, "x");
  check_maps(y, "y");
  const int64_t m = x.numel();
  TORCH_CHECK(grad.numel() == 5 * m && y.numel() == m, "grad must hold 5 moments of x's shape");
  at::Tensor dx = need_x ? at::empty_like(x) : at::Tensor();
  at::Tensor dy = need_y ? at::empty_like(y) : at::Tensor();
  const float* g = grad.data_ptr<float>();
  const float* px = x.data_ptr<float>();
  const float* py = y.data_ptr<float>();
  float* ox = need_x ? dx.data_ptr<float>() : nullptr;
  float* oy = need_y ? dy.data_ptr<float>() : nullptr;
  elementwise(m, [&](int64_t e) {
    if (ox) ox[e] = g[e] + 2.0f * px[e] * g[2 * m + e] + py[e] * g[4 * m + e];
    if (oy) oy[e] = g[m + e] + 2.0f * py[e] * g[3 * m + e] + px[e] * g[4 * m + e];
  });
  return {dx, dy};
}

// The x-only layout of ssim_map_backward ([3, M...]: x, x*x, x*y) -> d loss / d x [M...].
at::Tensor ssim_moments_backward_x(at::Tensor grad, at::Tensor x, at::Tensor y) {
  check_maps(grad, "grad");
  check_maps(x, "x");
  check_maps(y, "y");
  const int64_t m = x.numel();
  TORCH_CHECK(grad.numel() == 3 * m && y.numel() == m, "grad must hold 3 moments of x's shape");
  auto dx = at::empty_like(x);
  const float* g = grad.data_ptr<float>();
  const float* px = x.data_ptr<float>();
  const float* py = y.data_ptr<float>();
  float* ox = dx.data_ptr<float>();
  elementwise(m, [&](int64_t e) { ox[e] = g[e] + 2.0f * px[e] * g[m + e] + py[e] * g[2 * m + e]; });
  return dx;
}

}  // namespace

// Kernels release the GIL: they touch no Python objects, and Python threads may run them side by side
// (recon4d.eval.reconstruction.refine_cameras searches several frames' cameras at once).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("blur_forward", &blur_forward, py::call_guard<py::gil_scoped_release>(), "separable blur of [N, H, W] maps (mode 0 replicate, 1 symmetric)");
  m.def("blur_backward", &blur_backward, py::call_guard<py::gil_scoped_release>(), "transpose of blur_forward (its backward pass)");
  m.def("ssim_moments", &ssim_moments, py::call_guard<py::gil_scoped_release>(), "x, y -> [5, ...] local moments");
  m.def("ssim_map_forward", &ssim_map_forward, py::call_guard<py::gil_scoped_release>(), "blurred moments -> SSIM map");
  m.def("ssim_map_backward", &ssim_map_backward, py::call_guard<py::gil_scoped_release>(), "SSIM map gradient -> moments' gradient");
  m.def("ssim_moments_backward", &ssim_moments_backward, py::call_guard<py::gil_scoped_release>(), "moments' gradient -> x, y gradients");
  m.def("ssim_moments_backward_x", &ssim_moments_backward_x, py::call_guard<py::gil_scoped_release>(), "x-only moments' gradient -> x gradient");
}
