// The one-lane "vector": the reference every wider vector type must agree with, lane by lane.
// Kernels use it for the tail of an array, so Scalar<T> must round exactly like the ISA's
// Vec<T>: fmadd is fused when the ISA's vectors fuse it (FUSEDOPT_HAS_FMA) and two roundings
// when they do not. The build passes -ffp-contract=off so the compiler never fuses on its own.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#ifndef FUSEDOPT_ISA_NS
#error "compile kernel sources with -DFUSEDOPT_ISA_NS=<isa> (CMakeLists.txt does)"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {

template <class T>
struct Scalar {
    using value_type = T;
    static constexpr std::size_t size = 1;
    T v;

    Scalar() = default;
    Scalar(T x) : v(x) {}  // broadcast, as the vector types do
    static Scalar load(const T* p) { return Scalar(*p); }
    // one float widened to double: how float kernels accumulate in double
    static Scalar load_float(const float* p) { return Scalar(static_cast<T>(*p)); }
    void store_float(float* p) const { *p = static_cast<float>(v); }  // as static_cast<float>
    // one byte widened to T (0 .. 255): how a boolean mask is read
    static Scalar load_u8(const std::uint8_t* p) { return Scalar(static_cast<T>(*p)); }
    void store(T* p) const { *p = v; }
    // a store that bypasses the caches on ISAs that have one (see the vector types); here a store
    void stream(T* p) const { *p = v; }

    friend Scalar operator+(Scalar a, Scalar b) { return a.v + b.v; }
    friend Scalar operator-(Scalar a, Scalar b) { return a.v - b.v; }
    friend Scalar operator*(Scalar a, Scalar b) { return a.v * b.v; }
    friend Scalar operator/(Scalar a, Scalar b) { return a.v / b.v; }
    friend Scalar operator-(Scalar a) { return -a.v; }

    // a * b + c
    friend Scalar fmadd(Scalar a, Scalar b, Scalar c) {
#ifdef FUSEDOPT_HAS_FMA
        return std::fma(a.v, b.v, c.v);
#else
        return a.v * b.v + c.v;
#endif
    }
    // c - a * b
    friend Scalar fnmadd(Scalar a, Scalar b, Scalar c) {
#ifdef FUSEDOPT_HAS_FMA
        return std::fma(-a.v, b.v, c.v);
#else
        return c.v - a.v * b.v;
#endif
    }
    friend Scalar sqrt(Scalar a) { return std::sqrt(a.v); }
    // (a > b) ? a : b, the operand order of x86's maxps: a NaN in b propagates
    friend Scalar max(Scalar a, Scalar b) { return a.v > b.v ? a.v : b.v; }
    // max(a, b), NaN if either is (torch.maximum): a NaN in a is kept too
    friend Scalar max_nan(Scalar a, Scalar b) { return a.v != a.v ? a.v : a.v > b.v ? a.v : b.v; }
    friend Scalar min(Scalar a, Scalar b) { return a.v < b.v ? a.v : b.v; }
    friend Scalar abs(Scalar a) { return std::fabs(a.v); }
    // a where cond > 0, else 0 (a NaN cond gives 0): the ReLU gradient mask
    friend Scalar where_positive(Scalar cond, Scalar a) { return cond.v > T(0) ? a.v : T(0); }
    friend T reduce_add(Scalar a) { return a.v; }
    friend T reduce_max(Scalar a) { return a.v; }

    // Scalar<std::uint32_t>: the one-lane integer vector of the 16-bit conversions and the
    // random bits (convert.h). Arithmetic wraps modulo 2^32.
    static Scalar iota(T start) { return start; }  // start, start + 1, ... (one lane: start)
    static Scalar load_u16(const std::uint16_t* p) { return Scalar(static_cast<T>(*p)); }
    void store_u16(std::uint16_t* p) const { *p = static_cast<std::uint16_t>(v); }  // v < 65536
    static Scalar load_s8(const std::uint8_t* p) {  // sign-extended
        return static_cast<T>(static_cast<std::int32_t>(static_cast<std::int8_t>(*p)));
    }
    void store_u8(std::uint8_t* p) const { *p = static_cast<std::uint8_t>(v); }  // v < 256
    friend Scalar operator&(Scalar a, Scalar b) { return a.v & b.v; }
    friend Scalar operator|(Scalar a, Scalar b) { return a.v | b.v; }
    friend Scalar operator^(Scalar a, Scalar b) { return a.v ^ b.v; }
    friend Scalar operator>>(Scalar a, int s) { return a.v >> s; }
    friend Scalar operator<<(Scalar a, int s) { return a.v << s; }
    // all ones where a > b as signed 32-bit integers (as the SIMD compares), else 0
    friend Scalar cmpgt(Scalar a, Scalar b) {
        return static_cast<std::int32_t>(a.v) > static_cast<std::int32_t>(b.v) ? ~T(0) : T(0);
    }
    friend Scalar cmpeq(Scalar a, Scalar b) { return a.v == b.v ? ~T(0) : T(0); }
    // the larger (smaller) of a and b as signed 32-bit integers
    friend Scalar max_signed(Scalar a, Scalar b) {
        return static_cast<std::int32_t>(a.v) > static_cast<std::int32_t>(b.v) ? a.v : b.v;
    }
    friend Scalar min_signed(Scalar a, Scalar b) {
        return static_cast<std::int32_t>(a.v) > static_cast<std::int32_t>(b.v) ? b.v : a.v;
    }
    // a >> s as a signed 32-bit integer (the sign bit copied in; a floor division by 2^s)
    friend Scalar shift_right_signed(Scalar a, int s) {
        const std::int32_t x = static_cast<std::int32_t>(a.v);
        return static_cast<T>(x < 0 ? ~(~x >> s) : x >> s);
    }
    // a where mask is all ones, b where it is 0
    friend Scalar select(Scalar mask, Scalar a, Scalar b) { return mask.v ? a.v : b.v; }
};

// The bits of a float as an integer lane and back.
inline Scalar<std::uint32_t> as_uint(Scalar<float> x) {
    std::uint32_t u;
    std::memcpy(&u, &x.v, sizeof(u));
    return u;
}
inline Scalar<float> as_float(Scalar<std::uint32_t> x) {
    float f;
    std::memcpy(&f, &x.v, sizeof(f));
    return f;
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
