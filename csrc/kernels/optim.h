// Per-call scalars of each optimizer, computed once per call in double (bindings.cpp) and
// cast to the array dtype by the kernel. ISA-independent: dispatch.h and every ISA copy of
// optim.cpp share these definitions.
#pragma once

namespace fusedopt {

// Every optimizer first forms the gradient it uses:
//   g = grad * grad_mult            grad_mult = (maximize ? -1 : 1) (exact: a sign flip)
//   g = g + weight_decay * param    (L2 penalty; only when weight_decay != 0, as torch skips it)
struct GradTransform {
    double grad_mult = 1.0;
    double weight_decay = 0.0;
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
