// Python bindings of the 8-bit blockwise codec (kernels/quantize.h): _core.quantize_blockwise
// and _core.dequantize_blockwise, positional; fusedopt/lowbit.py holds QuantizedState and the
// keyword signatures. Every argument is checked before anything is written; the GIL is released
// while the kernels run, on whole blocks per thread.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "checks.h"
#include "dispatch.h"
#include "parallel.h"

namespace fusedopt {
namespace {

namespace py = pybind11;

constexpr std::size_t kBlock = 256;  // kQuantBlock of kernels/quantize.h (per-ISA namespace)

py::array checked_array(py::handle h, const char* name, const py::dtype& dtype, const char* dtype_name, bool written) {
    if (!py::isinstance<py::array>(h))
        throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " + type_name(h));
    py::array a = py::reinterpret_borrow<py::array>(h);
    if (!a.dtype().equal(dtype))
        throw py::type_error(std::string(name) + " has dtype " + std::string(py::str(a.dtype())) + "; it must be " +
                             dtype_name);
    check_memory(a, name, written);
    return a;
}

// The blocks of n elements cut into one contiguous run of whole blocks per thread.
template <class F>
void for_each_block_range(std::size_t n, const F& range) {
    const std::size_t blocks = (n + kBlock - 1) / kBlock;
    const std::size_t by_size = std::max<std::size_t>(1, n / kMinElementsPerThread);
    const int ntasks = static_cast<int>(std::min<std::size_t>({static_cast<std::size_t>(get_num_threads()), by_size,
                                                               std::max<std::size_t>(blocks, 1)}));
    py::gil_scoped_release nogil;
    parallel_for(ntasks, [&](int t) {
        const std::size_t b0 = blocks * t / ntasks, b1 = blocks * (t + 1) / ntasks;
        const std::size_t lo = b0 * kBlock, hi = std::min(n, b1 * kBlock);
        if (hi > lo) range(lo, hi - lo);
    });
}

// values (float32, n elements) and codes (uint8, n elements), scales (float32, ceil(n / 256))
struct Arrays {
    py::array values, codes, scales;
    std::size_t n;
};

Arrays check(py::handle values, py::handle codes, py::handle scales, bool values_written) {
    static const py::dtype& f32 = *new py::dtype(py::dtype::of<float>());
    static const py::dtype& u8 = *new py::dtype(py::dtype::of<std::uint8_t>());
    Arrays a{checked_array(values, "values", f32, "float32", values_written),
             checked_array(codes, "codes", u8, "uint8", !values_written),
             checked_array(scales, "scales", f32, "float32", !values_written), 0};
    a.n = static_cast<std::size_t>(a.values.size());
    if (static_cast<std::size_t>(a.codes.size()) != a.n)
        throw py::value_error("codes has " + std::to_string(a.codes.size()) + " elements but values has " +
                              std::to_string(a.n));
    const std::size_t blocks = (a.n + kBlock - 1) / kBlock;
    if (static_cast<std::size_t>(a.scales.size()) != blocks)
        throw py::value_error("scales has " + std::to_string(a.scales.size()) + " elements but " + std::to_string(a.n) +
                              " values need " + std::to_string(blocks) + " (one per block of 256)");
    check_no_conflict({{"values", &a.values, values_written}, {"codes", &a.codes, !values_written},
                       {"scales", &a.scales, !values_written}});
    return a;
}

// values -> codes, scales (written)
void quantize_blockwise(py::handle values, py::handle codes, py::handle scales, Flag is_signed) {
    const Arrays a = check(values, codes, scales, false);
    const auto* in = static_cast<const float*>(a.values.data());
    auto* c = static_cast<std::uint8_t*>(const_cast<void*>(a.codes.data()));
    auto* s = static_cast<float*>(const_cast<void*>(a.scales.data()));
    const auto kernel = kernels().quantize_blockwise;
    for_each_block_range(a.n, [&](std::size_t lo, std::size_t len) {
        kernel(in + lo, c + lo, s + lo / kBlock, len, is_signed);
    });
}

// codes, scales -> values (written)
void dequantize_blockwise(py::handle codes, py::handle scales, py::handle values, Flag is_signed) {
    const Arrays a = check(values, codes, scales, true);
    const auto* c = static_cast<const std::uint8_t*>(a.codes.data());
    const auto* s = static_cast<const float*>(a.scales.data());
    auto* out = static_cast<float*>(const_cast<void*>(a.values.data()));
    const auto kernel = kernels().dequantize_blockwise;
    for_each_block_range(a.n, [&](std::size_t lo, std::size_t len) {
        kernel(c + lo, s + lo / kBlock, out + lo, len, is_signed);
    });
}

}  // namespace

void bind_lowbit(py::module_& m) {
    m.def("quantize_blockwise", &quantize_blockwise,
          "(values, codes, scales, signed): float32 values -> 8-bit codes and one absmax scale per block of 256, "
          "written in place; see fusedopt.lowbit");
    m.def("dequantize_blockwise", &dequantize_blockwise,
          "(codes, scales, values, signed): 8-bit codes and scales -> float32 values, written in place; see "
          "fusedopt.lowbit");
}

}  // namespace fusedopt
