// NEON (AArch64 Advanced SIMD): 4 floats / 2 doubles per vector, fused multiply-add.
#pragma once
#include <arm_neon.h>

#include <cstdint>
#include <cstring>
#include "scalar.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {

template <class T> struct Vec;

template <>
struct Vec<float> {
    using value_type = float;
    static constexpr std::size_t size = 4;
    float32x4_t v;

    Vec() = default;
    Vec(float32x4_t x) : v(x) {}
    Vec(float x) : v(vdupq_n_f32(x)) {}
    static Vec load(const float* p) { return vld1q_f32(p); }
    // 4 bytes widened to floats (0 .. 255)
    static Vec load_u8(const std::uint8_t* p) {
        std::uint32_t bytes;
        std::memcpy(&bytes, p, sizeof(bytes));
        uint16x8_t h = vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(bytes)));
        return vcvtq_f32_u32(vmovl_u16(vget_low_u16(h)));
    }
    void store(float* p) const { vst1q_f32(p, v); }
    // the x86 types' non-temporal store; NEON intrinsics have none, so a plain store
    void stream(float* p) const { vst1q_f32(p, v); }

    friend Vec operator+(Vec a, Vec b) { return vaddq_f32(a.v, b.v); }
    friend Vec operator-(Vec a, Vec b) { return vsubq_f32(a.v, b.v); }
    friend Vec operator*(Vec a, Vec b) { return vmulq_f32(a.v, b.v); }
    friend Vec operator/(Vec a, Vec b) { return vdivq_f32(a.v, b.v); }
    friend Vec operator-(Vec a) { return vnegq_f32(a.v); }
    friend Vec fmadd(Vec a, Vec b, Vec c) { return vfmaq_f32(c.v, a.v, b.v); }
    friend Vec fnmadd(Vec a, Vec b, Vec c) { return vfmsq_f32(c.v, a.v, b.v); }
    friend Vec sqrt(Vec a) { return vsqrtq_f32(a.v); }
    // (a > b) ? a : b, as Scalar and x86 define it (vmaxq would propagate either NaN)
    friend Vec max(Vec a, Vec b) { return vbslq_f32(vcgtq_f32(a.v, b.v), a.v, b.v); }
    friend Vec max_nan(Vec a, Vec b) { return vmaxq_f32(a.v, b.v); }  // FMAX: NaN if either is
    friend Vec min(Vec a, Vec b) { return vbslq_f32(vcltq_f32(a.v, b.v), a.v, b.v); }
    friend Vec abs(Vec a) { return vabsq_f32(a.v); }
    friend Vec where_positive(Vec cond, Vec a) {
        return vreinterpretq_f32_u32(vandq_u32(vcgtq_f32(cond.v, vdupq_n_f32(0.0f)), vreinterpretq_u32_f32(a.v)));
    }
    friend float reduce_add(Vec a) {
        float32x2_t s = vadd_f32(vget_low_f32(a.v), vget_high_f32(a.v));
        return vget_lane_f32(s, 0) + vget_lane_f32(s, 1);
    }
    // max's (a > b) ? a : b in the x86 types' pairing (lanes 0, 1 against 2, 3, then 0 against
    // 1), not vmax's rules for NaN and signed zeros
    friend float reduce_max(Vec a) {
        float32x2_t lo = vget_low_f32(a.v), hi = vget_high_f32(a.v);
        float32x2_t s = vbsl_f32(vcgt_f32(lo, hi), lo, hi);
        return vget_lane_f32(s, 0) > vget_lane_f32(s, 1) ? vget_lane_f32(s, 0) : vget_lane_f32(s, 1);
    }
};

template <>
struct Vec<double> {
    using value_type = double;
    static constexpr std::size_t size = 2;
    float64x2_t v;

    Vec() = default;
    Vec(float64x2_t x) : v(x) {}
    Vec(double x) : v(vdupq_n_f64(x)) {}
    static Vec load(const double* p) { return vld1q_f64(p); }
    static Vec load_float(const float* p) { return vcvt_f64_f32(vld1_f32(p)); }
    void store_float(float* p) const { vst1_f32(p, vcvt_f32_f64(v)); }  // as static_cast<float>
    // the low and the high half of a float vector, widened
    static Vec widen_low(Vec<float> f) { return vcvt_f64_f32(vget_low_f32(f.v)); }
    static Vec widen_high(Vec<float> f) { return vcvt_high_f64_f32(f.v); }
    // 2 bytes widened to doubles (0 .. 255)
    static Vec load_u8(const std::uint8_t* p) {
        std::uint16_t bytes;
        std::memcpy(&bytes, p, sizeof(bytes));
        uint16x8_t h = vmovl_u8(vreinterpret_u8_u16(vdup_n_u16(bytes)));
        uint32x4_t w = vmovl_u16(vget_low_u16(h));
        return vcvtq_f64_u64(vmovl_u32(vget_low_u32(w)));
    }
    void store(double* p) const { vst1q_f64(p, v); }
    void stream(double* p) const { vst1q_f64(p, v); }

    friend Vec operator+(Vec a, Vec b) { return vaddq_f64(a.v, b.v); }
    friend Vec operator-(Vec a, Vec b) { return vsubq_f64(a.v, b.v); }
    friend Vec operator*(Vec a, Vec b) { return vmulq_f64(a.v, b.v); }
    friend Vec operator/(Vec a, Vec b) { return vdivq_f64(a.v, b.v); }
    friend Vec operator-(Vec a) { return vnegq_f64(a.v); }
    friend Vec fmadd(Vec a, Vec b, Vec c) { return vfmaq_f64(c.v, a.v, b.v); }
    friend Vec fnmadd(Vec a, Vec b, Vec c) { return vfmsq_f64(c.v, a.v, b.v); }
    friend Vec sqrt(Vec a) { return vsqrtq_f64(a.v); }
    friend Vec max(Vec a, Vec b) { return vbslq_f64(vcgtq_f64(a.v, b.v), a.v, b.v); }
    friend Vec max_nan(Vec a, Vec b) { return vmaxq_f64(a.v, b.v); }
    friend Vec min(Vec a, Vec b) { return vbslq_f64(vcltq_f64(a.v, b.v), a.v, b.v); }
    friend Vec abs(Vec a) { return vabsq_f64(a.v); }
    friend Vec where_positive(Vec cond, Vec a) {
        return vreinterpretq_f64_u64(vandq_u64(vcgtq_f64(cond.v, vdupq_n_f64(0.0)), vreinterpretq_u64_f64(a.v)));
    }
    friend double reduce_add(Vec a) { return vgetq_lane_f64(a.v, 0) + vgetq_lane_f64(a.v, 1); }
    friend double reduce_max(Vec a) {
        return vgetq_lane_f64(a.v, 0) > vgetq_lane_f64(a.v, 1) ? vgetq_lane_f64(a.v, 0) : vgetq_lane_f64(a.v, 1);
    }
};

// 4 unsigned 32-bit lanes: the integer side of the 16-bit conversions and the random bits
// (convert.h). Arithmetic wraps modulo 2^32. (float16 goes through convert.h's integer
// routines, as on SSE2: bit-identical to the x86 F16C results.)
template <>
struct Vec<std::uint32_t> {
    using value_type = std::uint32_t;
    static constexpr std::size_t size = 4;
    uint32x4_t v;

    Vec() = default;
    Vec(uint32x4_t x) : v(x) {}
    Vec(std::uint32_t x) : v(vdupq_n_u32(x)) {}
    static Vec iota(std::uint32_t start) {
        static const std::uint32_t k[4] = {0, 1, 2, 3};
        return vaddq_u32(vdupq_n_u32(start), vld1q_u32(k));
    }
    static Vec load(const std::uint32_t* p) { return vld1q_u32(p); }
    void store(std::uint32_t* p) const { vst1q_u32(p, v); }
    static Vec load_u16(const std::uint16_t* p) { return vmovl_u16(vld1_u16(p)); }
    void store_u16(std::uint16_t* p) const { vst1_u16(p, vmovn_u32(v)); }  // lanes < 65536
    static Vec load_u8(const std::uint8_t* p) {
        std::uint32_t bytes;
        std::memcpy(&bytes, p, sizeof(bytes));
        return vmovl_u16(vget_low_u16(vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(bytes)))));
    }
    static Vec load_s8(const std::uint8_t* p) {  // sign-extended
        std::uint32_t bytes;
        std::memcpy(&bytes, p, sizeof(bytes));
        return vreinterpretq_u32_s32(vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_u32(vdup_n_u32(bytes))))));
    }
    void store_u8(std::uint8_t* p) const {  // lanes < 256
        const uint16x4_t words = vmovn_u32(v);
        const std::uint32_t bytes = vget_lane_u32(vreinterpret_u32_u8(vmovn_u16(vcombine_u16(words, words))), 0);
        std::memcpy(p, &bytes, sizeof(bytes));
    }
    friend Vec operator+(Vec a, Vec b) { return vaddq_u32(a.v, b.v); }
    friend Vec operator-(Vec a, Vec b) { return vsubq_u32(a.v, b.v); }
    friend Vec operator*(Vec a, Vec b) { return vmulq_u32(a.v, b.v); }
    friend Vec operator&(Vec a, Vec b) { return vandq_u32(a.v, b.v); }
    friend Vec operator|(Vec a, Vec b) { return vorrq_u32(a.v, b.v); }
    friend Vec operator^(Vec a, Vec b) { return veorq_u32(a.v, b.v); }
    friend Vec operator>>(Vec a, int s) { return vshlq_u32(a.v, vdupq_n_s32(-s)); }
    friend Vec operator<<(Vec a, int s) { return vshlq_u32(a.v, vdupq_n_s32(s)); }
    friend Vec cmpgt(Vec a, Vec b) { return vcgtq_s32(vreinterpretq_s32_u32(a.v), vreinterpretq_s32_u32(b.v)); }
    friend Vec cmpeq(Vec a, Vec b) { return vceqq_u32(a.v, b.v); }
    friend Vec max_signed(Vec a, Vec b) {
        return vreinterpretq_u32_s32(vmaxq_s32(vreinterpretq_s32_u32(a.v), vreinterpretq_s32_u32(b.v)));
    }
    friend Vec min_signed(Vec a, Vec b) {
        return vreinterpretq_u32_s32(vminq_s32(vreinterpretq_s32_u32(a.v), vreinterpretq_s32_u32(b.v)));
    }
    friend Vec shift_right_signed(Vec a, int s) {
        return vreinterpretq_u32_s32(vshlq_s32(vreinterpretq_s32_u32(a.v), vdupq_n_s32(-s)));
    }
    friend Vec select(Vec mask, Vec a, Vec b) { return vbslq_u32(mask.v, a.v, b.v); }
};

inline Vec<std::uint32_t> as_uint(Vec<float> x) { return vreinterpretq_u32_f32(x.v); }
inline Vec<float> as_float(Vec<std::uint32_t> x) { return vreinterpretq_f32_u32(x.v); }

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
