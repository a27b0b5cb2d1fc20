// Argument checks shared by the bindings: they raise Python's ValueError / TypeError with a
// message naming the argument, and build that message only when a check fails.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <sstream>
#include <string>

namespace fusedopt {
namespace py = pybind11;

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
inline void check_step(long long step) {
    if (step >= 1) return;
    throw py::value_error("Invalid step value: " + std::to_string(step) +
                          " (the 1-based number of the step being taken: >= 1)");
}

inline std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) s += std::to_string(a.shape(d)) + (a.ndim() == 1 || d + 1 < a.ndim() ? "," : "");
    return s + ")";
}

inline std::string type_name(py::handle h) { return py::str(py::type::handle_of(h).attr("__name__")); }


}  // namespace fusedopt
