// Selective Adam on the CPU: one fused pass over a parameter, its gradient and both moments, updating only the
// rows (first index) whose gradient is not exactly zero (recon4d.fit.optim.SelectiveAdam holds the contract).
//
// The update of a seen row is torch.optim.Adam's (no weight decay, no AMSGrad):
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
//   p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
// with `step` counted per parameter, as torch does. An unseen row keeps its value and both moments.
//
// Threads: rows are split into fixed blocks; each row is read and written by exactly one thread, so the
// result does not depend on the thread count.
// Not <torch/extension.h>: these headers build in a third of its time (`recon4d.cpp.build_in_background`).
#include <ATen/core/Tensor.h>
#include <torch/csrc/utils/pybind.h>
#include <ATen/Parallel.h>

#include <cmath>

namespace {

// Floats per thread below which another thread costs more than it saves (one float takes ~1 ns here; waking
// a pool thread costs microseconds idle and up to a scheduler slice on a busy machine).
constexpr int64_t kMinFloatsPerThread = 1 << 18;

void check(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), name,
              " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.numel() == like.numel(), name, " must have the parameter's size");
}

// Returns the number of rows that were updated.
int64_t selective_adam_step(at::Tensor param, at::Tensor grad, at::Tensor exp_avg,
                            at::Tensor exp_avg_sq, double lr, double beta1, double beta2, double eps,
                            int64_t step) {
  check(param, param, "param");
  check(grad, param, "grad");
  check(exp_avg, param, "exp_avg");
  check(exp_avg_sq, param, "exp_avg_sq");
  TORCH_CHECK(param.dim() >= 1 && step >= 1, "param must have rows and step must be >= 1");
  const int64_t rows = param.size(0);
  if (rows == 0) return 0;
  const int64_t width = param.numel() / rows;
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2_sqrt = std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step)));
  const float step_size = static_cast<float>(lr / bias_correction1);
  const float inv_bc2_sqrt = static_cast<float>(1.0 / bias_correction2_sqrt);
  const float b1 = static_cast<float>(beta1), b2 = static_cast<float>(beta2);
  const float one_minus_b1 = static_cast<float>(1.0 - beta1), one_minus_b2 = static_cast<float>(1.0 - beta2);
  const float epsilon = static_cast<float>(eps);
  float* p = param.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* m = exp_avg.data_ptr<float>();
  float* v = exp_avg_sq.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, kMinFloatsPerThread / std::max<int64_t>(width, 1));
  std::atomic<int64_t> updated{0};
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    int64_t local = 0;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t base = row * width;
      bool seen = false;
      for (int64_t j = 0; j < width; ++j) seen |= g[base + j] != 0.0f;
      if (!seen) continue;
      ++local;
      for (int64_t j = base; j < base + width; ++j) {
        const float gj = g[j];
        m[j] = b1 * m[j] + one_minus_b1 * gj;
        v[j] = b2 * v[j] + one_minus_b2 * gj * gj;
        p[j] -= step_size * m[j] / (std::sqrt(v[j]) * inv_bc2_sqrt + epsilon);
      }
    }
    updated += local;
  });
  return updated.load();
}

}  // namespace

// Kernels release the GIL: they touch no Python objects, and Python threads may run them side by side
// (recon4d.eval.reconstruction.refine_cameras searches several frames' cameras at once).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("selective_adam_step", &selective_adam_step, py::call_guard<py::gil_scoped_release>(),
        "Adam step of the rows with a non-zero gradient (in place); returns how many rows were updated");
}
