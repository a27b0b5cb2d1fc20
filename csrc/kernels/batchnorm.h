// Arguments of the batch-normalization kernels, checked and filled in by bindings_batchnorm.cpp.
// ISA-independent: dispatch.h and every ISA copy of batchnorm_forward.cpp and
// batchnorm_backward.cpp share these definitions.
#pragma once
#include <cstddef>

namespace fusedopt {

// Outputs at least this large are written with non-temporal stores: they would not stay in
// cache anyway, and skipping the read-for-ownership saves a third of the DRAM traffic. (The
// bandwidth probe streams its write-only array above the same size.)
constexpr std::size_t kStreamMinBytes = std::size_t(8) << 20;

// A virtual memory page: loads and stores whose addresses agree modulo it may be taken as
// dependent (4K aliasing, see store_backward); the output pool places outputs within one.
constexpr std::size_t kPageBytes = 4096;

// x viewed as (outer, channels, inner), C-contiguous: channel axis 1 gives outer = N and
// inner = the product of the spatial sizes; channels-last (axis -1) gives inner = 1.
struct BatchNormShape {
    std::size_t outer = 0, channels = 0, inner = 0;
};

// What the backward's relu_output is: absent, the forward's output (same dtype as x), or a
// numpy bool mask (one byte, 0 or 1). The gradient passes where it is > 0.
enum class ReluMask { kNone, kValues, kBool };

// Arrays of x's dtype; per-channel arrays have `channels` elements. Null pointers: argument
// not given (weight = 1, bias = 0, no running statistics).
struct BatchNormForwardArgs {
    BatchNormShape shape;
    const void* x = nullptr;
    void* y = nullptr;
    const void* weight = nullptr;
    const void* bias = nullptr;
    void* running_mean = nullptr;  // read in eval mode, updated in training mode
    void* running_var = nullptr;
    void* save_mean = nullptr;     // written: what the backward needs
    void* save_invstd = nullptr;
    double momentum = 0.1, eps = 1e-5;
    bool training = true;
    bool relu = false;
};

struct BatchNormBackwardArgs {
    BatchNormShape shape;
    const void* dy = nullptr;
    const void* x = nullptr;
    const void* relu_output = nullptr;
    ReluMask relu_mask = ReluMask::kNone;
    const void* weight = nullptr;
    const void* save_mean = nullptr;
    const void* save_invstd = nullptr;
    void* dx = nullptr;
    void* dweight = nullptr;  // both null or both given (only when weight is given)
    void* dbias = nullptr;
    bool training = true;
};

}  // namespace fusedopt
