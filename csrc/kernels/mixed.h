// The mixed-precision and 8-bit-state optimizer kernels: the float32 update loops of
// optim_loops.h over blocks of a call whose arrays are stored in other formats. Included by one
// source per optimizer (mixed_adam.cpp, ...), each compiling mixed<> for its optimizer's loops:
// mixed<> instantiates a loop per storage combination, and in one file the four optimizers' took
// the longest compile of the build (10.5 min per ISA in the sanitizer build on a Zen 3 core).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#include "optim_loops.h"
#include "quantize.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {
namespace {

// ---- mixed precision and 8-bit state -----------------------------------------------------------
//
// A call with any array not float32 (bfloat16/float16 params or grads, bfloat16 or 8-bit state, a
// param copy) runs the float32 loops of optim_loops.h over blocks of kStage elements. For the
// storage combinations compiled (Fixed), through an accessor
// whose loads widen 16-bit arrays and decode 8-bit codes (with their block's scale) in registers,
// and whose stores round to 16 bits (to nearest even, or stochastically for bfloat16 params) and
// write the param copy. The new 8-bit state of a block waits in an L1 buffer, since its scale is
// the block's new absmax, and is encoded during the next block's loop (one pass over memory still;
// see Quant8). Each storage format is one type below (Float32, Half, BFloat16Stochastic, Quant8);
// Fixed gives each array its type at compile time, for the common combinations (mixed); the
// others take Staged, which widens each block into float32 buffers before the loop and narrows
// them after it (as the former driver below did for all). The optimizers' loops are the float32
// ones, not a copy per combination of dtypes. A block is an 8-bit block (the caller starts chunks
// on block boundaries), so each 8-bit block is decoded and re-encoded whole.
//
// Measured against the former driver (each block decoded into float buffers, the loop run over
// them, the buffers encoded), AdamW on avx512 (Sapphire Rapids), 64K elements in cache, thread
// CPU time per element, best of 15 x 100 steps, 3 interleaved runs: fp32 params + 8-bit state
// 0.99-1.02 -> 0.79-0.86 ns, bf16 params/grads/state (SR) 1.05-1.10 -> 0.81-0.84, bf16 + 8-bit
// state 1.29-1.33 -> 1.06-1.10, fp32 master + bf16 grads and copy 0.65-0.68 -> 0.50-0.51; the
// all-fp32 loop 0.39-0.41. What is left is the conversions' integer work (the loop is no
// longer waiting on anything else): 512-bit integer ops issue on two ports of this core, and a
// bf16 + 8-bit AdamW vector of 16 elements took about a hundred of them. Fewer since (counted in
// the avx512 object: the update loop ~55, the two states' absmax and encoding ~25): codes packed
// four vectors at a time, the codec's selects, offsets and signs folded into fewer ops, the
// random bits' counter one broadcast, bf16 high halves stored without a shift. Interleaved, the
// same machine under load, best of 11 x 15 x 50 steps at 64K (thread CPU ns/element, spread
// ~4%): fp32 + 8-bit 0.788 -> 0.723, bf16 + 8-bit (SR) 1.069 -> 0.966, SGD fp32 + 8-bit 0.383 ->
// 0.336, SGD bf16 + 8-bit 0.631 -> 0.577; at 16M, best of 3 x 3 x 3: 0.992 -> 0.925, 0.993 ->
// 0.889. Tried and not kept then: encoding a block's codes inside the next block's loop (slower
// with that driver; kept since, see below); an absmax by vrangeps (one op, not two): it drops
// NaNs, which must poison the block.
// Since, stochastic rounding's bits come from one hash per two elements, made per block before
// its loop (random_block): in the loop a bf16 param store is then the add of a loaded vector,
// the NaN test, and the store of the high halves, and the Adam loops with bf16 and 8-bit state
// are bound by the divider (a vsqrtps and a vdivps per 16 elements, ~22 cycles, measured; up to
// ~40 other 512-bit ops fit beside them), not by the integer ops (counted in the avx512 object,
// bf16 + 8-bit AdamW: ~50 -> ~36 vector ops per 16 elements). What is left above the all-fp32
// loop is work outside the divider's shadow: the 8-bit blocks' absmax and encoding (~27 ops per
// 16 elements for exp_avg and exp_avg_sq, ~0.27 ns/element) and the random bits (~6).
// Measured with a C++ harness calling mixed<> directly (64K elements in cache, thread CPU
// ns/element, best of 5 interleaved runs, load ~3): AdamW bf16 params+grads+state 0.629 ->
// 0.557, bf16 + 8-bit 0.897 -> 0.839; SGD momentum bf16 0.448 -> 0.283, bf16 + 8-bit 0.534 ->
// 0.438. Tried and not kept: the absmax taken in the update loop as it stores (Adam fp32 +
// 8-bit 0.97x, bf16 + 8-bit 0.99x, but SGD 1.05-1.08x: SGD has no divider to hide it behind);
// encode's "smallest code" by a max and a zero-masked shift (unsigned 0.127 -> 0.136 ns/element);
// a vector reduction of the absmax lanes (no change); software prefetch 2-4 KB ahead for the
// float32 arrays and 1-3 blocks for the 8-bit ones at 16M (within +-3%; but GCC had dropped the
// float32 arrays' prefetches from the fp32 + 8-bit loops, see vec.h's prefetch).
// Since, each block's codes are written during the next block's loop, a vector as the loop
// stores one (Quant8): the loop's divisions leave the vector ports idle for them, where the
// encoding loop after the update loop had them wait. Harness, 1 thread, thread CPU ns/element,
// 3 interleaved runs: fp32 + 8-bit AdamW 0.65-0.69 -> 0.62-0.64 in cache (64K), 0.873-0.888 ->
// 0.807-0.831 at 16M; bf16 + 8-bit 0.77-0.80 -> 0.78-0.80 (64K), 0.864-0.888 -> 0.869-0.881
// (16M); SGD unchanged. The encoding inside the loop is a third of its ~50 vector ops (llvm-mca:
// ~29 cycles per 16 elements, the divider 22-24); the rest above the divider's bound is per
// block: the absmax passes, the reductions, 1/absmax, the random bits. Tried and not kept: the
// next block's random bits made in the loop, a group per stored vector (AdamW bf16 0.51 -> 0.52,
// SGD bf16 0.27 -> 0.28-0.30: the hash's constants and the accessor's fields were reloaded in
// the loop); loops over 2 or 4 blocks (stages of 512 / 1024 elements: within noise).
// Since, the pending block's codes are written a group of four vectors at a time (encode_group:
// packed by store_u8x4, where a vector at a time took a byte shuffle and a vpermd each), and
// avx2's signed code takes its compare's mask by an and (select_or_zero). AMD EPYC Zen 3 (avx2,
// 512 KB L2), 1 thread, 64K elements (in L2 and L3), us per step, best of 1.5 s, 3 alternating
// processes: fp32 + 8-bit AdamW 80.8-84.0 against 83.0-83.7, SGD momentum 36.5-37.6 against
// 38.1-39.8; bf16 + 8-bit AdamW unchanged (100.6 / 101.3); the avx512 copy was not timed (that
// machine has none). On that core (llvm-mca -mcpu=znver3 on the loops) the vector ports that
// shuffle and shift (FP1, FP2; the divider is on FP1) bound the mixed loops: ~19 cycles per 8
// elements for bf16 AdamW, of which the 16-bit loads' vpmovzxwd and shifts and the stores'
// vpshufb + vpermq are most; measured, bf16 AdamW 1.11 ns/element at 64K against the all-fp32
// loop's 0.52. Tried and not kept: bf16 loaded by vbroadcasti128 + one vpshufb instead of
// vpmovzxwd + a shift (SGD momentum bf16 38.3-39.8 against 40.9-42.2 us, AdamW 77.5-78.4 against
// 77.8-79.5, on a host too noisy that hour to tell 5%).

constexpr std::size_t kStage = kQuantBlock;
static_assert(kQuantBlock == kQuantBlockSize, "optim.h's block size is quantize.h's");

inline std::size_t bytes_per_element(DType dtype) {
    return dtype == kFloat32 ? 4 : dtype == kQuant8Signed || dtype == kQuant8Unsigned ? 1 : 2;
}

// Element lo of the chunk's array k (null for an unused array)
template <class T>
T* element(const MixedChunk& m, std::size_t k, std::size_t lo) {
    return m.data[k] ? static_cast<T*>(m.data[k]) + lo : nullptr;
}

// One block of a mixed call: elements [lo, lo + n) of the chunk, and how they are rounded.
struct BlockAt {
    std::size_t lo, n;
    const std::uint32_t* random;  // random[i]: stochastic rounding's bits of element lo + i
    float (*staged)[kStage];  // staged[k]: 8-bit array k's new values, encoded during the next loop
                              // (Fixed), or array k widened (Staged)
    PendingCodes* pending;  // pending[k]: 8-bit array k's previous block, encoded during this loop
    PendingCodes idle;      // none pending: zeros encoded into a scratch buffer, n = 0
};

// How one array of a block is stored: each type reads a vector of it as floats, writes a
// vector of floats to it, asks for its cache lines AHEAD bytes ahead (float32 only, as the
// all-float32 loops do; the others are asked for by block, see mixed), and finishes the block.
//
// The float32 arrays of a mixed call are asked for kMixedPrefetchBytes ahead in all, split
// among them: a block's 8-bit and 16-bit work makes the loop slower than the all-float32 one,
// so its lines must be asked for further ahead in bytes, and more streams share the core's
// misses in flight. Measured (Zen 5 EPYC, 1 thread, 16M elements, two builds on the same
// arrays in one process, best of 9, twice), 1 KB per array -> 8 KB split: fp32 params + 8-bit
// state (2 float32 arrays, 4 KB each) AdamW 1.17-1.20x faster, SGD momentum 1.27-1.30x; fp32
// master + bf16 grads and copy (AdamW: 4 float32 slots, 2 KB each) 1.04x, SGD (2 slots)
// 1.10-1.13x; in cache (64K elements) within 3%. 4 KB for every array instead: master AdamW 4%
// slower than 2 KB; 2 KB for every array: 8-bit AdamW 3-4% and SGD 14% slower than 4 KB.
constexpr std::size_t kMixedPrefetchBytes = 8192;
struct Float32 {
    float* p;
    Float32(const MixedChunk& m, std::size_t k, const BlockAt& b) : p(element<float>(m, k, b.lo)) {}
    template <class V> FUSEDOPT_INLINE V load(V, std::size_t i) const { return V::load(p + i); }
    template <class V> FUSEDOPT_INLINE void store(V x, std::size_t i) const { x.store(p + i); }
    template <std::size_t AHEAD>
    FUSEDOPT_INLINE void prefetch(std::size_t i) const { FUSEDOPT_ISA_NS::prefetch(p + i, AHEAD / 4); }
    void finish(const MixedChunk&, std::size_t, const BlockAt&) const {}
    static bool fits(const MixedChunk& m, std::size_t k) { return m.dtype[k] == kFloat32; }
};

// bfloat16 (F16 = false) or float16, rounded to nearest even
template <bool F16>
struct Half {
    std::uint16_t* p;
    Half(const MixedChunk& m, std::size_t k, const BlockAt& b) : p(element<std::uint16_t>(m, k, b.lo)) {}
    explicit Half(std::uint16_t* at) : p(at) {}
    template <class V> FUSEDOPT_INLINE V load(V, std::size_t i) const { return load_half<F16, V>(p + i); }
    template <class V> FUSEDOPT_INLINE void store(V x, std::size_t i) const { store_half<F16>(x, p + i); }
    template <std::size_t AHEAD> FUSEDOPT_INLINE void prefetch(std::size_t) const {}
    void finish(const MixedChunk&, std::size_t, const BlockAt&) const {}
    static bool fits(const MixedChunk& m, std::size_t k) {
        return m.dtype[k] == (F16 ? kFloat16 : kBFloat16) && !(k == 0 && m.stochastic_rounding);
    }
};

// bfloat16 params rounded stochastically, with the block's random bits (random_block)
struct BFloat16Stochastic {
    std::uint16_t* p;
    const std::uint32_t* random;
    BFloat16Stochastic(const MixedChunk& m, std::size_t k, const BlockAt& b)
        : p(element<std::uint16_t>(m, k, b.lo)), random(b.random) {}
    template <class V> FUSEDOPT_INLINE V load(V, std::size_t i) const { return load_bf16<V>(p + i); }
    template <class V> FUSEDOPT_INLINE void store(V x, std::size_t i) const {
        store_bf16_adding(x, UintVec<V>::load(random + i), p + i);
    }
    template <std::size_t AHEAD> FUSEDOPT_INLINE void prefetch(std::size_t) const {}
    void finish(const MixedChunk&, std::size_t, const BlockAt&) const {}
    static bool fits(const MixedChunk& m, std::size_t k) {
        return k == 0 && m.dtype[k] == kBFloat16 && m.stochastic_rounding;
    }
};

// 8-bit state: decoded as loaded; the new values wait in the block's buffer for its absmax, and
// are encoded during the next block's loop, four vectors as every fourth is stored: its divisions
// leave the vector ports idle that the encoding needs (below)
template <bool SIGNED>
struct Quant8 {
    static constexpr bool kSigned = SIGNED;
    std::uint8_t* codes;
    float scale;
    float* staged;
    PendingCodes pending;
    // Always inlined: GCC had left it out of line in SGD's bf16 (to nearest) + 8-bit run_blocks,
    // whose loop then ran 1.4-1.6x slower (1M elements, 1 thread, Zen 5, best of 9 in alternating
    // processes: 0.37-0.41 -> 0.26 ns/element; the other modes unchanged)
    FUSEDOPT_INLINE Quant8(const MixedChunk& m, std::size_t k, const BlockAt& b)
        : codes(element<std::uint8_t>(m, k, b.lo)),
          scale(m.data[k] ? m.scales[k][b.lo / kStage] : 0.0f),
          staged(b.staged[k]),
          pending(b.pending[k]) {}
    template <class V> FUSEDOPT_INLINE V load(V, std::size_t i) const {
        return decode<SIGNED>(codes + i, V(scale));
    }
    template <class V> FUSEDOPT_INLINE void store(V x, std::size_t i) const {
        x.store(staged + i);
        // the loop's whole groups of four vectors, [0, n / kEncodeGroup * kEncodeGroup), each as
        // its last vector is stored: no test of n, a pending block is whole (finish)
        if constexpr (std::is_same_v<V, Vec<float>>) {
            if (i % kEncodeGroup == kEncodeGroup - V::size) {
                const std::size_t group = i + V::size - kEncodeGroup;
                encode_group<SIGNED>(pending.in + group, pending.codes + group, pending.inv);
            }
        }
    }
    template <std::size_t AHEAD> FUSEDOPT_INLINE void prefetch(std::size_t) const {}
    // the previous block's codes past this loop's groups; this block's scale, and its codes
    // pending if it is whole (the chunk's last block may be short, and is encoded now)
    void finish(const MixedChunk& m, std::size_t k, const BlockAt& b) const {
        pending.encode(b.n / kEncodeGroup * kEncodeGroup);
        PendingCodes& next = b.pending[k];
        begin_encode<SIGNED>(staged, codes, b.n, &m.scales[k][b.lo / kStage], &next);
        if (next.n != kStage) {
            next.encode(0);
            next = b.idle;
        }
    }
    static bool fits(const MixedChunk& m, std::size_t k) {
        return m.dtype[k] == (SIGNED ? kQuant8Signed : kQuant8Unsigned);
    }
};

template <class S>
constexpr bool kIsQuant8 = false;
template <bool SIGNED>
constexpr bool kIsQuant8<Quant8<SIGNED>> = true;

// The param copy beside fp32 master params: none, bfloat16 or float16 (to nearest even)
struct NoCopy {
    NoCopy(const MixedChunk&, const BlockAt&) {}
    template <class V> FUSEDOPT_INLINE void store(V, std::size_t) const {}
    static bool fits(const MixedChunk& m) { return m.copy == nullptr; }
};
template <bool F16>
struct HalfCopy : Half<F16> {
    HalfCopy(const MixedChunk& m, const BlockAt& b) : Half<F16>(m.copy ? static_cast<std::uint16_t*>(m.copy) + b.lo : nullptr) {}
    static bool fits(const MixedChunk& m) { return m.copy != nullptr && m.copy_dtype == (F16 ? kFloat16 : kBFloat16); }
};

// The arrays of a block, each in the storage type of its slot, chosen when the call is compiled
// for the storage combinations that are common (Storage below): no branch in the loop.
template <class Copy, class... Arrays>
struct Fixed {
    static constexpr std::size_t N = sizeof...(Arrays);
    std::tuple<Arrays...> a;
    Copy copy;
    template <std::size_t... K>
    Fixed(const MixedChunk& m, const BlockAt& b, std::index_sequence<K...>)
        : a(Arrays(m, K, b)...), copy(m, b) {}
    Fixed(const MixedChunk& m, const BlockAt& b) : Fixed(m, b, std::index_sequence_for<Arrays...>{}) {}

    template <class V, std::size_t K>
    FUSEDOPT_INLINE V load(V v, Slot<K>, std::size_t i) const { return std::get<K>(a).load(v, i); }
    template <std::size_t K, class V>
    FUSEDOPT_INLINE void store(Slot<K>, V x, std::size_t i) const {
        std::get<K>(a).store(x, i);
        if constexpr (K == 0) copy.store(x, i);
    }
    template <std::size_t K>
    FUSEDOPT_INLINE void prefetch(Slot<K>, std::size_t i) const {
        constexpr std::size_t streams = (std::size_t(0) + ... + std::is_same_v<Arrays, Float32>);
        std::get<K>(a).template prefetch<kMixedPrefetchBytes / (streams > 0 ? streams : 1)>(i);
    }
    std::size_t head() const { return 0; }
    static constexpr bool kUnscalesGrads = false;  // after the block's loop (unscale_block)
    template <std::size_t... K>
    void finish(const MixedChunk& m, const BlockAt& b, std::index_sequence<K...>) const {
        ((K != 1 && m.data[K] != nullptr ? std::get<K>(a).finish(m, K, b) : void()), ...);
    }
    void finish(const MixedChunk& m, const BlockAt& b) const {
        finish(m, b, std::index_sequence_for<Arrays...>{});
    }
    // every array used is of its slot's type (an unused one, null, may be anything)
    template <std::size_t... K>
    static bool fits(const MixedChunk& m, std::index_sequence<K...>) {
        return Copy::fits(m) && ((m.data[K] == nullptr || Arrays::fits(m, K)) && ...);
    }
    static bool fits(const MixedChunk& m) { return fits(m, std::index_sequence_for<Arrays...>{}); }
};

// Array k's storage type for one block, found at run time (for Staged and unscale_block)
template <class F>
void with_storage(const MixedChunk& m, std::size_t k, const BlockAt& b, F&& f) {
    switch (m.dtype[k]) {
        case kFloat32: f(Float32(m, k, b)); break;
        case kFloat16: f(Half<true>(m, k, b)); break;
        case kQuant8Signed: f(Quant8<true>(m, k, b)); break;
        case kQuant8Unsigned: f(Quant8<false>(m, k, b)); break;
        default:
            if (k == 0 && m.stochastic_rounding) f(BFloat16Stochastic(m, k, b));
            else f(Half<false>(m, k, b));
    }
}

// in[0, n) stored into a block's array of storage s (16-bit: rounded as s rounds)
template <class Storage>
void narrow(const Storage& s, const float* in, std::size_t n) {
    for_each_lane<float>(n, [&](auto v, std::size_t i) { s.store(decltype(v)::load(in + i), i); });
}

// Any other combination: each array not float32 is widened into a float32 buffer before the
// block's loop (a loop per array, its storage found once per block), the float32 loop runs over
// those buffers and the float32 arrays, and after it the buffers are narrowed into their storage
// (8-bit state encoded with the block's new absmax) and the new params into the param copy.
// Against a branch per vector per array (the former Dynamic, which kept the compiler from
// hoisting the conversions' constants), 16M elements, 1 thread, Zen 5, best of 5 in 2
// alternating processes of each build, ms: AdamW float16 params + 8-bit state 13.2-14.5 -> 8.7,
// fp32 master + float16 grads and copy + 8-bit state 14.6-15.7 -> 8.5-8.6, fp32 params + bf16
// grads + 8-bit state 13.7-14.3 -> 7.8-7.9 (all-fp32 7.6-8.5); SGD momentum float16 + 8-bit
// 8.5-8.8 -> 5.6 (docs/history.md has the rest). The combinations of mixed's list ran 1.1-2.2x
// faster than this in cache (64K, 1 thread), so they stay.
template <std::size_t NARRAYS>
struct Staged {
    float* p[NARRAYS];         // element 0 of the block of each array, or of its float32 buffer
    bool streamed[NARRAYS];    // a float32 array of the caller (prefetched), not a buffer
    std::size_t ahead;         // elements prefetched ahead in each streamed array
    Staged(const MixedChunk& m, const BlockAt& b) : ahead(0) {
        std::size_t streams = 0;
        for (std::size_t k = 0; k < NARRAYS; ++k) {
            streamed[k] = m.data[k] != nullptr && m.dtype[k] == kFloat32;
            streams += streamed[k];
            p[k] = m.data[k] == nullptr ? nullptr : streamed[k] ? element<float>(m, k, b.lo) : b.staged[k];
            if (m.data[k] == nullptr || streamed[k]) continue;
            float* const out = p[k];
            with_storage(m, k, b, [&](const auto& s) {
                for_each_lane<float>(b.n, [&](auto v, std::size_t i) { s.load(v, i).store(out + i); });
            });
        }
        ahead = kMixedPrefetchBytes / 4 / std::max<std::size_t>(streams, 1);
    }
    template <class V, std::size_t K>
    FUSEDOPT_INLINE V load(V, Slot<K>, std::size_t i) const { return V::load(p[K] + i); }
    template <std::size_t K, class V>
    FUSEDOPT_INLINE void store(Slot<K>, V x, std::size_t i) const { x.store(p[K] + i); }
    template <std::size_t K>
    FUSEDOPT_INLINE void prefetch(Slot<K>, std::size_t i) const {
        if (streamed[K]) FUSEDOPT_ISA_NS::prefetch(p[K] + i, static_cast<std::ptrdiff_t>(ahead));
    }
    std::size_t head() const { return 0; }
    static constexpr bool kUnscalesGrads = false;  // after the block's loop (unscale_block)
    void finish(const MixedChunk& m, const BlockAt& b) const {
        for (std::size_t k = 0; k < NARRAYS; ++k) {
            if (k == 1 || m.data[k] == nullptr || streamed[k]) continue;
            const float* const in = p[k];
            with_storage(m, k, b, [&](const auto& s) {
                using S = std::decay_t<decltype(s)>;
                if constexpr (kIsQuant8<S>)
                    m.scales[k][b.lo / kStage] = encode_block<S::kSigned>(in, s.codes, b.n);
                else
                    narrow(s, in, b.n);
            });
        }
        if (m.copy == nullptr) return;
        if (m.copy_dtype == kBFloat16) narrow(HalfCopy<false>(m, b), p[0], b.n);
        else narrow(HalfCopy<true>(m, b), p[0], b.n);
    }
};

// Elements [index, index + n) cut where index's low 32 bits wrap (the random bits' counter and
// key change there). A chunk with 8-bit state starts on an 8-bit block, a multiple of 2^32's
// divisors up to 256, so its blocks are never cut short.
inline std::size_t block_length(std::size_t n, std::uint64_t index) {
    const std::uint64_t to_wrap = (std::uint64_t(1) << 32) - (index & 0xFFFFFFFFu);
    return static_cast<std::size_t>(std::min<std::uint64_t>({kStage, n, to_wrap}));
}

// Stochastic rounding's bits of elements [index, index + n) of a block (index + n at most the
// next 2^32 boundary) -> out: the whole groups of 32 holding them, out[index % 32] being
// element index's. Made before the block's loop, a vector of hashes a group's 16 lanes at a
// time (random_group), where a hash per element in the loop took twice the multiplies.
constexpr std::size_t kRandomBuffer = kStage + kRandomGroup;
inline void random_block(std::uint64_t index, std::size_t n, RoundingKey key, std::uint32_t* out) {
    const std::uint32_t first = static_cast<std::uint32_t>(index) & ~static_cast<std::uint32_t>(kRandomGroup - 1);
    const std::size_t end = static_cast<std::size_t>(index & (kRandomGroup - 1)) + n;
    for (std::size_t g = 0; g < end; g += kRandomGroup)
        random_group<Vec<std::uint32_t>>(first + static_cast<std::uint32_t>(g), key.a, key.b, out + g);
}

// Asks for the cache lines of elements [lo, hi) of a 16-bit or 8-bit array. Each block is
// updated in L1 for a few hundred ns with no load of these arrays in flight (the loops prefetch
// only their float32 arrays): asked for two blocks ahead, the lines arrive during that time.
// Measured with the former driver, AdamW at 16M, 1 thread, CPU time, medians of 3 x 12
// interleaved steps: bf16 params+grads+state (SR) 1.24-1.29 -> 1.15-1.18 ns/element, bf16 +
// 8-bit state 1.47-1.54 -> 1.36-1.47, fp32 + 8-bit state 1.12-1.16 -> 1.09-1.14.
inline void prefetch_elements(const void* data, DType dtype, std::size_t lo, std::size_t hi) {
    const std::size_t size = bytes_per_element(dtype);
    const char* p = static_cast<const char*>(data);
    for (std::size_t b = lo * size; b < hi * size; b += 64) prefetch(p + b);
}

// What an idle PendingCodes encodes (into a scratch buffer): no branch in the loop
alignas(64) constexpr float kZeros[kStage] = {};

// unscale_grads in a mixed call: the block's grads (in L1 after its loop) times unscale, stored
// in their dtype (16-bit ones rounded to nearest even), as the all-T loops store them
inline void unscale_block(double unscale, const MixedChunk& m, const BlockAt& b) {
    with_storage(m, 1, b, [&](const auto& grads) {
        for_each_lane<float>(b.n, [&](auto v, std::size_t i) {
            using V = decltype(v);
            grads.store(grads.load(V{}, i) * V(static_cast<float>(unscale)), i);
        });
    });
}

// The blocks of a chunk, each updated through an accessor A (Fixed or Staged).
template <class Config, std::size_t NARRAYS, class Update, class A>
void run_blocks(const Config& c, const MixedChunk& m) {
    alignas(64) float staged[2][NARRAYS][kStage];  // this block's, and the previous block's pending
    alignas(64) std::uint32_t random[kRandomBuffer];
    alignas(64) std::uint8_t discarded[kStage];
    BlockAt b{};
    b.idle = {kZeros, discarded, 0, 0.0f, false};
    PendingCodes pending[NARRAYS];
    std::fill_n(pending, NARRAYS, b.idle);
    b.pending = pending;
    RoundingKey key{};
    for (std::size_t lo = 0, len = 0, block = 0; lo < m.n; lo += len, ++block) {
        const std::uint64_t index = m.offset + lo;
        len = block_length(m.n - lo, index);
        const std::size_t from = std::min(m.n, lo + len + kStage), to = std::min(m.n, from + kStage);
        for (std::size_t k = 0; k < NARRAYS; ++k)
            if (m.data[k] != nullptr && m.dtype[k] != kFloat32) prefetch_elements(m.data[k], m.dtype[k], from, to);
        if (m.copy) prefetch_elements(m.copy, m.copy_dtype, from, to);
        b.lo = lo;
        b.n = len;
        b.staged = staged[block % 2];
        if (m.stochastic_rounding) {
            if (lo == 0 || (index & 0xFFFFFFFFu) == 0)  // a new run of 2^32 elements (block_length)
                key = rounding_key(m.seed, m.step, m.tensor, index >> 32);
            random_block(index, len, key, random);
            b.random = random + index % kRandomGroup;
        }
        const A a(m, b);
        Update::run(c, a, len);
        a.finish(m, b);
        if (c.g.unscale != 0.0) unscale_block(c.g.unscale, m, b);
    }
    for (const PendingCodes& p : pending) p.encode(0);
}

// The storage combinations compiled without branches: the bench's modes (bf16 params rounded
// stochastically and grads with bf16 or 8-bit state, fp32 params with 8-bit state, fp32 master
// params with bf16 grads and a bf16 copy) and what the classes' options give besides: bf16
// params rounded to nearest (the default) with bf16, 8-bit or float32 state (float32: the
// classes' default for bf16 params), fp32 master params with bf16 grads and copy and 8-bit
// or bf16 state, fp32 master params and state with float16 grads and copy, fp32 params with bf16
// state, bf16 params rounded stochastically with float32 state, fp32 params and state with bf16
// or float16 grads, float16 params with float32 state. Each ran at about half this speed through
// a branch per vector per array (AdamW, 16M elements, 1 thread, Zen 5, ms: bf16 params and state
// 9.6 -> 4.7-5.2, bf16 + 8-bit 13.1 -> 6.4-6.5, fp32 + 8-bit 8.1 -> 4.0 for Adagrad; each
// addition's measurements are in docs/history.md), and 1.1-2.2x faster than Staged in cache
// (64K elements, AdamW and SGD, 1 thread, 2 alternating processes), which runs the rest. The
// list costs build time: this file 19 -> 67 s (4 ISAs on 2 cores) from the first entry to these.
// SIGNED2: whether slot 2's 8-bit state is signed (Adam's exp_avg, SGD's momentum_buffer; the
// slots after it, exp_avg_sq and max_exp_avg_sq, unsigned) or unsigned (Adagrad's state_sum,
// RMSprop's square_avg; after it momentum_buffer, signed, and grad_avg, never 8-bit: centered
// RMSprop refuses it).
template <std::size_t NARRAYS, class Copy, class P, class G, class S2, class S3>
using FixedOf = std::conditional_t<NARRAYS == 3, Fixed<Copy, P, G, S2>, Fixed<Copy, P, G, S2, S3, S3>>;

template <class Config, std::size_t NARRAYS, class Update, class First, class... Rest>
void run_first_fitting(const Config& c, const MixedChunk& m) {
    if constexpr (sizeof...(Rest) == 0) {
        run_blocks<Config, NARRAYS, Update, First>(c, m);  // Staged, which fits all
    } else {
        if (First::fits(m)) return run_blocks<Config, NARRAYS, Update, First>(c, m);
        run_first_fitting<Config, NARRAYS, Update, Rest...>(c, m);
    }
}

template <class Config, std::size_t NARRAYS, class Update, bool SIGNED2>
void mixed(const Config& c, const MixedChunk& m) {
    using BF16 = Half<false>;
    using FP16 = Half<true>;
    using Q2 = Quant8<SIGNED2>;
    using Q3 = Quant8<!SIGNED2>;
    run_first_fitting<Config, NARRAYS, Update,
                      FixedOf<NARRAYS, NoCopy, BFloat16Stochastic, BF16, BF16, BF16>,
                      FixedOf<NARRAYS, NoCopy, BFloat16Stochastic, BF16, Q2, Q3>,
                      FixedOf<NARRAYS, NoCopy, BF16, BF16, BF16, BF16>,
                      FixedOf<NARRAYS, NoCopy, BF16, BF16, Q2, Q3>,
                      FixedOf<NARRAYS, NoCopy, Float32, Float32, Q2, Q3>,
                      FixedOf<NARRAYS, HalfCopy<false>, Float32, BF16, Float32, Float32>,
                      FixedOf<NARRAYS, HalfCopy<false>, Float32, BF16, Q2, Q3>,
                      FixedOf<NARRAYS, HalfCopy<false>, Float32, BF16, BF16, BF16>,
                      FixedOf<NARRAYS, HalfCopy<true>, Float32, FP16, Float32, Float32>,
                      FixedOf<NARRAYS, NoCopy, Float32, Float32, BF16, BF16>,
                      FixedOf<NARRAYS, NoCopy, BF16, BF16, Float32, Float32>,
                      FixedOf<NARRAYS, NoCopy, BFloat16Stochastic, BF16, Float32, Float32>,
                      FixedOf<NARRAYS, NoCopy, Float32, BF16, Float32, Float32>,
                      FixedOf<NARRAYS, NoCopy, Float32, FP16, Float32, Float32>,
                      FixedOf<NARRAYS, NoCopy, FP16, FP16, Float32, Float32>,
                      Staged<NARRAYS>>(c, m);
}

}  // namespace

// An optimizer's mixed kernel, for a source of its own (mixed_adam.cpp, ...): its float32 loops
// (name##_arrays, optim_loops.h) run by mixed<> over blocks; mixed.cpp's register_mixed calls
// register_mixed_<name>. SIGNED2: see FixedOf.
#define FUSEDOPT_MIXED(name, Config, NARRAYS, SIGNED2)                              \
    namespace {                                                                     \
    struct name##_update {                                                          \
        template <class A>                                                          \
        static void run(const Config& c, const A& a, std::size_t n) {               \
            name##_arrays<float>(c, a, n);                                          \
        }                                                                           \
    };                                                                              \
    }                                                                               \
    void register_mixed_##name(KernelTable& t) {                                    \
        t.name##_mixed = mixed<Config, NARRAYS, name##_update, SIGNED2>;            \
    }

void register_mixed_sgd(KernelTable&);
void register_mixed_adagrad(KernelTable&);
void register_mixed_rmsprop(KernelTable&);
void register_mixed_adam(KernelTable&);

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
