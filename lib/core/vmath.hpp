// exp for float that the compiler can vectorise: glibc's expf is a call per element (and GCC only
// uses its vector variant under -ffast-math), which made softmax and SiLU a visible share of a
// training step. Cephes' method: x = n ln2 + r with |r| <= ln2/2 (two-constant Cody-Waite split),
// exp(r) by a degree-7 polynomial, times 2^n built in the exponent bits. Relative error < 2e-7
// against double-precision exp over the whole finite range (tested); exp(-inf) = 0, and inputs
// above 88 give +inf (exp(88.72) is the float limit, nothing here comes near it), NaN stays NaN.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

namespace moe {

inline float exp_fast(float x) {
  constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kMax = 88.0f, kMin = -87.33654475f;
  // Plain compares and the 1.5·2^23 rounding trick instead of fmin/fmax/floor: GCC vectorises
  // those only under -ffast-math (their NaN and rounding-mode semantics).
  // NaN goes to kMin here (every compare is false) so no NaN reaches the int conversion below.
  const float xc = x > kMin ? (x < kMax ? x : kMax) : kMin;
  constexpr float kRound = 12582912.0f;  // 1.5 · 2^23: adding it rounds to the nearest integer
  const float n = (xc * kLog2e + kRound) - kRound;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = (p * r * r + r + 1.0f) * std::bit_cast<float>((int32_t(n) + 127) << 23);
  if (std::isnan(x)) return x;  // NaN must survive: non-finite steps are detected downstream
  return x < kMin ? 0.0f : (x > kMax ? INFINITY : y);
}

// 1 / (1 + exp(-x)).
inline float sigmoid_fast(float x) { return 1.0f / (1.0f + exp_fast(-x)); }

}  // namespace moe
