// SSE2: 4 floats / 2 doubles per vector, no FMA; the x86-64 baseline every CPU has.
#pragma once
#include <emmintrin.h>

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
    __m128 v;

    Vec() = default;
    Vec(__m128 x) : v(x) {}
    Vec(float x) : v(_mm_set1_ps(x)) {}
    static Vec load(const float* p) { return _mm_loadu_ps(p); }
    // 4 bytes widened to floats (0 .. 255)
    static Vec load_u8(const std::uint8_t* p) {
        std::int32_t bytes;
        std::memcpy(&bytes, p, sizeof(bytes));
        const __m128i zero = _mm_setzero_si128();
        __m128i w = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(bytes), zero), zero);
        return _mm_cvtepi32_ps(w);
    }
    void store(float* p) const { _mm_storeu_ps(p, v); }
    // non-temporal store (bypasses the caches, no read-for-ownership); p 16-byte aligned
    void stream(float* p) const { _mm_stream_ps(p, v); }

    friend Vec operator+(Vec a, Vec b) { return _mm_add_ps(a.v, b.v); }
    friend Vec operator-(Vec a, Vec b) { return _mm_sub_ps(a.v, b.v); }
    friend Vec operator*(Vec a, Vec b) { return _mm_mul_ps(a.v, b.v); }
    friend Vec operator/(Vec a, Vec b) { return _mm_div_ps(a.v, b.v); }
    friend Vec operator-(Vec a) { return _mm_xor_ps(a.v, _mm_set1_ps(-0.0f)); }
    friend Vec fmadd(Vec a, Vec b, Vec c) { return _mm_add_ps(_mm_mul_ps(a.v, b.v), c.v); }
    friend Vec fnmadd(Vec a, Vec b, Vec c) { return _mm_sub_ps(c.v, _mm_mul_ps(a.v, b.v)); }
    friend Vec sqrt(Vec a) { return _mm_sqrt_ps(a.v); }
    friend Vec max(Vec a, Vec b) { return _mm_max_ps(a.v, b.v); }
    friend Vec max_nan(Vec a, Vec b) {
        const __m128 nan = _mm_cmpunord_ps(a.v, a.v);
        return _mm_or_ps(_mm_and_ps(nan, a.v), _mm_andnot_ps(nan, _mm_max_ps(a.v, b.v)));
    }
    friend Vec min(Vec a, Vec b) { return _mm_min_ps(a.v, b.v); }
    friend Vec abs(Vec a) { return _mm_andnot_ps(_mm_set1_ps(-0.0f), a.v); }
    friend Vec where_positive(Vec cond, Vec a) {
        return _mm_and_ps(_mm_cmpgt_ps(cond.v, _mm_setzero_ps()), a.v);
    }
    friend float reduce_add(Vec a) {
        __m128 s = _mm_add_ps(a.v, _mm_movehl_ps(a.v, a.v));
        s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        return _mm_cvtss_f32(s);
    }
    friend float reduce_max(Vec a) {
        __m128 s = _mm_max_ps(a.v, _mm_movehl_ps(a.v, a.v));
        s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
        return _mm_cvtss_f32(s);
    }
};

template <>
struct Vec<double> {
    using value_type = double;
    static constexpr std::size_t size = 2;
    __m128d v;

    Vec() = default;
    Vec(__m128d x) : v(x) {}
    Vec(double x) : v(_mm_set1_pd(x)) {}
    static Vec load(const double* p) { return _mm_loadu_pd(p); }
    static Vec load_float(const float* p) {
        // two floats through an unaligned 64-bit load (p is only 4-byte aligned)
        return _mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    }
    void store_float(float* p) const {  // as static_cast<float>; a 64-bit store, as load_float
        _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_castps_si128(_mm_cvtpd_ps(v)));
    }
    // the low and the high half of a float vector, widened
    static Vec widen_low(Vec<float> f) { return _mm_cvtps_pd(f.v); }
    static Vec widen_high(Vec<float> f) { return _mm_cvtps_pd(_mm_movehl_ps(f.v, f.v)); }
    // 2 bytes widened to doubles (0 .. 255)
    static Vec load_u8(const std::uint8_t* p) {
        std::uint16_t bytes;
        std::memcpy(&bytes, p, sizeof(bytes));
        const __m128i zero = _mm_setzero_si128();
        __m128i w = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(bytes), zero), zero);
        return _mm_cvtepi32_pd(w);
    }
    void store(double* p) const { _mm_storeu_pd(p, v); }
    void stream(double* p) const { _mm_stream_pd(p, v); }  // p 16-byte aligned

    friend Vec operator+(Vec a, Vec b) { return _mm_add_pd(a.v, b.v); }
    friend Vec operator-(Vec a, Vec b) { return _mm_sub_pd(a.v, b.v); }
    friend Vec operator*(Vec a, Vec b) { return _mm_mul_pd(a.v, b.v); }
    friend Vec operator/(Vec a, Vec b) { return _mm_div_pd(a.v, b.v); }
    friend Vec operator-(Vec a) { return _mm_xor_pd(a.v, _mm_set1_pd(-0.0)); }
    friend Vec fmadd(Vec a, Vec b, Vec c) { return _mm_add_pd(_mm_mul_pd(a.v, b.v), c.v); }
    friend Vec fnmadd(Vec a, Vec b, Vec c) { return _mm_sub_pd(c.v, _mm_mul_pd(a.v, b.v)); }
    friend Vec sqrt(Vec a) { return _mm_sqrt_pd(a.v); }
    friend Vec max(Vec a, Vec b) { return _mm_max_pd(a.v, b.v); }
    friend Vec max_nan(Vec a, Vec b) {
        const __m128d nan = _mm_cmpunord_pd(a.v, a.v);
        return _mm_or_pd(_mm_and_pd(nan, a.v), _mm_andnot_pd(nan, _mm_max_pd(a.v, b.v)));
    }
    friend Vec min(Vec a, Vec b) { return _mm_min_pd(a.v, b.v); }
    friend Vec abs(Vec a) { return _mm_andnot_pd(_mm_set1_pd(-0.0), a.v); }
    friend Vec where_positive(Vec cond, Vec a) {
        return _mm_and_pd(_mm_cmpgt_pd(cond.v, _mm_setzero_pd()), a.v);
    }
    friend double reduce_add(Vec a) { return _mm_cvtsd_f64(_mm_add_sd(a.v, _mm_unpackhi_pd(a.v, a.v))); }
    friend double reduce_max(Vec a) { return _mm_cvtsd_f64(_mm_max_sd(a.v, _mm_unpackhi_pd(a.v, a.v))); }
};

// 4 unsigned 32-bit lanes: the integer side of the 16-bit conversions and the random bits
// (convert.h). Arithmetic wraps modulo 2^32.
template <>
struct Vec<std::uint32_t> {
    using value_type = std::uint32_t;
    static constexpr std::size_t size = 4;
    __m128i v;

    Vec() = default;
    Vec(__m128i x) : v(x) {}
    Vec(std::uint32_t x) : v(_mm_set1_epi32(static_cast<int>(x))) {}
    static Vec iota(std::uint32_t start) {
        return _mm_add_epi32(_mm_set1_epi32(static_cast<int>(start)), _mm_setr_epi32(0, 1, 2, 3));
    }
    static Vec load(const std::uint32_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
    void store(std::uint32_t* p) const { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }
    static Vec load_u16(const std::uint16_t* p) {
        return _mm_unpacklo_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), _mm_setzero_si128());
    }
    void store_u16(std::uint16_t* p) const {  // lanes < 65536: sign-extend the low halves so packs keeps them
        __m128i s = _mm_srai_epi32(_mm_slli_epi32(v, 16), 16);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi32(s, s));
    }
    static Vec load_u8(const std::uint8_t* p) {
        int bytes;
        std::memcpy(&bytes, p, sizeof(bytes));
        const __m128i zero = _mm_setzero_si128();
        return _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(bytes), zero), zero);
    }
    static Vec load_s8(const std::uint8_t* p) {  // sign-extended: each byte to the top of its lane, then down
        int bytes;
        std::memcpy(&bytes, p, sizeof(bytes));
        const __m128i zero = _mm_setzero_si128();
        return _mm_srai_epi32(_mm_unpacklo_epi16(zero, _mm_unpacklo_epi8(zero, _mm_cvtsi32_si128(bytes))), 24);
    }
    void store_u8(std::uint8_t* p) const {  // lanes < 256, so neither pack saturates
        const __m128i words = _mm_packs_epi32(v, v);
        const int bytes = _mm_cvtsi128_si32(_mm_packus_epi16(words, words));
        std::memcpy(p, &bytes, sizeof(bytes));
    }
    friend Vec operator+(Vec a, Vec b) { return _mm_add_epi32(a.v, b.v); }
    friend Vec operator-(Vec a, Vec b) { return _mm_sub_epi32(a.v, b.v); }
    // SSE2 has no 32-bit low multiply: even and odd lanes by the 32x32->64 multiply
    friend Vec operator*(Vec a, Vec b) {
        __m128i even = _mm_mul_epu32(a.v, b.v);
        __m128i odd = _mm_mul_epu32(_mm_srli_epi64(a.v, 32), _mm_srli_epi64(b.v, 32));
        return _mm_unpacklo_epi32(_mm_shuffle_epi32(even, _MM_SHUFFLE(0, 0, 2, 0)),
                                  _mm_shuffle_epi32(odd, _MM_SHUFFLE(0, 0, 2, 0)));
    }
    friend Vec operator&(Vec a, Vec b) { return _mm_and_si128(a.v, b.v); }
    friend Vec operator|(Vec a, Vec b) { return _mm_or_si128(a.v, b.v); }
    friend Vec operator^(Vec a, Vec b) { return _mm_xor_si128(a.v, b.v); }
    friend Vec operator>>(Vec a, int s) { return _mm_srli_epi32(a.v, s); }
    friend Vec operator<<(Vec a, int s) { return _mm_slli_epi32(a.v, s); }
    friend Vec cmpgt(Vec a, Vec b) { return _mm_cmpgt_epi32(a.v, b.v); }
    friend Vec cmpeq(Vec a, Vec b) { return _mm_cmpeq_epi32(a.v, b.v); }
    friend Vec max_signed(Vec a, Vec b) { return select(cmpgt(a, b), a, b); }  // SSE2 has no pmaxsd
    friend Vec min_signed(Vec a, Vec b) { return select(cmpgt(a, b), b, a); }
    friend Vec shift_right_signed(Vec a, int s) { return _mm_srai_epi32(a.v, s); }
    friend Vec select(Vec mask, Vec a, Vec b) {
        return _mm_or_si128(_mm_and_si128(mask.v, a.v), _mm_andnot_si128(mask.v, b.v));
    }
};

inline Vec<std::uint32_t> as_uint(Vec<float> x) { return _mm_castps_si128(x.v); }
inline Vec<float> as_float(Vec<std::uint32_t> x) { return _mm_castsi128_ps(x.v); }
// x is a NaN: one float compare, where lanes.h's generic form takes an and and an integer compare
inline Vec<std::uint32_t> is_nan(Vec<float> x) { return _mm_castps_si128(_mm_cmpunord_ps(x.v, x.v)); }

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
