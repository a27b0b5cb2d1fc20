// Argument checks shared by the bindings: they raise Python's ValueError / TypeError with a
// message naming the argument, and build that message only when a check fails.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "dispatch.h"

namespace fusedopt {
namespace py = pybind11;

// A bool argument of a bound function: what pybind11's bool caster takes (True/False,
// numpy.bool_, objects with __bool__), but not None, which that caster takes as False
// (batchnorm_forward(training=None) ran in eval mode). Named "bool" in pybind11's messages,
// which functional.py's argument errors read.
struct Flag {
    bool value = false;
    operator bool() const { return value; }
};

inline std::string repr(double x) {
    std::ostringstream s;
    s.precision(17);
    s << x;
    return s.str();
}

// ---- hyperparameters -------------------------------------------------------------------------

inline void require(bool ok, const std::string& message) {
    if (!ok) throw py::value_error(message);
}
// lo <= x (< or <=) hi; written so that NaN fails. Messages are built only on failure.
inline void check_range(const char* name, double x, double lo, double hi, bool hi_inclusive) {
    if (x >= lo && (hi_inclusive ? x <= hi : x < hi) && std::isfinite(x)) return;
    throw py::value_error(std::string("Invalid ") + name + " value: " + repr(x) + " (must be in [" + repr(lo) + ", " +
                          repr(hi) + (hi_inclusive ? "])" : "))"));
}
inline void check_nonnegative(const char* name, double x) {
    if (x >= 0.0 && std::isfinite(x)) return;
    throw py::value_error(std::string("Invalid ") + name + " value: " + repr(x) + " (must be finite and >= 0)");
}
// a limit of torch's clip functions: >= 0, +inf meaning none (clip_grad_norm_(max_norm=inf)
// only computes the norm, as torch users call it)
inline void check_limit(const char* name, double x) {
    if (x >= 0.0) return;
    throw py::value_error(std::string("Invalid ") + name + " value: " + repr(x) + " (must be >= 0; inf: no limit)");
}
inline void check_step(long long step) {
    if (step >= 1) return;
    throw py::value_error("Invalid step value: " + std::to_string(step) +
                          " (the 1-based number of the step being taken: >= 1)");
}

// step and seed as Python's operator.index takes an integer: an int, or an object with __index__
// (numpy's integers), never a bool, nor a number that pybind11's long long would truncate
// through __int__ (Decimal("1.5") ran as step 1). Converts to T where the bindings use it.
template <class T>
struct Integer {
    T value;
    operator T() const { return value; }
};
using Step = Integer<long long>;
using Seed = Integer<unsigned long long>;

inline std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) s += std::to_string(a.shape(d)) + (a.ndim() == 1 || d + 1 < a.ndim() ? "," : "");
    return s + ")";
}

inline std::string type_name(py::handle h) { return py::str(py::type::handle_of(h).attr("__name__")); }

// An argument's name for a message: a string, or a callable that builds it (only on failure).
inline std::string name_of(const char* name) { return name; }
template <class F>
std::string name_of(const F& make_name) {
    return make_name();
}

// float32 or float64 in native byte order, else TypeError naming the argument.
template <class Name>
DType float_dtype(const py::array& a, const Name& name) {
    // leaked on purpose: a static py::object would be released after the interpreter
    static const py::dtype& float32 = *new py::dtype(py::dtype::of<float>());
    static const py::dtype& float64 = *new py::dtype(py::dtype::of<double>());
    if (a.dtype().equal(float32)) return kFloat32;
    if (a.dtype().equal(float64)) return kFloat64;
    throw py::type_error(name_of(name) + " has dtype " + std::string(py::str(a.dtype())) +
                         "; fusedopt takes float32 or float64 (native byte order)");
}

// An array argument as a NumPy array. ndarrays pass as they are (no Python call); anything else
// goes through fusedopt._tensors.to_ndarray, the one place where other libraries' arrays (torch
// CPU tensors) become zero-copy NumPy views, and which returns any other object unchanged for
// the caller's TypeError.
inline py::object to_ndarray(py::handle h, const std::string& name) {
    if (py::isinstance<py::array>(h)) return py::reinterpret_borrow<py::object>(h);
    // leaked on purpose, as float_dtype's dtypes: released after the interpreter otherwise
    static const py::object& convert = *new py::object(py::module_::import("fusedopt._tensors").attr("to_ndarray"));
    return convert(h, name);
}

// Tells autograd that the kernel wrote these torch tensors in place (fusedopt._tensors.
// increment_versions): a graph that saved one raises at backward instead of using new values.
inline void increment_versions(const py::list& tensors) {
    static const py::object& increment = *new py::object(
        py::module_::import("fusedopt._tensors").attr("increment_versions"));
    increment(tensors);
}

inline bool same_shape(const py::array& a, const py::array& b) {
    if (a.ndim() != b.ndim()) return false;
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
        if (a.shape(d) != b.shape(d)) return false;
    return true;
}

// C-contiguous and aligned (the kernels take raw pointers), and writable when written in place.
template <class Name>
void check_memory(const py::array& a, const Name& name, bool written) {
    const int flags = py::detail::array_proxy(a.ptr())->flags;
    if (!(flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_))
        throw py::value_error(name_of(name) + " is not C-contiguous; fusedopt " +
                              (written ? "writes it in place and never copies it" : "reads raw memory") +
                              " (np.ascontiguousarray makes a contiguous copy)");
    if (!(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
        throw py::value_error(name_of(name) + " is not aligned to its dtype");
    if (written && !(flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_))
        throw py::value_error(name_of(name) + " is read-only but is written in place");
}

// ---- memory shared between the arrays of a call ------------------------------------------------

// A byte range of an array, which array it is, and whether the call writes it.
struct Span {
    std::uintptr_t lo, hi;
    std::size_t id;
    bool written;
};
inline Span span_of(const py::array& a, std::size_t id, bool written) {
    const auto lo = reinterpret_cast<std::uintptr_t>(a.data());
    return {lo, lo + static_cast<std::uintptr_t>(a.nbytes()), id, written};
}

// The ids of the first two spans, in the order given, of which one is written and which share a
// byte, or none (bindings.cpp). Arrays that are only read may share memory, as torch.optim lets
// two params be given one grad tensor.
std::optional<std::pair<std::size_t, std::size_t>> overlapping(const std::vector<Span>& spans);

// ValueError: arrays a and b (names) overlap in memory, one of them written (bindings.cpp).
[[noreturn]] void throw_overlap(const std::string& a, const std::string& b);

// An array argument of a call by name, and whether the call writes it.
struct NamedArray {
    const char* name;
    const py::array* array;
    bool written;
};
// throw_overlap, naming the written array first, for the first pair overlapping() finds.
void check_no_conflict(const std::vector<NamedArray>& arrays);

}  // namespace fusedopt

namespace pybind11 {
namespace detail {
template <class T>
struct type_caster<fusedopt::Integer<T>> {
    PYBIND11_TYPE_CASTER(fusedopt::Integer<T>, const_name("typing.SupportsIndex"));
    bool load(handle src, bool) {
        if (!src || PyBool_Check(src.ptr()) || !PyIndex_Check(src.ptr())) return false;
        const object index = reinterpret_steal<object>(PyNumber_Index(src.ptr()));
        make_caster<T> integer;  // pybind11's range check (a refusal is named by fusedopt.functional)
        if (!index || !integer.load(index, false)) {
            PyErr_Clear();
            return false;
        }
        value.value = cast_op<T>(integer);
        return true;
    }
    static handle cast(const fusedopt::Integer<T>& src, return_value_policy policy, handle parent) {
        return make_caster<T>::cast(src.value, policy, parent);
    }
};
}  // namespace detail
}  // namespace pybind11

namespace pybind11 {
namespace detail {
template <>
struct type_caster<fusedopt::Flag> {
    PYBIND11_TYPE_CASTER(fusedopt::Flag, const_name("bool"));
    bool load(handle src, bool convert) {
        if (src.is_none()) return false;
        type_caster<bool> b;
        if (!b.load(src, convert)) return false;
        value.value = static_cast<bool>(b);
        return true;
    }
    static handle cast(fusedopt::Flag f, return_value_policy, handle) { return bool_(f.value).release(); }
};
}  // namespace detail
}  // namespace pybind11
