// Fused steps of CoaT's blocks for CPU fp32 inference (the one source of coat_kernels).
//
// Paddle's eager CPU kernels for a bias add, GELU, a broadcast multiply, a pad, a transpose or
// a small batched matmul go through generic code; in CoaT they cost as much as the matrix
// products around them. These ops do each step in one pass over memory:
//   coat_bias_act_(x, bias, gelu) x += bias over the last axis, then exact (erf) GELU if asked.
//   coat_patches(x, p)            non-overlapping p x p patches of [B, C, H, W] as rows
//                                 [B, H/p * W/p, C * p * p], for the patch embedding's product.
//   coat_resample(x, taps...)      bilinear resize of the image tokens (two taps per axis),
//                                 CLS kept, in token layout: the parallel blocks' exchange.
//   coat_conv_pos_enc(x, w, b, ...) the conv position encoding on tokens: x + depthwise(x) over
//                                 the image tokens, the CLS token passed through.
//   coat_factor_attn(qkv, ...)    the factorised attention with its conv relative position
//                                 encoding, from the qkv projection's output straight to
//                                 the output projection's input, one image at a time.
// Forward only; the model keeps Paddle's ops where gradients are needed.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "paddle/extension.h"

namespace {

// Threads for these ops: as many as Paddle's math library is given (MKL_NUM_THREADS; Paddle's
// default is one), so that the kernels and the matrix products between them share the cores.
int threads() {
  static const int n = [] {
    const char* env = std::getenv("MKL_NUM_THREADS");
    const int parsed = env ? std::atoi(env) : 1;
    return std::max(1, std::min(parsed, 64));
  }();
  return n;
}

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

// Exact (erf) GELU through erfc(|x| / sqrt 2) by the Chebyshev fit of Numerical Recipes
// (fractional error below 1.2e-7 everywhere): gelu(x) = x - x/2 erfc(x/sqrt2) for x >= 0 and
// x/2 erfc(-x/sqrt2) below, which keeps the small negative tail accurate too.
inline float gelu(float x) {
  const float z = std::fabs(x) * 0.70710678118654752f;
  const float t = 1.0f / (1.0f + 0.5f * z);
  const float poly = -1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f +
                     t * (-0.18628806f + t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f +
                     t * (-0.82215223f + t * 0.17087277f))))))));
  const float half_erfc = 0.5f * x * t * exp_nonpositive(-z * z + poly);
  return x >= 0.0f ? x - half_erfc : half_erfc;
}

// Depthwise convolution of one channel plane: stride 1, "same" zero padding, odd square
// kernel. CoaT's position encodings (cpe 3x3, crpe 3x3/5x5/7x7) are such convolutions, which
// Paddle's CPU kernel runs 10-36x slower than torch's. Each output row accumulates one kernel
// tap at a time over a contiguous span of the input row, a loop the compiler vectorises;
// starting from the bias and adding the taps in order gives torch's numbers exactly.
void depthwise_plane(const float* __restrict__ in, const float* __restrict__ weight, float bias,
                     float* __restrict__ out, int64_t height, int64_t width, int64_t kernel) {
  const int64_t pad = kernel / 2;
  for (int64_t i = 0; i < height; ++i) {
    float* __restrict__ row = out + i * width;
    for (int64_t j = 0; j < width; ++j) row[j] = bias;
    for (int64_t di = 0; di < kernel; ++di) {
      const int64_t src_i = i + di - pad;
      if (src_i < 0 || src_i >= height) continue;
      const float* __restrict__ src = in + src_i * width;
      for (int64_t dj = 0; dj < kernel; ++dj) {
        const float w = weight[di * kernel + dj];
        const int64_t shift = dj - pad;  // out[j] += w * src[j + shift]
        const int64_t begin = std::max<int64_t>(0, -shift);
        const int64_t end = std::min<int64_t>(width, width - shift);
        const float* __restrict__ s = src + shift;
        for (int64_t j = begin; j < end; ++j) row[j] += w * s[j];
      }
    }
  }
}

// Token rows (``channels`` values each, ``stride`` apart) to channel planes [channels, n_rows],
// 16 channels at a time: each pass reads whole cache lines of a row and feeds 16 planes.
constexpr int64_t kBlock = 16;

void rows_to_planes(const float* rows, int64_t stride, int64_t n_rows, int64_t channels, float* planes) {
  for (int64_t c0 = 0; c0 < channels; c0 += kBlock) {
    const int64_t c1 = std::min(channels, c0 + kBlock);
    for (int64_t r = 0; r < n_rows; ++r)
      for (int64_t c = c0; c < c1; ++c) planes[c * n_rows + r] = rows[r * stride + c];
  }
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
  for (int64_t r = 0; r < rows; ++r) {
    float* __restrict__ row = data + r * n;
    if (use_gelu)
      for (int64_t j = 0; j < n; ++j) row[j] = gelu(row[j] + b[j]);
    else
      for (int64_t j = 0; j < n; ++j) row[j] += b[j];
  }
}

PD_BUILD_OP(coat_bias_act_)
    .Inputs({"X", "Bias"})
    .Outputs({"Out"})
    .Attrs({"use_gelu: bool"})
    .SetInplaceMap({{"X", "Out"}})
    .SetKernelFn(PD_KERNEL(BiasActForward));

// The attention core of a serial or parallel block, one image at a time:
//   kv_h = softmax_N(k_h)^T v_h          [Ch, Ch] per head, the softmax over the tokens
//   att = scale * q kv + [0; q_img * crpe(v_img)]
// qkv: [B, N, 3 * C] as the qkv Linear gives it (C = heads * Ch, N = 1 + H * W, CLS first);
// weights[g]: [Cg, 1, k, k] depthwise kernels over consecutive channel groups of v_img
// (channel = head * Ch + c). Returns [B, N, C]. Every pass runs along the token rows.
std::vector<paddle::Tensor> FactorAttnForward(const paddle::Tensor& qkv,
                                              const std::vector<paddle::Tensor>& weights,
                                              const std::vector<paddle::Tensor>& biases,
                                              int64_t height, int64_t width, int64_t heads,
                                              float scale) {
  PD_CHECK(qkv.is_cpu() && qkv.dtype() == paddle::DataType::FLOAT32, "coat_factor_attn takes CPU float32");
  const auto& s = qkv.shape();
  PD_CHECK(s.size() == 3 && s[2] % (3 * heads) == 0, "qkv must be [B, N, 3 * C]");
  const int64_t batch = s[0], tokens = s[1], C = s[2] / 3, Ch = C / heads;
  const int64_t plane = height * width;
  PD_CHECK(tokens == plane + 1, "N must be 1 + H * W");
  PD_CHECK(weights.size() == biases.size(), "one bias per weight");
  std::vector<const float*> w_of(C);
  std::vector<float> b_of(C);
  std::vector<int64_t> k_of(C);
  int64_t next = 0;
  for (size_t g = 0; g < weights.size(); ++g) {
    const int64_t k = weights[g].shape()[2];
    for (int64_t c = 0; c < weights[g].shape()[0]; ++c, ++next) {
      PD_CHECK(next < C, "the groups' channels must add up to C");
      w_of[next] = weights[g].data<float>() + c * k * k;
      b_of[next] = biases[g].data<float>()[c];
      k_of[next] = k;
    }
  }
  PD_CHECK(next == C, "the groups' channels must add up to C");

  auto out = paddle::empty({batch, tokens, C}, qkv.dtype(), qkv.place());
  float* od = out.data<float>();
  const bool per_image = batch >= threads();  // else the images' own loops share the threads
#pragma omp parallel for num_threads(threads()) schedule(static) if (per_image)
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<float> kmax(C), ksum(C), e(C), kv(heads * Ch * Ch);
    std::vector<float> v_planes(C * plane), conv_planes(C * plane);
    const float* x = qkv.data<float>() + b * tokens * 3 * C;  // row n: q | k | v
    float* o = od + b * tokens * C;
    // softmax statistics of k over the tokens, then kv accumulated with the same exponentials
    std::fill(kmax.begin(), kmax.end(), -INFINITY);
    for (int64_t n = 0; n < tokens; ++n)
      for (int64_t c = 0; c < C; ++c) kmax[c] = std::max(kmax[c], x[n * 3 * C + C + c]);
    std::fill(ksum.begin(), ksum.end(), 0.0f);
    std::fill(kv.begin(), kv.end(), 0.0f);
    for (int64_t n = 0; n < tokens; ++n) {
      const float* k_row = x + n * 3 * C + C;
      const float* v_row = k_row + C;
      for (int64_t c = 0; c < C; ++c) {
        e[c] = exp_nonpositive(k_row[c] - kmax[c]);
        ksum[c] += e[c];
      }
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t c1 = 0; c1 < Ch; ++c1) {
          const float w = e[h * Ch + c1];
          float* kv_row = kv.data() + (h * Ch + c1) * Ch;
          const float* v_head = v_row + h * Ch;
          for (int64_t c2 = 0; c2 < Ch; ++c2) kv_row[c2] += w * v_head[c2];
        }
    }
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t c1 = 0; c1 < Ch; ++c1) {
        const float norm = scale / ksum[h * Ch + c1];
        for (int64_t c2 = 0; c2 < Ch; ++c2) kv[(h * Ch + c1) * Ch + c2] *= norm;
      }
    // scale * q kv, row by row (kv carries the scale)
#pragma omp parallel for num_threads(threads()) schedule(static) if (!per_image && tokens > 256)
    for (int64_t n = 0; n < tokens; ++n) {
      const float* q_row = x + n * 3 * C;
      float* o_row = o + n * C;
      std::fill(o_row, o_row + C, 0.0f);
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t c1 = 0; c1 < Ch; ++c1) {
          const float w = q_row[h * Ch + c1];
          const float* kv_row = kv.data() + (h * Ch + c1) * Ch;
          float* o_head = o_row + h * Ch;
          for (int64_t c2 = 0; c2 < Ch; ++c2) o_head[c2] += w * kv_row[c2];
        }
    }
    // the conv relative position encoding: v_img as planes, convolved, times q_img, added
    rows_to_planes(x + 3 * C + 2 * C, 3 * C, plane, C, v_planes.data());
#pragma omp parallel for num_threads(threads()) schedule(static) if (!per_image && plane > 256)
    for (int64_t c = 0; c < C; ++c)
      depthwise_plane(v_planes.data() + c * plane, w_of[c], b_of[c], conv_planes.data() + c * plane,
                           height, width, k_of[c]);
#pragma omp parallel for num_threads(threads()) schedule(static) if (!per_image && plane > 256)
    for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
      const int64_t c1 = std::min(C, c0 + kBlock);
      for (int64_t p = 0; p < plane; ++p) {
        const float* q_row = x + (p + 1) * 3 * C;
        float* o_row = o + (p + 1) * C;
        for (int64_t c = c0; c < c1; ++c) o_row[c] += q_row[c] * conv_planes[c * plane + p];
      }
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
// depthwise(x_img) added to its image tokens, as ConvPosEnc does through NCHW maps.
std::vector<paddle::Tensor> ConvPosEncForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                              const paddle::Tensor& bias, int64_t height, int64_t width) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "coat_conv_pos_enc takes CPU float32");
  const auto& s = x.shape();
  PD_CHECK(s.size() == 3 && s[1] == 1 + height * width, "x must be [B, 1 + H * W, C]");
  const int64_t batch = s[0], tokens = s[1], channels = s[2], plane = height * width;
  const int64_t k = weight.shape()[2];
  PD_CHECK(weight.shape()[0] == channels && k % 2 == 1, "weight must be [C, 1, k, k] with odd k");
  auto out = paddle::empty(s, x.dtype(), x.place());
  const float* in = x.data<float>();
  float* od = out.data<float>();
  const float* w = weight.data<float>();
  const float* b = bias.data<float>();
#pragma omp parallel for num_threads(threads()) schedule(static) if (batch > 1)
  for (int64_t i = 0; i < batch; ++i) {
    std::vector<float> planes(channels * plane), conv(plane);
    const float* xi = in + i * tokens * channels;
    float* oi = od + i * tokens * channels;
    std::copy(xi, xi + tokens * channels, oi);  // the CLS token, and the residual
    rows_to_planes(xi + channels, channels, plane, channels, planes.data());
    for (int64_t c0 = 0; c0 < channels; c0 += kBlock) {
      const int64_t c1 = std::min(channels, c0 + kBlock);
      for (int64_t c = c0; c < c1; ++c) {  // the conv replaces its input plane
        depthwise_plane(planes.data() + c * plane, w + c * k * k, b[c], conv.data(), height, width, k);
        std::copy(conv.begin(), conv.end(), planes.begin() + c * plane);
      }
      for (int64_t p = 0; p < plane; ++p)
        for (int64_t c = c0; c < c1; ++c) oi[(p + 1) * channels + c] += planes[c * plane + p];
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

// x: [B, C, H, W]; row (i, j) of image b holds x[b, :, i*p:(i+1)*p, j*p:(j+1)*p] in (c, y, x)
// order, the order of a conv weight [out, C, p, p] flattened. A remainder of H or W is ignored,
// as by a stride-p convolution.
std::vector<paddle::Tensor> PatchesForward(const paddle::Tensor& x, int64_t p) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "coat_patches takes CPU float32");
  const auto& s = x.shape();
  PD_CHECK(s.size() == 4 && p > 0, "x must be [B, C, H, W]");
  const int64_t batch = s[0], channels = s[1], height = s[2], width = s[3];
  const int64_t rows = height / p, cols = width / p, row_len = channels * p * p;
  auto out = paddle::empty({batch, rows * cols, row_len}, x.dtype(), x.place());
  const float* in = x.data<float>();
  float* od = out.data<float>();
#pragma omp parallel for num_threads(threads()) schedule(static) if (batch * rows > 64)
  for (int64_t bi = 0; bi < batch * rows; ++bi) {
    const int64_t b = bi / rows, i = bi % rows;
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t y = 0; y < p; ++y) {
        const float* src = in + ((b * channels + c) * height + i * p + y) * width;
        for (int64_t j = 0; j < cols; ++j) {
          float* dst = od + (bi * cols + j) * row_len + (c * p + y) * p;
          for (int64_t xo = 0; xo < p; ++xo) dst[xo] = src[j * p + xo];
        }
      }
  }
  return {out};
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

// x: [B, 1 + H * W, C] tokens. Output row (i, j) mixes the two source rows y_idx[i, :] and
// columns x_idx[j, :] with weights y_w[i, :], x_w[j, :]: first along y, then along x, as the
// separable matrix form does. Returns [B, 1 + Ho * Wo, C] with the CLS token copied.
std::vector<paddle::Tensor> ResampleForward(const paddle::Tensor& x, const paddle::Tensor& y_idx,
                                            const paddle::Tensor& y_w, const paddle::Tensor& x_idx,
                                            const paddle::Tensor& x_w, int64_t height, int64_t width) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "coat_resample takes CPU float32");
  const auto& s = x.shape();
  PD_CHECK(s.size() == 3 && s[1] == 1 + height * width, "x must be [B, 1 + H * W, C]");
  const int64_t batch = s[0], channels = s[2], out_h = y_idx.shape()[0], out_w = x_idx.shape()[0];
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
