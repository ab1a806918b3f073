// Separable blur of [N, H, W] float32 maps with an odd 1-D kernel (SSIM's Gaussian window), forward and its
// transpose (the backward pass), on the CPU. recon4d.image holds the contract; this replaces a padded,
// grouped convolution pair whose backward dominated the SSIM loss (320x180: 15 ms of a loss step).
//
// Borders: mode 0 repeats the edge pixel (replicate), mode 1 mirrors it (d c b a | a b c d, symmetric).
// The forward pass is y = V(H(x)) with H, V the horizontal and vertical 1-D passes over the padded map; the
// backward pass is its exact transpose H^T(V^T(g)): gradients that fall on padding are folded back onto the
// pixel the padding copied.
//
// Threads: maps are independent; each is written by one thread, so results do not depend on the thread count.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
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

void check(const torch::Tensor& maps, const torch::Tensor& taps) {
  TORCH_CHECK(maps.dim() == 3 && maps.device().is_cpu() && maps.scalar_type() == torch::kFloat32 && maps.is_contiguous(),
              "maps must be a contiguous float32 CPU tensor [N, H, W]");
  TORCH_CHECK(taps.dim() == 1 && taps.numel() % 2 == 1 && taps.scalar_type() == torch::kFloat32 && taps.device().is_cpu(),
              "taps must be an odd-length float32 CPU vector");
}

struct Blur {
  int64_t height, width, length, radius, mode;
  const float* taps;
};

// Allocates a zeroed output like `input` and runs body(blur, input map, output map) over its maps.
template <typename Body>
torch::Tensor over_maps(const torch::Tensor& input, torch::Tensor taps, int64_t mode, Body body) {
  check(input, taps);
  taps = taps.contiguous();
  const Blur blur{input.size(1), input.size(2), taps.numel(), taps.numel() / 2, mode, taps.data_ptr<float>()};
  auto out = torch::zeros_like(input);
  const float* in = input.data_ptr<float>();
  float* result = out.data_ptr<float>();
  const int64_t size = blur.height * blur.width;
  const int64_t grain = std::max<int64_t>(1, kMinElementsPerThread / std::max<int64_t>(size, 1));
  at::parallel_for(0, input.size(0), grain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) body(blur, in + m * size, result + m * size);
  });
  return out;
}

torch::Tensor blur_forward(torch::Tensor maps, torch::Tensor taps, int64_t mode) {
  return over_maps(maps, taps, mode, [](const Blur& b, const float* x, float* y) {
    std::vector<float> row(b.width + 2 * b.radius);
    std::vector<float> horizontal(b.height * b.width, 0.0f);  // H(x), unpadded rows
    for (int64_t i = 0; i < b.height; ++i) {
      const float* source = x + i * b.width;
      for (int64_t p = 0; p < b.width + 2 * b.radius; ++p) row[p] = source[source_index(p - b.radius, b.width, b.mode)];
      float* h = horizontal.data() + i * b.width;
      for (int64_t j = 0; j < b.length; ++j) {
        const float tap = b.taps[j];
        const float* shifted = row.data() + j;
        for (int64_t c = 0; c < b.width; ++c) h[c] += tap * shifted[c];
      }
    }
    for (int64_t i = 0; i < b.height; ++i) {
      float* target = y + i * b.width;
      for (int64_t j = 0; j < b.length; ++j) {
        const float tap = b.taps[j];
        const float* source = horizontal.data() + source_index(i + j - b.radius, b.height, b.mode) * b.width;
        for (int64_t c = 0; c < b.width; ++c) target[c] += tap * source[c];
      }
    }
  });
}

torch::Tensor blur_backward(torch::Tensor grad, torch::Tensor taps, int64_t mode) {
  return over_maps(grad, taps, mode, [](const Blur& b, const float* g, float* gx) {
    std::vector<float> horizontal(b.height * b.width, 0.0f);  // V^T(g)
    for (int64_t i = 0; i < b.height; ++i) {
      const float* source = g + i * b.width;
      for (int64_t j = 0; j < b.length; ++j) {
        const float tap = b.taps[j];
        float* target = horizontal.data() + source_index(i + j - b.radius, b.height, b.mode) * b.width;
        for (int64_t c = 0; c < b.width; ++c) target[c] += tap * source[c];
      }
    }
    std::vector<float> row(b.width + 2 * b.radius);
    for (int64_t i = 0; i < b.height; ++i) {
      const float* h = horizontal.data() + i * b.width;
      std::fill(row.begin(), row.end(), 0.0f);
      for (int64_t j = 0; j < b.length; ++j) {
        const float tap = b.taps[j];
        float* shifted = row.data() + j;
        for (int64_t c = 0; c < b.width; ++c) shifted[c] += tap * h[c];
      }
      float* target = gx + i * b.width;
      for (int64_t p = 0; p < b.width + 2 * b.radius; ++p) target[source_index(p - b.radius, b.width, b.mode)] += row[p];
    }
  });
}

}  // namespace

// Kernels release the GIL: they touch no Python objects, and Python threads may run them side by side
// (recon4d.eval.reconstruction.refine_cameras searches several frames' cameras at once).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("blur_forward", &blur_forward, py::call_guard<py::gil_scoped_release>(), "separable blur of [N, H, W] maps (mode 0 replicate, 1 symmetric)");
  m.def("blur_backward", &blur_backward, py::call_guard<py::gil_scoped_release>(), "transpose of blur_forward (its backward pass)");
}
