// Reductions over gradients (finiteness, norms) and the in-place rescaling used by clipping.
//
// Sums accumulate in double whatever the input dtype, so a float32 gradient's norm stays finite
// when single squares overflow float32 (|g| > 1.8e19). A reduction kernel covers one block of
// fixed size (see parallel.h: reduce_blocks), so its result does not depend on the thread count.
// 16-bit gradients (bfloat16, float16) are computed on as float32, as the updates compute on
// them: exact widenings, and clipping's products rounded back to nearest even.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../dispatch.h"
#include "../simd/vec.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {
namespace {

template <class V, class T>
V load_as_double(const T* p) {
    if constexpr (sizeof(T) == sizeof(float))
        return V::load_float(p);
    else
        return V::load(p);
}

// sum over i of f(x[i] as double), four independent accumulators to hide the add latency.
template <class T, class F>
double sum_as_double(const T* x, std::size_t n, F f) {
    using V = Vec<double>;
    constexpr std::size_t W = V::size;
    V acc0(0.0), acc1(0.0), acc2(0.0), acc3(0.0);
    std::size_t i = 0;
    for (; i + 4 * W <= n; i += 4 * W) {
        acc0 = acc0 + f(load_as_double<V>(x + i));
        acc1 = acc1 + f(load_as_double<V>(x + i + W));
        acc2 = acc2 + f(load_as_double<V>(x + i + 2 * W));
        acc3 = acc3 + f(load_as_double<V>(x + i + 3 * W));
    }
    double sum = reduce_add((acc0 + acc1) + (acc2 + acc3));
    for (; i < n; ++i) sum += f(load_as_double<Scalar<double>>(x + i)).v;
    return sum;
}

// sum of x*x: the squared 2-norm
template <class T>
double sum_squares(const void* x, std::size_t n) {
    return sum_as_double(static_cast<const T*>(x), n, [](auto v) { return v * v; });
}

// sum of |x|: the 1-norm
template <class T>
double sum_abs(const void* x, std::size_t n) {
    return sum_as_double(static_cast<const T*>(x), n, [](auto v) { return abs(v); });
}


// How the gradient functions read and write an array's elements: float32/float64 as they are
// (Plain), bfloat16/float16 widened to float32 and rounded back to nearest even (Half16).
template <class T>
struct Plain {
    using Element = T;
    using Lane = T;
    template <class V> static V load(const T* p) { return V::load(p); }
    template <class V> static void store(V x, T* p) { x.store(p); }
};
template <DType D>
struct Half16 {
    using Element = std::uint16_t;
    using Lane = float;
    template <class V> static V load(const std::uint16_t* p) { return load_half<D == kFloat16, V>(p); }
    template <class V> static void store(V x, std::uint16_t* p) { store_half<D == kFloat16>(x, p); }
};

// sum of (x * scale) * 0 in x's lane type (its dtype, float32 for 16-bit x): 0 when every
// x * scale is finite, NaN when one is inf or NaN. scale is the update's grad_mult (1 /
// grad_scale, negated to maximize), rounded to the lane type and applied as the update kernels
// apply it, so what is checked is the gradient the
// update uses (a finite float32 grad of 3e38 with grad_scale 0.5 is inf there), as torch's
// GradScaler checks the unscaled grads; still one read-only pass.
template <class S>
double nonfinite_probe(const void* px, std::size_t n, double scale) {
    const auto* x = static_cast<const typename S::Element*>(px);
    using T = typename S::Lane;
    // vectors from x's first cache line (as scale's, below): read from DRAM, a NumPy grad 16 bytes
    // into a line, 1 thread, avx512 (AMD EPYC Zen 5), interleaved: all_finite 16M 1.49 -> 1.24
    // ms, 4M 155 -> 145 us; in cache 1.00-1.01x
    return static_cast<double>(sum_lanes<T>(n, elements_to_cache_line(x), [x, scale](auto v, std::size_t i) {
        using V = decltype(v);
        return S::template load<V>(x + i) * V(T(scale)) * V(T(0));
    }));
}

// max |x|, NaN if any element is NaN (as torch's inf-norm)
template <class T>
double max_abs(const void* px, std::size_t n) {
    const T* x = static_cast<const T*>(px);
    Vec<T> acc(T(0));
    std::size_t i = 0;
    // max(a, b) is (a > b ? a : b): a NaN |x| never wins, and NaN is found separately below
    for (; i + Vec<T>::size <= n; i += Vec<T>::size) acc = max(abs(Vec<T>::load(x + i)), acc);
    T m = reduce_max(acc);
    for (; i < n; ++i) m = max(abs(Scalar<T>::load(x + i)), Scalar<T>(m)).v;
    if (std::isnan(nonfinite_probe<Plain<T>>(px, n, 1.0)) && !std::isinf(m)) return std::nan("");
    if (std::isinf(m))  // inf and NaN both present: NaN wins, as in torch
        for (std::size_t j = 0; j < n; ++j)
            if (std::isnan(x[j])) return std::nan("");
    return m;
}

// sum of |x|^p for any other p > 0: a scalar loop (std::pow has no vector form here)
template <class T>
double sum_abs_pow(const void* px, std::size_t n, double p) {
    const T* x = static_cast<const T*>(px);
    double sum = 0.0;
    for (std::size_t i = 0; i < n; ++i) sum += std::pow(std::fabs(static_cast<double>(x[i])), p);
    return sum;
}

// x = x * factor
// (scale and clamp start their vectors on x's first cache line, as the optimizers do theirs on
// the param's, see optim_loops.h, Plain::head. Measured, 1 thread, avx512 (AMD EPYC Zen 5), a NumPy
// grad 16 or 48 bytes into a line, interleaved with vectors from element 0: clip_grad_value_ 64K
// 2.4 -> 1.7 us, 16M 1.99 -> 1.56 ms; clip_grad_norm_ (its scale pass) 64K 4.7 -> 4.0 us, 16M
// 3.53 -> 3.14 ms; 256K and 1M 1.00-1.05x.)
template <class S>
void scale(const ScaleConfig& c, void* const* a, std::size_t n) {
    auto* x = static_cast<typename S::Element*>(a[0]);
    const auto factor = static_cast<typename S::Lane>(c.factor);
    for_each_lane<typename S::Lane>(n, elements_to_cache_line(x), [&](auto vec, std::size_t i) {
        using V = decltype(vec);
        S::store(S::template load<V>(x + i) * V(factor), x + i);
    });
}

// x = min(hi, max(lo, x)); the operand order lets a NaN x through, as torch.clamp_ does
template <class S>
void clamp(const ClampConfig& c, void* const* a, std::size_t n) {
    auto* x = static_cast<typename S::Element*>(a[0]);
    const auto lo = static_cast<typename S::Lane>(c.lo), hi = static_cast<typename S::Lane>(c.hi);
    for_each_lane<typename S::Lane>(n, elements_to_cache_line(x), [&](auto vec, std::size_t i) {
        using V = decltype(vec);
        S::store(min(V(hi), max(V(lo), S::template load<V>(x + i))), x + i);
    });
}

// ---- 16-bit gradients ----------------------------------------------------------------------------

// The float32 reduction f over n 16-bit elements: widened into an L1 buffer kWidened at a time,
// the chunks' results combined in order.
constexpr std::size_t kWidened = 1024;
template <DType D, class F, class Combine>
double widened(const void* px, std::size_t n, F f, Combine combine) {
    const auto* x = static_cast<const std::uint16_t*>(px);
    alignas(64) float buffer[kWidened];
    double result = 0.0;
    for (std::size_t i = 0; i < n; i += kWidened) {
        const std::size_t m = std::min(kWidened, n - i);
        for_each_lane<float>(m, [&](auto vec, std::size_t j) { Half16<D>::template load<decltype(vec)>(x + i + j).store(buffer + j); });
        result = i == 0 ? f(buffer, m) : combine(result, f(buffer, m));
    }
    return result;
}
constexpr auto kAdd = [](double a, double b) { return a + b; };

template <DType D>
double sum_squares16(const void* x, std::size_t n) {
    return widened<D>(x, n, sum_squares<float>, kAdd);
}
template <DType D>
double sum_abs16(const void* x, std::size_t n) {
    return widened<D>(x, n, sum_abs<float>, kAdd);
}
template <DType D>
double sum_abs_pow16(const void* x, std::size_t n, double p) {
    return widened<D>(x, n, [p](const float* b, std::size_t m) { return sum_abs_pow<float>(b, m, p); }, kAdd);
}
// (a chunk holding a NaN gives NaN, which wins, as in max_abs)
template <DType D>
double max_abs16(const void* x, std::size_t n) {
    return widened<D>(x, n, max_abs<float>, max_keeping_nan);
}


}  // namespace

void register_reduce(KernelTable& t) {
    FUSEDOPT_REGISTER(t, sum_squares);
    FUSEDOPT_REGISTER(t, sum_abs);
    t.nonfinite_probe[kFloat32] = nonfinite_probe<Plain<float>>;
    t.nonfinite_probe[kFloat64] = nonfinite_probe<Plain<double>>;
    FUSEDOPT_REGISTER(t, max_abs);
    FUSEDOPT_REGISTER(t, sum_abs_pow);
    t.scale[kFloat32] = scale<Plain<float>>;
    t.scale[kFloat64] = scale<Plain<double>>;
    t.clamp[kFloat32] = clamp<Plain<float>>;
    t.clamp[kFloat64] = clamp<Plain<double>>;
    auto register16 = [&t](auto d) {
        constexpr DType D = decltype(d)::value;
        t.sum_squares[D] = sum_squares16<D>;
        t.sum_abs[D] = sum_abs16<D>;
        t.nonfinite_probe[D] = nonfinite_probe<Half16<D>>;
        t.max_abs[D] = max_abs16<D>;
        t.sum_abs_pow[D] = sum_abs_pow16<D>;
        t.scale[D] = scale<Half16<D>>;
        t.clamp[D] = clamp<Half16<D>>;
    };
    register16(std::integral_constant<DType, kBFloat16>{});
    register16(std::integral_constant<DType, kFloat16>{});
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
