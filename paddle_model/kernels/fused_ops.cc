// Fused steps of CoaT's blocks for CPU fp32 inference (the one source of coat_kernels).
//
// Paddle's eager CPU kernels for a bias add, GELU, a broadcast multiply, a pad, a transpose or
// a small batched matmul go through generic code; in CoaT they cost as much as the matrix
// products around them. These ops do each step in one pass over memory:
//   coat_bias_act_(x, bias, gelu) x += bias over the last axis, then exact (erf) GELU if asked.
//   coat_patches(x, p)            non-overlapping p x p patches of [B, C, H, W] as rows
//                                 [B, H/p * W/p, C * p * p], for the patch embedding's product;
//   coat_token_patches(x, H, W, p) the same from a stage's tokens [B, 1 + H*W, C].
//   coat_resample(x, taps...)      bilinear resize of the image tokens (two taps per axis),
//                                 CLS kept, in token layout: the parallel blocks' exchange.
//   coat_conv_pos_enc(x, w, b, ...) the conv position encoding on tokens: x + depthwise(x) over
//                                 the image tokens, the CLS token passed through.
//   coat_factor_attn(qkv, ...)    the factorised attention with its conv relative position
//                                 encoding, from the qkv projection's output straight to
//                                 the output projection's input.
//   coat_layer_norm(x, w, b, eps) LayerNorm over the last axis.
//   coat_linear(x, w, b, gelu)    a Linear layer (MKL's product), bias and GELU in one pass;
//   coat_linear_add(x, w, b, r)   the same plus a residual (only where Paddle ships MKL).
//   coat_patch_linear(x, w, b)    x @ w^T + b for the patch embedding (w: its conv weight as
//                                 [out, C * p * p]; MKL too).
//   coat_mlp(x, w1, b1, w2, b2, r) a block's MLP plus its residual, in row blocks where the
//                                 hidden activations would not fit in the cache (MKL too).
// Forward only; the model keeps Paddle's ops where gradients are needed.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include <omp.h>
#include <pthread.h>

#include "paddle/extension.h"

#ifdef COAT_MKL
// MKL's own setting for the calling thread (0: the process-wide one), from the MKL that Paddle
// ships (libmklml_intel).
extern "C" int MKL_Set_Num_Threads_Local(int count);
extern "C" int MKL_Get_Max_Threads();
#endif

namespace {

// A child made by fork() has only the thread that forked. GNU OpenMP (which these ops' regions
// reach when torch was imported first) keeps the parent's thread pool in its books and the
// child's next parallel region waits for those threads forever (DataLoader workers fork). So a
// forked child runs these ops on its one thread: threads() is 1 there, and a team of one
// starts no pool thread.
std::atomic<bool> forked{false};
const int fork_handler = pthread_atfork(nullptr, nullptr, [] { forked = true; });

// Threads for these ops: as many as Paddle's math library runs on (paddle_model.runtime sizes it
// to the process's CPUs, or MKL_NUM_THREADS does), so that the kernels and the matrix products
// between them share the cores. MKL is asked on every call: set_cpu_threads() can change it.
int threads() {
  if (forked) return 1;
#ifdef COAT_MKL
  return std::max(1, std::min(MKL_Get_Max_Threads(), 64));
#else
  static const int n = [] {
    const char* env = std::getenv("MKL_NUM_THREADS");
    const int parsed = env ? std::atoi(env) : 1;
    return std::max(1, std::min(parsed, 64));
  }();
  return n;
#endif
}

// One MKL thread for each thread of a parallel region of these ops, for the region's life.
// MKL runs on Intel's OpenMP. Where these ops' OpenMP calls reach GNU OpenMP instead (torch
// imported before Paddle loads them), MKL cannot see that the calling thread is already one of
// a team: it starts a team of its own per call, and the cores are oversubscribed (measured in
// docs/benchmarks-history.md). Where
// both reach Intel's runtime (Paddle alone) MKL sees the team itself and this changes nothing.
// Outside a region (an ``if`` that kept it serial) MKL keeps all its threads.
#ifdef COAT_MKL
class MklOnThisThread {
 public:
  MklOnThisThread() : active_(omp_in_parallel()), before_(active_ ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~MklOnThisThread() {
    if (active_) MKL_Set_Num_Threads_Local(before_);
  }
  MklOnThisThread(const MklOnThisThread&) = delete;
  MklOnThisThread& operator=(const MklOnThisThread&) = delete;

 private:
  bool active_;
  int before_;
};
#else
struct MklOnThisThread {};  // no MKL in the build: nothing to set
#endif

// exp(x) for x <= 0 without a library call, so that loops over it vectorise: 2^n * e^r with
// |r| <= ln2 / 2 and a degree-6 Taylor polynomial (relative error below 2e-7).
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693145751953125f;  // ln 2 in two parts, so r keeps its precision
  r -= n * 1.428606765330187045e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Exact (erf) GELU, x/2 (1 + erf(x / sqrt 2)), with erf(z) = z P(z^2) / Q(z^2) on |z| <= 4, a
// rational fit made for this file (least squares on the relative error of erf(z) / z, reweighted
// by 1 / Q until it settles, on Chebyshev and uniform points of [0, 4]; relative error below
// 1e-7 in double; beyond 4, erf rounds to +-1 in float). In float its error is within
// 1.9e-7 |x| of the exact value on [-12, 12] (torch's float GELU: 2.7e-7 |x|). Relative to the
// value, the negative tail loses digits, since 1 + erf cancels near -1: at most 8.9e-4 where
// |gelu| >= 1e-3, against torch's 2.2e-4 and 1.2e-7 for the erfc-and-exp form this replaced.
// No exp and one division.
inline float gelu(float x) {
  const float z = std::min(std::max(x * 0.70710678118654752f, -4.0f), 4.0f), s = z * z;
  const float p = 1.1283791352866557f +
                  s * (2.0241230061058935e-01f + s * (5.0886643107065033e-02f + s * (3.7909866574562584e-03f +
                  s * (1.4265217717898313e-04f + s * (-1.9292223905030548e-06f + s * 1.9298529913003293e-08f)))));
  const float q = 1.0f + s * (5.1271517590625015e-01f + s * (1.1601030090240269e-01f +
                  s * (1.4550020575149676e-02f + s * 9.7331457601811512e-04f)));
  const float half = 0.5f * x;
  return half + half * (z * p / q);
}

// Eight floats in one AVX register (GCC/Clang vector extension; two SSE ones elsewhere).
typedef float f8 __attribute__((vector_size(32)));
inline f8 load8(const float* p) {
  f8 x;
  std::memcpy(&x, p, sizeof x);
  return x;
}
inline void store8(float* p, f8 x) { std::memcpy(p, &x, sizeof x); }

// The sums of L channels: in vectors of 8 where L allows (GCC keeps a float array's sums in
// memory between the steps of a loop), else in floats; load_lanes / store_lanes move either.
template <int64_t L>
using Lanes = std::conditional_t<L % 8 == 0, f8, float>;
template <typename T>
inline T load_lanes(const float* p);
template <>
inline f8 load_lanes<f8>(const float* p) { return load8(p); }
template <>
inline float load_lanes<float>(const float* p) { return *p; }
inline void store_lanes(float* p, f8 x) { store8(p, x); }
inline void store_lanes(float* p, float x) { *p = x; }

// CoaT's position encodings (cpe 3x3, crpe 3x3/5x5/7x7) are depthwise convolutions: stride 1,
// "same" zero padding, odd square kernels. Paddle's CPU kernel runs them far slower than
// torch's. Here they run on the token rows as they lie (depthwise_pixel below); each sum
// starts from the bias and adds the taps in order, as torch's direct convolution does.

// Token rows and channel planes, kBlock rows at a time: each block's rows stay in cache while
// their channels are copied.
constexpr int64_t kBlock = 16;

// token rows (``stride`` apart) -> channel planes [channels, n], and back
void gather_planes(const float* rows, int64_t stride, int64_t n, int64_t channels, float* planes) {
  for (int64_t r0 = 0; r0 < n; r0 += kBlock) {
    const int64_t r1 = std::min(n, r0 + kBlock);
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t r = r0; r < r1; ++r) planes[c * n + r] = rows[r * stride + c];
  }
}

void scatter_planes(const float* planes, int64_t n, int64_t channels, float* rows, int64_t stride) {
  for (int64_t r0 = 0; r0 < n; r0 += kBlock) {
    const int64_t r1 = std::min(n, r0 + kBlock);
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < channels; ++c) rows[r * stride + c] = planes[c * n + r];
  }
}

// Channels [c0, c0 + L) of the depthwise convolution at one pixel; L fixed, so the sums stay
// in registers. Taps outside the image are left out (zero padding).
template <int64_t L>
inline void depthwise_chunk(const float* __restrict__ img, int64_t stride, int64_t i, int64_t j,
                            int64_t width, int64_t k, int64_t di0, int64_t di1, int64_t dj0,
                            int64_t dj1, const float* __restrict__ wt, int64_t n,
                            const float* __restrict__ bias, int64_t c0, float* __restrict__ out) {
  using T = Lanes<L>;
  constexpr int64_t W = sizeof(T) / sizeof(float), V = L / W;
  const int64_t pad = k / 2;
  T acc[V];
  for (int64_t l = 0; l < V; ++l) acc[l] = load_lanes<T>(bias + c0 + W * l);
  for (int64_t di = di0; di < di1; ++di)
    for (int64_t dj = dj0; dj < dj1; ++dj) {
      const float* src = img + ((i + di - pad) * width + (j + dj - pad)) * stride + c0;
      const float* w = wt + (di * k + dj) * n + c0;
      for (int64_t l = 0; l < V; ++l) acc[l] += load_lanes<T>(w + W * l) * load_lanes<T>(src + W * l);
    }
  for (int64_t l = 0; l < V; ++l) store_lanes(out + c0 + W * l, acc[l]);
}

// depthwise_pixel: the convolution at one pixel (i, j) of an image kept as token rows
// (channels last), for channels [0, n) of rows ``stride`` apart, vectorised along the
// channels; no transposes. wt: the kernel as [k * k, n], tap-major.
inline void depthwise_pixel(const float* img, int64_t stride, int64_t i, int64_t j, int64_t height,
                            int64_t width, int64_t k, const float* wt, const float* bias, int64_t n,
                            float* out) {
  const int64_t pad = k / 2;
  const int64_t di0 = std::max<int64_t>(0, pad - i), di1 = std::min(k, height + pad - i);
  const int64_t dj0 = std::max<int64_t>(0, pad - j), dj1 = std::min(k, width + pad - j);
  int64_t c0 = 0;
  for (; c0 + 32 <= n; c0 += 32)
    depthwise_chunk<32>(img, stride, i, j, width, k, di0, di1, dj0, dj1, wt, n, bias, c0, out);
  for (; c0 + 8 <= n; c0 += 8)
    depthwise_chunk<8>(img, stride, i, j, width, k, di0, di1, dj0, dj1, wt, n, bias, c0, out);
  for (; c0 < n; ++c0)
    depthwise_chunk<1>(img, stride, i, j, width, k, di0, di1, dj0, dj1, wt, n, bias, c0, out);
}

// Channels [c0, c0 + L) at P neighbouring pixels (i, j..j+P) of one row, all of whose column
// taps lie inside the image: each tap's weights are loaded once for the P pixels. The sums
// are those of depthwise_chunk (bias, then the taps in order).
template <int64_t L, int64_t P>
inline void depthwise_run(const float* __restrict__ img, int64_t stride, int64_t i, int64_t j,
                          int64_t width, int64_t k, int64_t di0, int64_t di1,
                          const float* __restrict__ wt, int64_t n, const float* __restrict__ bias,
                          int64_t c0, float* __restrict__ out, int64_t out_stride) {
  using T = Lanes<L>;
  constexpr int64_t W = sizeof(T) / sizeof(float), V = L / W;
  const int64_t pad = k / 2;
  T acc[P][V];
  for (int64_t p = 0; p < P; ++p)
    for (int64_t l = 0; l < V; ++l) acc[p][l] = load_lanes<T>(bias + c0 + W * l);
  for (int64_t di = di0; di < di1; ++di) {
    const float* row = img + ((i + di - pad) * width + (j - pad)) * stride + c0;
    for (int64_t dj = 0; dj < k; ++dj) {
      T w[V];
      for (int64_t l = 0; l < V; ++l) w[l] = load_lanes<T>(wt + (di * k + dj) * n + c0 + W * l);
      for (int64_t p = 0; p < P; ++p)
        for (int64_t l = 0; l < V; ++l) acc[p][l] += w[l] * load_lanes<T>(row + (dj + p) * stride + W * l);
    }
  }
  for (int64_t p = 0; p < P; ++p)
    for (int64_t l = 0; l < V; ++l) store_lanes(out + p * out_stride + c0 + W * l, acc[p][l]);
}

// The convolution along image row i for channels [0, n): pixel j's n sums go to
// out + j * out_stride. Four pixels at a time where their taps lie inside the row.
inline void depthwise_row(const float* img, int64_t stride, int64_t i, int64_t height, int64_t width,
                          int64_t k, const float* wt, const float* bias, int64_t n, float* out,
                          int64_t out_stride) {
  constexpr int64_t P = 4;
  const int64_t pad = k / 2;
  const int64_t di0 = std::max<int64_t>(0, pad - i), di1 = std::min(k, height + pad - i);
  int64_t j = 0;
  while (j < width) {
    if (j >= pad && j + P - 1 + pad < width) {
      int64_t c0 = 0;
      for (; c0 + 16 <= n; c0 += 16)
        depthwise_run<16, P>(img, stride, i, j, width, k, di0, di1, wt, n, bias, c0, out + j * out_stride, out_stride);
      for (; c0 + 8 <= n; c0 += 8)
        depthwise_run<8, P>(img, stride, i, j, width, k, di0, di1, wt, n, bias, c0, out + j * out_stride, out_stride);
      for (; c0 < n; ++c0)
        depthwise_run<1, P>(img, stride, i, j, width, k, di0, di1, wt, n, bias, c0, out + j * out_stride, out_stride);
      j += P;
    } else {
      depthwise_pixel(img, stride, i, j, height, width, k, wt, bias, n, out + j * out_stride);
      ++j;
    }
  }
}

// A depthwise kernel [n, 1, k, k] as [k * k, n] for depthwise_pixel.
std::vector<float> taps_major(const float* weight, int64_t n, int64_t k) {
  std::vector<float> wt(k * k * n);
  for (int64_t c = 0; c < n; ++c)
    for (int64_t t = 0; t < k * k; ++t) wt[t * n + c] = weight[c * k * k + t];
  return wt;
}

// row += bias, then GELU if asked.
void bias_act(float* __restrict__ row, const float* __restrict__ bias, int64_t n, bool use_gelu) {
  if (use_gelu)
    for (int64_t j = 0; j < n; ++j) row[j] = gelu(row[j] + bias[j]);
  else
    for (int64_t j = 0; j < n; ++j) row[j] += bias[j];
}

}  // namespace

// In place: x is the fresh output of a matrix product, so no second buffer is needed.
void BiasActForward(paddle::Tensor& x, const paddle::Tensor& bias, bool use_gelu) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "coat_bias_act_ takes CPU float32");
  const int64_t n = bias.numel();
  PD_CHECK(x.shape().back() == n, "bias must match the last axis of x");
  float* __restrict__ data = x.data<float>();
  const float* __restrict__ b = bias.data<float>();
  const int64_t rows = x.numel() / n;
#pragma omp parallel for num_threads(threads()) schedule(static) if (rows * n > 65536)
  for (int64_t r = 0; r < rows; ++r) bias_act(data + r * n, b, n, use_gelu);
}

PD_BUILD_OP(coat_bias_act_)
    .Inputs({"X", "Bias"})
    .Outputs({"Out"})
    .Attrs({"use_gelu: bool"})
    .SetInplaceMap({{"X", "Out"}})
    .SetKernelFn(PD_KERNEL(BiasActForward));

#ifdef COAT_MKL
// The CBLAS single-precision product of the MKL that Paddle ships (libmklml_intel, LP64).
extern "C" void cblas_sgemm(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha,
                            const float* a, int lda, const float* b, int ldb, float beta, float* c,
                            int ldc);

namespace {
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

// out = x @ weight + bias, then GELU if asked, then + residual if given; x [.., K], weight
// [K, N] (Paddle's Linear layout), or [N, K] (a convolution's) with ``out_in``; residual
// shaped like out.
// With many rows MKL multiplies the whole matrix on its threads and one pass adds the rest;
// with few rows (the last stage at batch 1) MKL's threads split the work poorly, so each
// thread multiplies a band of columns on one MKL thread and finishes it while it is in cache.
paddle::Tensor linear(const paddle::Tensor& x, const paddle::Tensor& weight, const paddle::Tensor& bias,
                      const paddle::Tensor* residual, bool use_gelu, bool out_in = false) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "coat_linear takes CPU float32");
  PD_CHECK(weight.shape().size() == 2, "coat_linear: weight must be 2-D");
  const int64_t k = weight.shape()[out_in ? 1 : 0], n = weight.shape()[out_in ? 0 : 1];
  const int trans_w = out_in ? kTrans : kNoTrans, ldw = out_in ? k : n;
  PD_CHECK(x.shape().back() == k && bias.numel() == n, "coat_linear: x [.., K], weight [K, N] or [N, K], bias [N]");
  std::vector<int64_t> shape = x.shape();
  shape.back() = n;
  PD_CHECK(residual == nullptr || residual->shape() == shape, "coat_linear_add: residual must be shaped like the output");
  auto out = paddle::empty(shape, x.dtype(), x.place());
  const float* a = x.data<float>();
  const float* w = weight.data<float>();
  const float* b = bias.data<float>();
  const float* res = residual ? residual->data<float>() : nullptr;
  float* c = out.data<float>();
  const int64_t m = x.numel() / k;
  const int nt = threads();
  auto finish = [&](int64_t r, int64_t c0, int64_t cols) {
    float* __restrict__ row = c + r * n + c0;
    bias_act(row, b + c0, cols, use_gelu);
    if (res != nullptr) {
      const float* __restrict__ add = res + r * n + c0;
      for (int64_t j = 0; j < cols; ++j) row[j] += add[j];
    }
  };
  if (nt > 1 && m < 64 * nt && n >= 32 * nt) {
    const int64_t band = (n / nt + 15) / 16 * 16;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int t = 0; t < nt; ++t) {
      const int64_t c0 = std::min(n, t * band), cols = std::min(band, n - c0);
      if (cols <= 0) continue;
      [[maybe_unused]] MklOnThisThread one;
      cblas_sgemm(kRowMajor, kNoTrans, trans_w, m, cols, k, 1.0f, a, k, w + c0 * (out_in ? k : 1), ldw, 0.0f,
                  c + c0, n);
      for (int64_t r = 0; r < m; ++r) finish(r, c0, cols);
    }
    return out;
  }
  cblas_sgemm(kRowMajor, kNoTrans, trans_w, m, n, k, 1.0f, a, k, w, ldw, 0.0f, c, n);
#pragma omp parallel for num_threads(nt) schedule(static) if (m * n > 65536)
  for (int64_t r = 0; r < m; ++r) finish(r, 0, n);
  return out;
}
}  // namespace

// A block's MLP and its residual: residual + fc2(GELU(fc1(x))). Where the hidden activations
// ([rows, H], 4-8x the width of x) would not fit in the cache (batch 8 at the first two
// stages: 51 and 26 MB), rows go in blocks, so that they never reach memory: each thread
// multiplies its block by w1 on one MKL thread, adds b1 and GELU, multiplies by w2 and adds
// b2 and the residual. Otherwise two Linear steps, as coat_linear and coat_linear_add.
std::vector<paddle::Tensor> MlpForward(const paddle::Tensor& x, const paddle::Tensor& w1,
                                       const paddle::Tensor& b1, const paddle::Tensor& w2,
                                       const paddle::Tensor& b2, const paddle::Tensor& residual) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "coat_mlp takes CPU float32");
  PD_CHECK(w1.shape().size() == 2 && w2.shape().size() == 2, "coat_mlp: weights must be 2-D");
  const int64_t k = w1.shape()[0], h = w1.shape()[1], n = w2.shape()[1];
  PD_CHECK(w2.shape()[0] == h && x.shape().back() == k && b1.numel() == h && b2.numel() == n,
           "coat_mlp: x [.., K], w1 [K, H], b1 [H], w2 [H, N], b2 [N]");
  std::vector<int64_t> shape = x.shape();
  shape.back() = n;
  PD_CHECK(residual.shape() == shape, "coat_mlp: residual must be shaped like the output");
  const int64_t m = x.numel() / k;
  constexpr int64_t kBlockRows = 128;
  constexpr int64_t kCachedBytes = 16 << 20;  // hidden activations up to this stay whole
  if (m * h * static_cast<int64_t>(sizeof(float)) <= kCachedBytes) {
    auto hidden = linear(x, w1, b1, nullptr, true);
    return {linear(hidden, w2, b2, &residual, false)};
  }
  auto out = paddle::empty(shape, x.dtype(), x.place());
  const float* a = x.data<float>();
  const float* res = residual.data<float>();
  float* c = out.data<float>();
  const int64_t blocks = (m + kBlockRows - 1) / kBlockRows;
#pragma omp parallel num_threads(threads())
  {
    std::unique_ptr<float[]> hidden(new float[kBlockRows * h]);  // per thread
    [[maybe_unused]] MklOnThisThread one;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < blocks; ++t) {
      const int64_t r0 = t * kBlockRows, rows = std::min(kBlockRows, m - r0);
      cblas_sgemm(kRowMajor, kNoTrans, kNoTrans, rows, h, k, 1.0f, a + r0 * k, k, w1.data<float>(), h,
                  0.0f, hidden.get(), h);
      for (int64_t r = 0; r < rows; ++r) bias_act(hidden.get() + r * h, b1.data<float>(), h, true);
      cblas_sgemm(kRowMajor, kNoTrans, kNoTrans, rows, n, h, 1.0f, hidden.get(), h, w2.data<float>(), n,
                  0.0f, c + r0 * n, n);
      for (int64_t r = r0; r < r0 + rows; ++r) {
        float* __restrict__ row = c + r * n;
        const float* __restrict__ add = res + r * n;
        bias_act(row, b2.data<float>(), n, false);
        for (int64_t j = 0; j < n; ++j) row[j] += add[j];
      }
    }
  }
  return {out};
}

std::vector<std::vector<int64_t>> MlpInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w1,
                                                const std::vector<int64_t>& b1, const std::vector<int64_t>& w2,
                                                const std::vector<int64_t>& b2,
                                                const std::vector<int64_t>& residual) {
  return {residual};
}

std::vector<paddle::DataType> MlpInferDtype(const paddle::DataType& x, const paddle::DataType& w1,
                                            const paddle::DataType& b1, const paddle::DataType& w2,
                                            const paddle::DataType& b2, const paddle::DataType& residual) {
  return {x};
}

PD_BUILD_OP(coat_mlp)
    .Inputs({"X", "W1", "B1", "W2", "B2", "Residual"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(MlpForward))
    .SetInferShapeFn(PD_INFER_SHAPE(MlpInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(MlpInferDtype));

std::vector<paddle::Tensor> LinearForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                          const paddle::Tensor& bias, bool use_gelu) {
  return {linear(x, weight, bias, nullptr, use_gelu)};
}

// The patch embedding's product: rows of patches [.., C * p * p] times its convolution
// weight as [out, C * p * p], plus the bias.
std::vector<paddle::Tensor> PatchLinearForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                               const paddle::Tensor& bias) {
  return {linear(x, weight, bias, nullptr, false, true)};
}

std::vector<std::vector<int64_t>> PatchLinearInferShape(const std::vector<int64_t>& x,
                                                        const std::vector<int64_t>& weight,
                                                        const std::vector<int64_t>& bias) {
  std::vector<int64_t> shape = x;
  shape.back() = weight.front();
  return {shape};
}

std::vector<paddle::Tensor> LinearAddForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                             const paddle::Tensor& bias, const paddle::Tensor& residual) {
  return {linear(x, weight, bias, &residual, false)};
}

std::vector<std::vector<int64_t>> LinearInferShape(const std::vector<int64_t>& x,
                                                   const std::vector<int64_t>& weight,
                                                   const std::vector<int64_t>& bias) {
  std::vector<int64_t> shape = x;
  shape.back() = weight.back();
  return {shape};
}

std::vector<std::vector<int64_t>> LinearAddInferShape(const std::vector<int64_t>& x,
                                                      const std::vector<int64_t>& weight,
                                                      const std::vector<int64_t>& bias,
                                                      const std::vector<int64_t>& residual) {
  return {residual};
}

std::vector<paddle::DataType> LinearInferDtype(const paddle::DataType& x, const paddle::DataType& weight,
                                               const paddle::DataType& bias) {
  return {x};
}

std::vector<paddle::DataType> LinearAddInferDtype(const paddle::DataType& x, const paddle::DataType& weight,
                                                  const paddle::DataType& bias,
                                                  const paddle::DataType& residual) {
  return {x};
}

PD_BUILD_OP(coat_linear)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out"})
    .Attrs({"use_gelu: bool"})
    .SetKernelFn(PD_KERNEL(LinearForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(LinearInferDtype));

PD_BUILD_OP(coat_patch_linear)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(PatchLinearForward))
    .SetInferShapeFn(PD_INFER_SHAPE(PatchLinearInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(LinearInferDtype));

PD_BUILD_OP(coat_linear_add)
    .Inputs({"X", "Weight", "Bias", "Residual"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(LinearAddForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearAddInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(LinearAddInferDtype));
#endif  // COAT_MKL

// The attention core of a serial or parallel block:
//   kv = softmax_N(k)^T v                 [Ch, Ch] per head, the softmax over the tokens
//   att = scale * q kv + [0; q_img * crpe(v_img)]
// qkv: [B, N, 3 * C] as the qkv Linear gives it (C = heads * Ch, N = 1 + H * W, CLS first);
// weights[g]: [Cg, 1, k, k] depthwise kernels over consecutive channel groups of v_img
// (channel = head * Ch + c). Returns [B, N, C].
//
// Heads of 8, 16, ..., 64 channels (CoaT-Lite, coat_small; factor_attn_rows below) work on
// the token rows as they lie in qkv, in two phases: one task per (image, head) computes kv
// from the rows of k and v, then one task per image row writes q kv for every head and adds
// the crpe, so each output row is finished by one task while it is in cache.
//
// Other head widths (coat_tiny's 19, coat_mini's 27) go through channel planes, in two
// phases. First one task per (image, head): the task copies its head's q, k and v into
// channel planes [Ch, N] (tokens contiguous), where every step is a loop along the tokens:
// the softmax, the Ch x Ch dot products of kv and q kv; it then writes its columns of the
// output. Tasks are independent, so batch 1 keeps both cores busy, and a task's planes stay
// in cache. Then one task per image row adds the crpe: each channel group's convolution on
// the token rows of v as they lie in qkv (vectorised along the group's channels, as the cpe),
// times q. On planes, the convolution ran along rows as short as the image (7 at the last
// stage) and cost more than the rest of the op.
namespace {

constexpr int64_t kLanes = 8;  // one AVX register of floats; partial sums per lane

// Dot products of row ``a`` with rows b[0..M) (``stride`` apart), ``n`` long, one partial
// sum per lane so that the loop vectorises without reordering any lane's sum.
template <int M>
void dots(const float* __restrict__ a, const float* __restrict__ b, int64_t stride, int64_t n, float* out) {
  float sum[M][kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int m = 0; m < M; ++m)
      for (int64_t l = 0; l < kLanes; ++l) sum[m][l] += a[i + l] * b[m * stride + i + l];
  for (int m = 0; m < M; ++m) {
    float total = 0.0f;
    for (int64_t l = 0; l < kLanes; ++l) total += sum[m][l];
    for (int64_t j = i; j < n; ++j) total += a[j] * b[m * stride + j];
    out[m] = total;
  }
}

// scale * q softmax_N(k)^T v for one head of one image; q, k, v: token rows of this head's
// channels (``stride`` apart). Scratch: 4 * Ch * N floats. Writes this head's Ch columns of
// ``out`` (row stride C).
void attention_head(const float* q, const float* k, const float* v, int64_t stride, int64_t tokens,
                    int64_t Ch, float scale, float* scratch, float* out, int64_t out_stride) {
  float* qt = scratch;
  float* et = qt + Ch * tokens;
  float* vt = et + Ch * tokens;
  float* acc = vt + Ch * tokens;
  gather_planes(q, stride, tokens, Ch, qt);
  gather_planes(k, stride, tokens, Ch, et);
  gather_planes(v, stride, tokens, Ch, vt);
  // softmax over the tokens, per channel: e = exp(k - max), and scale / sum folded into kv
  std::vector<float> norm(Ch), kv(Ch * Ch);
  for (int64_t c = 0; c < Ch; ++c) {
    float* e = et + c * tokens;
    float lane_max[kLanes];
    std::fill(lane_max, lane_max + kLanes, -INFINITY);
    int64_t i = 0;
    for (; i + kLanes <= tokens; i += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) lane_max[l] = std::max(lane_max[l], e[i + l]);
    float top = *std::max_element(lane_max, lane_max + kLanes);
    for (int64_t j = i; j < tokens; ++j) top = std::max(top, e[j]);
    float lane_sum[kLanes] = {};
    for (i = 0; i + kLanes <= tokens; i += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) {
        e[i + l] = exp_nonpositive(e[i + l] - top);
        lane_sum[l] += e[i + l];
      }
    float total = 0.0f;
    for (int64_t l = 0; l < kLanes; ++l) total += lane_sum[l];
    for (int64_t j = i; j < tokens; ++j) {
      e[j] = exp_nonpositive(e[j] - top);
      total += e[j];
    }
    norm[c] = scale / total;
  }
#ifdef COAT_MKL
  if (Ch >= 32) {  // wide heads: as two products, by MKL on this thread
    cblas_sgemm(kRowMajor, kNoTrans, kTrans, Ch, Ch, tokens, 1.0f, et, tokens, vt, tokens, 0.0f, kv.data(), Ch);
    for (int64_t c1 = 0; c1 < Ch; ++c1)
      for (int64_t c2 = 0; c2 < Ch; ++c2) kv[c1 * Ch + c2] *= norm[c1];
    cblas_sgemm(kRowMajor, kTrans, kNoTrans, Ch, tokens, Ch, 1.0f, kv.data(), Ch, qt, tokens, 0.0f, acc, tokens);
    scatter_planes(acc, tokens, Ch, out, out_stride);
    return;
  }
#endif
  // kv[c1][c2] = sum_n e[c1][n] v[c2][n], times scale / sum(e[c1])
  for (int64_t c1 = 0; c1 < Ch; ++c1) {
    const float* e = et + c1 * tokens;
    float* row = kv.data() + c1 * Ch;
    int64_t c2 = 0;
    for (; c2 + 4 <= Ch; c2 += 4) dots<4>(e, vt + c2 * tokens, tokens, tokens, row + c2);
    for (; c2 < Ch; ++c2) dots<1>(e, vt + c2 * tokens, tokens, tokens, row + c2);
    for (c2 = 0; c2 < Ch; ++c2) row[c2] *= norm[c1];
  }
  // acc[c2][n] = sum_c1 kv[c1][c2] q[c1][n], 64 tokens at a time in registers
  constexpr int64_t kTile = 64;
  for (int64_t c2 = 0; c2 < Ch; ++c2) {
    float* dst = acc + c2 * tokens;
    for (int64_t n0 = 0; n0 < tokens; n0 += kTile) {
      const int64_t len = std::min(kTile, tokens - n0);
      float tile[kTile] = {};
      for (int64_t c1 = 0; c1 < Ch; ++c1) {
        const float w = kv[c1 * Ch + c2];
        const float* src = qt + c1 * tokens + n0;
        if (len == kTile)
          for (int64_t l = 0; l < kTile; ++l) tile[l] += w * src[l];
        else
          for (int64_t l = 0; l < len; ++l) tile[l] += w * src[l];
      }
      std::copy(tile, tile + len, dst + n0);
    }
  }
  scatter_planes(acc, tokens, Ch, out, out_stride);
}

// Consecutive channels of v that share one crpe kernel size.
struct CrpeGroup {
  int64_t first, count, k;
  std::vector<float> taps;  // [k * k, count]
  const float* bias;
};

// out += q * crpe(v) along image row i of one image: qkv and out point at the rows of pixel
// (0, 0) (3 * C and C floats apart); conv: scratch for one image row of C channels.
void add_crpe_row(const float* qkv, int64_t C, int64_t i, int64_t height, int64_t width,
                  const std::vector<CrpeGroup>& groups, float* conv, float* out) {
  for (const CrpeGroup& g : groups)
    depthwise_row(qkv + 2 * C + g.first, 3 * C, i, height, width, g.k, g.taps.data(), g.bias,
                  g.count, conv + g.first, C);
  for (int64_t j = 0; j < width; ++j) {
    const float* __restrict__ qp = qkv + (i * width + j) * 3 * C;
    const float* __restrict__ cp = conv + j * C;
    float* __restrict__ op = out + (i * width + j) * C;
    for (int64_t c = 0; c < C; ++c) op[c] += qp[c] * cp[c];
  }
}

// Heads of 8, 16, ..., 64 channels (every CoaT-Lite stage, coat_small): the same core without
// channel planes. Per (image, head), kv from the token rows of k and v as they lie in qkv;
// then per image row, q kv for every head plus the crpe term. The planes' copies, the
// scatter and the second pass over the output through memory are gone.
constexpr int64_t kChunk = 128;  // tokens per partial sum: sums of 3137 terms keep their digits

// Rows (of kv, or tokens of q) whose V vectors of sums fit in eight registers: 8, 4, 2, 2, 1...
constexpr int64_t register_rows(int V) { return V == 1 ? 8 : V == 2 ? 4 : V <= 4 ? 2 : 1; }

// kv += e^T v over ``count`` tokens (one chunk); e: [count, Ch], v: rows ``stride`` apart;
// R rows of kv at a time in registers, one partial sum per row and channel for the chunk. The
// chunk's rows of e and v stay in cache for the Ch / R passes.
template <int V>
void chunk_kv(const float* __restrict__ e, const float* __restrict__ v, int64_t stride, int64_t count,
              float* __restrict__ kv) {
  constexpr int64_t Ch = 8 * V, R = register_rows(V);
  for (int64_t r0 = 0; r0 < Ch; r0 += R) {
    f8 part[R][V] = {};
    for (int64_t n = 0; n < count; ++n) {
      f8 row[V];
      for (int64_t l = 0; l < V; ++l) row[l] = load8(v + n * stride + 8 * l);
      for (int64_t r = 0; r < R; ++r) {
        const f8 a = f8{} + e[n * Ch + r0 + r];
        for (int64_t l = 0; l < V; ++l) part[r][l] += a * row[l];
      }
    }
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < Ch; ++c) kv[(r0 + r) * Ch + c] += part[r][c / 8][c % 8];
  }
}

// kv = diag(scale / sum_n e) e^T v for one head, e = exp(k - max_n k) per channel; k, v: the
// head's channels of token 0, rows ``stride`` apart. e: scratch [tokens, Ch]; kv: [Ch, Ch].
// Sums run over chunks of kChunk tokens, each chunk's sums added in order.
template <int V>
void head_kv(const float* __restrict__ k, const float* __restrict__ v, int64_t stride, int64_t tokens,
             float scale, float* __restrict__ e, float* __restrict__ kv) {
  constexpr int64_t Ch = 8 * V;
  f8 most[V];
  for (int64_t l = 0; l < V; ++l) most[l] = f8{} - INFINITY;
  for (int64_t n = 0; n < tokens; ++n) {
    for (int64_t l = 0; l < V; ++l) {
      const f8 x = load8(k + n * stride + 8 * l);
      most[l] = x > most[l] ? x : most[l];
    }
  }
  // by MKL on this thread from 40 channels, over all tokens at once (the loops are faster
  // at 32 channels, MKL at 40)
#ifdef COAT_MKL
  constexpr bool by_mkl = Ch >= 40;
#else
  constexpr bool by_mkl = false;
#endif
  float top[Ch], total[Ch] = {};
  for (int64_t c = 0; c < Ch; ++c) top[c] = most[c / 8][c % 8];
  std::fill(kv, kv + Ch * Ch, 0.0f);
  for (int64_t n0 = 0; n0 < tokens; n0 += kChunk) {
    const int64_t n1 = std::min(tokens, n0 + kChunk);
    float part[Ch] = {};
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t c = 0; c < Ch; ++c) {
        const float x = exp_nonpositive(k[n * stride + c] - top[c]);
        e[n * Ch + c] = x;
        part[c] += x;
      }
    for (int64_t c = 0; c < Ch; ++c) total[c] += part[c];
    // the chunk's share of kv while its rows of e and v are in cache
    if (!by_mkl) chunk_kv<V>(e + n0 * Ch, v + n0 * stride, stride, n1 - n0, kv);
  }
#ifdef COAT_MKL
  if (by_mkl) cblas_sgemm(kRowMajor, kTrans, kNoTrans, Ch, Ch, tokens, 1.0f, e, Ch, v, stride, 0.0f, kv, Ch);
#endif
  for (int64_t c1 = 0; c1 < Ch; ++c1)
    for (int64_t c2 = 0; c2 < Ch; ++c2) kv[c1 * Ch + c2] *= scale / total[c1];
}

// out[p] = q[p] kv for P tokens of one head (q rows ``stride`` apart, out rows ``out_stride``).
template <int V, int P>
inline void head_q_kv(const float* __restrict__ q, int64_t stride, const float* __restrict__ kv,
                      float* __restrict__ out, int64_t out_stride) {
  constexpr int64_t Ch = 8 * V;
  f8 acc[P][V] = {};
  for (int64_t c1 = 0; c1 < Ch; ++c1)
    for (int64_t p = 0; p < P; ++p) {
      const f8 a = f8{} + q[p * stride + c1];
      for (int64_t l = 0; l < V; ++l) acc[p][l] += a * load8(kv + c1 * Ch + 8 * l);
    }
  for (int64_t p = 0; p < P; ++p)
    for (int64_t l = 0; l < V; ++l) store8(out + p * out_stride + 8 * l, acc[p][l]);
}

// q kv of every head for ``count`` tokens, P at a time.
template <int V>
void tokens_q_kv(const float* q, int64_t stride, const float* kv, int64_t heads, int64_t count,
                 float* out, int64_t out_stride) {
  constexpr int64_t Ch = 8 * V, P = register_rows(V);
  int64_t t = 0;
  for (; t + P <= count; t += P)
    for (int64_t h = 0; h < heads; ++h)
      head_q_kv<V, P>(q + t * stride + h * Ch, stride, kv + h * Ch * Ch, out + t * out_stride + h * Ch, out_stride);
  for (; t < count; ++t)
    for (int64_t h = 0; h < heads; ++h)
      head_q_kv<V, 1>(q + t * stride + h * Ch, stride, kv + h * Ch * Ch, out + t * out_stride + h * Ch, out_stride);
}

template <int V>
void factor_attn_rows(const float* in, int64_t batch, int64_t tokens, int64_t heads, int64_t height,
                      int64_t width, float scale, const std::vector<CrpeGroup>& groups, float* od) {
  constexpr int64_t Ch = 8 * V;
  const int64_t C = heads * Ch;
  std::vector<float> kv(batch * heads * Ch * Ch);
#pragma omp parallel num_threads(threads()) if (tokens * C > 4096)
  {
    std::unique_ptr<float[]> e(new float[tokens * Ch]);  // per thread
    [[maybe_unused]] MklOnThisThread one;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < batch * heads; ++t) {
      const float* x = in + (t / heads) * tokens * 3 * C + (t % heads) * Ch;
      head_kv<V>(x + C, x + 2 * C, 3 * C, tokens, scale, e.get(), kv.data() + t * Ch * Ch);
    }  // (barrier: every kv is complete)
    std::vector<float> conv(width * C);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < batch * height; ++t) {
      const int64_t b = t / height, i = t % height;
      const float* x = in + b * tokens * 3 * C;
      const float* kvb = kv.data() + b * heads * Ch * Ch;
      float* o = od + b * tokens * C;
      if (i == 0) tokens_q_kv<V>(x, 3 * C, kvb, heads, 1, o, C);  // the CLS token
      const int64_t first = 1 + i * width;
      tokens_q_kv<V>(x + first * 3 * C, 3 * C, kvb, heads, width, o + first * C, C);
      add_crpe_row(x + 3 * C, C, i, height, width, groups, conv.data(), o + C);
    }
  }
}

}  // namespace

std::vector<paddle::Tensor> FactorAttnForward(const paddle::Tensor& qkv,
                                              const std::vector<paddle::Tensor>& weights,
                                              const std::vector<paddle::Tensor>& biases,
                                              int64_t height, int64_t width, int64_t heads,
                                              float scale) {
  PD_CHECK(qkv.is_cpu() && qkv.dtype() == paddle::DataType::FLOAT32, "coat_factor_attn takes CPU float32");
  const auto& s = qkv.shape();
  PD_CHECK(s.size() == 3 && s[2] > 0 && s[2] % (3 * heads) == 0, "qkv must be [B, N, 3 * C]");
  const int64_t batch = s[0], tokens = s[1], C = s[2] / 3, Ch = C / heads;
  const int64_t plane = height * width;
  PD_CHECK(height > 0 && width > 0 && tokens == plane + 1, "N must be 1 + H * W, H and W at least 1");
  PD_CHECK(weights.size() == biases.size(), "one bias per weight");
  std::vector<CrpeGroup> groups;
  int64_t next = 0;
  for (size_t g = 0; g < weights.size(); ++g) {
    const int64_t count = weights[g].shape()[0], k = weights[g].shape()[2];
    PD_CHECK(biases[g].numel() == count && k % 2 == 1, "crpe kernels must be [Cg, 1, k, k], k odd");
    groups.push_back({next, count, k, taps_major(weights[g].data<float>(), count, k), biases[g].data<float>()});
    next += count;
  }
  PD_CHECK(next == C, "the groups' channels must add up to C");

  auto out = paddle::empty({batch, tokens, C}, qkv.dtype(), qkv.place());
  const float* in = qkv.data<float>();
  float* od = out.data<float>();
  if (Ch % 8 == 0 && Ch <= 64) {  // heads of 8, 16, ..., 64 channels: on the token rows
    using Rows = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float,
                          const std::vector<CrpeGroup>&, float*);
    static const Rows by_width[] = {factor_attn_rows<1>, factor_attn_rows<2>, factor_attn_rows<3>,
                                    factor_attn_rows<4>, factor_attn_rows<5>, factor_attn_rows<6>,
                                    factor_attn_rows<7>, factor_attn_rows<8>};
    by_width[Ch / 8 - 1](in, batch, tokens, heads, height, width, scale, groups, od);
    return {out};
  }
  const int64_t tasks = batch * heads;
#pragma omp parallel num_threads(threads()) if (tokens * C > 4096)
  {
    std::unique_ptr<float[]> scratch(new float[4 * Ch * tokens]);  // per thread
    [[maybe_unused]] MklOnThisThread one;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t b = t / heads, h = t % heads;
      const float* x = in + b * tokens * 3 * C + h * Ch;  // row n: q | k | v
      attention_head(x, x + C, x + 2 * C, 3 * C, tokens, Ch, scale, scratch.get(),
                     od + b * tokens * C + h * Ch, C);
    }  // (the loop ends in a barrier: the rows below are complete)
    std::vector<float> conv(width * C);  // one image row
#pragma omp for schedule(static)
    for (int64_t t = 0; t < batch * height; ++t) {
      const int64_t b = t / height;
      add_crpe_row(in + b * tokens * 3 * C + 3 * C, C, t % height, height, width, groups, conv.data(),
                   od + b * tokens * C + C);
    }
  }
  return {out};
}

std::vector<std::vector<int64_t>> FactorAttnInferShape(const std::vector<int64_t>& qkv,
                                                       const std::vector<std::vector<int64_t>>& weights,
                                                       const std::vector<std::vector<int64_t>>& biases,
                                                       int64_t height, int64_t width, int64_t heads,
                                                       float scale) {
  return {{qkv[0], qkv[1], qkv[2] / 3}};
}

std::vector<paddle::DataType> FactorAttnInferDtype(const paddle::DataType& qkv,
                                                   const std::vector<paddle::DataType>& weights,
                                                   const std::vector<paddle::DataType>& biases) {
  return {qkv};
}

PD_BUILD_OP(coat_factor_attn)
    .Inputs({"QKV", paddle::Vec("Weights"), paddle::Vec("Biases")})
    .Outputs({"Out"})
    .Attrs({"height: int64_t", "width: int64_t", "heads: int64_t", "scale: float"})
    .SetKernelFn(PD_KERNEL(FactorAttnForward))
    .SetInferShapeFn(PD_INFER_SHAPE(FactorAttnInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(FactorAttnInferDtype));

// x: [B, N, C] tokens, N = 1 + H * W (CLS first); weight [C, 1, k, k]. Returns x with
// depthwise(x_img) added to its image tokens, as ConvPosEnc does through NCHW maps. One task
// per image row, on the token rows as they are.
std::vector<paddle::Tensor> ConvPosEncForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                              const paddle::Tensor& bias, int64_t height, int64_t width) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "coat_conv_pos_enc takes CPU float32");
  const auto& s = x.shape();
  PD_CHECK(s.size() == 3 && height > 0 && width > 0 && s[1] == 1 + height * width,
           "x must be [B, 1 + H * W, C], H and W at least 1");
  const int64_t batch = s[0], tokens = s[1], channels = s[2];
  const int64_t k = weight.shape()[2];
  PD_CHECK(weight.shape()[0] == channels && k % 2 == 1, "weight must be [C, 1, k, k] with odd k");
  auto out = paddle::empty(s, x.dtype(), x.place());
  const float* in = x.data<float>();
  float* od = out.data<float>();
  const std::vector<float> wt = taps_major(weight.data<float>(), channels, k);
  const float* b = bias.data<float>();
#pragma omp parallel num_threads(threads()) if (batch * tokens * channels > 4096)
  {
    std::vector<float> conv(width * channels);  // one image row
#pragma omp for schedule(static)
    for (int64_t t = 0; t < batch * height; ++t) {
      const int64_t i = t % height;
      const float* xi = in + (t / height) * tokens * channels;
      float* oi = od + (t / height) * tokens * channels;
      if (i == 0) std::copy(xi, xi + channels, oi);  // the CLS token
      depthwise_row(xi + channels, channels, i, height, width, k, wt.data(), b, channels, conv.data(), channels);
      for (int64_t j = 0; j < width; ++j) {
        const int64_t n = 1 + i * width + j;
        for (int64_t c = 0; c < channels; ++c) oi[n * channels + c] = xi[n * channels + c] + conv[j * channels + c];
      }
    }
  }
  return {out};
}

std::vector<std::vector<int64_t>> ConvPosEncInferShape(const std::vector<int64_t>& x,
                                                       const std::vector<int64_t>& weight,
                                                       const std::vector<int64_t>& bias,
                                                       int64_t height, int64_t width) {
  return {x};
}

std::vector<paddle::DataType> ConvPosEncInferDtype(const paddle::DataType& x, const paddle::DataType& weight,
                                                   const paddle::DataType& bias) {
  return {x};
}

PD_BUILD_OP(coat_conv_pos_enc)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out"})
    .Attrs({"height: int64_t", "width: int64_t"})
    .SetKernelFn(PD_KERNEL(ConvPosEncForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ConvPosEncInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(ConvPosEncInferDtype));

// Patch rows [B, H/p * W/p, C * p * p] (a remainder of H or W ignored, as by a stride-p
// convolution), one task per (image, row of patches): fill(b, i, dst) writes the W/p patches
// of patch row i of image b, each in (c, y, x) order (a conv weight [out, C, p, p] flattened).
template <typename Fill>
paddle::Tensor patch_rows(const paddle::Tensor& x, int64_t batch, int64_t channels, int64_t height,
                          int64_t width, int64_t p, const Fill& fill) {
  const int64_t rows = height / p, cols = width / p;
  auto out = paddle::empty({batch, rows * cols, channels * p * p}, x.dtype(), x.place());
  float* od = out.data<float>();
#pragma omp parallel for num_threads(threads()) schedule(static) if (batch * rows > 64)
  for (int64_t bi = 0; bi < batch * rows; ++bi) fill(bi / rows, bi % rows, od + bi * cols * channels * p * p);
  return out;
}

// The patches of images x [B, C, H, W].
std::vector<paddle::Tensor> PatchesForward(const paddle::Tensor& x, int64_t p) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "coat_patches takes CPU float32");
  const auto& s = x.shape();
  PD_CHECK(s.size() == 4 && p > 0 && s[2] >= p && s[3] >= p, "x must be [B, C, H, W], H and W at least p");
  const int64_t channels = s[1], height = s[2], width = s[3];
  const int64_t cols = width / p, row_len = channels * p * p;
  const float* in = x.data<float>();
  return {patch_rows(x, s[0], channels, height, width, p, [&](int64_t b, int64_t i, float* out) {
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t y = 0; y < p; ++y) {
        const float* src = in + ((b * channels + c) * height + i * p + y) * width;
        for (int64_t j = 0; j < cols; ++j) {
          float* dst = out + j * row_len + (c * p + y) * p;
          for (int64_t xo = 0; xo < p; ++xo) dst[xo] = src[j * p + xo];
        }
      }
  })};
}

std::vector<std::vector<int64_t>> PatchesInferShape(const std::vector<int64_t>& x, int64_t p) {
  return {{x[0], (x[2] / p) * (x[3] / p), x[1] * p * p}};
}

std::vector<paddle::DataType> PatchesInferDtype(const paddle::DataType& x) { return {x}; }

PD_BUILD_OP(coat_patches)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"p: int64_t"})
    .SetKernelFn(PD_KERNEL(PatchesForward))
    .SetInferShapeFn(PD_INFER_SHAPE(PatchesInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(PatchesInferDtype));

// The same patches taken from the previous stage's tokens [B, 1 + H*W, C] (CLS first), as
// the stage's image [B, C, H, W] would give them, without making that image (Paddle's
// transpose into it is slow).
std::vector<paddle::Tensor> TokenPatchesForward(const paddle::Tensor& x, int64_t height, int64_t width,
                                                int64_t p) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "coat_token_patches takes CPU float32");
  const auto& s = x.shape();
  PD_CHECK(s.size() == 3 && s[1] == 1 + height * width && p > 0 && height >= p && width >= p,
           "x must be [B, 1 + H * W, C], H and W at least p");
  const int64_t tokens = s[1], channels = s[2];
  const int64_t cols = width / p, row_len = channels * p * p;
  const float* in = x.data<float>();
  return {patch_rows(x, s[0], channels, height, width, p, [&](int64_t b, int64_t i, float* out) {
    for (int64_t j = 0; j < cols; ++j) {
      float* __restrict__ dst = out + j * row_len;
      for (int64_t y = 0; y < p; ++y)
        for (int64_t xo = 0; xo < p; ++xo) {
          const float* __restrict__ src = in + (b * tokens + 1 + (i * p + y) * width + j * p + xo) * channels;
          for (int64_t c = 0; c < channels; ++c) dst[(c * p + y) * p + xo] = src[c];
        }
    }
  })};
}

std::vector<std::vector<int64_t>> TokenPatchesInferShape(const std::vector<int64_t>& x, int64_t height,
                                                         int64_t width, int64_t p) {
  return {{x[0], (height / p) * (width / p), x[2] * p * p}};
}

std::vector<paddle::DataType> TokenPatchesInferDtype(const paddle::DataType& x) { return {x}; }

PD_BUILD_OP(coat_token_patches)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"height: int64_t", "width: int64_t", "p: int64_t"})
    .SetKernelFn(PD_KERNEL(TokenPatchesForward))
    .SetInferShapeFn(PD_INFER_SHAPE(TokenPatchesInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(TokenPatchesInferDtype));

// x: [B, 1 + H * W, C] tokens. Output row (i, j) mixes the two source rows y_idx[i, :] and
// columns x_idx[j, :] with weights y_w[i, :], x_w[j, :]: first along y, then along x, as the
// separable matrix form does. Returns [B, 1 + Ho * Wo, C] with the CLS token copied.
std::vector<paddle::Tensor> ResampleForward(const paddle::Tensor& x, const paddle::Tensor& y_idx,
                                            const paddle::Tensor& y_w, const paddle::Tensor& x_idx,
                                            const paddle::Tensor& x_w, int64_t height, int64_t width) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "coat_resample takes CPU float32");
  const auto& s = x.shape();
  PD_CHECK(s.size() == 3 && height > 0 && width > 0 && s[1] == 1 + height * width,
           "x must be [B, 1 + H * W, C], H and W at least 1");
  const int64_t batch = s[0], channels = s[2], out_h = y_idx.shape()[0], out_w = x_idx.shape()[0];
  PD_CHECK(y_idx.dtype() == paddle::DataType::INT64 && x_idx.dtype() == paddle::DataType::INT64 &&
               y_w.dtype() == paddle::DataType::FLOAT32 && x_w.dtype() == paddle::DataType::FLOAT32,
           "the taps must be int64 indices and float32 weights");
  PD_CHECK(out_h > 0 && out_w > 0 && y_idx.shape() == y_w.shape() && x_idx.shape() == x_w.shape() &&
               y_idx.numel() == 2 * out_h && x_idx.numel() == 2 * out_w,
           "the taps must be [H', 2] and [W', 2], H' and W' at least 1");
  for (int64_t t = 0; t < 2 * out_h; ++t)
    PD_CHECK(y_idx.data<int64_t>()[t] >= 0 && y_idx.data<int64_t>()[t] < height, "a row tap outside the image");
  for (int64_t t = 0; t < 2 * out_w; ++t)
    PD_CHECK(x_idx.data<int64_t>()[t] >= 0 && x_idx.data<int64_t>()[t] < width, "a column tap outside the image");
  const int64_t tokens = 1 + out_h * out_w;
  auto out = paddle::empty({batch, tokens, channels}, x.dtype(), x.place());
  const float* in = x.data<float>();
  float* od = out.data<float>();
  const int64_t* yi = y_idx.data<int64_t>();
  const int64_t* xi = x_idx.data<int64_t>();
  const float* yw = y_w.data<float>();
  const float* xw = x_w.data<float>();
#pragma omp parallel for num_threads(threads()) schedule(static) if (batch * out_h * out_w * channels > 65536)
  for (int64_t bi = 0; bi < batch * out_h; ++bi) {
    const int64_t b = bi / out_h, i = bi % out_h;
    const float* img = in + b * s[1] * channels + channels;  // after the CLS token
    float* o = od + b * tokens * channels;
    if (i == 0) std::copy(img - channels, img, o);
    const float* r0 = img + yi[2 * i] * width * channels;
    const float* r1 = img + yi[2 * i + 1] * width * channels;
    const float wy0 = yw[2 * i], wy1 = yw[2 * i + 1];
    for (int64_t j = 0; j < out_w; ++j) {
      const float* a0 = r0 + xi[2 * j] * channels;
      const float* a1 = r1 + xi[2 * j] * channels;
      const float* b0 = r0 + xi[2 * j + 1] * channels;
      const float* b1 = r1 + xi[2 * j + 1] * channels;
      const float wx0 = xw[2 * j], wx1 = xw[2 * j + 1];
      float* dst = o + (1 + i * out_w + j) * channels;
      for (int64_t c = 0; c < channels; ++c)
        dst[c] = wx0 * (wy0 * a0[c] + wy1 * a1[c]) + wx1 * (wy0 * b0[c] + wy1 * b1[c]);
    }
  }
  return {out};
}

std::vector<std::vector<int64_t>> ResampleInferShape(const std::vector<int64_t>& x,
                                                     const std::vector<int64_t>& y_idx,
                                                     const std::vector<int64_t>& y_w,
                                                     const std::vector<int64_t>& x_idx,
                                                     const std::vector<int64_t>& x_w,
                                                     int64_t height, int64_t width) {
  return {{x[0], 1 + y_idx[0] * x_idx[0], x[2]}};
}

std::vector<paddle::DataType> ResampleInferDtype(const paddle::DataType& x, const paddle::DataType& y_idx,
                                                 const paddle::DataType& y_w, const paddle::DataType& x_idx,
                                                 const paddle::DataType& x_w) {
  return {x};
}

PD_BUILD_OP(coat_resample)
    .Inputs({"X", "YIdx", "YW", "XIdx", "XW"})
    .Outputs({"Out"})
    .Attrs({"height: int64_t", "width: int64_t"})
    .SetKernelFn(PD_KERNEL(ResampleForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ResampleInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(ResampleInferDtype));

// LayerNorm over the last axis of x: two passes over each row (mean, then the centred
// variance, as torch's reference formula), partial sums per lane.
std::vector<paddle::Tensor> LayerNormForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                             const paddle::Tensor& bias, float eps) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "coat_layer_norm takes CPU float32");
  const int64_t n = weight.numel();
  PD_CHECK(x.shape().back() == n && bias.numel() == n, "weight and bias must match the last axis of x");
  auto out = paddle::empty(x.shape(), x.dtype(), x.place());
  const float* in = x.data<float>();
  float* od = out.data<float>();
  const float* __restrict__ w = weight.data<float>();
  const float* __restrict__ b = bias.data<float>();
  const int64_t rows = x.numel() / n;
#pragma omp parallel for num_threads(threads()) schedule(static) if (rows * n > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict__ row = in + r * n;
    float* __restrict__ dst = od + r * n;
    float lanes[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) lanes[l] += row[i + l];
    float sum = 0.0f;
    for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
    for (int64_t j = i; j < n; ++j) sum += row[j];
    const float mean = sum / static_cast<float>(n);
    std::fill(lanes, lanes + kLanes, 0.0f);
    for (i = 0; i + kLanes <= n; i += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) {
        const float d = row[i + l] - mean;
        lanes[l] += d * d;
      }
    float squares = 0.0f;
    for (int64_t l = 0; l < kLanes; ++l) squares += lanes[l];
    for (int64_t j = i; j < n; ++j) squares += (row[j] - mean) * (row[j] - mean);
    const float rstd = 1.0f / std::sqrt(squares / static_cast<float>(n) + eps);
    for (int64_t j = 0; j < n; ++j) dst[j] = (row[j] - mean) * rstd * w[j] + b[j];
  }
  return {out};
}

std::vector<std::vector<int64_t>> LayerNormInferShape(const std::vector<int64_t>& x,
                                                      const std::vector<int64_t>& weight,
                                                      const std::vector<int64_t>& bias, float eps) {
  return {x};
}

std::vector<paddle::DataType> LayerNormInferDtype(const paddle::DataType& x, const paddle::DataType& weight,
                                                  const paddle::DataType& bias) {
  return {x};
}

PD_BUILD_OP(coat_layer_norm)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out"})
    .Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(LayerNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LayerNormInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(LayerNormInferDtype));
