// The vector layer a kernel source sees: Vec<T> (the widest vector of the ISA this copy of the
// kernel is compiled for) and Scalar<T> (one lane, rounding exactly as Vec<T> does), both in
// namespace fusedopt::<isa>. CMakeLists.txt compiles every kernel source once per ISA with
// FUSEDOPT_ISA_NS=<isa> and one of the FUSEDOPT_ISA_<ISA> macros set.
#pragma once
#include <cstddef>
#include <cstdint>

// For a per-vector helper that must inline into its loop: with several in one loop body, GCC's
// size heuristics otherwise leave a call per vector (measured in mixed.h's loops).
// FUSEDOPT_INLINE_BODY, for a loop body lambda (before its braces): a body left out of line
// for the one-element head or tail takes the address of what it captures, and the vector loop
// beside it then reloads every captured pointer and constant after each store, which might have
// written them (measured, SGD momentum, fp32 master params + bf16 grads and copy, 64K, 1 thread,
// thread CPU: 16.9-17.2 us with GCC's choice, 12.8-13.1 with the body inlined).
#if defined(__GNUC__)
#define FUSEDOPT_INLINE inline __attribute__((always_inline))
#define FUSEDOPT_INLINE_BODY __attribute__((always_inline))
#elif defined(_MSC_VER)
#define FUSEDOPT_INLINE __forceinline
#define FUSEDOPT_INLINE_BODY
#else
#define FUSEDOPT_INLINE inline
#define FUSEDOPT_INLINE_BODY
#endif

#if defined(FUSEDOPT_ISA_AVX512)
#define FUSEDOPT_HAS_FMA 1
#include "avx512.h"
#elif defined(FUSEDOPT_ISA_AVX2)
#define FUSEDOPT_HAS_FMA 1
#include "avx2.h"
#elif defined(FUSEDOPT_ISA_SSE2)
#include "sse2.h"
#elif defined(FUSEDOPT_ISA_NEON)
#define FUSEDOPT_HAS_FMA 1
#include "neon.h"
#elif defined(FUSEDOPT_ISA_SCALAR)
#include "scalar.h"
namespace fusedopt {
namespace FUSEDOPT_ISA_NS {
template <class T> using Vec = Scalar<T>;
}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt

#include "convert.h"
#else
#error "no FUSEDOPT_ISA_<ISA> macro defined"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {

// Asks for the cache line holding p (never faults, so p may point past the data).
// On x86 the instruction is written out: GCC 12 at -O3 dropped every __builtin_prefetch of the
// mixed-precision Adam loops (none in the avx512 object; at -O2 they were there), and with them
// fp32 params + 8-bit state AdamW at 16M took 1.03-1.07 ns/element instead of 0.89-0.90 (1
// thread, thread CPU time, 3 interleaved runs).
inline void prefetch(const void* p) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __asm__ volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#elif defined(__GNUC__)
    __builtin_prefetch(p);
#else
    (void)p;
#endif
}
// Asks for the cache line holding element `ahead` of p, which may lie past the data: the address
// is computed as an integer (a pointer past the end of its array would be undefined behaviour).
template <class T>
inline void prefetch(const T* p, std::ptrdiff_t ahead) {
    prefetch(reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(p) + static_cast<std::uintptr_t>(ahead) * sizeof(T)));
}

// Run body(V{}, i) over [0, n): the first `head` elements one at a time with Scalar<T> (so that
// the vectors start where the caller wants them, e.g. on a cache line), then full vectors, then
// the tail one element at a time. Because Scalar<T> rounds like Vec<T>, element i gets the same
// bits whichever of the two handles it (NaN payloads aside: an unfused a * b + c may take either
// operand's), so neither the head nor the way an array is cut into chunks (threads) changes a
// result.
template <class T, class Body>
inline void for_each_lane(std::size_t n, std::size_t head, Body&& body) {
    constexpr std::size_t W = Vec<T>::size;
    std::size_t i = 0;
    for (; i < head && i < n; ++i) body(Scalar<T>{}, i);
    for (; i + W <= n; i += W) body(Vec<T>{}, i);
    for (; i < n; ++i) body(Scalar<T>{}, i);
}
template <class T, class Body>
inline void for_each_lane(std::size_t n, Body&& body) {
    for_each_lane<T>(n, 0, body);
}

// The sum of term(V{}, i) over [0, n) for read-only passes (the bandwidth probe's reads, the
// non-finite check): the first `head` elements one at a time, then four vectors at a time into
// four accumulators (so that the adds do not wait on each other), then the rest one at a time.
template <class T, class Term>
inline T sum_lanes(std::size_t n, std::size_t head, Term&& term) {
    using V = Vec<T>;
    constexpr std::size_t W = V::size;
    V acc[4] = {V(T(0)), V(T(0)), V(T(0)), V(T(0))};
    T sum = T(0);
    std::size_t i = 0;
    for (; i < head && i < n; ++i) sum += term(Scalar<T>{}, i).v;
    for (; i + 4 * W <= n; i += 4 * W)
        for (std::size_t u = 0; u < 4; ++u) acc[u] = acc[u] + term(V{}, i + u * W);
    sum += reduce_add((acc[0] + acc[1]) + (acc[2] + acc[3]));
    for (; i < n; ++i) sum += term(Scalar<T>{}, i).v;
    return sum;
}

constexpr std::size_t kCacheLineBytes = 64;  // a multiple of every vector's size

// Elements of T before p's next cache line (0 if p is on one, or not aligned to T)
template <class T>
inline std::size_t elements_to_cache_line(const T* p) {
    const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(p), line = kCacheLineBytes;
    return address % sizeof(T) ? 0 : static_cast<std::size_t>((line - address % line) % line / sizeof(T));
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt

#include "convert.h"
