// Optimizer update kernels, written once over the vector layer and compiled once per ISA.
//
// Each kernel makes one pass over memory: it reads param, grad and the state, and writes param
// and the state, with the per-call scalars (bias corrections, step sizes) precomputed in
// bindings.cpp. Formulas follow torch.optim's documented algorithms operation by operation
// (a*b + c below is one fused multiply-add on ISAs that have it); docs/algorithms.md maps them
// to the textbook forms (Goodfellow et al., Deep Learning, ch. 8).
//
// The loops with a square root and a division prefetch their arrays (see prefetch_ahead).
//
// Option flags that add or skip work (weight decay, momentum, amsgrad, ...) are template
// parameters, so each loop is compiled without branches; with_flags() turns the runtime bools
// into the matching instantiation.
#include <cstddef>
#include <type_traits>

#include "../dispatch.h"
#include "../simd/vec.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {
namespace {

template <class F>
void with_flags(F&& f) {
    f();
}
template <class F, class... Bools>
void with_flags(F&& f, bool b, Bools... rest) {
    if (b)
        with_flags([&](auto... t) { f(std::true_type{}, t...); }, rest...);
    else
        with_flags([&](auto... t) { f(std::false_type{}, t...); }, rest...);
}

// Asks for the cache lines kPrefetchBytes past element i of each array, from the vector loop
// only. The square roots and divisions of Adam, Adagrad and RMSprop fill the core's reorder
// window, so fewer loads are in flight than DRAM needs; measured, 1 thread, ns/element at 1M
// and 16M floats: Adam 1.24-1.44 / 1.23-1.24 -> 1.18-1.19 / 1.15-1.16, Adagrad 1.14-1.15 /
// 1.14 -> 1.06 / 1.05, RMSprop 1.15-1.17 / 1.11-1.16 -> 1.06 / 1.05; ResNet-50's Adam step
// 31-32 -> 28-30 ms (2 threads, at the memory's speed already: 26 -> 25). SGD, which the
// hardware prefetcher keeps up with, was 5-14% slower with it and has none.
constexpr std::size_t kPrefetchBytes = 1024;
template <class V, class... Arrays>
inline void prefetch_ahead(std::size_t i, const Arrays*... arrays) {
    if constexpr (V::size > 1) (prefetch(arrays + i + kPrefetchBytes / sizeof(Arrays)), ...);
}

// g = grad * grad_mult (+ weight_decay * param): the gradient every optimizer starts from.
template <bool L2, class V, class T>
V transformed_grad(const T* grad, V p, T grad_mult, T weight_decay) {
    V g = V::load(grad) * V(grad_mult);
    if constexpr (L2) g = fmadd(V(weight_decay), p, g);
    return g;
}

// torch.optim.SGD
//   buf = g                                    first step
//   buf = momentum * buf + (1 - dampening) * g later steps
//   g   = g + momentum * buf  (nesterov)  or  g = buf
//   param = param - lr * g
template <class T, bool L2, bool MOMENTUM, bool FIRST, bool NESTEROV>
void sgd_loop(const SgdConfig& c, void* const* a, std::size_t n) {
    T* param = static_cast<T*>(a[0]);
    const T* grad = static_cast<const T*>(a[1]);
    T* momentum_buffer = static_cast<T*>(a[2]);
    const T grad_mult = T(c.g.grad_mult), weight_decay = T(c.g.weight_decay);
    const T momentum = T(c.momentum), one_minus_dampening = T(1.0 - c.dampening), neg_lr = T(-c.lr);
    for_each_lane<T>(n, [&](auto vec, std::size_t i) {
        using V = decltype(vec);
        V p = V::load(param + i);
        V g = transformed_grad<L2, V>(grad + i, p, grad_mult, weight_decay);
        if constexpr (MOMENTUM) {
            V buf = FIRST ? g : fmadd(V(momentum), V::load(momentum_buffer + i), V(one_minus_dampening) * g);
            buf.store(momentum_buffer + i);
            g = NESTEROV ? fmadd(V(momentum), buf, g) : buf;
        }
        fmadd(V(neg_lr), g, p).store(param + i);
    });
}

template <class T>
void sgd(const SgdConfig& c, void* const* a, std::size_t n) {
    with_flags([&](auto l2, auto mom, auto first, auto nest) { sgd_loop<T, l2, mom, first, nest>(c, a, n); },
               c.g.weight_decay != 0.0, c.momentum != 0.0, c.first_step, c.nesterov);
}

// torch.optim.Adagrad
//   state_sum = state_sum + g * g
//   param = param - clr * g / (sqrt(state_sum) + eps)     clr = lr / (1 + (step - 1) * lr_decay)
template <class T, bool L2>
void adagrad_loop(const AdagradConfig& c, void* const* a, std::size_t n) {
    T* param = static_cast<T*>(a[0]);
    const T* grad = static_cast<const T*>(a[1]);
    T* state_sum = static_cast<T*>(a[2]);
    const T grad_mult = T(c.g.grad_mult), weight_decay = T(c.g.weight_decay);
    const T neg_clr = T(-c.clr), eps = T(c.eps);
    for_each_lane<T>(n, [&](auto vec, std::size_t i) {
        using V = decltype(vec);
        prefetch_ahead<V>(i, param, grad, state_sum);
        V p = V::load(param + i);
        V g = transformed_grad<L2, V>(grad + i, p, grad_mult, weight_decay);
        V sum = fmadd(g, g, V::load(state_sum + i));
        sum.store(state_sum + i);
        V std_ = sqrt(sum) + V(eps);
        fmadd(V(neg_clr), g / std_, p).store(param + i);
    });
}

template <class T>
void adagrad(const AdagradConfig& c, void* const* a, std::size_t n) {
    with_flags([&](auto l2) { adagrad_loop<T, l2>(c, a, n); }, c.g.weight_decay != 0.0);
}

// torch.optim.RMSprop
//   square_avg = alpha * square_avg + (1 - alpha) * g * g
//   grad_avg   = grad_avg + (1 - alpha) * (g - grad_avg)          centered (torch's lerp)
//   avg = sqrt(square_avg [- grad_avg^2]) + eps                    torch
//   avg = sqrt(square_avg [- grad_avg^2] + eps)                    eps_inside_sqrt (textbook)
//   buf = momentum * buf + g / avg;  param = param - lr * buf      momentum > 0
//   param = param - lr * g / avg                                   otherwise
// One of eps_inside / eps_outside is 0, and x + 0 == x, so both forms share one loop.
template <class T, bool L2, bool CENTERED, bool MOMENTUM>
void rmsprop_loop(const RmspropConfig& c, void* const* a, std::size_t n) {
    T* param = static_cast<T*>(a[0]);
    const T* grad = static_cast<const T*>(a[1]);
    T* square_avg = static_cast<T*>(a[2]);
    T* momentum_buffer = static_cast<T*>(a[3]);
    T* grad_avg = static_cast<T*>(a[4]);
    const T grad_mult = T(c.g.grad_mult), weight_decay = T(c.g.weight_decay);
    const T alpha = T(c.alpha), one_minus_alpha = T(1.0 - c.alpha), momentum = T(c.momentum), neg_lr = T(-c.lr);
    const T eps_inside = c.eps_inside_sqrt ? T(c.eps) : T(0), eps_outside = c.eps_inside_sqrt ? T(0) : T(c.eps);
    for_each_lane<T>(n, [&](auto vec, std::size_t i) {
        using V = decltype(vec);
        prefetch_ahead<V>(i, param, grad, square_avg);
        if constexpr (CENTERED) prefetch_ahead<V>(i, grad_avg);
        if constexpr (MOMENTUM) prefetch_ahead<V>(i, momentum_buffer);
        V p = V::load(param + i);
        V g = transformed_grad<L2, V>(grad + i, p, grad_mult, weight_decay);
        V sq = fmadd(V(one_minus_alpha), g * g, V(alpha) * V::load(square_avg + i));
        sq.store(square_avg + i);
        V var = sq;
        if constexpr (CENTERED) {
            V ga = V::load(grad_avg + i);
            ga = fmadd(V(one_minus_alpha), g - ga, ga);
            ga.store(grad_avg + i);
            // Not fused: with alpha = 0 (square_avg = g*g, grad_avg = g) the fused form returns
            // the rounding error of g*g, often negative, and sqrt gives NaN; unfused gives 0.
            var = sq - ga * ga;
        }
        V avg = sqrt(var + V(eps_inside)) + V(eps_outside);
        V step = g / avg;
        if constexpr (MOMENTUM) {
            step = fmadd(V(momentum), V::load(momentum_buffer + i), step);
            step.store(momentum_buffer + i);
        }
        fmadd(V(neg_lr), step, p).store(param + i);
    });
}

template <class T>
void rmsprop(const RmspropConfig& c, void* const* a, std::size_t n) {
    with_flags([&](auto l2, auto centered, auto mom) { rmsprop_loop<T, l2, centered, mom>(c, a, n); },
               c.g.weight_decay != 0.0, c.centered, c.momentum != 0.0);
}

// torch.optim.Adam / AdamW
//   param = param * (1 - lr * weight_decay)                        AdamW (decoupled)
//   exp_avg    = exp_avg + (1 - beta1) * (g - exp_avg)             (= beta1 m + (1 - beta1) g, torch's lerp)
//   exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
//   max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq)               amsgrad; used below instead of exp_avg_sq
//   denom = sqrt(exp_avg_sq) / sqrt(1 - beta2^step) + eps
//   param = param - lr / (1 - beta1^step) * exp_avg / denom
template <class T, bool L2, bool AMSGRAD>
void adam_loop(const AdamConfig& c, void* const* a, std::size_t n) {
    T* param = static_cast<T*>(a[0]);
    const T* grad = static_cast<const T*>(a[1]);
    T* exp_avg = static_cast<T*>(a[2]);
    T* exp_avg_sq = static_cast<T*>(a[3]);
    T* max_exp_avg_sq = static_cast<T*>(a[4]);
    const T grad_mult = T(c.g.grad_mult), weight_decay = T(c.g.weight_decay);
    const T one_minus_beta1 = T(1.0 - c.beta1), beta2 = T(c.beta2), one_minus_beta2 = T(1.0 - c.beta2);
    const T eps = T(c.eps), param_scale = T(c.param_scale), neg_step_size = T(c.neg_step_size);
    const T inv_bc2_sqrt = T(c.inv_bias_correction2_sqrt);
    for_each_lane<T>(n, [&](auto vec, std::size_t i) {
        using V = decltype(vec);
        prefetch_ahead<V>(i, param, grad, exp_avg, exp_avg_sq);
        if constexpr (AMSGRAD) prefetch_ahead<V>(i, max_exp_avg_sq);
        V p = V::load(param + i);
        V g = transformed_grad<L2, V>(grad + i, p, grad_mult, weight_decay);
        V m = V::load(exp_avg + i);
        m = fmadd(V(one_minus_beta1), g - m, m);
        m.store(exp_avg + i);
        V v = fmadd(V(one_minus_beta2), g * g, V(beta2) * V::load(exp_avg_sq + i));
        v.store(exp_avg_sq + i);
        if constexpr (AMSGRAD) {
            v = max(V::load(max_exp_avg_sq + i), v);
            v.store(max_exp_avg_sq + i);
        }
        V denom = fmadd(sqrt(v), V(inv_bc2_sqrt), V(eps));
        fmadd(V(neg_step_size), m / denom, p * V(param_scale)).store(param + i);
    });
}

template <class T>
void adam(const AdamConfig& c, void* const* a, std::size_t n) {
    with_flags([&](auto l2, auto ams) { adam_loop<T, l2, ams>(c, a, n); }, c.g.weight_decay != 0.0, c.amsgrad);
}

}  // namespace

void register_optim(KernelTable& t) {
    FUSEDOPT_REGISTER(t, sgd);
    FUSEDOPT_REGISTER(t, adagrad);
    FUSEDOPT_REGISTER(t, rmsprop);
    FUSEDOPT_REGISTER(t, adam);
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
