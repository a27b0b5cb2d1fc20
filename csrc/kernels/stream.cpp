// The bandwidth probe: the simplest loop that moves the same bytes as an optimizer step or a
// batch-norm pass, so the benchmark can show each kernel's time as a fraction of what memory
// allows in this run.
//   s = sum of the read-only arrays;  each read-write array: a = a + s;  the write-only one: w = s
// (an optimizer that reads R arrays and writes W of them: R - W read-only, W read-write; the
// batch-norm forward: x read-only, y write-only; its backward: x and dy read-only, dx write-only).
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../dispatch.h"
#include "../simd/vec.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {
namespace {

// The sum of arrays [FIRST, FIRST + COUNT) of a at element i, a vector (or Scalar) V of them.
template <int FIRST, int COUNT, class V>
FUSEDOPT_INLINE V read_sum(void* const* a, std::size_t i) {
    using T = typename V::value_type;
    V s(T(0));
    for (int k = FIRST; k < FIRST + COUNT; ++k) s = s + V::load(static_cast<const T*>(a[k]) + i);
    return s;
}

// The array counts are template parameters so the inner loops unroll as the kernels' do.
// STREAM: the write-only array's whole cache lines by non-temporal stores, as batch norm's (batchnorm_tiles.h)
// apply_block writes large outputs (aligned vectors; ordinary stores up to the first line).
// Otherwise the vectors start on the first array's cache line, as the optimizers' (optim_loops.h,
// Plain::head): a vector that straddles two lines costs two accesses.
template <class T, int RW, int RO, int WO, bool STREAM>
void stream_loop(void* const* a, std::size_t n) {
    auto body = [a](auto vec, std::size_t i, auto stream) {
        using V = decltype(vec);
        const V s = read_sum<RW, RO, V>(a, i);
        for (int k = 0; k < RW; ++k) (V::load(static_cast<T*>(a[k]) + i) + s).store(static_cast<T*>(a[k]) + i);
        if constexpr (WO == 1) {
            T* w = static_cast<T*>(a[RW + RO]) + i;
            if constexpr (decltype(stream)::value) s.stream(w); else s.store(w);
        }
    };
    constexpr std::size_t W = Vec<T>::size, kLine = kCacheLineBytes / sizeof(T);
    const std::size_t head = std::min(n, elements_to_cache_line(static_cast<const T*>(a[STREAM ? RW + RO : 0])));
    const std::size_t lines = STREAM ? head + (n - head) / kLine * kLine : head;
    std::size_t i = 0;
    for (; i < head; ++i) body(Scalar<T>{}, i, std::false_type{});
    for (; i < lines; i += W) body(Vec<T>{}, i, std::true_type{});
    for (; i + W <= n; i += W) body(Vec<T>{}, i, std::false_type{});
    for (; i < n; ++i) body(Scalar<T>{}, i, std::false_type{});
    if constexpr (STREAM) std::atomic_thread_fence(std::memory_order_seq_cst);  // orders the non-temporal stores
}

std::atomic<double> probe_sink{0.0};  // written by every thread of a read-only probe: atomic

// A pass that only reads (the first pass of a two-pass algorithm, as batch norm's statistics):
// the arrays' sum (sum_lanes: four independent vector sums, where one would be a chain of
// dependent adds slower than the cache), stored at the end so that the compiler keeps the
// loads. Vectors from the first array's first cache line, as above.
template <class T, int RO>
void read_loop(void* const* a, std::size_t n) {
    const T sum = sum_lanes<T>(n, elements_to_cache_line(static_cast<const T*>(a[0])),
                               [a](auto v, std::size_t i) { return read_sum<0, RO, decltype(v)>(a, i); });
    probe_sink.store(static_cast<double>(sum), std::memory_order_relaxed);
}

template <class T, int RW, int RO>
void stream_ro(const StreamConfig& c, void* const* a, std::size_t n) {
    if (RW == 0 && c.n_write_only == 0) {
        read_loop<T, RO>(a, n);
        return;
    }
    if (c.n_write_only == 0) stream_loop<T, RW, RO, 0, false>(a, n);
    if (c.n_write_only == 1 && !c.stream_writes) stream_loop<T, RW, RO, 1, false>(a, n);
    if (c.n_write_only == 1 && c.stream_writes) stream_loop<T, RW, RO, 1, true>(a, n);
}

template <class T, int RW>
void stream_rw(const StreamConfig& c, void* const* a, std::size_t n) {
    if (c.n_read_only == 0) stream_ro<T, RW, 0>(c, a, n);
    if (c.n_read_only == 1) stream_ro<T, RW, 1>(c, a, n);
    if (c.n_read_only == 2) stream_ro<T, RW, 2>(c, a, n);
}

template <class T>
void stream(const StreamConfig& c, void* const* a, std::size_t n) {
    if (c.n_read_write == 0) stream_rw<T, 0>(c, a, n);
    if (c.n_read_write == 1) stream_rw<T, 1>(c, a, n);
    if (c.n_read_write == 2) stream_rw<T, 2>(c, a, n);
    if (c.n_read_write == 3) stream_rw<T, 3>(c, a, n);
    if (c.n_read_write == 4) stream_rw<T, 4>(c, a, n);
}

}  // namespace

void register_stream(KernelTable& t) {
    FUSEDOPT_REGISTER(t, stream);
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
