// Integer-lane operations written once over each ISA's Vec / Scalar types, in their generic
// form: an ISA header may define its own overload of one (avx512.h does, in fewer
// instructions), which overload resolution prefers to these templates.
#pragma once
#include <cstdint>
#include <utility>

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {

// the unsigned 32-bit lanes of the same width as float vector V
template <class V>
using UintVec = decltype(as_uint(std::declval<V>()));

// x << s where k != 0, else 0
template <class U>
FUSEDOPT_INLINE U shift_left_where_nonzero(U k, U x, unsigned s) {
    return select(cmpeq(k, U(0u)), U(0u), x << static_cast<int>(s));
}
// a where mask is all ones, else 0 (mask: a compare's result)
template <class M, class U>
FUSEDOPT_INLINE U select_or_zero(M mask, U a) {
    return select(mask, a, U(0u));
}
// the low bytes of the lanes of a, b, c, d (each < 256) -> p[0 .. 4 * U::size)
template <class U>
FUSEDOPT_INLINE void store_u8x4(U a, U b, U c, U d, std::uint8_t* p) {
    a.store_u8(p);
    b.store_u8(p + U::size);
    c.store_u8(p + 2 * U::size);
    d.store_u8(p + 3 * U::size);
}

// the high 16 bits of the lanes of x -> p[0 .. U::size)
template <class U>
FUSEDOPT_INLINE void store_u16_high(U x, std::uint16_t* p) {
    (x >> 16).store_u16(p);
}
// x is a NaN, as a mask of lanes (an ISA with a float compare into a mask register overloads it)
template <class V>
FUSEDOPT_INLINE auto is_nan(V x) {
    using U = UintVec<V>;
    return cmpgt(as_uint(x) & U(0x7FFFFFFFu), U(0x7F800000u));
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
