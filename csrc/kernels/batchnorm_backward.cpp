// Batch normalization backward (see batchnorm_tiles.h for the layouts and the work decomposition).
#include "batchnorm_tiles.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {
namespace {

// ---- backward ---------------------------------------------------------------------------------

// dy with the ReLU gradient applied: dy where relu_output > 0, else 0. (mask is a constant
// in the copies that fix it, see Option: taken from MASK here, since a copy captured by the
// loop's lambda was tested in the loop, a compare and branch per vector.)
template <int MASK, class V, class T>
V masked_grad(const T* dy, const void* relu_output, ReluMask relu_mask, std::size_t i) {
    const ReluMask mask = Option<MASK>::get(relu_mask);
    V g = V::load(dy + i);
    if (mask == ReluMask::kValues)
        g = where_positive(V::load(static_cast<const T*>(relu_output) + i), g);
    else if (mask == ReluMask::kBool)
        g = where_positive(V::load_u8(static_cast<const std::uint8_t*>(relu_output) + i), g);
    return g;
}

// Asks for the cache lines of element i + ahead of every array the backward's sums read: dy, x
// and the ReLU mask if there is one.
template <int MASK, class T>
FUSEDOPT_INLINE void prefetch_inputs(const T* dy, const T* x, const void* relu_output, ReluMask relu_mask, std::size_t i,
                                     std::ptrdiff_t ahead) {
    const ReluMask mask = Option<MASK>::get(relu_mask);
    prefetch(dy + i, ahead);
    prefetch(x + i, ahead);
    if (mask == ReluMask::kValues) prefetch(static_cast<const T*>(relu_output) + i, ahead);
    else if (mask == ReluMask::kBool) prefetch(static_cast<const std::uint8_t*>(relu_output) + i, ahead);
}

// Per channel, over blocks [b0, b1) of tile t (g = dy after the ReLU mask):
//   sum_dy     = sum(g)
//   sum_dy_xmu = sum(g * (x - mean))
// (A function of T, Layout and MASK only: shared by training and eval, streamed or not.)
template <class T, class Layout, int MASK>
void backward_sums(const Plan& p, const T* dy, const T* x, const void* relu_output, ReluMask relu_mask,
                   const T* save_mean, std::size_t t, std::size_t b0, std::size_t b1, GradSums* sums, Scratch<T>& s) {
    const ReluMask mask = Option<MASK>::get(relu_mask);
    const std::size_t c0 = p.channel_begin(t), nch = p.tile_nchannels(t);
    auto term = [dy, x, relu_output, mask](auto v, std::size_t i, auto mean, auto* acc) {
        using V = decltype(v);
        V g = masked_grad<MASK, V>(dy, relu_output, mask, i);
        acc[0] = acc[0] + g;
        acc[1] = fmadd(g, V::load(x + i) - mean, acc[1]);
    };
    if constexpr (std::is_same_v<Layout, Planar>) {
        if (small_channel<T>(p)) {  // b0 == 0, b1 == 1: the whole tile
            double sum[2];
            small_channel_sums<T, 2>(p, t, p.outer, [term, m = save_mean[c0]](auto v, std::size_t i, auto* acc) {
                term(v, i, decltype(v)(m), acc);
            }, sum);
            sums[0] = {sum[0], sum[1]};
            return;
        }
    }
    const auto mean = Layout::values(&save_mean[c0], p.inner, nch, s.expanded, wraps_rows<T>(p, false));
    for (std::size_t bi = b0; bi < b1; ++bi) {
        s.sums.assign(2 * nch, 0.0);
        const std::ptrdiff_t ahead = p.statistics_prefetch_distance(t, bi);
        Layout::template reduce_block<T, 2>(p, t, p.block(t, bi), [term, mean, ahead, dy, x, relu_output, mask](auto v, std::size_t i, std::size_t col, auto* acc) {
            if (ahead) prefetch_inputs<MASK>(dy, x, relu_output, mask, i, ahead);
            term(v, i, mean.at(v, col), acc);
        }, s.sums.data(), s.acc);
        for (std::size_t c = 0; c < nch; ++c) sums[c] = merge(sums[c], GradSums{s.sums[2 * c], s.sums[2 * c + 1]});
    }
}

// With xhat = (x - mean) * invstd:
//   dweight = sum(g * xhat) = invstd * sum_dy_xmu;   dbias = sum(g) = sum_dy
// training: dx = invstd * w * (g - mean(g) - xhat * mean(g * xhat))
//              = a * g - k * (x - mean) + c,  a = invstd * w,
//                k = a * invstd^2 * sum_dy_xmu / n,  c = -a * sum_dy / n
// eval:     dx = a * g   (mean and invstd are constants)
// (A function of T only, as Normalization in the forward.)
template <class T>
struct Coefficients {
    std::vector<T> a, k, c;
    explicit Coefficients(std::size_t channels) : a(channels), k(channels), c(channels) {}
    void finish(const BatchNormBackwardArgs& args, const Plan& p, std::size_t c0, std::size_t nch, const GradSums* sums);
};

template <class T>
void Coefficients<T>::finish(const BatchNormBackwardArgs& args, const Plan& p, std::size_t c0, std::size_t nch,
                             const GradSums* sums) {
    const T* weight = static_cast<const T*>(args.weight);
    const T* save_invstd = static_cast<const T*>(args.save_invstd);
    T* dweight = static_cast<T*>(args.dweight);
    T* dbias = static_cast<T*>(args.dbias);
    const double n = static_cast<double>(p.outer * p.inner);
    // a vector of channels at a time, the scalar form's operations in its order (the same
    // roundings: bitwise the former scalar loop's results), the sums first copied out of their
    // structs; measured, 1 thread, both builds in one process, best of 15 interleaved: backward
    // (2, 1024) 5.8 -> 5.1 us, (16, 1024) 9.5 -> 8.9, (1, 512, 7, 7) 13.7 -> 13.3, (256, 1024)
    // 0.99x, (8, 512, 7, 7) within noise
    thread_local std::vector<double> sum_dy, sum_dy_xmu;
    sum_dy.resize(nch);
    sum_dy_xmu.resize(nch);
    for (std::size_t j = 0; j < nch; ++j) {
        sum_dy[j] = sums[j].dy;
        sum_dy_xmu[j] = sums[j].dy_xmu;
    }
    for_each_lane<double>(nch, [&](auto v, std::size_t j) {
        using V = decltype(v);
        const std::size_t ch = c0 + j;
        auto load = [](const T* p) { return load_as_double<V>(p); };
        auto store = [](V x, T* p) { store_from_double(x, p); };
        const V invstd = load(save_invstd + ch);
        const V w = weight ? load(weight + ch) : V(1.0);
        const V a_c = invstd * w;
        const V dy = V::load(&sum_dy[j]), dy_xmu = V::load(&sum_dy_xmu[j]);
        store(a_c, &a[ch]);
        if (args.training) {
            store(a_c * invstd * (invstd * dy_xmu / V(n)), &k[ch]);
            store(-a_c * (dy / V(n)), &c[ch]);
        }
        if (dweight) {
            store(invstd * dy_xmu, dweight + ch);
            store(dy, dbias + ch);
        }
    });
}

template <class T, class Layout, int MASK, int TRAINING>
void backward(const BatchNormBackwardArgs& args, const Plan& p) {
    const bool stream = p.stream;
    const ReluMask mask = Option<MASK>::get(args.relu_mask);
    const bool training = Option<TRAINING>::get(args.training);
    const T* dy = static_cast<const T*>(args.dy);
    const T* x = static_cast<const T*>(args.x);
    const void* relu_output = args.relu_output;
    const T* save_mean = static_cast<const T*>(args.save_mean);
    T* dx = static_cast<T*>(args.dx);
    const bool need_sums = training || args.dweight != nullptr;

    auto reduce = [&](std::size_t t0, std::size_t t1, std::size_t b0, std::size_t b1, GradSums* sums, Scratch<T>& s) {
        if (!need_sums) return;
        for (std::size_t t = t0; t < t1; ++t)
            backward_sums<T, Layout, MASK>(p, dy, x, relu_output, mask, save_mean, t, b0, b1, sums + (t - t0) * p.tile_channels, s);
    };

    Coefficients<T> coef(p.channels);
    auto finish = [&](std::size_t c0, std::size_t nch, const GradSums* sums) { coef.finish(args, p, c0, nch, sums); };
    const T *a = coef.a.data(), *k = coef.k.data(), *c = coef.c.data();

    auto apply = [&](std::size_t t, std::size_t b0, std::size_t b1, Scratch<T>& s) {
        const std::size_t c0 = p.channel_begin(t), nch = p.tile_nchannels(t);
        const bool wrap = wraps_rows<T>(p, stream);
        const auto a_v = Layout::values(&a[c0], p.inner, nch, s.columns[0], wrap);
        const auto k_v = Layout::values(&k[c0], p.inner, nch, s.columns[1], wrap);
        const auto c_v = Layout::values(&c[c0], p.inner, nch, s.columns[2], wrap);
        const auto mean = Layout::values(&save_mean[c0], p.inner, nch, s.columns[3], wrap);
        const bool backward = stream && store_backward(dx, {dy, training ? x : nullptr, mask == ReluMask::kValues ? relu_output : nullptr});
        const bool last_first = need_sums;  // see apply_block
        const std::ptrdiff_t next_tile = p.next_tile_distance(t, need_sums);
        for (std::size_t kb = b0; kb < b1; ++kb) {
            const std::size_t bi = last_first ? b0 + b1 - 1 - kb : kb;
            apply_block<T, Layout::kPerColumn>(p, t, p.block(t, bi), dx, stream, backward, [dy, x, relu_output, mask, training, a_v, k_v, c_v, mean, next_tile](auto v, std::size_t i, std::size_t col) {
                using V = decltype(v);
                if (next_tile) prefetch_inputs<MASK>(dy, x, relu_output, mask, i, next_tile);
                V g = masked_grad<MASK, V>(dy, relu_output, mask, i);
                if (Option<TRAINING>::get(training))  // a constant in the copies that fix it (see masked_grad)
                    return fmadd(a_v.at(v, col), g, fnmadd(k_v.at(v, col), V::load(x + i) - mean.at(v, col), c_v.at(v, col)));
                else
                    return a_v.at(v, col) * g;
            });
        }
        if (stream) std::atomic_thread_fence(std::memory_order_seq_cst);  // orders the non-temporal stores
    };

    run_tiles<GradSums, T>(p, reduce, finish, apply);
}

template <class T>
void batchnorm_backward(const BatchNormBackwardArgs& args) {
    // dy, dx, x (always read for the sums but in eval without dweight), the mask
    const std::size_t mask_bytes = args.relu_mask == ReluMask::kValues ? sizeof(T)
                                   : args.relu_mask == ReluMask::kBool ? 1 : 0;
    const Plan p(args.shape, 3 * sizeof(T) + mask_bytes, sizeof(T));
    with_layout(p, [&](auto layout) {
        using L = decltype(layout);
        if constexpr (kOptionsAtRunTime<T>) {
            backward<T, L, kRunTime, kRunTime>(args, p);
        } else {
            with_flag(args.training, [&](auto training) {
                constexpr int TRAINING = training;
                switch (args.relu_mask) {
                    case ReluMask::kNone: backward<T, L, int(ReluMask::kNone), TRAINING>(args, p); break;
                    case ReluMask::kValues: backward<T, L, int(ReluMask::kValues), TRAINING>(args, p); break;
                    case ReluMask::kBool: backward<T, L, int(ReluMask::kBool), TRAINING>(args, p); break;
                }
            });
        }
    });
}

}  // namespace

void register_batchnorm_backward(KernelTable& t) {
    FUSEDOPT_REGISTER(t, batchnorm_backward);
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
