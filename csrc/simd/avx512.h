// AVX-512 F/BW/DQ/VL: 16 floats / 8 doubles per vector (Skylake-X, Ice Lake, Zen 4 and later).
#pragma once
// GCC 12 warns falsely on its own avx512fintrin.h (_mm512_undefined_* under e.g. _mm512_cvtph_ps);
// the warnings stay on for the kernels' code
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include <cstdint>
#include "../dispatch.h"
#include "scalar.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {

template <class T> struct Vec;

template <>
struct Vec<float> {
    using value_type = float;
    static constexpr std::size_t size = 16;
    __m512 v;

    Vec() = default;
    Vec(__m512 x) : v(x) {}
    Vec(float x) : v(_mm512_set1_ps(x)) {}
    static Vec load(const float* p) { return _mm512_loadu_ps(p); }
    // 16 bytes widened to floats (0 .. 255)
    static Vec load_u8(const std::uint8_t* p) {
        return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    }
    void store(float* p) const { _mm512_storeu_ps(p, v); }
    // non-temporal store (bypasses the caches, no read-for-ownership); p 64-byte aligned
    void stream(float* p) const { _mm512_stream_ps(p, v); }

    friend Vec operator+(Vec a, Vec b) { return _mm512_add_ps(a.v, b.v); }
    friend Vec operator-(Vec a, Vec b) { return _mm512_sub_ps(a.v, b.v); }
    friend Vec operator*(Vec a, Vec b) { return _mm512_mul_ps(a.v, b.v); }
    friend Vec operator/(Vec a, Vec b) { return _mm512_div_ps(a.v, b.v); }
    friend Vec operator-(Vec a) { return _mm512_xor_ps(a.v, _mm512_set1_ps(-0.0f)); }
    friend Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a.v, b.v, c.v); }
    friend Vec fnmadd(Vec a, Vec b, Vec c) { return _mm512_fnmadd_ps(a.v, b.v, c.v); }
    friend Vec sqrt(Vec a) { return _mm512_sqrt_ps(a.v); }
    friend Vec max(Vec a, Vec b) { return _mm512_max_ps(a.v, b.v); }
    friend Vec max_nan(Vec a, Vec b) {
        return _mm512_mask_mov_ps(_mm512_max_ps(a.v, b.v), _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q), a.v);
    }
    friend Vec min(Vec a, Vec b) { return _mm512_min_ps(a.v, b.v); }
    friend Vec abs(Vec a) { return _mm512_andnot_ps(_mm512_set1_ps(-0.0f), a.v); }
    friend Vec where_positive(Vec cond, Vec a) {
        return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(cond.v, _mm512_setzero_ps(), _CMP_GT_OQ), a.v);
    }
    // halve to 256 bits, then as AVX2 does: the same pairing order on every x86 path
    friend float reduce_add(Vec a) {
        __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a.v), _mm512_extractf32x8_ps(a.v, 1));
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
    friend float reduce_max(Vec a) {
        __m256 h = _mm256_max_ps(_mm512_castps512_ps256(a.v), _mm512_extractf32x8_ps(a.v, 1));
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
};

template <>
struct Vec<double> {
    using value_type = double;
    static constexpr std::size_t size = 8;
    __m512d v;

    Vec() = default;
    Vec(__m512d x) : v(x) {}
    Vec(double x) : v(_mm512_set1_pd(x)) {}
    static Vec load(const double* p) { return _mm512_loadu_pd(p); }
    static Vec load_float(const float* p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
    void store_float(float* p) const { _mm256_storeu_ps(p, _mm512_cvtpd_ps(v)); }  // as static_cast<float>
    // the low and the high half of a float vector, widened
    static Vec widen_low(Vec<float> f) { return _mm512_cvtps_pd(_mm512_castps512_ps256(f.v)); }
    static Vec widen_high(Vec<float> f) {
        return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f.v), 1)));
    }
    // 8 bytes widened to doubles (0 .. 255)
    static Vec load_u8(const std::uint8_t* p) {
        return _mm512_cvtepi32_pd(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    }
    void store(double* p) const { _mm512_storeu_pd(p, v); }
    void stream(double* p) const { _mm512_stream_pd(p, v); }  // p 64-byte aligned

    friend Vec operator+(Vec a, Vec b) { return _mm512_add_pd(a.v, b.v); }
    friend Vec operator-(Vec a, Vec b) { return _mm512_sub_pd(a.v, b.v); }
    friend Vec operator*(Vec a, Vec b) { return _mm512_mul_pd(a.v, b.v); }
    friend Vec operator/(Vec a, Vec b) { return _mm512_div_pd(a.v, b.v); }
    friend Vec operator-(Vec a) { return _mm512_xor_pd(a.v, _mm512_set1_pd(-0.0)); }
    friend Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_pd(a.v, b.v, c.v); }
    friend Vec fnmadd(Vec a, Vec b, Vec c) { return _mm512_fnmadd_pd(a.v, b.v, c.v); }
    friend Vec sqrt(Vec a) { return _mm512_sqrt_pd(a.v); }
    friend Vec max(Vec a, Vec b) { return _mm512_max_pd(a.v, b.v); }
    friend Vec max_nan(Vec a, Vec b) {
        return _mm512_mask_mov_pd(_mm512_max_pd(a.v, b.v), _mm512_cmp_pd_mask(a.v, a.v, _CMP_UNORD_Q), a.v);
    }
    friend Vec min(Vec a, Vec b) { return _mm512_min_pd(a.v, b.v); }
    friend Vec abs(Vec a) { return _mm512_andnot_pd(_mm512_set1_pd(-0.0), a.v); }
    friend Vec where_positive(Vec cond, Vec a) {
        return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(cond.v, _mm512_setzero_pd(), _CMP_GT_OQ), a.v);
    }
    friend double reduce_add(Vec a) {
        __m256d h = _mm256_add_pd(_mm512_castpd512_pd256(a.v), _mm512_extractf64x4_pd(a.v, 1));
        __m128d s = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
        return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
    }
    friend double reduce_max(Vec a) {
        __m256d h = _mm256_max_pd(_mm512_castpd512_pd256(a.v), _mm512_extractf64x4_pd(a.v, 1));
        __m128d s = _mm_max_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
        return _mm_cvtsd_f64(_mm_max_sd(s, _mm_unpackhi_pd(s, s)));
    }
};

// 16 unsigned 32-bit lanes: the integer side of the 16-bit conversions and the random bits
// (convert.h). Arithmetic wraps modulo 2^32.
template <>
struct Vec<std::uint32_t> {
    using value_type = std::uint32_t;
    static constexpr std::size_t size = 16;
    __m512i v;

    Vec() = default;
    Vec(__m512i x) : v(x) {}
    Vec(std::uint32_t x) : v(_mm512_set1_epi32(static_cast<int>(x))) {}
    static Vec iota(std::uint32_t start) {
        return _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(start)),
                                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    }
    static Vec load(const std::uint32_t* p) { return _mm512_loadu_si512(p); }
    void store(std::uint32_t* p) const { _mm512_storeu_si512(p, v); }
    static Vec load_u16(const std::uint16_t* p) {
        return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    void store_u16(std::uint16_t* p) const {  // lanes < 65536
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(v));
    }
    // the high 16 bits of the lanes -> p[0..16): the two high bytes of each lane gathered to the
    // low half of each 128-bit lane (vpshufb), then those halves together (vpermq)
    friend void store_u16_high(Vec x, std::uint16_t* p) {
        const __m512i high = _mm512_shuffle_epi8(
            x.v, _mm512_set4_epi32(-1, -1, 0x0F0E0B0A, 0x07060302));  // per 128 bits: bytes 2,3, 6,7, 10,11, 14,15
        const __m512i joined = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), high);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_castsi512_si256(joined));
    }
    static Vec load_u8(const std::uint8_t* p) {
        return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    static Vec load_s8(const std::uint8_t* p) {  // sign-extended
        return _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    void store_u8(std::uint8_t* p) const {  // lanes < 256
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(v));
    }
    friend Vec operator+(Vec a, Vec b) { return _mm512_add_epi32(a.v, b.v); }
    friend Vec operator-(Vec a, Vec b) { return _mm512_sub_epi32(a.v, b.v); }
    friend Vec operator*(Vec a, Vec b) { return _mm512_mullo_epi32(a.v, b.v); }
    friend Vec operator&(Vec a, Vec b) { return _mm512_and_si512(a.v, b.v); }
    friend Vec operator|(Vec a, Vec b) { return _mm512_or_si512(a.v, b.v); }
    friend Vec operator^(Vec a, Vec b) { return _mm512_xor_si512(a.v, b.v); }
    friend Vec operator>>(Vec a, int s) { return _mm512_srli_epi32(a.v, static_cast<unsigned>(s)); }
    friend Vec operator<<(Vec a, int s) { return _mm512_slli_epi32(a.v, static_cast<unsigned>(s)); }
    // Compares give a mask register, not a vector of lane masks: select on it is one blend (or
    // folds into the op that feeds it, as a zero-masked shift), where a vector mask costs a
    // vpmovm2d and a vpternlogd on the two ports that every 512-bit integer op competes for.
    struct Mask {
        __mmask16 m;
    };
    friend Mask cmpgt(Vec a, Vec b) { return {_mm512_cmpgt_epi32_mask(a.v, b.v)}; }
    friend Mask cmpeq(Vec a, Vec b) { return {_mm512_cmpeq_epi32_mask(a.v, b.v)}; }
    friend Vec max_signed(Vec a, Vec b) { return _mm512_max_epi32(a.v, b.v); }
    friend Vec min_signed(Vec a, Vec b) { return _mm512_min_epi32(a.v, b.v); }
    friend Vec shift_right_signed(Vec a, int s) { return _mm512_srai_epi32(a.v, static_cast<unsigned>(s)); }
    friend Vec select(Mask mask, Vec a, Vec b) { return _mm512_mask_blend_epi32(mask.m, b.v, a.v); }
    // x << s where k != 0, else 0: one zero-masked shift (and a vptestmd, which the compiler can
    // fold with the op computing k), where the generic form (lanes.h) takes a compare and a blend
    friend Vec shift_left_where_nonzero(Vec k, Vec x, unsigned s) {
        return _mm512_maskz_slli_epi32(_mm512_test_epi32_mask(k.v, k.v), x.v, s);
    }
    // the low bytes of the lanes of a, b, c, d (each < 256) -> p[0..64): two vpackusdw, one
    // vpackuswb and one vpermd, where four vpmovdb take eight uops on port 5
    friend void store_u8x4(Vec a, Vec b, Vec c, Vec d, std::uint8_t* p) {
        const __m512i bytes = _mm512_packus_epi16(_mm512_packus_epi32(a.v, b.v), _mm512_packus_epi32(c.v, d.v));
        // 32-bit group 4 * l + j of bytes holds elements 4 * l .. 4 * l + 3 of the j-th vector
        const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_storeu_si512(p, _mm512_permutexvar_epi32(order, bytes));
    }
};

inline Vec<std::uint32_t> as_uint(Vec<float> x) { return _mm512_castps_si512(x.v); }
inline Vec<float> as_float(Vec<std::uint32_t> x) { return _mm512_castsi512_ps(x.v); }
// x is a NaN: one float compare into a mask register, where lanes.h's generic form takes an
// and and an integer compare
inline Vec<std::uint32_t>::Mask is_nan(Vec<float> x) { return {_mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q)}; }

// float16 <-> float by the F16C/AVX-512F conversions (round to nearest even, subnormals kept)
#define FUSEDOPT_HAS_F16C 1
inline Vec<float> f16c_load(const std::uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline void f16c_store(Vec<float> x, std::uint16_t* p) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// float -> bfloat16 to nearest even by AVX512_BF16's vcvtneps2bf16 (Cooper Lake, Sapphire Rapids,
// Zen 4), one instruction where the integer rounding of convert.h takes about ten 512-bit integer
// ops. It gives convert.h's bits (NaN: quiet, same sign and top payload bits; inf and overflow as
// the integer add) but for fp32 subnormals, which it reads as zero: a vector with one (the
// vfpclassps test) is left to convert.h's integer rounding, as is every vector on a CPU without
// the instruction (detected once by dispatch.cpp, the flag read per vector). The avx512 copy is
// compiled without -mavx512bf16 (it runs on Skylake-X), so the instruction is written in
// assembly, which the compiler does not check against the target (GCC/Clang syntax: MSVC keeps
// the integer rounding).
// Whether the CPU has it is dispatch.cpp's to say (cpu_features_in_use, with the ISAs; tests
// turn it off there to run the integer rounding here). Returns false when it stored nothing.
#if defined(__GNUC__)
#define FUSEDOPT_HAS_BF16_CVT 1
inline bool bf16_cvt_store(Vec<float> x, std::uint16_t* p) {
    if (!cpu_features_in_use.avx512bf16 || _mm512_fpclass_ps_mask(x.v, 0x20) != 0) return false;  // 0x20: subnormal
    __m256i h;
    asm("vcvtneps2bf16 %1, %0" : "=v"(h) : "v"(x.v));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
    return true;
}
#endif

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
