// EWA projection of 3D Gaussians to screen-space conics on the CPU: forward and hand-written backward.
//
// Math follows gsplat's perspective projection (and recon4d.render.reference.project_gaussians_reference,
// which the tests compare against): camera-space mean p_c = R p + t; Jacobian of the pinhole projection
// evaluated with x/z, y/z clamped to the field of view widened by a margin; 2D covariance J R Sigma R^T J^T
// plus eps2d on its diagonal; conic = its inverse; opacity-aware footprint radius; rows with z outside
// (near, far) use z = 1 so they stay finite (they are culled through their radius).
//
// Gradients reach means, (unnormalised) quaternions, scales, the pose (rotation and translation) and the
// intrinsics fx, fy, cx, cy. Like the reference, gradients flow through every row, culled ones included;
// opacities only shape the radii, which are not differentiable.
//
// Threads: Gaussians are processed in fixed blocks of kBlock rows (block b = rows [b kBlock, (b+1) kBlock),
// independent of the thread count), each row written by exactly one thread. The pose and intrinsics
// gradients are summed per block in double, then the block sums are added in block order, so every
// output is bit-identical for any thread count.
//
// Vectorisation: each pass is one loop over a block's Gaussians that gcc vectorises across Gaussians (AVX-512:
// 16 at a time; 24,000 Gaussians on one core: forward 1.51 -> 0.20 ms, backward together with a test loss's own
// backward 2.55 -> 0.85 ms). That takes
// straight-line code: small loops fully unrolled (`#pragma GCC unroll`), selects instead of branches and no
// nested selects, a Gaussian's pose terms stored and summed after the loop (in the same row order as before).
// Not <torch/extension.h>: these headers build in a third of its time (`recon4d.cpp.build_in_background`).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kBlock = 256;
// Gaussians per thread below which another thread costs more than it saves: with the loops over Gaussians
// vectorised, one Gaussian takes ~8 ns forward and under 35 ns backward on one core (see above), so this is
// ~0.5 ms of work per thread for both passes, what the rasterizer's sweeps split from (`kMinEntriesPerThread`),
// while waking a pool thread costs microseconds on an idle machine and up to a scheduler time slice (~10 ms
// measured) on a busy one.
constexpr int64_t kMinGaussiansPerThread = 16384;
// Pose (R row-major 9, t 3) and intrinsics (fx, fy, cx, cy) gradient entries per block.
constexpr int kCameraGrads = 16;
struct Settings {
  int64_t width, height;
  double near_plane, far_plane, eps2d, fov_clamp_margin, alpha_threshold, max_extent_sigma;
  // Quaternions with a norm below this are divided by it instead (torch's clamp_min in normalize_quaternion);
  // the caller passes recon4d.geometry.quaternion.NORM_EPS, so both paths share one floor.
  double quat_norm_eps;
};

template <typename T>
struct Camera {
  T R[3][3], t[3];
  T fx, fy, cx, cy;  // cx, cy in gsplat's frame: OpenCV's + 0.5
  T lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg;
};

template <typename T>
Camera<T> make_camera(const at::Tensor& camera_from_world, const at::Tensor& K, const Settings& s) {
  Camera<T> cam;
  const T* P = camera_from_world.data_ptr<T>();
  const T* k = K.data_ptr<T>();
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) cam.R[i][j] = P[4 * i + j];
    cam.t[i] = P[4 * i + 3];
  }
  cam.fx = k[0];
  cam.fy = k[4];
  cam.cx = k[2] + T(0.5);
  cam.cy = k[5] + T(0.5);
  const T w = T(s.width), h = T(s.height), margin = T(s.fov_clamp_margin);
  const T tan_fov_x = T(0.5 * s.width) / cam.fx, tan_fov_y = T(0.5 * s.height) / cam.fy;
  cam.lim_x_pos = (w - cam.cx) / cam.fx + margin * tan_fov_x;
  cam.lim_x_neg = cam.cx / cam.fx + margin * tan_fov_x;
  cam.lim_y_pos = (h - cam.cy) / cam.fy + margin * tan_fov_y;
  cam.lim_y_neg = cam.cy / cam.fy + margin * tan_fov_y;
  return cam;
}

// Everything the forward pass computes for one Gaussian that the backward pass needs again.
template <typename T>
struct Projected {
  T pc[3];            // camera-space mean (raw z in pc[2])
  T z;                // pc[2] inside (near, far), else 1
  bool in_depth;
  int clamp_x, clamp_y;  // -1: x/z clamped at the low limit, 1: at the high one, 0: free
  T ux, uy;           // clamped x/z, y/z
  T tx, ty;           // z * ux, z * uy
  T j00, j02, j11, j12;  // the non-zero entries of the 2x3 Jacobian
  T qn[4], qnorm;     // unit quaternion and the (clamped) norm it was divided by
  T Rq[3][3];         // rotation of the Gaussian
  T M[3][3];          // Rq diag(scale)
  T S3[3][3];         // world covariance M M^T
  T Sc[3][3];         // camera covariance R S3 R^T
  T a, b, c, det;     // 2D covariance entries (a, c with eps2d) and its determinant
  bool valid;         // in depth and det > 0
  T den;              // det where valid, else 1
};

template <typename T>
__attribute__((always_inline)) inline void project_one(const T* mean, const T* quat, const T* scale,
                                                       const Camera<T>& cam, const Settings& s, Projected<T>& g) {
#pragma GCC unroll 4
  for (int i = 0; i < 3; ++i)
    g.pc[i] = cam.R[i][0] * mean[0] + cam.R[i][1] * mean[1] + cam.R[i][2] * mean[2] + cam.t[i];
  g.in_depth = g.pc[2] > T(s.near_plane) && g.pc[2] < T(s.far_plane);
  const T z = g.in_depth ? g.pc[2] : T(1);
  g.z = z;

  const T u = g.pc[0] / z, v = g.pc[1] / z;
  // The two limits of an axis lie on either side of 0 (lim_pos + lim_neg = W / fx + margin W / fx > 0), so at
  // most one is crossed. Written without nested selects, which keep gcc from vectorising the loops over Gaussians.
  g.clamp_x = int(u > cam.lim_x_pos) - int(u < -cam.lim_x_neg);
  g.clamp_y = int(v > cam.lim_y_pos) - int(v < -cam.lim_y_neg);
  g.ux = std::min(std::max(u, -cam.lim_x_neg), cam.lim_x_pos);
  g.uy = std::min(std::max(v, -cam.lim_y_neg), cam.lim_y_pos);
  g.tx = z * g.ux;
  g.ty = z * g.uy;
  const T z2 = z * z;
  g.j00 = cam.fx / z;
  g.j02 = -cam.fx * g.tx / z2;
  g.j11 = cam.fy / z;
  g.j12 = -cam.fy * g.ty / z2;

  const T norm = std::sqrt(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3]);
  g.qnorm = std::max(norm, T(s.quat_norm_eps));
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) g.qn[i] = quat[i] / g.qnorm;
  const T w = g.qn[0], x = g.qn[1], y = g.qn[2], zq = g.qn[3];
  const T Rq[3][3] = {
      {1 - 2 * (y * y + zq * zq), 2 * (x * y - w * zq), 2 * (x * zq + w * y)},
      {2 * (x * y + w * zq), 1 - 2 * (x * x + zq * zq), 2 * (y * zq - w * x)},
      {2 * (x * zq - w * y), 2 * (y * zq + w * x), 1 - 2 * (x * x + y * y)},
  };
#pragma GCC unroll 4
  for (int i = 0; i < 3; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < 3; ++j) {
      g.Rq[i][j] = Rq[i][j];
      g.M[i][j] = Rq[i][j] * scale[j];
    }
#pragma GCC unroll 4
  for (int i = 0; i < 3; ++i)
#pragma GCC unroll 4
    for (int j = i; j < 3; ++j)
      g.S3[i][j] = g.S3[j][i] = g.M[i][0] * g.M[j][0] + g.M[i][1] * g.M[j][1] + g.M[i][2] * g.M[j][2];
  T RS[3][3];  // R S3
#pragma GCC unroll 4
  for (int i = 0; i < 3; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < 3; ++j)
      RS[i][j] = cam.R[i][0] * g.S3[0][j] + cam.R[i][1] * g.S3[1][j] + cam.R[i][2] * g.S3[2][j];
#pragma GCC unroll 4
  for (int i = 0; i < 3; ++i)
#pragma GCC unroll 4
    for (int j = i; j < 3; ++j)
      g.Sc[i][j] = g.Sc[j][i] = RS[i][0] * cam.R[j][0] + RS[i][1] * cam.R[j][1] + RS[i][2] * cam.R[j][2];

  // Rows of J: j0 = (j00, 0, j02), j1 = (0, j11, j12).
  const T S0[3] = {g.j00 * g.Sc[0][0] + g.j02 * g.Sc[2][0], g.j00 * g.Sc[0][1] + g.j02 * g.Sc[2][1],
                   g.j00 * g.Sc[0][2] + g.j02 * g.Sc[2][2]};  // j0^T Sc
  g.a = S0[0] * g.j00 + S0[2] * g.j02 + T(s.eps2d);
  g.b = S0[1] * g.j11 + S0[2] * g.j12;
  g.c = g.j11 * (g.Sc[1][1] * g.j11 + g.Sc[1][2] * g.j12) + g.j12 * (g.Sc[2][1] * g.j11 + g.Sc[2][2] * g.j12) +
        T(s.eps2d);
  g.det = g.a * g.c - g.b * g.b;
  g.valid = g.in_depth && g.det > T(0);
  g.den = g.valid ? g.det : T(1);
}

template <typename T>
void forward_block(int64_t begin, int64_t end, const T* means, const T* quats, const T* scales, const T* opacities,
                   const Camera<T>& cam, const Settings& s, T* means2d, T* conics, T* depths, int* radii) {
  const T threshold = T(s.alpha_threshold), max_extent = T(s.max_extent_sigma);
  const T w = T(s.width), h = T(s.height);
#pragma omp simd
  for (int64_t n = begin; n < end; ++n) {
    Projected<T> g;
    project_one(means + 3 * n, quats + 4 * n, scales + 3 * n, cam, s, g);
    conics[3 * n] = g.c / g.den;
    conics[3 * n + 1] = -g.b / g.den;
    conics[3 * n + 2] = g.a / g.den;
    const T mx = cam.fx * g.pc[0] / g.z + cam.cx, my = cam.fy * g.pc[1] / g.z + cam.cy;
    means2d[2 * n] = mx;
    means2d[2 * n + 1] = my;
    depths[n] = g.pc[2];

    int rx = 0, ry = 0;
    const T opacity = opacities[n];
    if (g.valid && opacity >= threshold) {
      const T extent = std::min(std::sqrt(T(2) * std::log(opacity / threshold)), max_extent);
      // Capped so that a degenerate (huge) covariance cannot overflow the int conversion.
      const T cap = T(1 << 30);
      const T fx_radius = std::min(std::ceil(extent * std::sqrt(std::max(g.a, T(0)))), cap);
      const T fy_radius = std::min(std::ceil(extent * std::sqrt(std::max(g.c, T(0)))), cap);
      const bool on_screen = mx + fx_radius > 0 && mx - fx_radius < w && my + fy_radius > 0 && my - fy_radius < h;
      if (on_screen && (fx_radius > 0 || fy_radius > 0)) {
        rx = (int)fx_radius;
        ry = (int)fy_radius;
      }
    }
    radii[2 * n] = rx;
    radii[2 * n + 1] = ry;
  }
}

// d loss / d (normalised quaternion) from d loss / d rotation G (row-major 3x3).
template <typename T>
inline void quat_grad_from_rotation(const T* q, const T G[3][3], T out[4]) {
  const T w = q[0], x = q[1], y = q[2], z = q[3];
  out[0] = 2 * (-z * G[0][1] + y * G[0][2] + z * G[1][0] - x * G[1][2] - y * G[2][0] + x * G[2][1]);
  out[1] = 2 * (y * G[0][1] + z * G[0][2] + y * G[1][0] - 2 * x * G[1][1] - w * G[1][2] + z * G[2][0] +
                w * G[2][1] - 2 * x * G[2][2]);
  out[2] = 2 * (-2 * y * G[0][0] + x * G[0][1] + w * G[0][2] + x * G[1][0] + z * G[1][2] - w * G[2][0] +
                z * G[2][1] - 2 * y * G[2][2]);
  out[3] = 2 * (-2 * z * G[0][0] - w * G[0][1] + x * G[0][2] + w * G[1][0] - 2 * z * G[1][1] + y * G[1][2] +
                x * G[2][0] + y * G[2][1]);
}

template <typename T>
void backward_block(int64_t begin, int64_t end, const T* __restrict means, const T* __restrict quats,
                    const T* __restrict scales, const Camera<T>& camera, const Settings& settings,
                    const T* __restrict v_means2d, const T* __restrict v_conics, const T* __restrict v_depths,
                    T* __restrict v_means, T* __restrict v_quats, T* __restrict v_scales, double* camera_sum) {
  // Copies, and __restrict above: gcc cannot otherwise tell the inputs apart from the gradient stores, which kept
  // the loop scalar.
  const Camera<T> cam = camera;
  const Settings s = settings;
  // Each Gaussian's pose and intrinsics terms, summed after the loop in row order: a sum inside it would keep
  // the loop from vectorising (and a vector reduction would change the order of the additions).
  double camera_terms[kBlock][kCameraGrads];
  // ivdep, not omp simd: under omp simd gcc keeps `g` as a per-lane array whose accesses it then cannot vectorise.
#pragma GCC ivdep
  for (int64_t n = begin; n < end; ++n) {
    Projected<T> g;
    double* terms = camera_terms[n - begin];
    const T* mean = means + 3 * n;
    const T* scale = scales + 3 * n;
    project_one(mean, quats + 4 * n, scale, cam, s, g);
    const T z = g.z, x = g.pc[0], y = g.pc[1];
    const T vA = v_conics[3 * n], vB = v_conics[3 * n + 1], vC = v_conics[3 * n + 2];

    // conic = (c, -b, a) / den -> 2D covariance entries.
    const T a = g.a, b = g.b, c = g.c, d2 = g.den * g.den;
    const T va = g.valid ? (-c * c * vA + b * c * vB - b * b * vC) / d2 : vC;
    const T vb = g.valid ? (2 * b * c * vA - (a * c + b * b) * vB + 2 * a * b * vC) / d2 : -vB;
    const T vc = g.valid ? (-b * b * vA + a * b * vB - a * a * vC) / d2 : vA;

    // Sigma2 = J Sc J^T: with j0, j1 the rows of J, a = j0 Sc j0, b = j0 Sc j1, c = j1 Sc j1.
    const T j0[3] = {g.j00, T(0), g.j02}, j1[3] = {T(0), g.j11, g.j12};
    T Sj0[3], Sj1[3];
#pragma GCC unroll 4
    for (int i = 0; i < 3; ++i) {
      Sj0[i] = g.Sc[i][0] * j0[0] + g.Sc[i][2] * j0[2];
      Sj1[i] = g.Sc[i][1] * j1[1] + g.Sc[i][2] * j1[2];
    }
    const T gJ00 = 2 * va * Sj0[0] + vb * Sj1[0], gJ02 = 2 * va * Sj0[2] + vb * Sj1[2];
    const T gJ11 = vb * Sj0[1] + 2 * vc * Sj1[1], gJ12 = vb * Sj0[2] + 2 * vc * Sj1[2];
    T gSc[3][3];  // J^T sym(G2) J
#pragma GCC unroll 4
    for (int i = 0; i < 3; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < 3; ++j)
        gSc[i][j] = va * j0[i] * j0[j] + T(0.5) * vb * (j0[i] * j1[j] + j1[i] * j0[j]) + vc * j1[i] * j1[j];

    // Sc = R S3 R^T: d R = 2 gSc R S3, d S3 = R^T gSc R.
    T gScR[3][3], gR[3][3], gS3[3][3];
#pragma GCC unroll 4
    for (int i = 0; i < 3; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < 3; ++j)
        gScR[i][j] = gSc[i][0] * cam.R[0][j] + gSc[i][1] * cam.R[1][j] + gSc[i][2] * cam.R[2][j];
#pragma GCC unroll 4
    for (int i = 0; i < 3; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < 3; ++j) {
        gR[i][j] = 2 * (gScR[i][0] * g.S3[0][j] + gScR[i][1] * g.S3[1][j] + gScR[i][2] * g.S3[2][j]);
        gS3[i][j] = cam.R[0][i] * gScR[0][j] + cam.R[1][i] * gScR[1][j] + cam.R[2][i] * gScR[2][j];
      }
    // S3 = M M^T with M = Rq diag(scale): d M = 2 gS3 M.
    T gRq[3][3];
    T v_scale[3] = {T(0), T(0), T(0)};
#pragma GCC unroll 4
    for (int i = 0; i < 3; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < 3; ++j) {
        const T gM = 2 * (gS3[i][0] * g.M[0][j] + gS3[i][1] * g.M[1][j] + gS3[i][2] * g.M[2][j]);
        v_scale[j] += gM * g.Rq[i][j];
        gRq[i][j] = gM * scale[j];
      }
#pragma GCC unroll 4
    for (int j = 0; j < 3; ++j) v_scales[3 * n + j] = v_scale[j];
    T gqn[4];
    quat_grad_from_rotation(g.qn, gRq, gqn);
    T* v_quat = v_quats + 4 * n;
    // q / |q|, or q / eps below the floor (no projection onto the sphere's tangent there).
    const T dot = g.qnorm > T(s.quat_norm_eps)
                      ? g.qn[0] * gqn[0] + g.qn[1] * gqn[1] + g.qn[2] * gqn[2] + g.qn[3] * gqn[3] : T(0);
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) v_quat[i] = (gqn[i] - g.qn[i] * dot) / g.qnorm;

    // J -> z, fx, fy and the clamped directions tx = z ux, ty = z uy.
    const T z2 = z * z, z3 = z2 * z;
    T gz = -gJ00 * cam.fx / z2 + gJ02 * 2 * cam.fx * g.tx / z3 - gJ11 * cam.fy / z2 + gJ12 * 2 * cam.fy * g.ty / z3;
    T gfx = gJ00 / z - gJ02 * g.tx / z2, gfy = gJ11 / z - gJ12 * g.ty / z2;
    T gcx = 0, gcy = 0;
    const T gtx = -gJ02 * cam.fx / z2, gty = -gJ12 * cam.fy / z2;
    gz += gtx * g.ux + gty * g.uy;
    const T gux = gtx * z, guy = gty * z;
    T gx = 0, gy = 0;
    // Free directions pass to x/z, y/z; clamped ones to the limits, which depend on fx, cx (fy, cy):
    // lim_x_pos = ((W - cx) + m W / 2) / fx, -lim_x_neg = -(cx + m W / 2) / fx, likewise in y. Selects, not
    // branches, so that the loop vectorises.
    const bool free_x = g.clamp_x == 0, free_y = g.clamp_y == 0;
    gx += free_x ? gux / z : T(0);
    gz -= free_x ? gux * x / z2 : T(0);
    gcx -= free_x ? T(0) : gux / cam.fx;
    const T crossed_x = g.clamp_x > 0 ? -cam.lim_x_pos : cam.lim_x_neg;
    gfx += free_x ? T(0) : gux * crossed_x / cam.fx;
    gy += free_y ? guy / z : T(0);
    gz -= free_y ? guy * y / z2 : T(0);
    gcy -= free_y ? T(0) : guy / cam.fy;
    const T crossed_y = g.clamp_y > 0 ? -cam.lim_y_pos : cam.lim_y_neg;
    gfy += free_y ? T(0) : guy * crossed_y / cam.fy;

    // means2d = (fx x / z + cx, fy y / z + cy).
    const T gmx = v_means2d[2 * n], gmy = v_means2d[2 * n + 1];
    gx += gmx * cam.fx / z;
    gy += gmy * cam.fy / z;
    gz -= (gmx * cam.fx * x + gmy * cam.fy * y) / z2;
    gfx += gmx * x / z;
    gfy += gmy * y / z;
    gcx += gmx;
    gcy += gmy;

    // z is the camera z only inside (near, far); depths is the raw camera z.
    const T gpc[3] = {gx, gy, (g.in_depth ? gz : T(0)) + v_depths[n]};
    // pc = R mean + t.
    T* v_mean = v_means + 3 * n;
#pragma GCC unroll 4
    for (int j = 0; j < 3; ++j) v_mean[j] = cam.R[0][j] * gpc[0] + cam.R[1][j] * gpc[1] + cam.R[2][j] * gpc[2];
#pragma GCC unroll 4
    for (int i = 0; i < 3; ++i) {
#pragma GCC unroll 4
      for (int j = 0; j < 3; ++j) terms[3 * i + j] = double(gR[i][j]) + double(gpc[i]) * double(mean[j]);
      terms[9 + i] = double(gpc[i]);
    }
    terms[12] = double(gfx);
    terms[13] = double(gfy);
    terms[14] = double(gcx);
    terms[15] = double(gcy);
  }
  for (int64_t n = begin; n < end; ++n)
    for (int k = 0; k < kCameraGrads; ++k) camera_sum[k] += camera_terms[n - begin][k];
}

// Calls body(begin, end, block) for the fixed blocks of kBlock rows covering [0, n), on `threads` threads.
template <typename Body>
void parallel_blocks(int64_t n, int threads, const Body& body) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t blk = 0; blk < blocks; ++blk) body(blk * kBlock, std::min(n, (blk + 1) * kBlock), blk);
}

int projection_threads(int64_t n) {
  if (at::in_parallel_region()) return 1;
  const int64_t useful = std::min<int64_t>((n + kBlock - 1) / kBlock, n / kMinGaussiansPerThread);
  return (int)std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), useful));
}

Settings make_settings(int64_t width, int64_t height, double near_plane, double far_plane, double eps2d,
                       double fov_clamp_margin, double alpha_threshold, double max_extent_sigma,
                       double quat_norm_eps) {
  return Settings{width, height, near_plane, far_plane, eps2d, fov_clamp_margin, alpha_threshold, max_extent_sigma,
                  quat_norm_eps};
}

void check_inputs(const std::vector<at::Tensor>& tensors) {
  const auto dtype = tensors[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "projection: float32 or float64 expected");
  for (const auto& t : tensors) {
    TORCH_CHECK(t.scalar_type() == dtype, "projection: all inputs must share one dtype");
    TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), "projection: contiguous CPU tensors expected");
  }
}

void check_shapes(int64_t n, const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                  const at::Tensor& camera_from_world, const at::Tensor& K) {
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "projection: means must be [N, 3]");
  TORCH_CHECK(quats.dim() == 2 && quats.size(0) == n && quats.size(1) == 4, "projection: quats must be [N, 4]");
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == n && scales.size(1) == 3, "projection: scales must be [N, 3]");
  TORCH_CHECK(camera_from_world.numel() == 16 && K.numel() == 9, "projection: camera_from_world [4, 4], K [3, 3]");
}

}  // namespace

int project_threads(int64_t n) { return projection_threads(n); }

std::vector<at::Tensor> project_forward(at::Tensor means, at::Tensor quats, at::Tensor scales,
                                           at::Tensor opacities, at::Tensor camera_from_world, at::Tensor K,
                                           int64_t width, int64_t height, double near_plane, double far_plane,
                                           double eps2d, double fov_clamp_margin, double alpha_threshold,
                                           double max_extent_sigma, double quat_norm_eps) {
  check_inputs({means, quats, scales, opacities, camera_from_world, K});
  const int64_t n = means.size(0);
  check_shapes(n, means, quats, scales, camera_from_world, K);
  TORCH_CHECK(opacities.dim() == 1 && opacities.size(0) == n, "projection: opacities must be [N]");
  const auto opts = means.options();
  auto means2d = at::empty({n, 2}, opts), conics = at::empty({n, 3}, opts), depths = at::empty({n}, opts);
  auto radii = at::empty({n, 2}, opts.dtype(at::kInt));
  const Settings s = make_settings(width, height, near_plane, far_plane, eps2d, fov_clamp_margin, alpha_threshold,
                                   max_extent_sigma, quat_norm_eps);
  const int threads = projection_threads(n);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward", [&] {
    const Camera<scalar_t> cam = make_camera<scalar_t>(camera_from_world, K, s);
    const scalar_t* in[4] = {means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(),
                             opacities.data_ptr<scalar_t>()};
    scalar_t* out[3] = {means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>()};
    int* radii_out = radii.data_ptr<int>();
    parallel_blocks(n, threads, [&](int64_t begin, int64_t end, int64_t) {
      forward_block<scalar_t>(begin, end, in[0], in[1], in[2], in[3], cam, s, out[0], out[1], out[2], radii_out);
    });
  });
  return {means2d, conics, depths, radii};
}

std::vector<at::Tensor> project_backward(at::Tensor means, at::Tensor quats, at::Tensor scales,
                                            at::Tensor camera_from_world, at::Tensor K, int64_t width,
                                            int64_t height, double near_plane, double far_plane, double eps2d,
                                            double fov_clamp_margin, double quat_norm_eps, at::Tensor v_means2d,
                                            at::Tensor v_conics, at::Tensor v_depths) {
  check_inputs({means, quats, scales, camera_from_world, K, v_means2d, v_conics, v_depths});
  const int64_t n = means.size(0);
  check_shapes(n, means, quats, scales, camera_from_world, K);
  TORCH_CHECK(v_means2d.numel() == 2 * n && v_conics.numel() == 3 * n && v_depths.numel() == n,
              "projection: upstream gradients must be [N, 2], [N, 3], [N]");
  auto v_means = at::empty_like(means), v_quats = at::empty_like(quats), v_scales = at::empty_like(scales);
  const Settings s =
      make_settings(width, height, near_plane, far_plane, eps2d, fov_clamp_margin, 0.0, 0.0, quat_norm_eps);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> block_sums((size_t)std::max<int64_t>(blocks, 1) * kCameraGrads, 0.0);
  const int threads = projection_threads(n);
  auto v_camera_from_world = at::zeros({4, 4}, means.options());
  auto v_K = at::zeros({3, 3}, means.options());
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_backward", [&] {
    const Camera<scalar_t> cam = make_camera<scalar_t>(camera_from_world, K, s);
    const scalar_t* in[6] = {means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(),
                             v_means2d.data_ptr<scalar_t>(), v_conics.data_ptr<scalar_t>(),
                             v_depths.data_ptr<scalar_t>()};
    scalar_t* out[3] = {v_means.data_ptr<scalar_t>(), v_quats.data_ptr<scalar_t>(), v_scales.data_ptr<scalar_t>()};
    parallel_blocks(n, threads, [&](int64_t begin, int64_t end, int64_t blk) {
      backward_block<scalar_t>(begin, end, in[0], in[1], in[2], cam, s, in[3], in[4], in[5], out[0], out[1], out[2],
                               block_sums.data() + blk * kCameraGrads);
    });
    double total[kCameraGrads] = {0};
    for (int64_t blk = 0; blk < blocks; ++blk)  // fixed order: independent of the thread count
      for (int k = 0; k < kCameraGrads; ++k) total[k] += block_sums[blk * kCameraGrads + k];
    scalar_t* P = v_camera_from_world.data_ptr<scalar_t>();
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) P[4 * i + j] = scalar_t(total[3 * i + j]);
      P[4 * i + 3] = scalar_t(total[9 + i]);
    }
    scalar_t* k = v_K.data_ptr<scalar_t>();
    k[0] = scalar_t(total[12]);
    k[4] = scalar_t(total[13]);
    k[2] = scalar_t(total[14]);
    k[5] = scalar_t(total[15]);
  });
  return {v_means, v_quats, v_scales, v_camera_from_world, v_K};
}

// Kernels release the GIL: they touch no Python objects, and Python threads may run them side by side
// (recon4d.eval.reconstruction.refine_cameras searches several frames' cameras at once).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("project_threads", &project_threads, "Threads the projection of n Gaussians would use now");
  m.def("project_forward", &project_forward, py::call_guard<py::gil_scoped_release>(), "EWA projection of 3D Gaussians: means2d, conics, depths, radii");
  m.def("project_backward", &project_backward, py::call_guard<py::gil_scoped_release>(),
        "Gradients of the projection w.r.t. means, quats, scales, camera_from_world and K");
}
