// The 8-bit blockwise code of optimizer state (issue 15; Dettmers et al., "8-bit Optimizers via
// Block-wise Quantization", 2022): blocks of kQuantBlock elements, each stored as one byte per
// element plus one float32 scale, the block's absmax. Included inside
// namespace fusedopt::<isa> by per-ISA kernel sources (quantize.cpp, and the optimizer's
// blockwise driver), so each ISA compiles its own copy.
//
// The code is float-like, so that it decodes and encodes with a few integer ops on the float's
// own bits and no table lookup (bitsandbytes' dynamic code is a 256-entry table: a gather per
// element). A code's magnitude k (7 bits signed, 8 bits unsigned) is
//     value(0) = 0,   value(k) = as_float((k + kOffset) << 20) * scale     (k >= 1)
// i.e. 3 mantissa bits and an exponent, offset so that the largest k is exactly 1.0 (the absmax
// decodes to itself, so encode(decode(c)) == c for all 256 codes, for any scale at which the
// smallest code is still a float32 with 3 exact mantissa bits: scale >= 2^-126 signed, 2^-112
// unsigned):
//     signed   (exp_avg, momentum_buffer, ...):  sign bit + k in 0..127, nonzero |values| in
//              [1.25 * 2^-16, 1] * scale: 16 binades of 8 steps, like e4m3 without subnormals;
//     unsigned (exp_avg_sq, state_sum, ...): k in 0..255, nonzero values in [1.25 * 2^-32, 1] *
//              scale: 32 binades, the square of the signed range, since exp_avg_sq ~ grad^2 when
//              exp_avg ~ grad.
// Encoding rounds |x| / scale to the nearest code (ties to the larger k), so within the range the
// relative error is at most 2^-4 (half a step of 2^-3 at the bottom of a binade), plus the fp32
// roundings of 1/scale and of the products (~2^-23). Below the smallest code:
//   - signed: |x| / scale <= 0.625 * 2^-16 encodes to (signed) 0, above to the smallest code;
//   - unsigned: every x != 0 encodes to at least the smallest code, never 0: exp_avg_sq is the
//     square of Adam's denominator, and a positive value rounded to 0 would make the update
//     exp_avg / eps (bitsandbytes keeps small values representable for the same reason).
// Special blocks (one branch per block, not per element):
//   - absmax < FLT_MIN (all zeros, or only fp32 subnormals, whose reciprocal overflows): scale 0,
//     all codes 0 (signed codes keep the sign bit, so -0.0 stays -0.0);
//   - any inf or NaN: scale NaN and codes 0 (plus sign bits): the whole block decodes to NaN,
//     as one NaN gradient poisons fp32 state.
// Negative inputs to the unsigned code are encoded by their magnitude (the state is never
// negative; there is no sign to keep).
// python/fusedopt/reference.py (quantize_blockwise, dequantize_blockwise) is the same code in
// NumPy, bitwise.
//
// The codec is written once per vector over the vector layer's integer lanes (decode, encode:
// integer ops on the bits and one float multiply, each exact or one IEEE rounding, so every ISA
// and the one-lane tail give the same bits). The optimizers' blockwise driver (mixed.h) calls
// them inside its update loop: codes are decoded as the loop loads them and the new state is
// kept in a block buffer whose absmax is known only at the block's end (begin_encode), then
// encoded a vector at a time inside the next block's loop.
#pragma once
#include <cfloat>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../simd/vec.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {

constexpr std::size_t kQuantBlock = 256;  // elements per block, one float32 scale (absmax) per block

namespace quant {

// k + kOffset is the float's bits >> 20 (8 exponent bits, 3 mantissa bits): the largest k is
// 1.0f, whose bits >> 20 are 127 << 3 = 1016.
template <bool SIGNED> constexpr std::uint32_t kOffset = SIGNED ? 1016 - 127 : 1016 - 255;
constexpr std::uint32_t kMagnitude = 0x7FFFFFFFu;

inline std::uint32_t bits_of(float x) {
    std::uint32_t b;
    std::memcpy(&b, &x, sizeof(b));
    return b;
}
inline float float_of(std::uint32_t b) {
    float x;
    std::memcpy(&x, &b, sizeof(x));
    return x;
}

}  // namespace quant

// One vector of codes at p of a block with the given scale -> their values:
//   value = sign * as_float((k + kOffset) << 20) * scale,   0 for k = 0
// Signed codes are loaded sign-extended (no dearer than zero-extended), so that the sign bit is
// in place.
template <bool SIGNED, class V>
FUSEDOPT_INLINE V decode(const std::uint8_t* p, V scale) {
    using U = UintVec<V>;
    const U c = SIGNED ? U::load_s8(p) : U::load_u8(p);
    const U k = SIGNED ? c & U(0x7Fu) : c;
    U bits = shift_left_where_nonzero(k, k + U(quant::kOffset<SIGNED>), 20);
    if constexpr (SIGNED) bits = bits | (c & U(0x80000000u));  // one vpternlogd
    return as_float(bits) * scale;
}

// One vector of x -> its code lanes, for a block whose absmax is usable (>= FLT_MIN) with
// inv = 1 / absmax, or (signed code only) unusable with inv = 0 (every element to code 0, the
// sign bit kept):
//   code = sign | nearest k to |x| * inv
// y = |x| * inv is in [0, 1 + 2^-23] (it underflows to 0 for |x| far below the absmax, so
// "x != 0" is asked of x's bits). The 20 low bits of y are rounded away, to nearest, ties up (a
// carry moves up into the exponent): one add, where ties to even took three ops more per
// vector (a tie needs |x| / scale to have at most 5 significant bits). Below the smallest code
// (1.25 * 2^e) signed rounds to the nearer of 0 and the smallest code (0 at the tie); unsigned
// never rounds a nonzero value to 0.
template <bool SIGNED, class V>
FUSEDOPT_INLINE UintVec<V> encode(V x, V inv) {
    using U = UintVec<V>;
    const U b = as_uint(x);
    const U magnitude = b & U(quant::kMagnitude);
    const U y = as_uint(as_float(magnitude) * inv);
    // k = ((y + 2^19) >> 20) - kOffset, with kOffset << 20 taken from the sum instead (as int32,
    // it may be < 0: the shift is arithmetic, a floor division either way)
    const U k = shift_right_signed(y + U(0x80000u - (quant::kOffset<SIGNED> << 20)), 20);
    if constexpr (SIGNED) {
        // k if y > half the smallest code (on y's bits, as y >= 0 is finite: integer order is
        // float order), at least 1; else 0. One compare into a mask and a zero-masked max on avx512.
        const U half_smallest(((quant::kOffset<true> + 1u) << 20) - (1u << 23));
        return select_or_zero(cmpgt(y, half_smallest), max_signed(k, U(1u))) | ((b >> 24) & U(0x80u));
    } else {
        return max_signed(k, min_signed(magnitude, U(1u)));  // x != 0: at least 1 (|x|'s bits < 2^31)
    }
}

// n <= kQuantBlock codes of one block -> out[0..n), scale = the block's absmax
template <bool SIGNED>
void decode_block(const std::uint8_t* codes, float scale, float* out, std::size_t n) {
    for_each_lane<float>(n, [&](auto vec, std::size_t i) {
        using V = decltype(vec);
        decode<SIGNED>(codes + i, V(scale)).store(out + i);
    });
}

// Four vectors of values in[0 .. 4W) -> codes[0 .. 4W), with inv as for encode: their codes
// packed together where the ISA can (store_u8x4)
constexpr std::size_t kEncodeGroup = 4 * Vec<float>::size;
template <bool SIGNED>
FUSEDOPT_INLINE void encode_group(const float* in, std::uint8_t* codes, float inv) {
    using V = Vec<float>;
    constexpr std::size_t W = V::size;
    store_u8x4(encode<SIGNED>(V::load(in), V(inv)), encode<SIGNED>(V::load(in + W), V(inv)),
               encode<SIGNED>(V::load(in + 2 * W), V(inv)), encode<SIGNED>(V::load(in + 3 * W), V(inv)), codes);
}

// n <= kQuantBlock values in[0..n) -> codes[0..n), with inv = 1 / the block's usable absmax (or 0,
// signed code only: see encode). Four vectors at a time (encode_group), then the rest.
template <bool SIGNED>
void encode_range(const float* in, std::uint8_t* codes, std::size_t n, float inv) {
    std::size_t i = 0;
    for (; i + kEncodeGroup <= n; i += kEncodeGroup) encode_group<SIGNED>(in + i, codes + i, inv);
    for_each_lane<float>(n - i, [&](auto vec, std::size_t j) {
        using VV = decltype(vec);
        encode<SIGNED>(VV::load(in + i + j), VV(inv)).store_u8(codes + i + j);
    });
}

// A block's values, its scale known, whose codes are still to be written by encode_range (n = 0:
// none, the block's codes are written already).
struct PendingCodes {
    const float* in = nullptr;
    std::uint8_t* codes = nullptr;
    std::size_t n = 0;
    float inv = 0.0f;
    bool is_signed = false;

    void encode(std::size_t from) const {
        if (from >= n) return;
        if (is_signed) encode_range<true>(in + from, codes + from, n - from, inv);
        else encode_range<false>(in + from, codes + from, n - from, inv);
    }
};

// The first half of encoding in[0..n) (n <= kQuantBlock) into codes: the block's new scale (its
// absmax) -> *scale, and the codes of the special blocks (see the top of this file); the codes
// of the others are left to *pending, so that a caller may write them later (the optimizers'
// blockwise driver writes them during the next block's update loop). *pending is written field
// by field, not returned: the driver copies it a few instructions later, and a 16-byte load of
// a returned struct's fields just stored one by one waits for them (a store-forwarding stall,
// 4% of the samples of fp32 + 8-bit AdamW at 16M).
template <bool SIGNED>
void begin_encode(const float* in, std::uint8_t* codes, std::size_t n, float* scale, PendingCodes* pending) {
    // the absmax on the bits: for non-negative floats integer order is float order, and every
    // NaN's bits are above inf's, so one integer max finds both the absmax and any inf/NaN
    // (magnitudes are below 2^31, where the signed max of the lanes is their unsigned max)
    using U = UintVec<Vec<float>>;
    constexpr std::size_t W = U::size;
    // two chains of maxes, where one (a max and a register move per vector) bounded the loop
    U max0(0u), max1(0u);
    std::size_t head = 0;
    for (; head + 2 * W <= n; head += 2 * W) {
        max0 = max_signed(max0, as_uint(Vec<float>::load(in + head)) & U(quant::kMagnitude));
        max1 = max_signed(max1, as_uint(Vec<float>::load(in + head + W)) & U(quant::kMagnitude));
    }
    U lanes_max = max_signed(max0, max1);
    std::uint32_t absmax_bits = 0;
    for_each_lane<float>(n - head, [&](auto vec, std::size_t i) {
        using V = decltype(vec);
        const UintVec<V> b = as_uint(V::load(in + head + i)) & UintVec<V>(quant::kMagnitude);
        if constexpr (std::is_same_v<UintVec<V>, U>) {
            lanes_max = max_signed(lanes_max, b);
        } else {
            std::uint32_t lane;
            b.store(&lane);
            absmax_bits = lane > absmax_bits ? lane : absmax_bits;
        }
    });
    std::uint32_t lanes[U::size];
    lanes_max.store(lanes);
    for (const std::uint32_t lane : lanes) absmax_bits = lane > absmax_bits ? lane : absmax_bits;
    const float absmax = quant::float_of(absmax_bits);
    if (absmax_bits >= 0x7F800000u) {  // an inf or a NaN: codes 0 (and the signs), scale NaN
        for (std::size_t i = 0; i < n; ++i)
            codes[i] = static_cast<std::uint8_t>(SIGNED ? (quant::bits_of(in[i]) >> 24) & 0x80u : 0u);
        *scale = quant::float_of(0x7FC00000u);
        pending->n = 0;
        return;
    }
    const bool usable = absmax >= FLT_MIN;
    if (!usable && !SIGNED) {  // all codes 0 (encode's "x != 0" assumes a usable absmax)
        std::memset(codes, 0, n);
        *scale = 0.0f;
        pending->n = 0;
        return;
    }
    *scale = usable ? absmax : 0.0f;
    pending->in = in;
    pending->codes = codes;
    pending->n = n;
    pending->inv = usable ? 1.0f / absmax : 0.0f;
    pending->is_signed = SIGNED;
}

// in[0..n) -> n codes; returns the block's new scale (absmax of in[0..n))
template <bool SIGNED>
float encode_block(const float* in, std::uint8_t* codes, std::size_t n) {
    float scale;
    PendingCodes pending;
    begin_encode<SIGNED>(in, codes, n, &scale, &pending);
    pending.encode(0);
    return scale;
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
