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
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../dispatch.h"
#include "../simd/vec.h"
#include "quantize.h"

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

// ---- mixed precision and 8-bit state -----------------------------------------------------------
//
// A call with any array not float32 (bfloat16/float16 params or grads, bfloat16 or 8-bit state,
// a param copy) runs the float32 loops above over blocks of kStage elements: each block of a
// 16-bit or 8-bit array is decoded into a float buffer (in L1), the loop updates the buffers and
// the float32 arrays in place, and the written buffers are encoded back (one pass over memory
// still). The conversions are one loop per storage format, not a copy of each optimizer per
// combination of dtypes: the optimizers' compiled variants stay those of their option flags.
// A staged block is an 8-bit block (the caller starts chunks on block boundaries), so each 8-bit
// block is decoded and re-encoded whole, with its new absmax as its scale.

constexpr std::size_t kStage = kQuantBlock;
static_assert(kQuantBlock == kQuantBlockSize, "optim.h's block size is quantize.h's");

void widen(DType dtype, const std::uint16_t* src, float* dst, std::size_t n) {
    if (dtype == kBFloat16)
        for_each_lane<float>(n, [&](auto vec, std::size_t i) { load_bf16<decltype(vec)>(src + i).store(dst + i); });
    else
        for_each_lane<float>(n, [&](auto vec, std::size_t i) { load_f16<decltype(vec)>(src + i).store(dst + i); });
}

// Round to nearest even.
void narrow(const float* src, DType dtype, std::uint16_t* dst, std::size_t n) {
    if (dtype == kBFloat16)
        for_each_lane<float>(n, [&](auto vec, std::size_t i) { store_bf16(decltype(vec)::load(src + i), dst + i); });
    else
        for_each_lane<float>(n, [&](auto vec, std::size_t i) { store_f16(decltype(vec)::load(src + i), dst + i); });
}

// Stochastic rounding to bfloat16 of elements index, index + 1, ... (index's low 32 bits count
// them; the caller keeps a block within one 2^32 run, under its key).
void narrow_stochastic(const float* src, std::uint16_t* dst, std::size_t n, std::uint64_t index, RoundingKey key) {
    for_each_lane<float>(n, [&](auto vec, std::size_t i) {
        using V = decltype(vec);
        using U = UintVec<V>;
        const U bits = random_bits(U::iota(static_cast<std::uint32_t>(index + i)), key.a, key.b);
        store_bf16_adding(V::load(src + i), bits & U(0xFFFFu), dst + i);
    });
}

// Elements [index, index + n) cut where index's low 32 bits wrap (the random bits' counter).
std::size_t block_length(std::size_t n, std::uint64_t index) {
    const std::uint64_t to_wrap = (std::uint64_t(1) << 32) - (index & 0xFFFFFFFFu);
    return static_cast<std::size_t>(std::min<std::uint64_t>({kStage, n, to_wrap}));
}

std::size_t bytes_per_element(DType dtype) {
    return dtype == kFloat32 ? 4 : dtype == kQuant8Signed || dtype == kQuant8Unsigned ? 1 : 2;
}

// Asks for the cache lines of elements [lo, hi) of a staged array. The conversion loops read
// the 16-bit and 8-bit arrays without prefetching (the float32 ones are read by the update
// loops, which prefetch for themselves), and each block is decoded, updated and encoded in L1
// for a few hundred ns with no load from memory in flight: asked for two blocks ahead, the
// lines arrive during that time. Measured, AdamW at 16M, 1 thread, CPU time, medians of
// 3 x 12 interleaved steps: bf16 params+grads+state (SR) 1.24-1.29 -> 1.15-1.18 ns/element,
// bf16 + 8-bit state 1.47-1.54 -> 1.36-1.47, fp32 + 8-bit state 1.12-1.16 -> 1.09-1.14; in
// cache (64K) the bf16 modes ~3% slower (the prefetch instructions; noise is of that size).
void prefetch_elements(const void* data, DType dtype, std::size_t lo, std::size_t hi) {
    const std::size_t size = bytes_per_element(dtype);
    const char* p = static_cast<const char*>(data);
    for (std::size_t b = lo * size; b < hi * size; b += 64) prefetch(p + b);
}

// Array 1 is the grad (read only) in every optimizer; the others are written.
template <class Config, std::size_t NARRAYS, void (*UPDATE)(const Config&, void* const*, std::size_t)>
void mixed(const Config& c, const MixedChunk& m) {
    alignas(64) float staged[NARRAYS][kStage];
    void* block[NARRAYS];
    for (std::size_t lo = 0, len = 0; lo < m.n; lo += len) {
        const std::uint64_t index = m.offset + lo;
        len = block_length(m.n - lo, index);
        const std::size_t from = std::min(m.n, lo + len + kStage), to = std::min(m.n, from + kStage);
        for (std::size_t k = 0; k < NARRAYS; ++k)
            if (m.data[k] != nullptr && m.dtype[k] != kFloat32) prefetch_elements(m.data[k], m.dtype[k], from, to);
        if (m.copy) prefetch_elements(m.copy, m.copy_dtype, from, to);
        for (std::size_t k = 0; k < NARRAYS; ++k) {
            if (m.data[k] == nullptr || m.dtype[k] == kFloat32) {
                block[k] = m.data[k] ? static_cast<float*>(m.data[k]) + lo : nullptr;
            } else if (m.dtype[k] == kQuant8Signed || m.dtype[k] == kQuant8Unsigned) {
                const std::uint8_t* codes = static_cast<const std::uint8_t*>(m.data[k]) + lo;
                const float scale = m.scales[k][lo / kStage];
                if (m.dtype[k] == kQuant8Signed)
                    decode_block<true>(codes, scale, staged[k], len);
                else
                    decode_block<false>(codes, scale, staged[k], len);
                block[k] = staged[k];
            } else {
                widen(m.dtype[k], static_cast<const std::uint16_t*>(m.data[k]) + lo, staged[k], len);
                block[k] = staged[k];
            }
        }
        UPDATE(c, block, len);
        for (std::size_t k = 0; k < NARRAYS; ++k) {
            if (k == 1 || m.data[k] == nullptr || m.dtype[k] == kFloat32) continue;
            if (m.dtype[k] == kQuant8Signed || m.dtype[k] == kQuant8Unsigned) {
                std::uint8_t* codes = static_cast<std::uint8_t*>(m.data[k]) + lo;
                m.scales[k][lo / kStage] = m.dtype[k] == kQuant8Signed ? encode_block<true>(staged[k], codes, len)
                                                                       : encode_block<false>(staged[k], codes, len);
                continue;
            }
            std::uint16_t* dst = static_cast<std::uint16_t*>(m.data[k]) + lo;
            if (k == 0 && m.stochastic_rounding)
                narrow_stochastic(staged[0], dst, len, index, rounding_key(m.seed, m.step, m.tensor, index >> 32));
            else
                narrow(staged[k], m.dtype[k], dst, len);
        }
        if (m.copy) narrow(static_cast<const float*>(block[0]), m.copy_dtype, static_cast<std::uint16_t*>(m.copy) + lo, len);
    }
}

void random_bits_of(std::uint64_t seed, std::uint64_t step, std::uint64_t tensor, std::uint64_t offset,
                    std::uint32_t* out, std::size_t n) {
    for (std::size_t lo = 0, len = 0; lo < n; lo += len) {
        const std::uint64_t index = offset + lo;
        len = block_length(n - lo, index);
        const RoundingKey key = rounding_key(seed, step, tensor, index >> 32);
        for_each_lane<std::uint32_t>(len, [&](auto vec, std::size_t i) {
            using U = decltype(vec);
            random_bits(U::iota(static_cast<std::uint32_t>(index + i)), key.a, key.b).store(out + lo + i);
        });
    }
}

// NaN when an element of the 16-bit array x is inf or NaN, else 0 (skip_if_nonfinite's probe).
template <DType D>
double nonfinite_probe16(const void* x, std::size_t n, double scale) {
    const std::uint16_t* p = static_cast<const std::uint16_t*>(x);
    const float s = static_cast<float>(scale);  // the grad_mult the update applies to the decoded grad
    Vec<float> acc(0.0f);
    Scalar<float> tail(0.0f);
    for_each_lane<float>(n, [&](auto vec, std::size_t i) {
        using V = decltype(vec);
        const V v = D == kBFloat16 ? load_bf16<V>(p + i) : load_f16<V>(p + i);
        if constexpr (V::size > 1)
            acc = acc + v * V(s) * V(0.0f);  // inf * 0 and NaN * 0 are NaN
        else
            tail = tail + v * V(s) * V(0.0f);
    });
    return static_cast<double>(reduce_add(acc)) + static_cast<double>(tail.v);
}

}  // namespace

void register_optim(KernelTable& t) {
    FUSEDOPT_REGISTER(t, sgd);
    FUSEDOPT_REGISTER(t, adagrad);
    FUSEDOPT_REGISTER(t, rmsprop);
    FUSEDOPT_REGISTER(t, adam);
    t.sgd_mixed = mixed<SgdConfig, 3, sgd<float>>;
    t.adagrad_mixed = mixed<AdagradConfig, 3, adagrad<float>>;
    t.rmsprop_mixed = mixed<RmspropConfig, 5, rmsprop<float>>;
    t.adam_mixed = mixed<AdamConfig, 5, adam<float>>;
    t.random_bits = random_bits_of;
    t.nonfinite_probe16[kBFloat16] = nonfinite_probe16<kBFloat16>;
    t.nonfinite_probe16[kFloat16] = nonfinite_probe16<kFloat16>;
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
