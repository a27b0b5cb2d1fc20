// Python bindings: check every argument, then hand raw pointers to the active ISA's kernels
// with the GIL released. Nothing is written before all checks pass, and no array that is
// updated in place is ever converted or copied.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "checks.h"
#include "dispatch.h"
#include "parallel.h"

namespace py = pybind11;
using namespace fusedopt;

namespace {

GradTransform grad_transform(bool maximize, double weight_decay) {
    check_nonnegative("weight_decay", weight_decay);
    return GradTransform{maximize ? -1.0 : 1.0, weight_decay};
}

// ---- arrays ----------------------------------------------------------------------------------

// One argument holding an array per tensor: "params", "grads", "exp_avgs", ...
struct Role {
    const char* name;
    py::handle obj;   // an ndarray, or a list/tuple of them; None: not used by this call
    bool written;
};

bool is_sequence(py::handle h) { return py::isinstance<py::list>(h) || py::isinstance<py::tuple>(h); }

// Checks every array of every role and returns the batch for the kernels. Roles whose obj is
// None get null pointers. Throws TypeError / ValueError naming the argument.
struct Checked {
    TensorBatch batch;
    DType dtype = kFloat32;
};

Checked check_arrays(const std::vector<Role>& roles) {
    const Role& params = roles[0];
    const bool single = py::isinstance<py::array>(params.obj);
    if (!single && !is_sequence(params.obj))
        throw py::type_error(std::string("params must be a numpy.ndarray or a list of them, got ") + type_name(params.obj));
    const std::size_t ntensors = single ? 1 : py::len(params.obj);

    Checked out;
    out.batch.arrays_per_tensor = roles.size();
    out.batch.ptrs.assign(ntensors * roles.size(), nullptr);
    out.batch.sizes.assign(ntensors, 0);

    struct Span {
        std::uintptr_t lo, hi;
        const char* role;
        std::size_t index;
    };
    std::vector<Span> spans;
    spans.reserve(ntensors * roles.size());
    py::dtype dtype;

    for (std::size_t r = 0; r < roles.size(); ++r) {
        const Role& role = roles[r];
        if (role.obj.is_none()) continue;
        if (single) {
            if (!py::isinstance<py::array>(role.obj))
                throw py::type_error(std::string(role.name) + " must be a numpy.ndarray, as params is, got " +
                                     type_name(role.obj));
        } else {
            if (!is_sequence(role.obj))
                throw py::type_error(std::string(role.name) + " must be a list of numpy.ndarray, as params is, got " +
                                     type_name(role.obj));
            if (py::len(role.obj) != ntensors)
                throw py::value_error(std::string(role.name) + " has " + std::to_string(py::len(role.obj)) +
                                      " arrays but params has " + std::to_string(ntensors));
        }
        for (std::size_t t = 0; t < ntensors; ++t) {
            py::handle h = single ? role.obj : role.obj[py::int_(t)].ptr();  // borrowed from the list
            auto where = [&] { return std::string(role.name) + (single ? "" : "[" + std::to_string(t) + "]"); };
            if (!py::isinstance<py::array>(h))
                throw py::type_error(where() + " must be a numpy.ndarray, got " + type_name(h));
            py::array a = py::reinterpret_borrow<py::array>(h);
            if (r == 0 && t == 0) {
                // leaked on purpose: a static py::object would be released after the interpreter
                static const py::dtype& float32 = *new py::dtype(py::dtype::of<float>());
                static const py::dtype& float64 = *new py::dtype(py::dtype::of<double>());
                dtype = a.dtype();
                if (dtype.equal(float32))
                    out.dtype = kFloat32;
                else if (dtype.equal(float64))
                    out.dtype = kFloat64;
                else
                    throw py::type_error(where() + " has dtype " + std::string(py::str(a.dtype())) +
                                         "; fusedopt takes float32 or float64 (native byte order)");
            } else if (!a.dtype().equal(dtype)) {
                throw py::type_error(where() + " has dtype " + std::string(py::str(a.dtype())) + " but params" +
                                     (single ? "" : "[0]") + " has " + std::string(py::str(dtype)) +
                                     "; all arrays of one call must share one dtype");
            }
            if (r > 0) {
                py::array p = py::reinterpret_borrow<py::array>(single ? params.obj : params.obj[py::int_(t)].ptr());
                bool same = p.ndim() == a.ndim();
                for (py::ssize_t d = 0; same && d < a.ndim(); ++d) same = p.shape(d) == a.shape(d);
                if (!same)
                    throw py::value_error(where() + " has shape " + shape_str(a) + " but params" +
                                          (single ? "" : "[" + std::to_string(t) + "]") + " has shape " + shape_str(p));
            }
            const int flags = py::detail::array_proxy(a.ptr())->flags;
            if (!(flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_))
                throw py::value_error(where() + " is not C-contiguous; fusedopt " +
                                      (role.written ? "updates it in place and never copies it" : "reads raw memory") +
                                      " (np.ascontiguousarray makes a contiguous copy)");
            if (!(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
                throw py::value_error(where() + " is not aligned to its dtype");
            if (role.written && !(flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_))
                throw py::value_error(where() + " is read-only but is updated in place");
            void* ptr = const_cast<void*>(a.data());
            const std::size_t n = static_cast<std::size_t>(a.size());
            out.batch.ptrs[t * roles.size() + r] = ptr;
            if (r == 0) out.batch.sizes[t] = n;
            if (n > 0) {
                auto lo = reinterpret_cast<std::uintptr_t>(ptr);
                spans.push_back({lo, lo + static_cast<std::uintptr_t>(a.nbytes()), role.name, t});
            }
        }
    }
    out.batch.elem_size = out.dtype == kFloat32 ? sizeof(float) : sizeof(double);

    // Any two arrays sharing a byte would make the result depend on the order of writes.
    std::sort(spans.begin(), spans.end(), [](const Span& x, const Span& y) { return x.lo < y.lo; });
    for (std::size_t i = 1; i < spans.size(); ++i) {
        if (spans[i].lo < spans[i - 1].hi) {
            auto name = [&](const Span& s) { return std::string(s.role) + (single ? "" : "[" + std::to_string(s.index) + "]"); };
            throw py::value_error(name(spans[i - 1]) + " and " + name(spans[i]) +
                                  " overlap in memory; every array of a call must be distinct");
        }
    }
    return out;
}

void require_state(bool needed, py::handle obj, const char* name, const char* because) {
    if (needed && obj.is_none()) throw py::value_error(std::string(name) + " is required " + because);
}

template <class Config>
void run(ElementwiseKernel<Config> const* kernels, const Config& config, const Checked& checked) {
    py::gil_scoped_release nogil;
    run_elementwise(kernels[checked.dtype], config, checked.batch);
}

// ---- the update functions ------------------------------------------------------------------

void sgd_(py::handle params, py::handle grads, py::handle momentum_buffers, double lr, double momentum,
          double dampening, bool nesterov, double weight_decay, bool maximize, std::optional<long long> step) {
    SgdConfig c;
    check_nonnegative("lr", lr);
    check_range("momentum", momentum, 0.0, 1.0, true);
    check_range("dampening", dampening, 0.0, 1.0, true);
    c.g = grad_transform(maximize, weight_decay);
    if (nesterov) require(momentum > 0.0 && dampening == 0.0, "Nesterov momentum requires a momentum and zero dampening");
    if (step) check_step(*step);
    c.lr = lr;
    c.momentum = momentum;
    c.dampening = dampening;
    c.nesterov = nesterov;
    c.first_step = step && *step == 1;
    const bool uses_buffers = momentum != 0.0;
    require_state(uses_buffers, momentum_buffers, "momentum_buffers", "when momentum > 0");
    Checked arrays = check_arrays({{"params", params, true},
                                   {"grads", grads, false},
                                   {"momentum_buffers", uses_buffers ? momentum_buffers : py::none(), true}});
    run(kernels().sgd, c, arrays);
}

void adagrad_(py::handle params, py::handle grads, py::handle state_sums, long long step, double lr,
              double lr_decay, double weight_decay, double eps, bool maximize) {
    AdagradConfig c;
    check_nonnegative("lr", lr);
    check_nonnegative("lr_decay", lr_decay);
    check_nonnegative("eps", eps);
    check_step(step);
    c.g = grad_transform(maximize, weight_decay);
    c.clr = lr / (1.0 + static_cast<double>(step - 1) * lr_decay);
    c.eps = eps;
    Checked arrays = check_arrays({{"params", params, true}, {"grads", grads, false}, {"state_sums", state_sums, true}});
    run(kernels().adagrad, c, arrays);
}

void rmsprop_(py::handle params, py::handle grads, py::handle square_avgs, double lr, double alpha, double eps,
              double weight_decay, double momentum, py::handle momentum_buffers, bool centered, py::handle grad_avgs,
              bool maximize, bool eps_inside_sqrt) {
    RmspropConfig c;
    check_nonnegative("lr", lr);
    check_range("alpha", alpha, 0.0, 1.0, true);
    check_nonnegative("eps", eps);
    check_range("momentum", momentum, 0.0, 1.0, true);
    c.g = grad_transform(maximize, weight_decay);
    c.lr = lr;
    c.alpha = alpha;
    c.eps = eps;
    c.momentum = momentum;
    c.centered = centered;
    c.eps_inside_sqrt = eps_inside_sqrt;
    const bool uses_buffers = momentum != 0.0;
    require_state(uses_buffers, momentum_buffers, "momentum_buffers", "when momentum > 0");
    require_state(centered, grad_avgs, "grad_avgs", "when centered=True");
    Checked arrays = check_arrays({{"params", params, true},
                                   {"grads", grads, false},
                                   {"square_avgs", square_avgs, true},
                                   {"momentum_buffers", uses_buffers ? momentum_buffers : py::none(), true},
                                   {"grad_avgs", centered ? grad_avgs : py::none(), true}});
    run(kernels().rmsprop, c, arrays);
}

void adam_(py::handle params, py::handle grads, py::handle exp_avgs, py::handle exp_avg_sqs, long long step,
           double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled_weight_decay,
           bool amsgrad, py::handle max_exp_avg_sqs, bool maximize) {
    AdamConfig c;
    check_nonnegative("lr", lr);
    check_range("beta1", beta1, 0.0, 1.0, false);
    check_range("beta2", beta2, 0.0, 1.0, false);
    check_nonnegative("eps", eps);
    check_step(step);
    c.g = grad_transform(maximize, decoupled_weight_decay ? 0.0 : weight_decay);
    check_nonnegative("weight_decay", weight_decay);
    if (decoupled_weight_decay) {
        if (!(lr * weight_decay <= 1.0))
            throw py::value_error("Invalid lr * weight_decay: " + repr(lr * weight_decay) +
                                  " (decoupled weight decay scales params by 1 - lr * weight_decay, which must be >= 0)");
        c.param_scale = 1.0 - lr * weight_decay;
    }
    c.beta1 = beta1;
    c.beta2 = beta2;
    c.eps = eps;
    const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
    const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
    c.neg_step_size = -lr / bias_correction1;
    c.inv_bias_correction2_sqrt = 1.0 / std::sqrt(bias_correction2);
    c.amsgrad = amsgrad;
    require_state(amsgrad, max_exp_avg_sqs, "max_exp_avg_sqs", "when amsgrad=True");
    Checked arrays = check_arrays({{"params", params, true},
                                   {"grads", grads, false},
                                   {"exp_avgs", exp_avgs, true},
                                   {"exp_avg_sqs", exp_avg_sqs, true},
                                   {"max_exp_avg_sqs", amsgrad ? max_exp_avg_sqs : py::none(), true}});
    run(kernels().adam, c, arrays);
}

}  // namespace

namespace fusedopt {
void bind_batchnorm(py::module_& m);  // bindings_batchnorm.cpp
}

PYBIND11_MODULE(_core, m) {
    m.doc() = "fusedopt's C++ kernels; use the functions re-exported by the fusedopt package.";

    m.def("isa", [] { return std::string(kernels().isa); }, "The ISA whose kernels run now.");
    m.def("available_isas", &available_isas, "ISAs compiled in that this CPU can run, worst first.");
    m.def("set_isa", [](const std::string& name) {
        try {
            set_isa(name);
        } catch (const std::invalid_argument& e) {
            throw py::value_error(e.what());
        }
    }, py::arg("name"), "Use the kernels compiled for `name` from now on (process-wide).");
    m.def("get_num_threads", &get_num_threads);
    m.def("set_num_threads", [](int n) {
        require(n >= 1, "Invalid num_threads: " + std::to_string(n) + " (must be >= 1)");
        set_num_threads(n);
    }, py::arg("n"));

    // Positional only and without defaults: fusedopt/functional.py holds the keyword-only
    // signatures, defaults and docstrings (pybind11's keyword matching costs ~3 us a call).
    m.def("sgd", &sgd_);
    m.def("adagrad", &adagrad_);
    m.def("rmsprop", &rmsprop_);
    m.def("adam", &adam_);

    bind_batchnorm(m);
}
