// Python bindings: check every argument, then hand raw pointers to the active ISA's kernels
// with the GIL released. Nothing is written before all checks pass, and no array that is
// updated in place is ever converted or copied.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <cmath>
#include <cstdint>
#include <optional>
#include <utility>
#include <sstream>
#include <string>
#include <vector>

#include "checks.h"
#include "dispatch.h"
#include "parallel.h"

namespace py = pybind11;
using namespace fusedopt;

namespace {

// A mixed call (16-bit or 8-bit arrays) does 2-3x the work per element of an fp32 one (the
// conversions: it is bound by compute where fp32 is bound by memory), so a second thread pays
// at half of kMinElementsPerThread's size. Measured, AdamW 1 -> 2 threads, best of 15 (Sapphire
// Rapids, avx512): 128K elements bf16 params/grads/state 170 -> 147 us, fp32 + 8-bit state 130 ->
// 95, bf16 + 8-bit 192 -> 155 (fp32 at 128K: 79 -> 81); 64K on 2 threads gained nothing or lost
// (bf16 88 -> 107 us), so it stays on one.
constexpr std::size_t kMixedMinElementsPerThread = kMinElementsPerThread / 2;

// grads are multiplied by 1 / grad_scale (as torch's GradScaler unscales) and negated to
// maximize; unscale_grads: the update also writes them back unscaled (not negated), as torch's
// fused optimizers leave them
GradTransform grad_transform(bool maximize, double weight_decay, std::optional<double> grad_scale,
                             bool unscale_grads = false) {
    check_nonnegative("weight_decay", weight_decay);
    double inv_scale = 1.0;
    if (grad_scale) {
        if (!(*grad_scale > 0.0 && std::isfinite(*grad_scale)))
            throw py::value_error("Invalid grad_scale value: " + repr(*grad_scale) + " (must be finite and > 0)");
        inv_scale = 1.0 / *grad_scale;
    }
    require(!unscale_grads || grad_scale.has_value(), "unscale_grads=True needs grad_scale (what to unscale by)");
    return GradTransform{maximize ? -inv_scale : inv_scale, weight_decay, unscale_grads ? inv_scale : 0.0};
}

// ---- arrays ----------------------------------------------------------------------------------

// What an argument is to an optimizer, for the dtype rules (check_dtypes). kSame: every array
// of the call has params' dtype, float32 or float64 (the bandwidth probe). kParam also serves the
// gradient functions (norms, clipping, all_finite): the role that takes all four dtypes, one
// for all arrays, and sets Checked::dtype.
enum class Kind { kSame, kParam, kGrad, kState, kCopy };

// One argument holding an array per tensor: "params", "grads", "exp_avgs", ...
struct Role {
    const char* name;
    py::handle obj;  // an ndarray, or a list/tuple of them
    bool written;
    bool used = true;  // false: the call does not use this argument (obj is not looked at)
    Kind kind = Kind::kSame;
    bool nonnegative = false;  // state that is never negative (exp_avg_sq, ...): unsigned 8-bit code
};

bool is_sequence(py::handle h) { return py::isinstance<py::list>(h) || py::isinstance<py::tuple>(h); }

// Checks every array of every role and returns the batch for the kernels. Roles not used get
// null pointers. Throws TypeError / ValueError naming the argument. Holds a reference to every
// array: the kernels run without the GIL, while another thread may drop an array from its list
// (and a list subclass may return a new array for each item it is asked for).
struct Checked {
    TensorBatch batch;
    DType dtype = kFloat32;
    std::vector<py::object> arrays;
    // optimizer calls: the dtype of array r of tensor t at [t * roles + r] (params' dtype for a
    // role not used), and the scales of 8-bit state at the same index (else null)
    std::vector<DType> dtypes;
    std::vector<float*> scales;
    bool mixed = false;  // not all float32 or all float64: the mixed kernels run (float32 math)
    // the torch tensors (not ndarrays) given for written arguments: autograd is told they changed
    // once the kernel has written them (mark_written), as an in-place torch op tells it
    std::vector<py::object> tensors_written;
};

const char* dtype_name(DType d) {
    switch (d) {
        case kFloat32: return "float32";
        case kFloat64: return "float64";
        case kBFloat16: return "bfloat16";
        case kFloat16: return "float16";
        case kQuant8Signed: return "8-bit signed (QuantizedState)";
        case kQuant8Unsigned: return "8-bit unsigned (QuantizedState)";
    }
    return "?";
}
std::size_t dtype_size(DType d) {
    return d == kFloat64 ? 8 : d == kFloat32 ? 4 : d == kQuant8Signed || d == kQuant8Unsigned ? 1 : 2;
}

// The storage dtype of an optimizer's array, else TypeError naming it. bfloat16 is
// ml_dtypes.bfloat16 (the dtype fusedopt._tensors maps torch.bfloat16 to): the only NumPy
// dtype of that name.
template <class Name>
DType storage_dtype(const py::array& a, const Name& name) {
    static const py::dtype& float16 = *new py::dtype("float16");  // leaked on purpose, as in checks.h
    const py::dtype dt = a.dtype();
    if (dt.equal(float16)) return kFloat16;
    // ml_dtypes registers bfloat16 under a type number of its own: its name is read once (str()
    // of a dtype cost ~1.9 us an array: 0.8 ms of a bf16 ResNet-50 step's 322 arrays)
    static std::atomic<int> bfloat16_num{-1};
    if (dt.itemsize() == 2) {
        if (dt.num() == bfloat16_num.load(std::memory_order_relaxed)) return kBFloat16;
        if (std::string(py::str(dt)) == "bfloat16") {
            bfloat16_num.store(dt.num(), std::memory_order_relaxed);
            return kBFloat16;
        }
    }
    if (dt.kind() == 'f' && dt.itemsize() >= 4) return float_dtype(a, name);
    throw py::type_error(name_of(name) + " has dtype " + std::string(py::str(dt)) +
                         "; fusedopt takes float32, float64, bfloat16 (ml_dtypes) or float16 arrays");
}

bool is_quantized_state(py::handle h) {
    static const py::object& cls = *new py::object(py::module_::import("fusedopt.lowbit").attr("QuantizedState"));
    return py::isinstance(h, cls);
}

// The dtype rules of an optimizer call (P: params' dtype, one for all params):
//   grads: P, or bfloat16/float16 for float32 params (a low-precision backward); may differ
//          from tensor to tensor (a model's weights with bfloat16 grads, its biases float32);
//   state: float32, bfloat16 or 8-bit (QuantizedState) for float32/bfloat16/float16 params,
//          float64 for float64 params; may differ from tensor to tensor (small tensors in fp32);
//   param copies: bfloat16 or float16, of float32 params, one for all.
// Returns whether the pair needs the mixed kernels.
bool check_dtype(const Role& role, DType d, DType p, const std::string& where, const std::string& params) {
    bool ok = true;
    const char* rule = "";
    switch (role.kind) {
        case Kind::kParam:
            return p == kBFloat16 || p == kFloat16;
        case Kind::kGrad:
            ok = d == p || (p == kFloat32 && (d == kBFloat16 || d == kFloat16));
            rule = "grads take the params' dtype, or bfloat16/float16 for float32 params (never a higher precision)";
            break;
        case Kind::kState:
            ok = p == kFloat64 ? d == kFloat64 : d != kFloat64 && d != kFloat16;
            rule = p == kFloat64 ? "the state of float64 params is float64"
                                 : "optimizer state is float32, bfloat16 or 8-bit (fusedopt.QuantizedState)";
            break;
        case Kind::kCopy:
            ok = p == kFloat32 && (d == kBFloat16 || d == kFloat16);
            rule = "param_copies are the bfloat16/float16 copies of float32 (master) params";
            break;
        default:
            ok = d == p;
            rule = "all arrays of one call must share one dtype";
    }
    if (!ok)
        throw py::type_error(where + " has dtype " + dtype_name(d) + " but " + params + " has " + dtype_name(p) + "; " +
                             rule);
    return d != p || role.kind == Kind::kCopy;
}

// An 8-bit state argument: its codes (the param's shape, uint8) and scales (float32, one per
// block of kQuantBlock elements), both C-contiguous and writable; its signedness must be the
// role's (exp_avg is signed state, exp_avg_sq non-negative).
std::pair<py::array, py::array> quantized_arrays(py::handle state, const Role& role, const py::array& param,
                                                 const std::string& where) {
    const bool is_signed = state.attr("signed").cast<bool>();
    if (is_signed == role.nonnegative)
        throw py::value_error(where + " is a" + (is_signed ? " signed" : "n unsigned") + " QuantizedState but " +
                              role.name + " is " + (role.nonnegative ? "non-negative" : "signed") +
                              " state (quantized_zeros_like(param, signed=" + (role.nonnegative ? "False" : "True") + "))");
    py::object codes_obj = state.attr("codes"), scales_obj = state.attr("scales");
    if (!py::isinstance<py::array>(codes_obj) || !py::isinstance<py::array>(scales_obj))
        throw py::type_error(where + ".codes and .scales must be numpy arrays");
    py::array codes = py::reinterpret_borrow<py::array>(codes_obj), scales = py::reinterpret_borrow<py::array>(scales_obj);
    if (!codes.dtype().equal(py::dtype::of<std::uint8_t>()) || !scales.dtype().equal(py::dtype::of<float>()))
        throw py::type_error(where + ": a QuantizedState holds uint8 codes and float32 scales, got " +
                             std::string(py::str(codes.dtype())) + " and " + std::string(py::str(scales.dtype())));
    if (!same_shape(codes, param))
        throw py::value_error(where + " has shape " + shape_str(codes) + " but its param has shape " + shape_str(param));
    const auto blocks = static_cast<py::ssize_t>((static_cast<std::size_t>(codes.size()) + kQuantBlockSize - 1) / kQuantBlockSize);
    if (scales.ndim() != 1 || scales.shape(0) != blocks)
        throw py::value_error(where + ".scales has shape " + shape_str(scales) + " but needs (" + std::to_string(blocks) +
                              ",): one per block of " + std::to_string(kQuantBlockSize));
    check_memory(codes, [&] { return where + ".codes"; }, true);
    check_memory(scales, [&] { return where + ".scales"; }, true);
    return {codes, scales};
}

Checked check_arrays(const std::vector<Role>& roles) {
    const Role& params = roles[0];
    const bool single = !is_sequence(params.obj);  // one array (or tensor) per argument, else lists of them
    const std::size_t ntensors = single ? 1 : py::len(params.obj);
    const bool optimizer = params.kind != Kind::kSame;

    Checked out;
    out.batch.arrays_per_tensor = roles.size();
    out.batch.ptrs.assign(ntensors * roles.size(), nullptr);
    out.batch.sizes.assign(ntensors, 0);
    out.dtypes.assign(ntensors * roles.size(), kFloat32);
    out.scales.assign(ntensors * roles.size(), nullptr);

    std::vector<Span> spans;  // id: r * ntensors + t
    spans.reserve(ntensors * roles.size());
    py::dtype dtype;
    bool quantized = false;

    for (std::size_t r = 0; r < roles.size(); ++r) {
        const Role& role = roles[r];
        if (!role.used) {
            for (std::size_t t = 0; t < ntensors; ++t) out.dtypes[t * roles.size() + r] = out.dtypes[t * roles.size()];
            continue;
        }
        if (single) {
            if (is_sequence(role.obj))
                throw py::type_error(std::string(role.name) + " must be a numpy.ndarray (or torch tensor), as " +
                                     params.name + " is, got " + type_name(role.obj));
        } else {
            if (!is_sequence(role.obj))
                throw py::type_error(std::string(role.name) + " must be a list of numpy.ndarray, as params is, got " +
                                     type_name(role.obj));
            if (py::len(role.obj) != ntensors)
                throw py::value_error(std::string(role.name) + " has " + std::to_string(py::len(role.obj)) +
                                      " arrays but " + params.name + " has " + std::to_string(ntensors));
        }
        for (std::size_t t = 0; t < ntensors; ++t) {
            auto where = [&] { return std::string(role.name) + (single ? "" : "[" + std::to_string(t) + "]"); };
            const std::size_t slot = t * roles.size() + r;
            py::object h = single ? py::reinterpret_borrow<py::object>(role.obj) : py::object(role.obj[py::int_(t)]);
            if (role.kind == Kind::kState && !py::isinstance<py::array>(h) && is_quantized_state(h)) {
                py::array p = py::reinterpret_borrow<py::array>(out.arrays[t]);  // params[t]
                auto [codes, scales] = quantized_arrays(h, role, p, where());
                const DType d = role.nonnegative ? kQuant8Unsigned : kQuant8Signed;
                out.mixed |= check_dtype(role, d, out.dtypes[t * roles.size()], where(), roles[0].name);
                out.dtypes[slot] = d;
                out.batch.ptrs[slot] = const_cast<void*>(codes.data());
                out.scales[slot] = static_cast<float*>(scales.mutable_data());
                if (codes.size() > 0) {
                    spans.push_back(span_of(codes, r * ntensors + t, true));
                    spans.push_back(span_of(scales, r * ntensors + t, true));
                }
                out.arrays.push_back(std::move(h));  // and its arrays: the object's attributes may be rebound
                out.arrays.push_back(std::move(codes));
                out.arrays.push_back(std::move(scales));
                quantized = true;
                continue;
            }
            if (!py::isinstance<py::array>(h)) {
                if (role.written) out.tensors_written.push_back(h);
                h = to_ndarray(h, where());
            }
            if (!py::isinstance<py::array>(h))
                throw py::type_error(where() + " must be a numpy.ndarray or a torch CPU tensor, got " + type_name(h));
            py::array a = py::reinterpret_borrow<py::array>(h);
            if (optimizer) {
                const DType d = storage_dtype(a, where);
                // params and copies: one dtype per argument (the checks below name [0])
                if (t > 0 && (role.kind == Kind::kParam || role.kind == Kind::kCopy) && d != out.dtypes[r])
                    throw py::type_error(where() + " has dtype " + dtype_name(d) + " but " + role.name + "[0] has " +
                                         dtype_name(out.dtypes[r]) + "; the arrays of one argument share one dtype");
                out.mixed |= check_dtype(role, d, r == 0 ? d : out.dtypes[t * roles.size()], where(),
                                         std::string(roles[0].name) + (single ? "" : "[" + std::to_string(t) + "]"));
                out.dtypes[slot] = d;
            } else if (r == 0 && t == 0) {
                out.dtype = float_dtype(a, where);
                dtype = a.dtype();
            } else if (!a.dtype().equal(dtype)) {
                throw py::type_error(where() + " has dtype " + std::string(py::str(a.dtype())) + " but " + params.name +
                                     (single ? "" : "[0]") + " has " + std::string(py::str(dtype)) +
                                     "; all arrays of one call must share one dtype");
            }
            if (r > 0) {
                py::array p = py::reinterpret_borrow<py::array>(out.arrays[t]);  // params[t]
                if (!same_shape(a, p))
                    throw py::value_error(where() + " has shape " + shape_str(a) + " but " + params.name +
                                          (single ? "" : "[" + std::to_string(t) + "]") + " has shape " + shape_str(p));
            }
            check_memory(a, where, role.written);
            out.arrays.push_back(std::move(h));
            void* ptr = const_cast<void*>(a.data());
            const std::size_t n = static_cast<std::size_t>(a.size());
            out.batch.ptrs[slot] = ptr;
            if (r == 0) out.batch.sizes[t] = n;
            if (n > 0) spans.push_back(span_of(a, r * ntensors + t, role.written));
        }
    }
    if (optimizer) out.dtype = ntensors > 0 ? out.dtypes[0] : kFloat32;
    // a mixed call's kernels find each array's elements by its own dtype (run_mixed); here the
    // params' size sets where the thread cuts fall: 64-byte boundaries of the params, or block
    // boundaries when some state is 8-bit (a block is decoded and encoded whole)
    out.batch.elem_size = dtype_size(out.dtype);
    if (quantized) out.batch.cut_multiple = kQuantBlockSize;
    if (out.mixed) out.batch.min_elements_per_thread = kMixedMinElementsPerThread;

    if (auto pair = overlapping(spans)) {
        auto name = [&](std::size_t id) {
            return std::string(roles[id / ntensors].name) + (single ? "" : "[" + std::to_string(id % ntensors) + "]");
        };
        throw_overlap(name(pair->first), name(pair->second));
    }
    return out;
}

void require_state(bool needed, py::handle obj, const char* name, const char* because) {
    if (needed && obj.is_none()) throw py::value_error(std::string(name) + " is required " + because);
}

// True when every element of array `role` of every tensor of the batch, all of dtype d, times
// scale (in dtype d, or in float32 for 16-bit arrays, as the updates unscale them), is finite:
// one read-only pass.
bool all_finite(const TensorBatch& batch, std::size_t role, DType d, double scale) {
    auto probe = kernels().nonfinite_probe[d];
    double sum = 0.0;
    for (double partial : reduce_blocks(batch, role, [&](const void* x, std::size_t n) { return probe(x, n, scale); }))
        sum += partial;
    return sum == 0.0;
}

// What an update multiplies its grads by (the benchmark's probe takes none).
template <class Config>
double grad_mult(const Config& config) { return config.g.grad_mult; }
double grad_mult(const StreamConfig&) { return 1.0; }

// Runs the update unless skip_if_nonfinite finds an inf/NaN gradient (role 1) once unscaled:
// then nothing is written and the call returns false, as torch's GradScaler skips optimizer.step().
template <class Config>
bool run(ElementwiseKernel<Config> const* kernels, const Config& config, const Checked& checked,
         bool skip_if_nonfinite = false) {
    py::gil_scoped_release nogil;
    if (skip_if_nonfinite && !all_finite(checked.batch, 1, checked.dtype, grad_mult(config))) return false;
    run_elementwise(kernels[checked.dtype], config, checked.batch);
    return true;
}

// ---- mixed precision -----------------------------------------------------------------------

// How bfloat16 params are rounded: to nearest even, or stochastically from (seed, step).
struct Precision {
    bool stochastic = false;
    std::uint64_t seed = 0, step = 0;
};

Precision precision(const Checked& checked, bool stochastic_rounding, std::optional<unsigned long long> seed,
                    std::optional<long long> step) {
    Precision out;
    if (!stochastic_rounding) return out;
    if (checked.dtype != kBFloat16)
        throw py::type_error(std::string("stochastic_rounding=True rounds bfloat16 params; params have dtype ") +
                             dtype_name(checked.dtype));
    require(seed.has_value(), "stochastic_rounding=True needs a seed (an int >= 0): the rounding's random bits "
                              "come from (seed, step, tensor, element)");
    require(step.has_value(), "stochastic_rounding=True needs step (the random bits differ from step to step)");
    out.stochastic = true;
    out.seed = *seed;
    out.step = static_cast<std::uint64_t>(*step);
    return out;
}

// The optimizer's arrays (roles 0 .. narrays - 1, then param_copies) with param_copies' role
// last: runs the float32 kernel's mixed driver (mixed.h) over chunks, each array addressed by
// its own dtype's size.
template <class Config>
bool run_mixed(MixedKernel<Config> kernel, const Config& config, const Checked& checked, const Precision& prec,
               bool skip_if_nonfinite) {
    py::gil_scoped_release nogil;
    const TensorBatch& b = checked.batch;
    const std::size_t k = b.arrays_per_tensor, narrays = k - 1;
    if (skip_if_nonfinite) {  // a pass per dtype of grads (each tensor's grads have their own)
        for (const DType g : {kFloat32, kBFloat16, kFloat16}) {
            TensorBatch grads;
            grads.arrays_per_tensor = 1;
            grads.elem_size = dtype_size(g);
            for (std::size_t t = 0; t < b.sizes.size(); ++t) {
                if (checked.dtypes[t * k + 1] != g) continue;
                grads.ptrs.push_back(b.ptrs[t * k + 1]);
                grads.sizes.push_back(b.sizes[t]);
            }
            if (!grads.sizes.empty() && !all_finite(grads, 0, g, grad_mult(config))) return false;
        }
    }
    const MixedKernel<Config> run_chunk = kernel;
    for_each_chunk(b, [&](void* const*, std::size_t n, std::size_t t, std::size_t offset) {
        void* data[8];
        float* scales[8];
        const DType* dtypes = checked.dtypes.data() + t * k;
        auto at = [&](std::size_t r) -> void* {
            void* base = b.ptrs[t * k + r];
            return base ? static_cast<char*>(base) + offset * dtype_size(dtypes[r]) : nullptr;
        };
        for (std::size_t r = 0; r < narrays; ++r) {
            data[r] = at(r);
            float* s = checked.scales[t * k + r];
            scales[r] = s ? s + offset / kQuantBlockSize : nullptr;  // offset: a block boundary (cut_multiple)
        }
        const MixedChunk m{data, dtypes, scales, at(narrays), dtypes[narrays], n, t, offset,
                           prec.stochastic, prec.seed, prec.step};
        run_chunk(config, m);
    });
    return true;
}

// After a kernel wrote its arrays (wrote: it did): bumps the autograd version of the torch
// tensors among them (increment_versions). Returns wrote.
bool mark_written(const Checked& checked, bool wrote = true) {
    if (wrote && !checked.tensors_written.empty()) increment_versions(py::cast(checked.tensors_written));
    return wrote;
}

// Runs an optimizer: the plain kernels when every array is float32 (or every one float64), the
// mixed driver otherwise.
template <class Config>
bool run_update(ElementwiseKernel<Config> const* plain, MixedKernel<Config> mixed, const Config& config,
                const Checked& checked, const Precision& prec, bool skip_if_nonfinite) {
    if (!checked.mixed) {
        // the plain kernels take the arrays without param_copies' (unused) slot
        return run(plain, config, checked, skip_if_nonfinite);
    }
    return run_mixed(mixed, config, checked, prec, skip_if_nonfinite);
}

// ---- the update functions ------------------------------------------------------------------

bool sgd_(py::handle params, py::handle grads, py::handle momentum_buffers, double lr, double momentum,
          double dampening, Flag nesterov, double weight_decay, Flag maximize, std::optional<Step> step,
          std::optional<double> grad_scale, Flag unscale_grads, Flag skip_if_nonfinite, py::handle param_copies,
          Flag stochastic_rounding, std::optional<Seed> seed) {
    SgdConfig c;
    check_nonnegative("lr", lr);
    check_range("momentum", momentum, 0.0, 1.0, true);
    check_range("dampening", dampening, 0.0, 1.0, true);
    c.g = grad_transform(maximize, weight_decay, grad_scale, unscale_grads);
    if (nesterov) require(momentum > 0.0 && dampening == 0.0, "Nesterov momentum requires a momentum and zero dampening");
    if (step) check_step(*step);
    c.lr = lr;
    c.momentum = momentum;
    c.dampening = dampening;
    c.nesterov = nesterov;
    c.first_step = step && *step == 1;
    const bool uses_buffers = momentum != 0.0;
    require_state(uses_buffers, momentum_buffers, "momentum_buffers", "when momentum > 0");
    Checked arrays = check_arrays({{"params", params, true, true, Kind::kParam},
                                   {"grads", grads, unscale_grads, true, Kind::kGrad},
                                   {"momentum_buffers", momentum_buffers, true, uses_buffers, Kind::kState},
                                   {"param_copies", param_copies, true, !param_copies.is_none(), Kind::kCopy}});
    const Precision prec = precision(arrays, stochastic_rounding, seed, step);
    return mark_written(arrays, run_update(kernels().sgd, kernels().sgd_mixed, c, arrays, prec, skip_if_nonfinite));
}

bool adagrad_(py::handle params, py::handle grads, py::handle state_sums, Step step, double lr,
              double lr_decay, double weight_decay, double eps, Flag maximize, std::optional<double> grad_scale,
              Flag unscale_grads, Flag skip_if_nonfinite, py::handle param_copies, Flag stochastic_rounding,
              std::optional<Seed> seed) {
    AdagradConfig c;
    check_nonnegative("lr", lr);
    check_nonnegative("lr_decay", lr_decay);
    check_nonnegative("eps", eps);
    check_step(step);
    c.g = grad_transform(maximize, weight_decay, grad_scale, unscale_grads);
    c.clr = lr / (1.0 + static_cast<double>(step - 1) * lr_decay);
    c.eps = eps;
    Checked arrays = check_arrays({{"params", params, true, true, Kind::kParam},
                                   {"grads", grads, unscale_grads, true, Kind::kGrad},
                                   {"state_sums", state_sums, true, true, Kind::kState, true},
                                   {"param_copies", param_copies, true, !param_copies.is_none(), Kind::kCopy}});
    const Precision prec = precision(arrays, stochastic_rounding, seed, step);
    return mark_written(arrays, run_update(kernels().adagrad, kernels().adagrad_mixed, c, arrays, prec,
                                           skip_if_nonfinite));
}

// Why centered RMSprop refuses 8-bit state: the one text, rmsprop_'s here and the classes' (which
// refuse the options up front, _lowprec._hyperparameter_problem) through _core.CENTERED_8BIT_REASON.
constexpr const char* kCentered8bit =
    "centered=True takes square_avg - grad_avg**2, which nearly cancels where gradients are steadier than "
    "their noise; 8-bit state (off by up to 1/16) leaves noise there, often negative (NaN): keep that state in "
    "bfloat16 or float32 (state_dtype='bfloat16' or 'float32' in the classes; bitsandbytes' 8-bit RMSprop "
    "refuses centered too)";

bool rmsprop_(py::handle params, py::handle grads, py::handle square_avgs, double lr, double alpha, double eps,
              double weight_decay, double momentum, py::handle momentum_buffers, Flag centered, py::handle grad_avgs,
              Flag maximize, Flag eps_inside_sqrt, std::optional<double> grad_scale, Flag unscale_grads,
              Flag skip_if_nonfinite, py::handle param_copies, Flag stochastic_rounding, std::optional<Seed> seed,
              std::optional<Step> step) {
    RmspropConfig c;
    check_nonnegative("lr", lr);
    check_range("alpha", alpha, 0.0, 1.0, true);
    check_nonnegative("eps", eps);
    check_range("momentum", momentum, 0.0, 1.0, true);
    c.g = grad_transform(maximize, weight_decay, grad_scale, unscale_grads);
    c.lr = lr;
    c.alpha = alpha;
    c.eps = eps;
    c.momentum = momentum;
    c.centered = centered;
    c.eps_inside_sqrt = eps_inside_sqrt;
    const bool uses_buffers = momentum != 0.0;
    require_state(uses_buffers, momentum_buffers, "momentum_buffers", "when momentum > 0");
    require_state(centered, grad_avgs, "grad_avgs", "when centered=True");
    if (step) check_step(*step);
    Checked arrays = check_arrays({{"params", params, true, true, Kind::kParam},
                                   {"grads", grads, unscale_grads, true, Kind::kGrad},
                                   {"square_avgs", square_avgs, true, true, Kind::kState, true},
                                   {"momentum_buffers", momentum_buffers, true, uses_buffers, Kind::kState},
                                   {"grad_avgs", grad_avgs, true, centered, Kind::kState},
                                   {"param_copies", param_copies, true, !param_copies.is_none(), Kind::kCopy}});
    // centered with 8-bit square_avgs or grad_avgs (kCentered8bit)
    constexpr std::size_t kRoles = 6, kSquareAvg = 2, kGradAvg = 4;
    for (std::size_t i = 0; centered && i < arrays.dtypes.size(); ++i) {
        const DType d = arrays.dtypes[i];
        if ((i % kRoles == kSquareAvg || i % kRoles == kGradAvg) && (d == kQuant8Signed || d == kQuant8Unsigned))
            throw py::type_error(std::string(i % kRoles == kSquareAvg ? "square_avgs" : "grad_avgs") + "[" +
                                 std::to_string(i / kRoles) + "] is 8-bit state, which centered=True cannot use: " +
                                 kCentered8bit);
    }
    const Precision prec = precision(arrays, stochastic_rounding, seed, step);
    return mark_written(arrays, run_update(kernels().rmsprop, kernels().rmsprop_mixed, c, arrays, prec,
                                           skip_if_nonfinite));
}

bool adam_(py::handle params, py::handle grads, py::handle exp_avgs, py::handle exp_avg_sqs, Step step,
           double lr, double beta1, double beta2, double eps, double weight_decay, Flag decoupled_weight_decay,
           Flag amsgrad, py::handle max_exp_avg_sqs, Flag maximize, std::optional<double> grad_scale,
           Flag unscale_grads, Flag skip_if_nonfinite, py::handle param_copies, Flag stochastic_rounding,
           std::optional<Seed> seed) {
    AdamConfig c;
    check_nonnegative("lr", lr);
    check_range("beta1", beta1, 0.0, 1.0, false);
    check_range("beta2", beta2, 0.0, 1.0, false);
    check_nonnegative("eps", eps);
    check_step(step);
    c.g = grad_transform(maximize, decoupled_weight_decay ? 0.0 : weight_decay, grad_scale, unscale_grads);
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
    Checked arrays = check_arrays({{"params", params, true, true, Kind::kParam},
                                   {"grads", grads, unscale_grads, true, Kind::kGrad},
                                   {"exp_avgs", exp_avgs, true, true, Kind::kState},
                                   {"exp_avg_sqs", exp_avg_sqs, true, true, Kind::kState, true},
                                   {"max_exp_avg_sqs", max_exp_avg_sqs, true, amsgrad, Kind::kState, true},
                                   {"param_copies", param_copies, true, !param_copies.is_none(), Kind::kCopy}});
    const Precision prec = precision(arrays, stochastic_rounding, seed, step);
    return mark_written(arrays, run_update(kernels().adam, kernels().adam_mixed, c, arrays, prec, skip_if_nonfinite));
}

// The benchmark's bandwidth probe over the arrays an optimizer call or a batch-norm pass touches.
void stream_probe(py::handle read_write, py::handle read_only, py::handle write_only) {
    StreamConfig c;
    c.n_read_write = static_cast<int>(py::len(read_write));
    c.n_read_only = static_cast<int>(py::len(read_only));
    c.n_write_only = static_cast<int>(py::len(write_only));
    require(c.n_read_write <= 4 && c.n_read_only <= 2 && c.n_write_only <= 1 &&
                c.n_read_write + c.n_read_only + c.n_write_only >= 1,
            "stream_probe takes 0 to 4 read-write, 0 to 2 read-only and 0 or 1 write-only arrays, at least one");
    std::vector<Role> roles;
    for (int k = 0; k < c.n_read_write; ++k) roles.push_back({"read_write", read_write[py::int_(k)], true});
    for (int k = 0; k < c.n_read_only; ++k) roles.push_back({"read_only", read_only[py::int_(k)], false});
    if (c.n_write_only) roles.push_back({"write_only", write_only[py::int_(0)], true});
    Checked checked = check_arrays(roles);
    std::size_t elements = 0;
    for (std::size_t n : checked.batch.sizes) elements += n;
    c.stream_writes = elements * checked.batch.elem_size >= kStreamMinBytes;
    run(kernels().stream, c, checked);
}

// ---- gradient norms and clipping -------------------------------------------------------------

// Grads of any dtype an update takes (float32, float64, bfloat16, float16), one for all (Kind::kParam).
Checked check_grads(py::handle grads, bool written) {
    return check_arrays({{"grads", grads, written, true, Kind::kParam}});
}

// The norm of all grads together, as if concatenated: (sum |g|^p)^(1/p), max |g| for p = inf.
double total_norm(const Checked& checked, double norm_type) {
    const KernelTable& k = kernels();
    const DType dt = checked.dtype;
    py::gil_scoped_release nogil;
    if (std::isinf(norm_type)) {
        double norm = 0.0;
        for (double m : reduce_blocks(checked.batch, 0, k.max_abs[dt])) norm = max_keeping_nan(norm, m);
        return norm;
    }
    std::function<double(const void*, std::size_t)> block;
    if (norm_type == 2.0)
        block = k.sum_squares[dt];
    else if (norm_type == 1.0)
        block = k.sum_abs[dt];
    else
        block = [&](const void* x, std::size_t n) { return k.sum_abs_pow[dt](x, n, norm_type); };
    double sum = 0.0;
    for (double partial : reduce_blocks(checked.batch, 0, block)) sum += partial;
    return norm_type == 2.0 ? std::sqrt(sum) : norm_type == 1.0 ? sum : std::pow(sum, 1.0 / norm_type);
}

void check_norm_type(double norm_type) {
    if (!(norm_type > 0.0) || std::isnan(norm_type))
        throw py::value_error("Invalid norm_type value: " + repr(norm_type) + " (must be > 0, or inf)");
}

double grad_norm(py::handle grads, double norm_type) {
    check_norm_type(norm_type);
    return total_norm(check_grads(grads, false), norm_type);
}

// torch.nn.utils.clip_grad_norm_: grads *= min(1, max_norm / (total_norm + 1e-6)); returns total_norm
double clip_grad_norm_(py::handle grads, double max_norm, double norm_type, Flag error_if_nonfinite) {
    check_limit("max_norm", max_norm);
    check_norm_type(norm_type);
    Checked checked = check_grads(grads, true);
    const double norm = total_norm(checked, norm_type);
    if (error_if_nonfinite && !std::isfinite(norm))
        throw std::runtime_error("The total norm of order " + repr(norm_type) +
                              " for gradients is non-finite, so it cannot be clipped; grads are unchanged "
                              "(error_if_nonfinite=False scales them as torch does)");
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0 || std::isnan(coef)) {  // torch multiplies by min(coef, 1): 1 changes nothing
        {
            py::gil_scoped_release nogil;
            run_elementwise(kernels().scale[checked.dtype], ScaleConfig{coef}, checked.batch);
        }
        mark_written(checked);
    }
    return norm;
}

// torch.nn.utils.clip_grad_value_: grads = clamp(grads, -clip_value, clip_value)
void clip_grad_value_(py::handle grads, double clip_value) {
    check_limit("clip_value", clip_value);
    Checked checked = check_grads(grads, true);
    if (std::isinf(clip_value)) return;  // clamping to [-inf, inf] changes nothing (NaN stays NaN)
    {
        py::gil_scoped_release nogil;
        run_elementwise(kernels().clamp[checked.dtype], ClampConfig{-clip_value, clip_value}, checked.batch);
    }
    mark_written(checked);
}

// True when every grad times 1 / grad_scale (as an update unscales them) is finite. Grads of
// any dtype an update takes (float32, float64, bfloat16, float16), one for all.
bool all_finite_(py::handle grads, std::optional<double> grad_scale) {
    const double mult = grad_transform(false, 0.0, grad_scale).grad_mult;
    Checked checked = check_grads(grads, false);
    py::gil_scoped_release nogil;
    return all_finite(checked.batch, 0, checked.dtype, mult);
}

}  // namespace

namespace fusedopt {

// ---- memory shared between the arrays of a call (checks.h) ----------------------------------

namespace {
// True when, among the first count spans, an array that is written shares a byte with another
// (the result would depend on the order of reads and writes). One sort by address, then a
// sweep: a span conflicts with one before it when it starts below the end of a written span
// before it, or when it is written and starts below the end of any span before it.
bool any_conflict(const std::vector<Span>& spans, std::size_t count) {
    std::vector<Span> sorted(spans.begin(), spans.begin() + static_cast<std::ptrdiff_t>(count));
    std::sort(sorted.begin(), sorted.end(), [](const Span& x, const Span& y) { return x.lo < y.lo; });
    std::uintptr_t end = 0, written_end = 0;  // of the spans so far, of the written ones
    for (const Span& s : sorted) {
        if (s.lo < written_end || (s.written && s.lo < end)) return true;
        end = std::max(end, s.hi);
        if (s.written) written_end = std::max(written_end, s.hi);
    }
    return false;
}
}  // namespace

// The ids of the first two spans, in the order given, that conflict (any_conflict): the first
// span that conflicts with one before it, and the first of those. Naming the pair by the
// caller's order, not by address, gives the same error on every run (an address-sorted pair
// differed under ASan's allocator). Only an error pays for the search: the shortest conflicting
// prefix is found by bisection, each probe one sort. (Spans are not empty: callers leave out
// empty arrays.)
std::optional<std::pair<std::size_t, std::size_t>> overlapping(const std::vector<Span>& spans) {
    if (!any_conflict(spans, spans.size())) return std::nullopt;
    std::size_t lo = 1, hi = spans.size();  // the prefix of hi spans conflicts; of lo - 1 does not
    while (lo < hi) {
        const std::size_t mid = lo + (hi - lo) / 2;
        if (any_conflict(spans, mid)) hi = mid;
        else lo = mid + 1;
    }
    const Span& last = spans[hi - 1];
    for (std::size_t i = 0; i + 1 < hi; ++i)
        if (spans[i].lo < last.hi && last.lo < spans[i].hi && (spans[i].written || last.written))
            return std::make_pair(spans[i].id, last.id);
    return std::nullopt;  // (not reached: the prefix of hi spans conflicts, that of hi - 1 does not)
}

void throw_overlap(const std::string& a, const std::string& b) {
    throw py::value_error(a + " and " + b + " overlap in memory; an array that is written must not share memory with "
                          "another array of the call");
}

void check_no_conflict(const std::vector<NamedArray>& arrays) {
    std::vector<Span> spans;
    for (std::size_t i = 0; i < arrays.size(); ++i)
        if (arrays[i].array->nbytes() > 0) spans.push_back(span_of(*arrays[i].array, i, arrays[i].written));
    if (auto pair = overlapping(spans)) {
        const auto [a, b] = arrays[pair->first].written ? *pair : std::make_pair(pair->second, pair->first);
        throw_overlap(arrays[a].name, arrays[b].name);
    }
}

void bind_batchnorm(py::module_& m);  // bindings_batchnorm.cpp
void bind_lowbit(py::module_& m);     // bindings_lowbit.cpp
}

PYBIND11_MODULE(_core, m) {
    m.doc() = "fusedopt's C++ kernels; use the functions re-exported by the fusedopt package.";
    m.attr("CENTERED_8BIT_REASON") = kCentered8bit;

    m.def("isa", [] { return std::string(kernels().isa); }, "The ISA whose kernels run now.");
    m.def("available_isas", &available_isas, "ISAs compiled in that this CPU can run, worst first.");
    m.def("cpu_features", &cpu_features,
          "Optional CPU features the kernels use beyond their ISA's baseline (less FUSEDOPT_CPU_FEATURES_OFF).");
    m.def("set_isa", [](const std::string& name) {
        try {
            set_isa(name);
        } catch (const std::invalid_argument& e) {
            throw py::value_error(e.what());
        }
    }, py::arg("name"), "Use the kernels compiled for `name` from now on (process-wide).");
    m.def("l2_cache_bytes", &l2_cache_bytes,
          "One core's L2 in bytes, as the kernels size their blocks by it (the bench sizes by it too).");
    m.def("get_num_threads", &get_num_threads);
    m.def("set_num_threads", [](py::handle n) {
        // any int-like (not bool, not float) in [1, kMaxThreads], said so by name
        if (!PyIndex_Check(n.ptr()) || PyBool_Check(n.ptr()))
            throw py::type_error("set_num_threads: n must be an int, got " + type_name(n));
        auto index = py::reinterpret_steal<py::object>(PyNumber_Index(n.ptr()));
        if (!index) throw py::error_already_set();
        const long long v = PyLong_AsLongLong(index.ptr());
        if (v == -1 && PyErr_Occurred()) PyErr_Clear();  // beyond long long: out of range, said below
        if (!(v >= 1 && v <= kMaxThreads))
            throw py::value_error("set_num_threads: n must be in [1, " + std::to_string(kMaxThreads) + "], got " +
                                  std::string(py::repr(n)));
        set_num_threads(static_cast<int>(v));
    }, py::arg("n"), "Run kernels on up to n threads (1 <= n <= 1024; the CPU count by default).");
    // The address of an OpenMP runtime's GOMP_parallel (0: fusedopt's own pool). Private:
    // fusedopt.torch passes the one of the libgomp torch has loaded (see parallel.h).
    m.def("_set_openmp_parallel", [](std::uintptr_t address) {
        set_openmp_parallel(reinterpret_cast<OpenMPParallel>(address));
    }, py::arg("address"));
    m.def("_openmp_parallel", [] { return reinterpret_cast<std::uintptr_t>(get_openmp_parallel()); });

    // Positional only and without defaults: fusedopt/functional.py holds the keyword-only
    // signatures, defaults and docstrings (pybind11's keyword matching costs ~3 us a call).
    m.def("sgd", &sgd_);
    m.def("adagrad", &adagrad_);
    m.def("rmsprop", &rmsprop_);
    m.def("adam", &adam_);
    m.def("all_finite", &all_finite_);
    m.def("overlapping", [](const py::list& arrays, const py::list& written) {
        if (written.size() != arrays.size()) throw py::value_error("overlapping takes a written flag per array");
        std::vector<Span> spans;
        for (std::size_t i = 0; i < arrays.size(); ++i) {
            if (!py::isinstance<py::array>(arrays[i])) throw py::type_error("overlapping takes a list of numpy.ndarray");
            const auto a = py::reinterpret_borrow<py::array>(arrays[i]);
            if (a.size() > 0) spans.push_back(span_of(a, i, written[i].cast<bool>()));
        }
        return overlapping(spans);
    }, "(i, j): the indices of two of the arrays that share memory, one of them written, or None (the "
       "classes' checks across calls)");
    m.def("random_bits", [](unsigned long long seed, unsigned long long step, unsigned long long tensor,
                             unsigned long long offset, std::size_t n) {
        py::array_t<std::uint32_t> out(static_cast<py::ssize_t>(n));
        kernels().random_bits(seed, step, tensor, offset, out.mutable_data(), n);
        return out;
    }, py::arg("seed"), py::arg("step"), py::arg("tensor"), py::arg("offset"), py::arg("n"),
       "The 32 random bits stochastic rounding draws for elements offset .. offset + n - 1 of tensor `tensor` "
       "(its index in the call's list, 0 for one array) at `step` (uint32 array; the rounding uses the low 16)");
    m.def("grad_norm", &grad_norm);
    m.def("clip_grad_norm_", &clip_grad_norm_);
    m.def("clip_grad_value_", &clip_grad_value_);
    m.def("stream_probe", &stream_probe, py::arg("read_write"), py::arg("read_only"), py::arg("write_only") = py::tuple(),
          "the bandwidth probe: s = sum(read_only); a = a + s for each read_write array; w = s for the write_only one");

    bind_batchnorm(m);
    bind_lowbit(m);
}
