// Conversions between float and the 16-bit storage formats (bfloat16, IEEE float16), and the
// counter-based random bits of stochastic rounding, written once over the integer lanes of
// each ISA (Vec<std::uint32_t> / Scalar<std::uint32_t>). Every ISA gives the same bits: the
// integer routines are exact by construction, and the F16C/AVX-512F float16 conversions the
// x86 paths use round to nearest even with subnormals kept, as the integer routine does
// (tests/test_mixed_precision.py compares them). AVX-512 BF16's vcvtneps2bf16, where the CPU
// has it, rounds the vectors without an fp32 subnormal (which it would flush to zero; see
// avx512.h's bf16_cvt_store): the same bits.
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>

#include "lanes.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {

// The per-vector conversions are always inlined: the mixed-precision loops call them once per
// vector, and GCC's heuristics had at one time left store_bf16_adding out of line in the SGD
// bf16 + 8-bit loop (its constants reloaded per call: 1.25x slower; measured on Zen 5).

// bfloat16 -> float: exact (bfloat16 is the high half of a float's bits).
template <class V>
FUSEDOPT_INLINE V load_bf16(const std::uint16_t* p) {
    return as_float(UintVec<V>::load_u16(p) << 16);
}

// float -> bfloat16 by adding `add` (< 65536) to the float's bits and keeping the high half:
// add = 0x7FFF + (bit 16 of the float) rounds to nearest even, add = 16 random bits rounds
// up with probability (distance from the value truncated) / ulp, so unbiased. Finite values
// round to inf when they round past bfloat16's largest; inf stays inf; NaN stays a NaN of the
// same sign and top payload bits, made quiet (truncation alone could turn it into inf).
// (inf needs no case of its own: inf + add < the next exponent, so the high half stays inf.)
// The high halves are taken after the select (NaN: the high half of b | 0x400000), so that an
// ISA may store them without a shift (avx512.h's store_u16_high: one vpshufb and one vpermq where
// a shift and vpmovdw take three uops).
template <class V, class U>
FUSEDOPT_INLINE void store_bf16_adding(V x, U add, std::uint16_t* p) {
    const U b = as_uint(x);
    store_u16_high(select(is_nan(x), b | U(0x00400000u), b + add), p);
}

template <class V>
FUSEDOPT_INLINE void store_bf16(V x, std::uint16_t* p) {
#ifdef FUSEDOPT_HAS_BF16_CVT
    if constexpr (V::size > 1)
        if (bf16_cvt_store(x, p)) return;
#endif
    using U = UintVec<V>;
    store_bf16_adding(x, U(0x7FFFu) + ((as_uint(x) >> 16) & U(1u)), p);
}

// float16 -> float: exact. The integer form (F. Giesen's half_to_float): exponent rebiased,
// inf/NaN widened to all-ones exponents, subnormals renormalized by one exact float subtract.
template <class V>
FUSEDOPT_INLINE V load_f16(const std::uint16_t* p) {
#ifdef FUSEDOPT_HAS_F16C
    if constexpr (V::size > 1) return f16c_load(p);
    else return V(_cvtsh_ss(*p));
#else
    using U = UintVec<V>;
    const U h = U::load_u16(p);
    const U shifted = (h & U(0x7FFFu)) << 13;
    const U exponent = shifted & U(0x7C00u << 13);
    const U normal = shifted + U((127u - 15u) << 23);
    const U inf_nan = normal + U((128u - 16u) << 23);
    const U subnormal = as_uint(as_float(normal + U(1u << 23)) - as_float(U(113u << 23)));
    const U bits = select(cmpeq(exponent, U(0x7C00u << 13)), inf_nan, select(cmpeq(exponent, U(0u)), subnormal, normal));
    return as_float(bits | ((h & U(0x8000u)) << 16));
#endif
}

// float -> float16, round to nearest even (F. Giesen's float_to_half_fast3_rtne, with x86's
// NaN: quiet, same sign, top payload bits kept). Subnormal results come from one float add
// that rounds to nearest even at the subnormal's last bit.
template <class V>
FUSEDOPT_INLINE void store_f16(V x, std::uint16_t* p) {
#ifdef FUSEDOPT_HAS_F16C
    if constexpr (V::size > 1) f16c_store(x, p);
    else *p = _cvtss_sh(x.v, _MM_FROUND_TO_NEAREST_INT);
#else
    using U = UintVec<V>;
    constexpr std::uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    const U b = as_uint(x);
    const U sign = b & U(0x80000000u);
    const U a = b ^ sign;
    const U inf_nan = select(cmpgt(a, U(0x7F800000u)), U(0x7E00u) | ((a >> 13) & U(0x3FFu)), U(0x7C00u));
    const U subnormal = as_uint(as_float(a) + as_float(U(kDenormMagic))) - U(kDenormMagic);
    const U normal = (a + U(((15u - 127u) << 23) + 0xFFFu) + ((a >> 13) & U(1u))) >> 13;
    const U h = select(cmpgt(U(113u << 23), a), subnormal, select(cmpgt(U((127u + 16u) << 23), a), normal, inf_nan));
    (h | (sign >> 16)).store_u16(p);
#endif
}

// A 16-bit storage format's load and store, by format (F16: float16, else bfloat16; stores round
// to nearest even): what the mixed optimizers and the 16-bit gradient functions read and write.
template <bool F16, class V>
FUSEDOPT_INLINE V load_half(const std::uint16_t* p) {
    return F16 ? load_f16<V>(p) : load_bf16<V>(p);
}
template <bool F16, class V>
FUSEDOPT_INLINE void store_half(V x, std::uint16_t* p) {
    if constexpr (F16) store_f16(x, p);
    else store_bf16(x, p);
}

// ---- random bits of stochastic rounding ---------------------------------------------------

// C. Wellons' lowbias32 (an invertible 32-bit mix with low bias, hash-prospector) but for its
// last step, lowbias32(x) = y ^ (y >> 16) with y = lowbias32_mix(x): the two 16-bit halves of
// lowbias32(x) are (y ^ (y >> 16)) & 0xFFFF and y >> 16, so a caller that splits the output in
// halves saves the last xor.
template <class U>
U lowbias32_mix(U x) {
    x = x ^ (x >> 16);
    x = x * U(0x7FEB352Du);
    x = x ^ (x >> 15);
    return x * U(0x846CA68Bu);
}

// The random bits of stochastic rounding: 16 per element, half of one lowbias32 output, so that
// one hash serves two elements (the 512-bit multiply is two uops, and the hash was the largest
// part of a bfloat16 store). Elements are taken in groups of 32 (kRandomGroup) from element 0
// of the tensor; lane l < 16 of group q hashes the counter c = 16 q + l and gives element
// 32 q + l the low half of lowbias32((c ^ key_a) + key_b), element 32 q + 16 + l the high half,
// where (key_a, key_b) is the key of (seed, step, tensor, index >> 32) (rounding_key in optim.h)
// and q, l count within the index's low 32 bits. In one formula, for element e (low 32 bits):
//     bits(e) = (lowbias32((c ^ key_a) + key_b) >> (16 h)) & 0xFFFF,
//     c = (e >> 5) * 16 + (e & 15),  h = (e >> 4) & 1.
// Keyed twice, so that two keys give unrelated sequences: with c ^ key alone, step s+1 would
// get the bits of a permutation of step s's elements (c -> c ^ a ^ a', within aligned ranges);
// with the add, counter c of one key meets counter ((c ^ a) + b - b') ^ a' of the other, a
// random 32-bit distance away, outside the tensor but for a fraction ~n / 2^32 of its elements.
// One round of two multiplies (the former two rounds took four).
constexpr std::size_t kRandomGroup = 32;

// The hash inputs (c ^ key_a) + key_b of the counters start + l, l < U::size, for a start that
// is a multiple of the vector width W (a power of 2), with two vector ops where the plain form
// takes four: the lanes' start + l have the low bits of l and the high bits of start, so
//   ((start + l) ^ key_a) + key_b = ((start ^ (key_a & -W)) + key_b) + (l ^ (key_a & (W - 1)))
// (the last term has only the low bits, which the first leaves 0): one broadcast of a scalar,
// one add of a vector of lanes.
template <class U>
U random_input(std::uint32_t start, std::uint32_t key_a, std::uint32_t key_b) {
    const std::uint32_t low = static_cast<std::uint32_t>(U::size) - 1u;
    return U((start ^ (key_a & ~low)) + key_b) + (U::iota(0u) ^ U(key_a & low));
}

// The bits of the 32 elements of the group starting at element `first` (a multiple of 32, of
// the index's low 32 bits) -> out[0..32), as uint32 (< 65536) so that a store adds them with a
// plain load.
template <class U>
void random_group(std::uint32_t first, std::uint32_t key_a, std::uint32_t key_b, std::uint32_t* out) {
    constexpr std::size_t W = U::size;
    static_assert(W <= kRandomGroup / 2, "a vector of counters fits in a group's 16");
    for (std::size_t l = 0; l < kRandomGroup / 2; l += W) {
        const U y = lowbias32_mix(random_input<U>(first / 2 + static_cast<std::uint32_t>(l), key_a, key_b));
        const U high = y >> 16;
        ((y ^ high) & U(0xFFFFu)).store(out + l);
        high.store(out + kRandomGroup / 2 + l);
    }
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
