// Python bindings of the batch-normalization kernels: _core.batchnorm_forward and
// _core.batchnorm_backward, positional (fusedopt/batchnorm.py holds the keyword signatures).
// Every argument is checked before anything is allocated or written; arrays that are written
// (out, running statistics) are never converted or copied; the GIL is released while the
// kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <iterator>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "checks.h"
#include "dispatch.h"

namespace fusedopt {
namespace {

namespace py = pybind11;

py::array as_ndarray(py::handle h, const char* name) {
    py::object a = to_ndarray(h, name);
    if (!py::isinstance<py::array>(a))
        throw py::type_error(std::string(name) + " must be a numpy.ndarray or a torch CPU tensor, got " + type_name(h));
    return py::reinterpret_steal<py::array>(a.release());
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()); }

// A torch tensor given as out= has its autograd version bumped once written, as torch's out=
// ops do. (Running statistics are not: torch's batch_norm updates them without a bump.)
void mark_out_written(py::handle out_obj) {
    if (!out_obj.is_none() && !py::isinstance<py::array>(out_obj)) {
        py::list tensors;
        tensors.append(out_obj);
        increment_versions(tensors);
    }
}

// x: a C-contiguous float32/float64 array of rank >= 2 with at least one element.
DType check_input(const py::array& x, const char* name) {
    const DType dtype = float_dtype(x, name);
    if (x.ndim() < 2)
        throw py::value_error(std::string(name) + " has shape " + shape_str(x) +
                              "; batch normalization needs rank >= 2: (N, C, ...) or channels-last (..., C)");
    if (x.size() == 0) throw py::value_error(std::string(name) + " is empty (shape " + shape_str(x) + ")");
    check_memory(x, name, false);
    return dtype;
}

// The channel axis (1 or -1, or their non-negative spellings) -> x viewed as (outer, C, inner).
BatchNormShape channel_view(const py::array& x, long long axis) {
    const long long ndim = x.ndim();
    if (axis < -ndim || axis >= ndim)
        throw py::value_error("axis " + std::to_string(axis) + " is out of range for x of rank " + std::to_string(ndim) +
                              " (shape " + shape_str(x) + ")");
    const long long a = axis < 0 ? axis + ndim : axis;
    if (a != 1 && a != ndim - 1)
        throw py::value_error("axis must be the channel axis 1 (N, C, ...) or -1 (channels-last), got " +
                              std::to_string(axis) + " for x of shape " + shape_str(x));
    BatchNormShape s;
    s.outer = 1;
    s.inner = 1;
    s.channels = static_cast<std::size_t>(x.shape(a));
    for (long long d = 0; d < a; ++d) s.outer *= static_cast<std::size_t>(x.shape(d));
    for (long long d = a + 1; d < ndim; ++d) s.inner *= static_cast<std::size_t>(x.shape(d));
    return s;
}

// A per-channel array: None, or a 1-D C-contiguous array of C elements of x's dtype.
std::optional<py::array> channel_array(py::handle h, const char* name, const py::array& x, std::size_t channels,
                                       bool written) {
    if (h.is_none()) return std::nullopt;
    py::array a = as_ndarray(h, name);
    if (!a.dtype().equal(x.dtype()))
        throw py::type_error(std::string(name) + " has dtype " + dtype_str(a) + " but x has " + dtype_str(x) +
                             "; per-channel arrays must have x's dtype");
    if (a.ndim() != 1 || static_cast<std::size_t>(a.shape(0)) != channels)
        throw py::value_error(std::string(name) + " has shape " + shape_str(a) + " but x of shape " + shape_str(x) +
                              " has " + std::to_string(channels) + " channels; expected shape (" +
                              std::to_string(channels) + ",)");
    check_memory(a, name, written);
    return a;
}

// An array of x's shape: dy, relu_output, out.
py::array like_x(py::handle h, const char* name, const py::array& x, bool written) {
    py::array a = as_ndarray(h, name);
    if (!a.dtype().equal(x.dtype()))
        throw py::type_error(std::string(name) + " has dtype " + dtype_str(a) + " but x has " + dtype_str(x));
    if (!same_shape(a, x))
        throw py::value_error(std::string(name) + " has shape " + shape_str(a) + " but x has shape " + shape_str(x));
    check_memory(a, name, written);
    return a;
}

// Outputs the call allocates (no out=) of kPoolMinBytes or more come from buffers that earlier
// such outputs gave back when their last reference died (the array, any view of it, a torch
// tensor made by torch.from_numpy). A fresh allocation that large is often memory the process
// has not touched since the allocator took it from the system (glibc maps blocks over its mmap
// threshold afresh and unmaps them on free, and gives back the free top of its heap), whose
// every 4 KiB page the kernel faults in and zeroes at the first write: ~1 us a page on this
// KVM guest, measured (128, 64, 32, 32) float forward, 33.5 MB, 1 thread, thread CPU time:
// +147-171% without out= against with it. Training steps repeat their shapes, so a buffer of
// the exact size that an earlier step's output freed serves the next one.
//
// Bound: a network keeps one output per batch-norm layer alive from its forward to its
// backward, so the pool keeps what its outputs needed at once and no more: the memory it holds
// (outputs in use + freed buffers kept) never exceeds the largest total of its outputs that
// were in use at the same time (high_water). Idle, it holds at most high_water bytes of freed
// buffers; release() frees them (the oldest freed are also the first dropped when a new size
// needs room).
class OutputPool {
  public:
    static constexpr std::size_t kAlign = 64;
    static OutputPool& get() {
        static OutputPool* pool = new OutputPool;  // never destroyed: arrays may outlive the module
        return *pool;
    }
    static void free_buffer(void* p) { ::operator delete(p, std::align_val_t{kAlign}); }
    void* take(std::size_t bytes) {
        std::vector<void*> dropped;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            // the most recently freed buffer of this size: the likeliest to be still in cache
            for (auto it = free_.rbegin(); it != free_.rend(); ++it) {
                if (it->bytes != bytes) continue;
                void* p = it->ptr;
                free_.erase(std::next(it).base());
                free_bytes_ -= bytes;
                live_bytes_ += bytes;
                return p;
            }
            // a new buffer: first drop the oldest freed ones while the total would pass high_water
            const std::size_t limit = std::max(high_water_, live_bytes_ + bytes);
            std::size_t n = 0;
            while (n < free_.size() && live_bytes_ + free_bytes_ + bytes > limit) {
                dropped.push_back(free_[n].ptr);
                free_bytes_ -= free_[n].bytes;
                ++n;
            }
            free_.erase(free_.begin(), free_.begin() + static_cast<std::ptrdiff_t>(n));
            live_bytes_ += bytes;  // counted before the allocation, so that a failure undoes it below
            high_water_ = std::max(high_water_, live_bytes_);
        }
        for (void* p : dropped) free_buffer(p);
        void* p = ::operator new(bytes, std::align_val_t{kAlign}, std::nothrow);
        if (!p) {
            std::lock_guard<std::mutex> lock(mutex_);
            live_bytes_ -= bytes;
            throw std::bad_alloc();
        }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
        // transparent huge pages where the system gives them on request, as numpy asks for its
        // own arrays of 4 MiB or more (fewer TLB misses on a pass over the array)
        const std::uintptr_t page = 4096, start = (reinterpret_cast<std::uintptr_t>(p) + page - 1) / page * page;
        if (bytes >= (std::size_t(4) << 20) && start < reinterpret_cast<std::uintptr_t>(p) + bytes)
            madvise(reinterpret_cast<void*>(start), reinterpret_cast<std::uintptr_t>(p) + bytes - start, MADV_HUGEPAGE);
#endif
        return p;
    }
    void give_back(void* p, std::size_t bytes) {
        std::lock_guard<std::mutex> lock(mutex_);
        free_.push_back({p, bytes});
        live_bytes_ -= bytes;
        free_bytes_ += bytes;
    }
    // Frees every buffer kept and starts high_water again from the outputs in use; returns the
    // bytes freed.
    std::size_t release() {
        std::vector<Buffer> dropped;
        std::size_t bytes;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            dropped.swap(free_);
            bytes = free_bytes_;
            free_bytes_ = 0;
            high_water_ = live_bytes_;
        }
        for (const Buffer& b : dropped) free_buffer(b.ptr);
        return bytes;
    }
    struct Stats {
        std::size_t live_bytes, free_bytes, free_buffers, high_water;
    };
    Stats stats() {
        std::lock_guard<std::mutex> lock(mutex_);
        return {live_bytes_, free_bytes_, free_.size(), high_water_};
    }

  private:
    struct Buffer {
        void* ptr;
        std::size_t bytes;
    };
    std::mutex mutex_;
    std::vector<Buffer> free_;  // oldest freed first
    std::size_t live_bytes_ = 0, free_bytes_ = 0, high_water_ = 0;
};

// Outputs below this come from NumPy's allocator (malloc). Measured on the 2-core KVM guest
// (two arrays alive at once, allocated, filled, freed, repeated; minor faults per call, thread
// CPU): up to 128 KiB malloc's free lists hand back memory already touched (0 faults); from 256
// KiB on, a fresh array faulted in every page on every call in a NumPy-only process (256 KiB:
// 102 us against 14 us refilling a kept array; 1 MiB: 520 against 102) and none after torch
// was imported: it depends on what the heap went through before, which a pool does not. A pool
// entry costs about a microsecond (capsule, lock); 64 KiB is 16 pages, 4 us to fill.
constexpr std::size_t kPoolMinBytes = std::size_t(64) << 10;

// A pool output starts at x's offset within a 4 KiB page (its buffer has a page more than the
// output needs). The elementwise pass starts its vectors on the output's cache lines (streamed
// stores need whole lines, apply_block), so x's vectors sit on lines too, where NumPy's arrays
// start 16 bytes into one (a vector that straddles two lines costs two accesses); and no store
// is a little ahead of a load modulo 4 KiB (see store_backward). The pool's buffers from
// operator new had started 64 bytes into a page, 48 bytes ahead of a NumPy x. Measured, 1
// thread, AMD EPYC Zen 5, avx512, outputs (out=) at placements relative to x's page offset, 16
// interleaved rounds, eight shapes, forward / eval / backward, time against x's offset: -1 KiB
// 1.03x (geometric mean), +1 KiB 1.02x, +2 KiB 1.04x, page + 0 1.04x (up to 1.22x), +48 bytes
// (as the pool had them) 1.14x (up to 2.13x: (32, 56, 56, 64) channels-last eval). Against the
// former pool, both builds in one process, 1 thread, best of 20, ms: (32, 56, 56, 64) forward
// 2.569 -> 2.079, eval 1.664 -> 0.979, backward 4.475 -> 3.044; (32, 64, 56, 56) 1.06-1.11x;
// six other shapes 0.95-1.11x but (32, 2048, 7, 7) eval 0.81x in one run of three.
py::array new_like(const py::array& x) {
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    const auto nbytes = static_cast<std::size_t>(x.nbytes());
    if (nbytes < kPoolMinBytes) return py::array(x.dtype(), shape);
    struct Owned {
        void* ptr;
        std::size_t bytes;
    };
    const std::size_t bytes = nbytes + kPageBytes;
    std::size_t in_page = reinterpret_cast<std::uintptr_t>(x.data()) % kPageBytes;
    if (in_page % static_cast<std::size_t>(x.itemsize())) in_page = 0;  // (an x not aligned to its elements)
    auto owned = std::make_unique<Owned>(Owned{OutputPool::get().take(bytes), bytes});
    const std::size_t buffer_in_page = reinterpret_cast<std::uintptr_t>(owned->ptr) % kPageBytes;
    void* const data = static_cast<char*>(owned->ptr) + (in_page + kPageBytes - buffer_in_page) % kPageBytes;
    py::capsule base;
    try {
        base = py::capsule(owned.get(), [](void* o) {
            std::unique_ptr<Owned> b(static_cast<Owned*>(o));
            OutputPool::get().give_back(b->ptr, b->bytes);
        });
    } catch (...) {
        OutputPool::get().give_back(owned->ptr, owned->bytes);
        throw;
    }
    owned.release();  // the capsule owns it now
    return py::array(x.dtype(), shape, std::vector<py::ssize_t>{}, data, base);
}
py::array new_channels(const py::array& x, std::size_t channels) {
    return py::array(x.dtype(), std::vector<py::ssize_t>{static_cast<py::ssize_t>(channels)});
}

std::string shape_of(const py::array& x) { return shape_str(x); }

// A NumPy array of `dtype` and C-contiguous `shape` on a torch tensor's memory (from
// tensor.data_ptr()), with the tensor as its base, for fusedopt.torch.batchnorm's modules. One
// call into torch instead of Tensor.numpy()'s four dispatched ops (detach, to, resolve_conj,
// resolve_neg): right after a batch-norm kernel has streamed its arrays through the core's L2,
// torch's and Python's code runs from further out, and a module step converts nine tensors.
// The caller vouches for what this cannot see: a dense CPU tensor of that dtype, not a lazily
// negated view, whose memory from data_ptr is C-contiguous in `shape`.
py::array tensor_view(py::handle tensor, const py::dtype& dtype, const py::tuple& shape) {
    std::vector<py::ssize_t> extents;
    extents.reserve(shape.size());
    for (py::handle n : shape) extents.push_back(n.cast<py::ssize_t>());
    const auto address = tensor.attr("data_ptr")().cast<std::uintptr_t>();
    return py::array(dtype, extents, std::vector<py::ssize_t>{}, reinterpret_cast<const void*>(address), tensor);
}

py::tuple batchnorm_forward(py::handle x_obj, py::handle weight_obj, py::handle bias_obj, py::handle running_mean_obj,
                            py::handle running_var_obj, Flag training, double momentum, double eps, long long axis,
                            Flag relu, py::handle out_obj) {
    const py::array x = as_ndarray(x_obj, "x");
    const DType dtype = check_input(x, "x");
    const BatchNormShape shape = channel_view(x, axis);
    if (!std::isfinite(momentum)) throw py::value_error("Invalid momentum value: " + repr(momentum) + " (must be finite)");
    check_nonnegative("eps", eps);
    if (training && shape.outer * shape.inner <= 1)
        throw py::value_error("Expected more than 1 value per channel when training, got input shape " + shape_of(x));

    const auto weight = channel_array(weight_obj, "weight", x, shape.channels, false);
    const auto bias = channel_array(bias_obj, "bias", x, shape.channels, false);
    if (running_mean_obj.is_none() != running_var_obj.is_none())
        throw py::value_error(std::string(running_mean_obj.is_none() ? "running_var" : "running_mean") + " is given without " +
                              (running_mean_obj.is_none() ? "running_mean" : "running_var") +
                              "; pass both running statistics or neither");
    if (!training && running_mean_obj.is_none())
        throw py::value_error("running_mean and running_var are required when training=False (eval mode normalizes with them)");
    const auto running_mean = channel_array(running_mean_obj, "running_mean", x, shape.channels, training);
    const auto running_var = channel_array(running_var_obj, "running_var", x, shape.channels, training);
    std::optional<py::array> out;
    if (!out_obj.is_none()) out = like_x(out_obj, "out", x, true);

    std::vector<NamedArray> arrays{{"x", &x, false}};
    if (weight) arrays.push_back({"weight", &*weight, false});
    if (bias) arrays.push_back({"bias", &*bias, false});
    if (running_mean) arrays.push_back({"running_mean", &*running_mean, training});
    if (running_var) arrays.push_back({"running_var", &*running_var, training});
    if (out) arrays.push_back({"out", &*out, true});
    check_no_conflict(arrays);  // (checks.h)

    // all checks passed: allocate the outputs, then run
    py::array y = out ? *out : new_like(x);
    py::array save_mean = new_channels(x, shape.channels);
    py::array save_invstd = new_channels(x, shape.channels);
    BatchNormForwardArgs args;
    args.shape = shape;
    args.x = x.data();
    args.y = y.mutable_data();
    args.weight = weight ? weight->data() : nullptr;
    args.bias = bias ? bias->data() : nullptr;
    args.running_mean = running_mean ? const_cast<void*>(running_mean->data()) : nullptr;
    args.running_var = running_var ? const_cast<void*>(running_var->data()) : nullptr;
    args.save_mean = save_mean.mutable_data();
    args.save_invstd = save_invstd.mutable_data();
    args.momentum = momentum;
    args.eps = eps;
    args.training = training;
    args.relu = relu;
    {
        py::gil_scoped_release nogil;
        kernels().batchnorm_forward[dtype](args);
    }
    mark_out_written(out_obj);
    return py::make_tuple(y, save_mean, save_invstd);
}

py::tuple batchnorm_backward(py::handle dy_obj, py::handle x_obj, py::handle weight_obj, py::handle save_mean_obj,
                             py::handle save_invstd_obj, long long axis, Flag training, py::handle relu_output_obj,
                             py::handle out_obj) {
    const py::array x = as_ndarray(x_obj, "x");
    const DType dtype = check_input(x, "x");
    const BatchNormShape shape = channel_view(x, axis);
    const py::array dy = like_x(dy_obj, "dy", x, false);
    const auto weight = channel_array(weight_obj, "weight", x, shape.channels, false);
    if (save_mean_obj.is_none() || save_invstd_obj.is_none())
        throw py::type_error("save_mean and save_invstd are required: pass the ones batchnorm_forward returned");
    const py::array save_mean = *channel_array(save_mean_obj, "save_mean", x, shape.channels, false);
    const py::array save_invstd = *channel_array(save_invstd_obj, "save_invstd", x, shape.channels, false);

    std::optional<py::array> relu_output;
    ReluMask mask = ReluMask::kNone;
    if (!relu_output_obj.is_none()) {
        py::array r = as_ndarray(relu_output_obj, "relu_output");
        if (r.dtype().equal(py::dtype::of<bool>())) {
            mask = ReluMask::kBool;
        } else if (r.dtype().equal(x.dtype())) {
            mask = ReluMask::kValues;
        } else {
            throw py::type_error("relu_output has dtype " + dtype_str(r) + "; expected x's dtype " + dtype_str(x) +
                                 " (the forward's output) or bool (a mask)");
        }
        if (!same_shape(r, x))
            throw py::value_error("relu_output has shape " + shape_str(r) + " but x has shape " + shape_str(x));
        check_memory(r, "relu_output", false);
        relu_output = r;
    }
    std::optional<py::array> out;
    if (!out_obj.is_none()) out = like_x(out_obj, "out", x, true);

    std::vector<NamedArray> arrays{{"dy", &dy, false}, {"x", &x, false}, {"save_mean", &save_mean, false},
                              {"save_invstd", &save_invstd, false}};
    if (weight) arrays.push_back({"weight", &*weight, false});
    if (relu_output) arrays.push_back({"relu_output", &*relu_output, false});
    if (out) arrays.push_back({"out", &*out, true});
    check_no_conflict(arrays);  // (checks.h)

    // all checks passed: allocate the outputs, then run
    py::array dx = out ? *out : new_like(x);
    py::object dweight = py::none(), dbias = py::none();
    BatchNormBackwardArgs args;
    if (weight) {
        py::array dw = new_channels(x, shape.channels), db = new_channels(x, shape.channels);
        args.dweight = dw.mutable_data();
        args.dbias = db.mutable_data();
        dweight = dw;
        dbias = db;
    }
    args.shape = shape;
    args.dy = dy.data();
    args.x = x.data();
    args.relu_output = relu_output ? relu_output->data() : nullptr;
    args.relu_mask = mask;
    args.weight = weight ? weight->data() : nullptr;
    args.save_mean = save_mean.data();
    args.save_invstd = save_invstd.data();
    args.dx = dx.mutable_data();
    args.training = training;
    {
        py::gil_scoped_release nogil;
        kernels().batchnorm_backward[dtype](args);
    }
    mark_out_written(out_obj);
    return py::make_tuple(dx, dweight, dbias);
}

}  // namespace

void bind_batchnorm(py::module_& m) {
    // Positional only and without defaults, as the optimizer bindings (see bindings.cpp).
    m.def("batchnorm_forward", &batchnorm_forward,
          "(x, weight, bias, running_mean, running_var, training, momentum, eps, axis, relu, out) -> "
          "(y, save_mean, save_invstd); see fusedopt.batchnorm.batchnorm_forward");
    m.def("batchnorm_backward", &batchnorm_backward,
          "(dy, x, weight, save_mean, save_invstd, axis, training, relu_output, out) -> (dx, dweight, dbias); "
          "see fusedopt.batchnorm.batchnorm_backward");
    m.def("tensor_view", &tensor_view,
          "(tensor, dtype, shape) -> a NumPy array on tensor.data_ptr(), C-contiguous, the tensor its base; "
          "for fusedopt.torch.batchnorm, which vets the tensor first");
    m.def("output_pool_release", [] { return OutputPool::get().release(); },
          "Frees the batch-norm output buffers kept for reuse; returns the bytes freed.");
    m.def("output_pool_stats", [] {
        const OutputPool::Stats s = OutputPool::get().stats();
        py::dict d;
        d["live_bytes"] = s.live_bytes;
        d["free_bytes"] = s.free_bytes;
        d["free_buffers"] = s.free_buffers;
        d["high_water"] = s.high_water;
        return d;
    }, "The batch-norm output pool: bytes in use, bytes and buffers kept freed, high_water.");
}

}  // namespace fusedopt
