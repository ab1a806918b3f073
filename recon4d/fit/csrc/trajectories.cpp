// The refinement's trajectory kernels on the CPU, each a forward and backward in one pass (the Python modules
// hold the contracts and the same computations as tensor ops, the path on other devices):
//
// - `frame_state_forward` / `_backward` (recon4d.fit.model.SceneModel.frame_state): the model's Gaussians at a
//   frame. For each alive row r = rows[a] and time t (clip frames), with tau = (t - first[r]) / span[r] and the
//   basis phi(tau) = [1, tau, .., tau^P, sin(2 pi tau), cos(2 pi tau), .., sin(2 pi F tau), cos(2 pi F tau)]:
//     still row (index[r] = i >= 0): mean_t = still_means[i] + sum_{b >= 1} still_motion[i, b - 1] phi_b(tau_t)
//       (the sum only with `with_still_motion`), quat = quats[r], colour = sigmoid(color_logits[r]);
//     dynamic row (index[r] = -(j + 1)): mean_t = sum_b position[j, b] phi_b(tau_t), quat = sum_b rotation[j, b]
//       phi_b(tau_0), colour = clamp(sigmoid(color_logits[r]) + sum_b color_offsets[j, b] phi_b(tau_0), 0, 1);
//     every row: quat / max(|quat|, eps), scale = exp(log_scales[r]), opacity = sigmoid(opacity_logits[r]).
//   The tensor-op path takes about 25 small ops forward and as many backward for this (gathers, batched
//   products, concatenations, each with full-size temporaries); here each row is read and written once.
// - `rigidity` (recon4d.fit.rigidity.rigidity_loss): for each time t, row i and neighbour j = neighbours[i, n]
//   (j < 0: no neighbour), loss += weight[t, i] * | |a_i - a_j| - |b_i - b_j| |, a = positions[t, 0],
//   b = positions[t, 1]. Advanced indexing in torch gathers the [M, 3] pair ends and scatters their gradients
//   back with a sorting accumulate; here each pair is read once and its gradient added in place (8.6 ms -> under
//   1 ms per call for 21.8k rows x 8 neighbours x 2 times, measured on 2 cores).
//
// Threads: the frame state splits rows between threads, each row writing only its own outputs and gradients;
// the rigidity sums, whose pairs write two rows, run one thread per time (disjoint gradient slices). No result
// depends on the thread count.
// Not <torch/extension.h>: these headers build in a third of its time (`recon4d.cpp.build_in_background`).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/utils/pybind.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int kMaxBasis = 64;
constexpr int64_t kGrain = 256;

struct Inputs {
  const int64_t* rows;
  const float* times;
  int64_t num_times;
  const int64_t* index;
  const float* first;
  const float* span;
  const float* still_means;
  const float* still_motion;  // null without residual motion
  const float* position;
  const float* rotation;
  const float* color_offsets;
  const float* quats;
  const float* log_scales;
  const float* opacity_logits;
  const float* color_logits;
  int degree, terms, basis;
};

// phi(tau) [basis] as recon4d.geometry.trajectory.time_basis computes it (float32, the angle's factor rounded
// to float first, as a tensor times a Python scalar is).
inline void time_basis(float tau, int degree, int terms, float* out) {
  int b = 0;
  out[b++] = 1.0f;
  float power = 1.0f;
  for (int k = 1; k <= degree; ++k) {
    power *= tau;
    out[b++] = power;
  }
  for (int f = 1; f <= terms; ++f) {
    const float angle = static_cast<float>(2.0 * M_PI * f) * tau;
    out[b++] = std::sin(angle);
    out[b++] = std::cos(angle);
  }
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

void check(const at::Tensor& t, at::ScalarType type, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == type && t.is_contiguous(), name,
              " must be a contiguous CPU tensor of the expected dtype");
}

Inputs gather_inputs(const at::Tensor& rows, const at::Tensor& times, const at::Tensor& index, const at::Tensor& first,
                     const at::Tensor& span, const at::Tensor& still_means, const at::Tensor& still_motion,
                     const at::Tensor& position, const at::Tensor& rotation, const at::Tensor& color_offsets,
                     const at::Tensor& quats, const at::Tensor& log_scales, const at::Tensor& opacity_logits,
                     const at::Tensor& color_logits, int64_t degree, int64_t terms, bool with_still_motion) {
  check(rows, at::kLong, "rows");
  check(index, at::kLong, "index");
  for (auto* pair : {&times, &first, &span, &still_means, &position, &rotation, &color_offsets, &quats, &log_scales,
                     &opacity_logits, &color_logits}) {
    check(*pair, at::kFloat, "every float input");
  }
  const int64_t basis = 1 + degree + 2 * terms;
  TORCH_CHECK(basis <= kMaxBasis, "at most ", kMaxBasis, " basis functions");
  TORCH_CHECK(times.numel() >= 1 && times.numel() <= 4, "1 to 4 times");  // `WindowBasis` holds 4
  TORCH_CHECK(position.dim() == 3 && position.size(1) == basis && position.size(2) == 3, "position must be [Nd, B, 3]");
  TORCH_CHECK(rotation.dim() == 3 && rotation.size(1) == basis && rotation.size(2) == 4, "rotation must be [Nd, B, 4]");
  TORCH_CHECK(color_offsets.dim() == 3 && color_offsets.size(1) == basis && color_offsets.size(2) == 3,
              "color_offsets must be [Nd, B, 3]");
  if (with_still_motion) {
    check(still_motion, at::kFloat, "still_motion");
    TORCH_CHECK(still_motion.dim() == 3 && still_motion.size(0) == still_means.size(0) &&
                still_motion.size(1) == basis - 1 && still_motion.size(2) == 3, "still_motion must be [Ns, B - 1, 3]");
  }
  return Inputs{rows.data_ptr<int64_t>(), times.data_ptr<float>(), times.numel(), index.data_ptr<int64_t>(),
                first.data_ptr<float>(), span.data_ptr<float>(), still_means.data_ptr<float>(),
                with_still_motion ? still_motion.data_ptr<float>() : nullptr, position.data_ptr<float>(),
                rotation.data_ptr<float>(), color_offsets.data_ptr<float>(), quats.data_ptr<float>(),
                log_scales.data_ptr<float>(), opacity_logits.data_ptr<float>(), color_logits.data_ptr<float>(),
                static_cast<int>(degree), static_cast<int>(terms), static_cast<int>(basis)};
}

// The basis at the times of the rows of one window, computed again only when the window changes: rows of one
// window share it, and a thread sweeps rows in index order, where windows come in runs (sin and cos per row
// would cost more than the rest of a row's work).
struct WindowBasis {
  bool filled = false;  // a flag, not NaN: -ffast-math compiles NaN comparisons away
  float first = 0.0f, span = 0.0f;
  float phi[4 * kMaxBasis];

  // phi at every time for row r: [T][basis].
  const float* at(const Inputs& in, int64_t r) {
    if (!filled || in.first[r] != first || in.span[r] != span) {
      filled = true;
      first = in.first[r];
      span = in.span[r];
      for (int64_t t = 0; t < in.num_times; ++t) {
        time_basis((in.times[t] - first) / span, in.degree, in.terms, phi + t * in.basis);
      }
    }
    return phi;
  }
};

// Row r's quaternion (not yet normalised) and colour before the clamp, at the first time (phi: the row's basis
// there): its own for a still row (idx >= 0), from its trajectories for a dynamic one; sig: sigmoid of its
// colour logits.
inline void raw_quat_color(const Inputs& in, int64_t r, int64_t idx, const float* phi, float* quat, float* color,
                           float* sig) {
  for (int k = 0; k < 3; ++k) sig[k] = color[k] = sigmoid(in.color_logits[r * 3 + k]);
  if (idx >= 0) {
    for (int k = 0; k < 4; ++k) quat[k] = in.quats[r * 4 + k];
    return;
  }
  const int64_t j = -idx - 1, B = in.basis;
  const float* rot = in.rotation + j * B * 4;
  const float* off = in.color_offsets + j * B * 3;
  for (int k = 0; k < 4; ++k) {
    quat[k] = 0.0f;
    for (int b = 0; b < B; ++b) quat[k] += rot[b * 4 + k] * phi[b];
  }
  for (int k = 0; k < 3; ++k) {
    float offset = 0.0f;
    for (int b = 0; b < B; ++b) offset += off[b * 3 + k] * phi[b];
    color[k] += offset;
  }
}

// visit(a, r, idx, phi, quat, color, sig) for every alive row a (scene row r = rows[a], idx = index[r]), with
// its basis phi [T][basis] and `raw_quat_color`'s quaternion, colour and sigmoid, rows split between threads.
template <typename Visit>
void for_each_alive_row(const Inputs& in, int64_t count, Visit visit) {
  at::parallel_for(0, count, kGrain, [&](int64_t begin, int64_t end) {
    WindowBasis memo;
    for (int64_t a = begin; a < end; ++a) {
      const int64_t r = in.rows[a], idx = in.index[r];
      const float* phi = memo.at(in, r);
      float quat[4], color[3], sig[3];
      raw_quat_color(in, r, idx, phi, quat, color, sig);
      visit(a, r, idx, phi, quat, color, sig);
    }
  });
}

// Returns means [T, A, 3], quats [A, 4] (unit), scales [A, 3], opacities [A], colors [A, 3].
std::vector<at::Tensor> frame_state_forward(at::Tensor rows, at::Tensor times, at::Tensor index, at::Tensor first,
                                            at::Tensor span, at::Tensor still_means, at::Tensor still_motion,
                                            at::Tensor position, at::Tensor rotation, at::Tensor color_offsets,
                                            at::Tensor quats, at::Tensor log_scales, at::Tensor opacity_logits,
                                            at::Tensor color_logits, int64_t degree, int64_t terms,
                                            bool with_still_motion, double eps) {
  const Inputs in = gather_inputs(rows, times, index, first, span, still_means, still_motion, position, rotation,
                                  color_offsets, quats, log_scales, opacity_logits, color_logits, degree, terms,
                                  with_still_motion);
  const int64_t count = rows.numel(), num_times = in.num_times, B = in.basis;
  auto options = quats.options();
  auto means_out = at::empty({num_times, count, 3}, options);
  auto quats_out = at::empty({count, 4}, options);
  auto scales_out = at::empty({count, 3}, options);
  auto opacities_out = at::empty({count}, options);
  auto colors_out = at::empty({count, 3}, options);
  float* m = means_out.data_ptr<float>();
  float* q = quats_out.data_ptr<float>();
  float* s = scales_out.data_ptr<float>();
  float* o = opacities_out.data_ptr<float>();
  float* c = colors_out.data_ptr<float>();
  const float epsilon = static_cast<float>(eps);
  for_each_alive_row(in, count, [&](int64_t a, int64_t r, int64_t idx, const float* phi, float* quat, float* color,
                                    const float*) {
    if (idx >= 0) {
      for (int64_t t = 0; t < num_times; ++t) {
        for (int k = 0; k < 3; ++k) {
          float value = in.still_means[idx * 3 + k];
          if (in.still_motion != nullptr) {
            const float* coeff = in.still_motion + idx * (B - 1) * 3;
            for (int b = 1; b < B; ++b) value += coeff[(b - 1) * 3 + k] * phi[t * B + b];
          }
          m[(t * count + a) * 3 + k] = value;
        }
      }
    } else {
      const int64_t j = -idx - 1;
      const float* pos = in.position + j * B * 3;
      for (int64_t t = 0; t < num_times; ++t) {
        for (int k = 0; k < 3; ++k) {
          float value = 0.0f;
          for (int b = 0; b < B; ++b) value += pos[b * 3 + k] * phi[t * B + b];
          m[(t * count + a) * 3 + k] = value;
        }
      }
      for (int k = 0; k < 3; ++k) color[k] = std::min(std::max(color[k], 0.0f), 1.0f);
    }
    const float length = std::sqrt(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3]);
    const float norm = std::max(length, epsilon);
    for (int k = 0; k < 4; ++k) q[a * 4 + k] = quat[k] / norm;
    for (int k = 0; k < 3; ++k) {
      s[a * 3 + k] = std::exp(in.log_scales[r * 3 + k]);
      c[a * 3 + k] = color[k];
    }
    o[a] = sigmoid(in.opacity_logits[r]);
  });
  return {means_out, quats_out, scales_out, opacities_out, colors_out};
}

// Gradients of the parameters (zero outside the alive rows) from those of the outputs; returns
// (still_means, still_motion (undefined without residual motion), position, rotation, color_offsets, quats,
// log_scales, opacity_logits, color_logits).
std::vector<at::Tensor> frame_state_backward(at::Tensor rows, at::Tensor times, at::Tensor index, at::Tensor first,
                                             at::Tensor span, at::Tensor still_means, at::Tensor still_motion,
                                             at::Tensor position, at::Tensor rotation, at::Tensor color_offsets,
                                             at::Tensor quats, at::Tensor log_scales, at::Tensor opacity_logits,
                                             at::Tensor color_logits, int64_t degree, int64_t terms,
                                             bool with_still_motion, double eps, at::Tensor grad_means,
                                             at::Tensor grad_quats, at::Tensor grad_scales, at::Tensor grad_opacities,
                                             at::Tensor grad_colors) {
  const Inputs in = gather_inputs(rows, times, index, first, span, still_means, still_motion, position, rotation,
                                  color_offsets, quats, log_scales, opacity_logits, color_logits, degree, terms,
                                  with_still_motion);
  const int64_t count = rows.numel(), num_times = in.num_times, B = in.basis;
  for (auto* grad : {&grad_means, &grad_quats, &grad_scales, &grad_opacities, &grad_colors}) {
    check(*grad, at::kFloat, "every output gradient");
  }
  auto d_still_means = at::zeros_like(still_means);
  auto d_still_motion = with_still_motion ? at::zeros_like(still_motion) : at::Tensor();
  auto d_position = at::zeros_like(position);
  auto d_rotation = at::zeros_like(rotation);
  auto d_color_offsets = at::zeros_like(color_offsets);
  auto d_quats = at::zeros_like(quats);
  auto d_log_scales = at::zeros_like(log_scales);
  auto d_opacity_logits = at::zeros_like(opacity_logits);
  auto d_color_logits = at::zeros_like(color_logits);
  const float* gm = grad_means.data_ptr<float>();
  const float* gq = grad_quats.data_ptr<float>();
  const float* gs = grad_scales.data_ptr<float>();
  const float* go = grad_opacities.data_ptr<float>();
  const float* gc = grad_colors.data_ptr<float>();
  float* dsm = d_still_means.data_ptr<float>();
  float* dsmo = with_still_motion ? d_still_motion.data_ptr<float>() : nullptr;
  float* dpos = d_position.data_ptr<float>();
  float* drot = d_rotation.data_ptr<float>();
  float* doff = d_color_offsets.data_ptr<float>();
  float* dq = d_quats.data_ptr<float>();
  float* dls = d_log_scales.data_ptr<float>();
  float* dol = d_opacity_logits.data_ptr<float>();
  float* dcl = d_color_logits.data_ptr<float>();
  const float epsilon = static_cast<float>(eps);
  // quat, color (before its clamp) and sig as the forward made them.
  for_each_alive_row(in, count, [&](int64_t a, int64_t r, int64_t idx, const float* phi, const float* quat,
                                    const float* color, const float* sig) {
    const int64_t j = -idx - 1;
    // Means.
    if (idx >= 0) {
      for (int64_t t = 0; t < num_times; ++t) {
        for (int k = 0; k < 3; ++k) {
          const float g = gm[(t * count + a) * 3 + k];
          dsm[idx * 3 + k] += g;
          if (dsmo != nullptr) {
            float* coeff = dsmo + idx * (B - 1) * 3;
            for (int b = 1; b < B; ++b) coeff[(b - 1) * 3 + k] += g * phi[t * B + b];
          }
        }
      }
    } else {
      float* pos = dpos + j * B * 3;
      for (int64_t t = 0; t < num_times; ++t) {
        for (int k = 0; k < 3; ++k) {
          const float g = gm[(t * count + a) * 3 + k];
          for (int b = 0; b < B; ++b) pos[b * 3 + k] += g * phi[t * B + b];
        }
      }
    }
    // Unit quaternion q / max(|q|, eps): (g - u (u . g)) / |q| above eps, g / eps below (as torch's clamp_min).
    const float length = std::sqrt(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3]);
    float d_quat[4];
    if (length >= epsilon) {
      float dot = 0.0f;
      for (int k = 0; k < 4; ++k) dot += gq[a * 4 + k] * quat[k];
      const float inv = 1.0f / length;
      for (int k = 0; k < 4; ++k) d_quat[k] = gq[a * 4 + k] * inv - quat[k] * dot * inv * inv * inv;
    } else {
      for (int k = 0; k < 4; ++k) d_quat[k] = gq[a * 4 + k] / epsilon;
    }
    if (idx >= 0) {
      for (int k = 0; k < 4; ++k) dq[r * 4 + k] = d_quat[k];
    } else {
      float* rot = drot + j * B * 4;
      for (int b = 0; b < B; ++b) {
        for (int k = 0; k < 4; ++k) rot[b * 4 + k] = d_quat[k] * phi[b];
      }
    }
    // Colours (the clamp passes a gradient on [0, 1], ends included, as torch's), scales, opacities.
    float d_color[3];
    for (int k = 0; k < 3; ++k) {
      d_color[k] = gc[a * 3 + k];
      if (idx < 0 && !(color[k] >= 0.0f && color[k] <= 1.0f)) d_color[k] = 0.0f;
      dcl[r * 3 + k] = d_color[k] * sig[k] * (1.0f - sig[k]);
      dls[r * 3 + k] = gs[a * 3 + k] * std::exp(in.log_scales[r * 3 + k]);
    }
    if (idx < 0) {
      float* off = doff + j * B * 3;
      for (int b = 0; b < B; ++b) {
        for (int k = 0; k < 3; ++k) off[b * 3 + k] = d_color[k] * phi[b];
      }
    }
    const float opacity = sigmoid(in.opacity_logits[r]);
    dol[r] = go[a] * opacity * (1.0f - opacity);
  });
  return {d_still_means, d_still_motion, d_position, d_rotation, d_color_offsets, d_quats, d_log_scales,
          d_opacity_logits, d_color_logits};
}

// Rigidity of one time: points a, b [N, 3] at its two instants, weights w [N], neighbours nb [N, k]; adds the
// gradient to ga, gb [N, 3] and returns the weighted sum (double).
double rigidity_at(const float* a, const float* b, const float* w, const int64_t* nb, int64_t rows, int64_t k,
                   float* ga, float* gb) {
  double total = 0.0;
  for (int64_t i = 0; i < rows; ++i) {
    const float wi = w[i];
    if (wi == 0.0f) continue;
    for (int64_t n = 0; n < k; ++n) {
      const int64_t j = nb[i * k + n];
      if (j < 0) continue;
      float da[3], db[3];
      for (int c = 0; c < 3; ++c) {
        da[c] = a[i * 3 + c] - a[j * 3 + c];
        db[c] = b[i * 3 + c] - b[j * 3 + c];
      }
      const float la = std::sqrt(da[0] * da[0] + da[1] * da[1] + da[2] * da[2]);
      const float lb = std::sqrt(db[0] * db[0] + db[1] * db[1] + db[2] * db[2]);
      const float change = la - lb;
      total += static_cast<double>(wi) * std::fabs(change);
      // d|x|/dx = sign(x) (0 at 0, as torch's abs); d|v|/dv = v / |v| (0 at |v| = 0, as torch's norm).
      const float s = change > 0.0f ? wi : (change < 0.0f ? -wi : 0.0f);
      if (s == 0.0f) continue;
      const float fa = la > 0.0f ? s / la : 0.0f, fb = lb > 0.0f ? s / lb : 0.0f;
      for (int c = 0; c < 3; ++c) {
        ga[i * 3 + c] += fa * da[c];
        ga[j * 3 + c] -= fa * da[c];
        gb[i * 3 + c] -= fb * db[c];
        gb[j * 3 + c] += fb * db[c];
      }
    }
  }
  return total;
}

// Returns (loss [T], gradient like positions).
std::vector<at::Tensor> rigidity(at::Tensor positions, at::Tensor neighbours, at::Tensor weight) {
  TORCH_CHECK(positions.device().is_cpu() && positions.scalar_type() == at::kFloat && positions.is_contiguous()
              && positions.dim() == 4 && positions.size(1) == 2 && positions.size(3) == 3,
              "positions must be a contiguous float32 CPU tensor [T, 2, N, 3]");
  const int64_t times = positions.size(0), rows = positions.size(2);
  TORCH_CHECK(neighbours.device().is_cpu() && neighbours.scalar_type() == at::kLong && neighbours.is_contiguous()
              && neighbours.dim() == 2 && neighbours.size(0) == rows, "neighbours must be a contiguous int64 [N, k]");
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat && weight.is_contiguous()
              && weight.dim() == 2 && weight.size(0) == times && weight.size(1) == rows,
              "weight must be a contiguous float32 [T, N]");
  const int64_t k = neighbours.size(1);
  auto loss = at::zeros({times}, positions.options().dtype(at::kDouble));
  auto grad = at::zeros_like(positions);
  const float* p = positions.data_ptr<float>();
  const int64_t* nb = neighbours.data_ptr<int64_t>();
  const float* w = weight.data_ptr<float>();
  float* g = grad.data_ptr<float>();
  double* l = loss.data_ptr<double>();
  at::parallel_for(0, times, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* a = p + t * 2 * rows * 3;
      float* ga = g + t * 2 * rows * 3;
      l[t] = rigidity_at(a, a + rows * 3, w + t * rows, nb, rows, k, ga, ga + rows * 3);
    }
  });
  return {loss.to(at::kFloat), grad};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("frame_state_forward", &frame_state_forward, py::call_guard<py::gil_scoped_release>(),
        "Gaussians of alive rows at clip times (CPU)");
  m.def("frame_state_backward", &frame_state_backward, py::call_guard<py::gil_scoped_release>(),
        "their parameters' gradients (CPU)");
  m.def("rigidity", &rigidity, py::call_guard<py::gil_scoped_release>(),
        "KNN rigidity loss [T] and its gradient with respect to positions [T, 2, N, 3]");
}
