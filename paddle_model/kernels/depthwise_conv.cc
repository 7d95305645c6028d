// Depthwise 2-D convolution (stride 1, "same" zero padding, odd square kernel) for CPU fp32.
//
// CoaT's position encodings (cpe: 3x3, crpe: 3x3/5x5/7x7) are depthwise convolutions, which
// Paddle's CPU kernel runs 10-36x slower than torch's. Here each output row accumulates one
// kernel tap at a time over a contiguous span of the input row, a loop the compiler
// vectorises. It runs on one thread: on two cores a second OpenMP pool only fights MKL's.
// Starting each output from the bias and adding the taps in order gives torch's numbers
// exactly. Forward only: the model uses it for inference and keeps Paddle's convolution
// where gradients are needed.
#include <algorithm>
#include <vector>

#include "paddle/extension.h"

namespace {

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

}  // namespace

std::vector<paddle::Tensor> DepthwiseConvForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                                 const paddle::Tensor& bias) {
  PD_CHECK(x.is_cpu(), "coat_depthwise_conv2d runs on the CPU only");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, "coat_depthwise_conv2d takes float32");
  const auto& s = x.shape();
  PD_CHECK(s.size() == 4, "input must be [N, C, H, W]");
  const int64_t batch = s[0], channels = s[1], height = s[2], width = s[3];
  const int64_t kernel = weight.shape()[2];
  PD_CHECK(weight.shape()[0] == channels && weight.shape()[1] == 1 && weight.shape()[3] == kernel &&
               kernel % 2 == 1,
           "weight must be [C, 1, k, k] with odd k");
  auto out = paddle::empty(s, x.dtype(), x.place());
  const float* in = x.data<float>();
  const float* w = weight.data<float>();
  const float* b = bias.data<float>();
  float* o = out.data<float>();
  const int64_t plane = height * width;
  for (int64_t p = 0; p < batch * channels; ++p) {
    const int64_t c = p % channels;
    depthwise_plane(in + p * plane, w + c * kernel * kernel, b[c], o + p * plane, height, width,
                    kernel);
  }
  return {out};
}

std::vector<std::vector<int64_t>> DepthwiseConvInferShape(const std::vector<int64_t>& x,
                                                          const std::vector<int64_t>& weight,
                                                          const std::vector<int64_t>& bias) {
  return {x};
}

std::vector<paddle::DataType> DepthwiseConvInferDtype(const paddle::DataType& x,
                                                      const paddle::DataType& weight,
                                                      const paddle::DataType& bias) {
  return {x};
}

PD_BUILD_OP(coat_depthwise_conv2d)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(DepthwiseConvForward))
    .SetInferShapeFn(PD_INFER_SHAPE(DepthwiseConvInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(DepthwiseConvInferDtype));
