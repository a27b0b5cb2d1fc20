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

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
