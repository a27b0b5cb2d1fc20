// AVX2 + FMA: 8 floats / 4 doubles per vector (x86-64, Haswell and Zen and later).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include "scalar.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {

template <class T> struct Vec;

template <>
struct Vec<float> {
    using value_type = float;
    static constexpr std::size_t size = 8;
    __m256 v;

    Vec() = default;
    Vec(__m256 x) : v(x) {}
    Vec(float x) : v(_mm256_set1_ps(x)) {}
    static Vec load(const float* p) { return _mm256_loadu_ps(p); }
    // 8 bytes widened to floats (0 .. 255)
    static Vec load_u8(const std::uint8_t* p) {
        return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    }
    void store(float* p) const { _mm256_storeu_ps(p, v); }
    // non-temporal store (bypasses the caches, no read-for-ownership); p 32-byte aligned
    void stream(float* p) const { _mm256_stream_ps(p, v); }

    friend Vec operator+(Vec a, Vec b) { return _mm256_add_ps(a.v, b.v); }
    friend Vec operator-(Vec a, Vec b) { return _mm256_sub_ps(a.v, b.v); }
    friend Vec operator*(Vec a, Vec b) { return _mm256_mul_ps(a.v, b.v); }
    friend Vec operator/(Vec a, Vec b) { return _mm256_div_ps(a.v, b.v); }
    friend Vec operator-(Vec a) { return _mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f)); }
    friend Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a.v, b.v, c.v); }
    friend Vec fnmadd(Vec a, Vec b, Vec c) { return _mm256_fnmadd_ps(a.v, b.v, c.v); }
    friend Vec sqrt(Vec a) { return _mm256_sqrt_ps(a.v); }
    friend Vec max(Vec a, Vec b) { return _mm256_max_ps(a.v, b.v); }
    friend Vec max_nan(Vec a, Vec b) {
        return _mm256_blendv_ps(_mm256_max_ps(a.v, b.v), a.v, _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q));
    }
    friend Vec min(Vec a, Vec b) { return _mm256_min_ps(a.v, b.v); }
    friend Vec abs(Vec a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v); }
    friend Vec where_positive(Vec cond, Vec a) {
        return _mm256_and_ps(_mm256_cmp_ps(cond.v, _mm256_setzero_ps(), _CMP_GT_OQ), a.v);
    }
    friend float reduce_add(Vec a) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
    friend float reduce_max(Vec a) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
};

template <>
struct Vec<double> {
    using value_type = double;
    static constexpr std::size_t size = 4;
    __m256d v;

    Vec() = default;
    Vec(__m256d x) : v(x) {}
    Vec(double x) : v(_mm256_set1_pd(x)) {}
    static Vec load(const double* p) { return _mm256_loadu_pd(p); }
    static Vec load_float(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
    void store_float(float* p) const { _mm_storeu_ps(p, _mm256_cvtpd_ps(v)); }  // as static_cast<float>
    // the low and the high half of a float vector, widened
    static Vec widen_low(Vec<float> f) { return _mm256_cvtps_pd(_mm256_castps256_ps128(f.v)); }
    static Vec widen_high(Vec<float> f) { return _mm256_cvtps_pd(_mm256_extractf128_ps(f.v, 1)); }
    // 4 bytes widened to doubles (0 .. 255)
    static Vec load_u8(const std::uint8_t* p) {
        std::int32_t bytes;
        std::memcpy(&bytes, p, sizeof(bytes));
        return _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(bytes)));
    }
    void store(double* p) const { _mm256_storeu_pd(p, v); }
    void stream(double* p) const { _mm256_stream_pd(p, v); }  // p 32-byte aligned

    friend Vec operator+(Vec a, Vec b) { return _mm256_add_pd(a.v, b.v); }
    friend Vec operator-(Vec a, Vec b) { return _mm256_sub_pd(a.v, b.v); }
    friend Vec operator*(Vec a, Vec b) { return _mm256_mul_pd(a.v, b.v); }
    friend Vec operator/(Vec a, Vec b) { return _mm256_div_pd(a.v, b.v); }
    friend Vec operator-(Vec a) { return _mm256_xor_pd(a.v, _mm256_set1_pd(-0.0)); }
    friend Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_pd(a.v, b.v, c.v); }
    friend Vec fnmadd(Vec a, Vec b, Vec c) { return _mm256_fnmadd_pd(a.v, b.v, c.v); }
    friend Vec sqrt(Vec a) { return _mm256_sqrt_pd(a.v); }
    friend Vec max(Vec a, Vec b) { return _mm256_max_pd(a.v, b.v); }
    friend Vec max_nan(Vec a, Vec b) {
        return _mm256_blendv_pd(_mm256_max_pd(a.v, b.v), a.v, _mm256_cmp_pd(a.v, a.v, _CMP_UNORD_Q));
    }
    friend Vec min(Vec a, Vec b) { return _mm256_min_pd(a.v, b.v); }
    friend Vec abs(Vec a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a.v); }
    friend Vec where_positive(Vec cond, Vec a) {
        return _mm256_and_pd(_mm256_cmp_pd(cond.v, _mm256_setzero_pd(), _CMP_GT_OQ), a.v);
    }
    friend double reduce_add(Vec a) {
        __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a.v), _mm256_extractf128_pd(a.v, 1));
        return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
    }
    friend double reduce_max(Vec a) {
        __m128d s = _mm_max_pd(_mm256_castpd256_pd128(a.v), _mm256_extractf128_pd(a.v, 1));
        return _mm_cvtsd_f64(_mm_max_sd(s, _mm_unpackhi_pd(s, s)));
    }
};

// 8 unsigned 32-bit lanes: the integer side of the 16-bit conversions and the random bits
// (convert.h). Arithmetic wraps modulo 2^32.
template <>
struct Vec<std::uint32_t> {
    using value_type = std::uint32_t;
    static constexpr std::size_t size = 8;
    __m256i v;

    Vec() = default;
    Vec(__m256i x) : v(x) {}
    Vec(std::uint32_t x) : v(_mm256_set1_epi32(static_cast<int>(x))) {}
    static Vec iota(std::uint32_t start) {
        return _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(start)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    static Vec load(const std::uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
    void store(std::uint32_t* p) const { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
    static Vec load_u16(const std::uint16_t* p) {
        return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    void store_u16(std::uint16_t* p) const {  // lanes < 65536, so the signed saturation of packus never bites
        __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(v, v), 0x08);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
    }
    static Vec load_u8(const std::uint8_t* p) {
        return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    }
    static Vec load_s8(const std::uint8_t* p) {  // sign-extended
        return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    }
    void store_u8(std::uint8_t* p) const {  // lanes < 256: the low bytes gathered in each 128-bit half, then joined
        const __m256i bytes = _mm256_shuffle_epi8(v, _mm256_set1_epi32(0x0C080400));
        const __m256i joined = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(joined));
    }
    friend Vec operator+(Vec a, Vec b) { return _mm256_add_epi32(a.v, b.v); }
    friend Vec operator-(Vec a, Vec b) { return _mm256_sub_epi32(a.v, b.v); }
    friend Vec operator*(Vec a, Vec b) { return _mm256_mullo_epi32(a.v, b.v); }
    friend Vec operator&(Vec a, Vec b) { return _mm256_and_si256(a.v, b.v); }
    friend Vec operator|(Vec a, Vec b) { return _mm256_or_si256(a.v, b.v); }
    friend Vec operator^(Vec a, Vec b) { return _mm256_xor_si256(a.v, b.v); }
    friend Vec operator>>(Vec a, int s) { return _mm256_srli_epi32(a.v, s); }
    friend Vec operator<<(Vec a, int s) { return _mm256_slli_epi32(a.v, s); }
    friend Vec cmpgt(Vec a, Vec b) { return _mm256_cmpgt_epi32(a.v, b.v); }
    friend Vec cmpeq(Vec a, Vec b) { return _mm256_cmpeq_epi32(a.v, b.v); }
    friend Vec max_signed(Vec a, Vec b) { return _mm256_max_epi32(a.v, b.v); }
    friend Vec min_signed(Vec a, Vec b) { return _mm256_min_epi32(a.v, b.v); }
    friend Vec shift_right_signed(Vec a, int s) { return _mm256_srai_epi32(a.v, s); }
    friend Vec select(Vec mask, Vec a, Vec b) { return _mm256_blendv_epi8(b.v, a.v, mask.v); }
    // Fewer ops than lanes.h's generic forms (which the scalar tails keep), the same bits.
    // Measured with these and is_nan below (FUSEDOPT_ISA=avx2 on Zen 5, 1M elements, 1 thread,
    // best of 9 in 5 alternating processes, ms): AdamW bf16 0.794 -> 0.717, bf16 + 8-bit state
    // 1.068 -> 0.958, fp32 + 8-bit 0.771 -> 0.715, fp32 master + bf16 copy 0.528 -> 0.482; SGD
    // bf16 0.428 -> 0.386; quantize 0.231 -> 0.204; the float32 loops unchanged.
    // x << s where k != 0, else 0: an andnot, where GCC makes the generic select's vpblendvb
    // with zero a vpcmpgtb (its sign-bit mask) and an andnot. (SSE2 needs no overload: GCC folds
    // its and/andnot/or select with zero into one pandn.)
    friend Vec shift_left_where_nonzero(Vec k, Vec x, unsigned s) {
        return _mm256_andnot_si256(_mm256_cmpeq_epi32(k.v, _mm256_setzero_si256()),
                                   _mm256_slli_epi32(x.v, static_cast<int>(s)));
    }
    // a where mask (a compare's all-ones or zero lanes) is set, else 0: an and, where GCC makes
    // the generic select's vpblendvb with zero a vpcmpgtb of the mask's sign bits and an and
    friend Vec select_or_zero(Vec mask, Vec a) { return _mm256_and_si256(mask.v, a.v); }
    // the high 16 bits of the lanes -> p[0..8): gathered to the low half of each 128-bit half
    // (vpshufb), the halves joined (vpermq), where a shift and the pack of store_u16 take three
    friend void store_u16_high(Vec x, std::uint16_t* p) {
        const __m256i high = _mm256_shuffle_epi8(
            x.v, _mm256_setr_epi32(0x07060302, 0x0F0E0B0A, -1, -1, 0x07060302, 0x0F0E0B0A, -1, -1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(_mm256_permute4x64_epi64(high, 0x08)));
    }
    // the low bytes of the lanes of a, b, c, d (each < 256) -> p[0..32): three packs and one
    // vpermd, where four store_u8 take eight ops and four stores
    friend void store_u8x4(Vec a, Vec b, Vec c, Vec d, std::uint8_t* p) {
        const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(a.v, b.v), _mm256_packus_epi32(c.v, d.v));
        // 32-bit group j of each 128-bit half holds 4 elements of the j-th vector (low half: its
        // elements 0..3, high half: 4..7)
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_permutevar8x32_epi32(bytes, order));
    }
};

inline Vec<std::uint32_t> as_uint(Vec<float> x) { return _mm256_castps_si256(x.v); }
inline Vec<float> as_float(Vec<std::uint32_t> x) { return _mm256_castsi256_ps(x.v); }
// x is a NaN: one float compare, where lanes.h's generic form takes an and and an integer compare
inline Vec<std::uint32_t> is_nan(Vec<float> x) { return _mm256_castps_si256(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q)); }

// float16 <-> float by F16C (round to nearest even, subnormals kept); dispatch.cpp asks the
// CPU for F16C before it picks this path
#define FUSEDOPT_HAS_F16C 1
inline Vec<float> f16c_load(const std::uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline void f16c_store(Vec<float> x, std::uint16_t* p) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT));
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
