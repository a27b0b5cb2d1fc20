// Reductions over gradients (finiteness, norms) and the in-place rescaling used by clipping.
//
// Sums accumulate in double whatever the input dtype, so a float32 gradient's norm stays finite
// when single squares overflow float32 (|g| > 1.8e19). A reduction kernel covers one block of
// fixed size (see parallel.h: reduce_blocks), so its result does not depend on the thread count.
#include <cmath>
#include <cstddef>

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

// sum of (x * scale) * 0 in x's dtype: 0 when every x * scale is finite, NaN when one is inf or
// NaN. scale is the update's grad_mult (1 / grad_scale, negated to maximize), rounded to x's
// dtype and applied as the update kernels apply it, so what is checked is the gradient the
// update uses (a finite float32 grad of 3e38 with grad_scale 0.5 is inf there), as torch's
// GradScaler checks the unscaled grads; still one read-only pass.
template <class T>
double nonfinite_probe(const void* px, std::size_t n, double scale) {
    const T* x = static_cast<const T*>(px);
    using V = Vec<T>;
    constexpr std::size_t W = V::size;
    const V s{T(scale)}, zero{T(0)};
    V acc0(zero), acc1(zero), acc2(zero), acc3(zero);
    std::size_t i = 0;
    for (; i + 4 * W <= n; i += 4 * W) {
        acc0 = acc0 + V::load(x + i) * s * zero;
        acc1 = acc1 + V::load(x + i + W) * s * zero;
        acc2 = acc2 + V::load(x + i + 2 * W) * s * zero;
        acc3 = acc3 + V::load(x + i + 3 * W) * s * zero;
    }
    double sum = static_cast<double>(reduce_add((acc0 + acc1) + (acc2 + acc3)));
    for (; i < n; ++i) sum += static_cast<double>((Scalar<T>::load(x + i) * Scalar<T>(T(scale)) * Scalar<T>(T(0))).v);
    return sum;
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
    if (std::isnan(nonfinite_probe<T>(px, n, 1.0)) && !std::isinf(m)) return std::nan("");
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
template <class T>
void scale(const ScaleConfig& c, void* const* a, std::size_t n) {
    T* x = static_cast<T*>(a[0]);
    const T factor = T(c.factor);
    for_each_lane<T>(n, [&](auto vec, std::size_t i) {
        using V = decltype(vec);
        (V::load(x + i) * V(factor)).store(x + i);
    });
}

// x = min(hi, max(lo, x)); the operand order lets a NaN x through, as torch.clamp_ does
template <class T>
void clamp(const ClampConfig& c, void* const* a, std::size_t n) {
    T* x = static_cast<T*>(a[0]);
    const T lo = T(c.lo), hi = T(c.hi);
    for_each_lane<T>(n, [&](auto vec, std::size_t i) {
        using V = decltype(vec);
        min(V(hi), max(V(lo), V::load(x + i))).store(x + i);
    });
}

}  // namespace

void register_reduce(KernelTable& t) {
    FUSEDOPT_REGISTER(t, sum_squares);
    FUSEDOPT_REGISTER(t, sum_abs);
    FUSEDOPT_REGISTER(t, nonfinite_probe);
    FUSEDOPT_REGISTER(t, max_abs);
    FUSEDOPT_REGISTER(t, sum_abs_pow);
    FUSEDOPT_REGISTER(t, scale);
    FUSEDOPT_REGISTER(t, clamp);
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
