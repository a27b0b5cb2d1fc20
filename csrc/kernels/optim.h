// Per-call scalars of each optimizer, computed once per call in double (bindings.cpp) and
// cast to the array dtype by the kernel. ISA-independent: dispatch.h and every ISA copy of
// the optimizer kernels share these definitions.
#pragma once
#include <cstddef>
#include <cstdint>

namespace fusedopt {

// Every optimizer first forms the gradient it uses:
//   g = grad * grad_mult            grad_mult = (maximize ? -1 : 1) / grad_scale
//   g = g + weight_decay * param    (L2 penalty; only when weight_decay != 0, as torch skips it)
// and with unscale != 0 (1 / grad_scale) writes grad * unscale back into grad in the same pass:
// torch's fused optimizers leave the grads unscaled after a GradScaler step, as unscale_ does.
struct GradTransform {
    double grad_mult = 1.0;
    double weight_decay = 0.0;
    double unscale = 0.0;
};

// torch.optim.SGD. Arrays: param, grad, momentum_buffer.
struct SgdConfig {
    GradTransform g;
    double lr = 0.0, momentum = 0.0, dampening = 0.0;
    bool nesterov = false;
    bool first_step = false;  // torch's first step: momentum_buffer = g (no dampening)
};

// torch.optim.Adagrad. Arrays: param, grad, state_sum.
struct AdagradConfig {
    GradTransform g;
    double clr = 0.0;  // lr / (1 + (step - 1) * lr_decay)
    double eps = 0.0;
};

// torch.optim.RMSprop. Arrays: param, grad, square_avg, momentum_buffer, grad_avg.
struct RmspropConfig {
    GradTransform g;
    double lr = 0.0, alpha = 0.0, eps = 0.0, momentum = 0.0;
    bool centered = false;
    bool eps_inside_sqrt = false;  // textbook sqrt(eps + r) instead of torch's sqrt(r) + eps
};

// torch.optim.Adam / AdamW. Arrays: param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq.
struct AdamConfig {
    GradTransform g;
    double beta1 = 0.0, beta2 = 0.0, eps = 0.0;
    double param_scale = 1.0;     // 1 - lr * weight_decay for AdamW, else 1 (exact no-op)
    double neg_step_size = 0.0;   // -lr / (1 - beta1^step)
    double inv_bias_correction2_sqrt = 1.0;  // 1 / sqrt(1 - beta2^step)
    bool amsgrad = false;
};

// ---- mixed precision -----------------------------------------------------------------------

// How an array is stored. Math is float32 for every storage but float64 (kernel tables are
// indexed by kFloat32 / kFloat64 for the all-float32 / all-float64 calls).
// kQuant8*: 8-bit blockwise state (kernels/quantize.h): one byte per element and one float32
// scale per block of kQuantBlockSize elements, signed or unsigned code.
enum DType { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3, kQuant8Signed = 4, kQuant8Unsigned = 5 };
constexpr std::size_t kQuantBlockSize = 256;  // = kQuantBlock of quantize.h (static_assert in mixed.h)

// Stochastic rounding of bfloat16 params: the random bits of element i of tensor t at a step
// come from a counter-based generator keyed by (seed, step, t, i >> 32) and counted by i's
// low 32 bits (random_bits in simd/convert.h), so they do not depend on how the elements are
// cut into chunks, vectors and threads.
struct RoundingKey {
    std::uint32_t a, b;
};
inline std::uint64_t splitmix64(std::uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
inline RoundingKey rounding_key(std::uint64_t seed, std::uint64_t step, std::uint64_t tensor, std::uint64_t index_hi) {
    std::uint64_t k = splitmix64(seed);
    k = splitmix64(k ^ step);
    k = splitmix64(k ^ tensor);
    k = splitmix64(k ^ index_hi);
    return {static_cast<std::uint32_t>(k), static_cast<std::uint32_t>(k >> 32)};
}

// One chunk of one tensor of a mixed-precision call: n elements from element `offset` of
// tensor `tensor`. data[k] points at the chunk's first element of the k-th array (param,
// grad, then the state in the order of the optimizer's Config; null for an unused one),
// stored as dtype[k]; scales[k] is 8-bit state's scale of the block holding the chunk's first
// element (chunks start on block boundaries when some state is 8-bit). copy, if not null, receives the updated params rounded to nearest
// (copy_dtype bfloat16 or float16: the model's weights beside fp32 master weights).
struct MixedChunk {
    void* const* data;
    const DType* dtype;
    float* const* scales;
    void* copy;
    DType copy_dtype;
    std::size_t n, tensor, offset;
    bool stochastic_rounding;  // bfloat16 params: rounded stochastically, else to nearest even
    std::uint64_t seed, step;
};

// Gradient clipping (reduce.cpp): x *= factor; x = clamp(x, lo, hi).
struct ScaleConfig {
    double factor = 1.0;
};
struct ClampConfig {
    double lo = 0.0, hi = 0.0;
};

// The bandwidth probe (stream.cpp). Arrays: the read-write ones, the read-only ones, then the
// write-only one.
struct StreamConfig {
    int n_read_write = 0, n_read_only = 0, n_write_only = 0;  // 0..4, 0..2, 0..1; at least one array
    bool stream_writes = false;  // write-only array by non-temporal stores (as batch norm writes large outputs)
};

}  // namespace fusedopt
