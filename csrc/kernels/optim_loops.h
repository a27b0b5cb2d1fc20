// The optimizers' update loops, written once over the vector layer and compiled once per ISA:
// optim.cpp runs them over float32 and float64 arrays, mixed.h over the blocks of a
// mixed-precision call (an accessor per array, see there). Included only by those ISA copies
// (namespace fusedopt::<isa>), each of which gets its own.
//
// Each kernel makes one pass over memory: it reads param, grad and the state, and writes param
// and the state, with the per-call scalars (bias corrections, step sizes) precomputed in
// bindings.cpp. Formulas follow torch.optim's documented algorithms operation by operation
// (a*b + c below is one fused multiply-add on ISAs that have it); docs/algorithms.md maps them
// to the textbook forms (Goodfellow et al., Deep Learning, ch. 8).
//
// The loops with a square root and a division prefetch their arrays (see prefetch_ahead).
//
// Each loop reads and writes its arrays through an accessor: Plain<T> when every array is T
// (the float32 and float64 kernels), Fixed or Staged for one block of a mixed-precision call,
// which convert each array from and to its storage (mixed.h).
//
// Option flags that add or skip work (weight decay, momentum, amsgrad, ...) are template
// parameters, so each loop is compiled without branches; with_flags() turns the runtime bools
// into the matching instantiation.
#pragma once
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
// 31-32 -> 28-30 ms (2 threads, at the memory's speed already: 26 -> 25). The all-T SGD loop,
// which the hardware prefetcher keeps up with, was 5-14% slower with it and has none (SGD over
// a mixed call's blocks has it, see sgd_loop).
constexpr std::size_t kPrefetchBytes = 1024;
template <class V, class Arrays, class... K>
inline void prefetch_ahead(const Arrays& a, std::size_t i, K... k) {
    if constexpr (V::size > 1) (a.prefetch(k, i), ...);
}

// Each loop takes its accessor by reference and works on a local copy of it: a store through
// a vector intrinsic may alias anything, so where GCC leaves a loop a function of its own, the
// fields of an accessor reached through a reference (array pointers, scales) are loaded again
// after every store, where those of a local whose address no call takes stay in registers
// (measured, SGD momentum, fp32 params + 8-bit momentum, 64K elements, 1 thread, thread CPU,
// best of 2 s: 15.4-15.7 -> 12.5-13.0 us; 12.0-12.1 before mixed.cpp had a file of its own, where
// GCC had inlined that loop).
// The k-th array of an optimizer (param, grad, then the state in the order of its Config), as a
// type, so that an accessor may store each array in its own format.
template <std::size_t K>
using Slot = std::integral_constant<std::size_t, K>;

// The arrays of an all-T call: a[k] is the k-th array.
template <class T>
struct Plain {
    void* const* a;
    template <class V, std::size_t K>
    V load(V, Slot<K>, std::size_t i) const {
        return V::load(static_cast<const T*>(a[K]) + i);
    }
    template <std::size_t K, class V>
    void store(Slot<K>, V x, std::size_t i) const {
        x.store(static_cast<T*>(a[K]) + i);
    }
    template <std::size_t K>
    void prefetch(Slot<K>, std::size_t i) const {
        FUSEDOPT_ISA_NS::prefetch(static_cast<const T*>(a[K]) + i, kPrefetchBytes / sizeof(T));
    }
    // Elements done one at a time before the vectors (for_each_lane), up to the param's first
    // cache line: a vector load or store that straddles two lines costs two accesses, and NumPy
    // arrays start 16 bytes into one. State from fusedopt.zeros_like sits at its param's offset
    // within a line, so its vectors start on lines too. Measured, AdamW fp32, 1 thread, avx512
    // (AMD EPYC Zen 5), every array 16 bytes into a line, interleaved with the loop from element
    // 0: 16K 4.3 -> 3.4 us, 64K 16.2 -> 11.3, 256K 51.8 -> 36.8 (arrays on lines: 3.4, 11.4,
    // 37.0); grad on another offset than the rest, 64K 17.0 -> 12.7; 16M 7.78 -> 7.58 ms.
    // (The mixed calls' blocks keep their 8-bit blocks' boundaries, and head() is 0 there: fp32
    // params and grads on lines against 16 bytes into one measured 1.00-1.02x for AdamW with
    // 8-bit state, 16K to 1M elements, 1 thread.)
    std::size_t head() const { return elements_to_cache_line(static_cast<const T*>(a[0])); }
    static constexpr bool kUnscalesGrads = true;  // unscale_grads in the loop (transformed_grad)
};

// g = grad * grad_mult (+ weight_decay * param): the gradient every optimizer starts from; and
// in the all-T loops (Arrays::kUnscalesGrads) grad = grad * unscale when unscale != 0
// (unscale_grads): a branch the same way for the whole loop, measured as fast as none (SGD momentum, AdamW, 64K and 1M floats, two
// builds on the same arrays). A mixed call's blocks write their unscaled grads after their loop
// instead (see unscale_block): the store, never taken, in the bf16 + 8-bit state AdamW loop made
// it 8% slower (its registers). (grad_mult and weight_decay stay the loops' own locals: in a
// struct passed by reference, SGD reloaded them after every store, which might have written to it.)
template <bool L2, class V, class Arrays, class Grad, class T>
V transformed_grad(const Arrays& a, Grad grad, std::size_t i, V p, T grad_mult, T weight_decay, T unscale) {
    const V raw = a.load(V{}, grad, i);
    if constexpr (Arrays::kUnscalesGrads) {
        if (unscale != T(0)) a.store(grad, raw * V(unscale), i);
    }
    V g = raw * V(grad_mult);
    if constexpr (L2) g = fmadd(V(weight_decay), p, g);
    return g;
}

// torch.optim.SGD
//   buf = g                                    first step
//   buf = momentum * buf + (1 - dampening) * g later steps
//   g   = g + momentum * buf  (nesterov)  or  g = buf
//   param = param - lr * g
template <class T, bool L2, bool MOMENTUM, bool FIRST, bool NESTEROV, class Arrays>
void sgd_loop(const SgdConfig& c, const Arrays& arrays, std::size_t n) {
    const Arrays a = arrays;  // a local copy (see above Slot)
    constexpr Slot<0> param;
    constexpr Slot<1> grad;
    constexpr Slot<2> momentum_buffer;
    const T grad_mult = T(c.g.grad_mult), weight_decay = T(c.g.weight_decay), unscale = T(c.g.unscale);
    const T momentum = T(c.momentum), one_minus_dampening = T(1.0 - c.dampening), neg_lr = T(-c.lr);
    for_each_lane<T>(n, a.head(), [&](auto vec, std::size_t i) FUSEDOPT_INLINE_BODY {
        using V = decltype(vec);
        // the hardware prefetcher keeps up with the all-T loop, not with a mixed call's blocks:
        // fp32 params + 8-bit momentum at 16M, 1 thread, 0.80-0.83 -> 0.64-0.67 ns/element
        if constexpr (!std::is_same_v<Arrays, Plain<T>>) {
            prefetch_ahead<V>(a, i, param, grad);
            if constexpr (MOMENTUM) prefetch_ahead<V>(a, i, momentum_buffer);
        }
        V p = a.load(vec, param, i);
        V g = transformed_grad<L2>(a, grad, i, p, grad_mult, weight_decay, unscale);
        if constexpr (MOMENTUM) {
            V buf = FIRST ? g : fmadd(V(momentum), a.load(vec, momentum_buffer, i), V(one_minus_dampening) * g);
            a.store(momentum_buffer, buf, i);
            g = NESTEROV ? fmadd(V(momentum), buf, g) : buf;
        }
        a.store(param, fmadd(V(neg_lr), g, p), i);
    });
}

template <class T, class Arrays>
void sgd_arrays(const SgdConfig& c, const Arrays& a, std::size_t n) {
    with_flags([&](auto l2, auto mom, auto first, auto nest) { sgd_loop<T, l2, mom, first, nest>(c, a, n); },
               c.g.weight_decay != 0.0, c.momentum != 0.0, c.first_step, c.nesterov);
}

// torch.optim.Adagrad
//   state_sum = state_sum + g * g
//   param = param - clr * g / (sqrt(state_sum) + eps)     clr = lr / (1 + (step - 1) * lr_decay)
template <class T, bool L2, class Arrays>
void adagrad_loop(const AdagradConfig& c, const Arrays& arrays, std::size_t n) {
    const Arrays a = arrays;  // a local copy (see above Slot)
    constexpr Slot<0> param;
    constexpr Slot<1> grad;
    constexpr Slot<2> state_sum;
    const T grad_mult = T(c.g.grad_mult), weight_decay = T(c.g.weight_decay), unscale = T(c.g.unscale);
    const T neg_clr = T(-c.clr), eps = T(c.eps);
    for_each_lane<T>(n, a.head(), [&](auto vec, std::size_t i) FUSEDOPT_INLINE_BODY {
        using V = decltype(vec);
        prefetch_ahead<V>(a, i, param, grad, state_sum);
        V p = a.load(vec, param, i);
        V g = transformed_grad<L2>(a, grad, i, p, grad_mult, weight_decay, unscale);
        V sum = fmadd(g, g, a.load(vec, state_sum, i));
        a.store(state_sum, sum, i);
        V std_ = sqrt(sum) + V(eps);
        a.store(param, fmadd(V(neg_clr), g / std_, p), i);
    });
}

template <class T, class Arrays>
void adagrad_arrays(const AdagradConfig& c, const Arrays& a, std::size_t n) {
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
template <class T, bool L2, bool CENTERED, bool MOMENTUM, class Arrays>
void rmsprop_loop(const RmspropConfig& c, const Arrays& arrays, std::size_t n) {
    const Arrays a = arrays;  // a local copy (see above Slot)
    constexpr Slot<0> param;
    constexpr Slot<1> grad;
    constexpr Slot<2> square_avg;
    constexpr Slot<3> momentum_buffer;
    constexpr Slot<4> grad_avg;
    const T grad_mult = T(c.g.grad_mult), weight_decay = T(c.g.weight_decay), unscale = T(c.g.unscale);
    const T alpha = T(c.alpha), one_minus_alpha = T(1.0 - c.alpha), momentum = T(c.momentum), neg_lr = T(-c.lr);
    const T eps_inside = c.eps_inside_sqrt ? T(c.eps) : T(0), eps_outside = c.eps_inside_sqrt ? T(0) : T(c.eps);
    for_each_lane<T>(n, a.head(), [&](auto vec, std::size_t i) FUSEDOPT_INLINE_BODY {
        using V = decltype(vec);
        prefetch_ahead<V>(a, i, param, grad, square_avg);
        if constexpr (CENTERED) prefetch_ahead<V>(a, i, grad_avg);
        if constexpr (MOMENTUM) prefetch_ahead<V>(a, i, momentum_buffer);
        V p = a.load(vec, param, i);
        V g = transformed_grad<L2>(a, grad, i, p, grad_mult, weight_decay, unscale);
        V sq = fmadd(V(one_minus_alpha), g * g, V(alpha) * a.load(vec, square_avg, i));
        a.store(square_avg, sq, i);
        V var = sq;
        if constexpr (CENTERED) {
            V ga = a.load(vec, grad_avg, i);
            ga = fmadd(V(one_minus_alpha), g - ga, ga);
            a.store(grad_avg, ga, i);
            // Not fused: with alpha = 0 (square_avg = g*g, grad_avg = g) the fused form returns
            // the rounding error of g*g, often negative, and sqrt gives NaN; unfused gives 0.
            var = sq - ga * ga;
        }
        V avg = sqrt(var + V(eps_inside)) + V(eps_outside);
        V step = g / avg;
        if constexpr (MOMENTUM) {
            step = fmadd(V(momentum), a.load(vec, momentum_buffer, i), step);
            a.store(momentum_buffer, step, i);
        }
        a.store(param, fmadd(V(neg_lr), step, p), i);
    });
}

template <class T, class Arrays>
void rmsprop_arrays(const RmspropConfig& c, const Arrays& a, std::size_t n) {
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
template <class T, bool L2, bool AMSGRAD, class Arrays>
void adam_loop(const AdamConfig& c, const Arrays& arrays, std::size_t n) {
    const Arrays a = arrays;  // a local copy (see above Slot)
    constexpr Slot<0> param;
    constexpr Slot<1> grad;
    constexpr Slot<2> exp_avg;
    constexpr Slot<3> exp_avg_sq;
    constexpr Slot<4> max_exp_avg_sq;
    const T grad_mult = T(c.g.grad_mult), weight_decay = T(c.g.weight_decay), unscale = T(c.g.unscale);
    const T one_minus_beta1 = T(1.0 - c.beta1), beta2 = T(c.beta2), one_minus_beta2 = T(1.0 - c.beta2);
    const T eps = T(c.eps), param_scale = T(c.param_scale), neg_step_size = T(c.neg_step_size);
    const T inv_bc2_sqrt = T(c.inv_bias_correction2_sqrt);
    for_each_lane<T>(n, a.head(), [&](auto vec, std::size_t i) FUSEDOPT_INLINE_BODY {
        using V = decltype(vec);
        prefetch_ahead<V>(a, i, param, grad, exp_avg, exp_avg_sq);
        if constexpr (AMSGRAD) prefetch_ahead<V>(a, i, max_exp_avg_sq);
        V p = a.load(vec, param, i);
        V g = transformed_grad<L2>(a, grad, i, p, grad_mult, weight_decay, unscale);
        V m = a.load(vec, exp_avg, i);
        m = fmadd(V(one_minus_beta1), g - m, m);
        a.store(exp_avg, m, i);
        V v = fmadd(V(one_minus_beta2), g * g, V(beta2) * a.load(vec, exp_avg_sq, i));
        a.store(exp_avg_sq, v, i);
        if constexpr (AMSGRAD) {
            v = max_nan(a.load(vec, max_exp_avg_sq, i), v);  // torch.maximum: a NaN in either is kept
            a.store(max_exp_avg_sq, v, i);
        }
        V denom = fmadd(sqrt(v), V(inv_bc2_sqrt), V(eps));
        a.store(param, fmadd(V(neg_step_size), m / denom, p * V(param_scale)), i);
    });
}

template <class T, class Arrays>
void adam_arrays(const AdamConfig& c, const Arrays& a, std::size_t n) {
    with_flags([&](auto l2, auto ams) { adam_loop<T, l2, ams>(c, a, n); }, c.g.weight_decay != 0.0, c.amsgrad);
}

}  // namespace
}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
