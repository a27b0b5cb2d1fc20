// The bandwidth probe: the simplest loop that moves the same bytes as an optimizer step, so
// the benchmark can show each kernel's time as a fraction of what memory allows in this run.
//   s = sum of the read-only arrays;  each read-write array: a = a + s
// (an optimizer that reads R arrays and writes W of them: R - W read-only, W read-write).
#include <cstddef>

#include "../dispatch.h"
#include "../simd/vec.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {
namespace {

// The array counts are template parameters so the inner loops unroll as an optimizer's do.
template <class T, int RW, int RO>
void stream_loop(void* const* a, std::size_t n) {
    for_each_lane<T>(n, [&](auto vec, std::size_t i) {
        using V = decltype(vec);
        V s(T(0));
        for (int k = RW; k < RW + RO; ++k) s = s + V::load(static_cast<const T*>(a[k]) + i);
        for (int k = 0; k < RW; ++k) (V::load(static_cast<T*>(a[k]) + i) + s).store(static_cast<T*>(a[k]) + i);
    });
}

template <class T, int RW>
void stream_rw(int n_read_only, void* const* a, std::size_t n) {
    if (n_read_only == 0) stream_loop<T, RW, 0>(a, n);
    if (n_read_only == 1) stream_loop<T, RW, 1>(a, n);
    if (n_read_only == 2) stream_loop<T, RW, 2>(a, n);
}

template <class T>
void stream(const StreamConfig& c, void* const* a, std::size_t n) {
    if (c.n_read_write == 1) stream_rw<T, 1>(c.n_read_only, a, n);
    if (c.n_read_write == 2) stream_rw<T, 2>(c.n_read_only, a, n);
    if (c.n_read_write == 3) stream_rw<T, 3>(c.n_read_only, a, n);
    if (c.n_read_write == 4) stream_rw<T, 4>(c.n_read_only, a, n);
}

}  // namespace

void register_stream(KernelTable& t) {
    FUSEDOPT_REGISTER(t, stream);
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
