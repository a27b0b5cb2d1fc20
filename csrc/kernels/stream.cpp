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

template <class T>
void stream(const StreamConfig& c, void* const* a, std::size_t n) {
    const int n_read_write = c.n_read_write, n_arrays = c.n_read_write + c.n_read_only;
    for_each_lane<T>(n, [&](auto vec, std::size_t i) {
        using V = decltype(vec);
        V s(T(0));
        for (int k = n_read_write; k < n_arrays; ++k) s = s + V::load(static_cast<const T*>(a[k]) + i);
        for (int k = 0; k < n_read_write; ++k) (V::load(static_cast<T*>(a[k]) + i) + s).store(static_cast<T*>(a[k]) + i);
    });
}

}  // namespace

void register_stream(KernelTable& t) {
    t.stream[kFloat32] = stream<float>;
    t.stream[kFloat64] = stream<double>;
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
