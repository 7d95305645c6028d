// Depthwise 2-D convolution of one channel plane (stride 1, "same" zero padding, odd square
// kernel) for CPU fp32; the fused ops in fused_ops.cc run it for CoaT's position encodings.
//
// CoaT's position encodings (cpe: 3x3, crpe: 3x3/5x5/7x7) are depthwise convolutions, which
// Paddle's CPU kernel runs 10-36x slower than torch's. Here each output row accumulates one
// kernel tap at a time over a contiguous span of the input row, a loop the compiler
// vectorises. Starting each output from the bias and adding the taps in order gives torch's
// numbers exactly.
#include <algorithm>
#include <cstdint>

void coat_depthwise_plane(const float* __restrict__ in, const float* __restrict__ weight, float bias,
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
