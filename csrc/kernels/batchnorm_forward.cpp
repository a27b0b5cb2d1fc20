// Batch normalization forward (see batchnorm_tiles.h for the layouts and the work decomposition).
#include <limits>

#include "batchnorm_tiles.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {

void register_batchnorm_backward(KernelTable& t);  // batchnorm_backward.cpp

namespace {

// ---- forward ----------------------------------------------------------------------------------

// The moments of count values from the sums of their deviations from shift, d = x - shift:
//   mean = shift + sum(d) / count,   M2 = sum(d^2) - sum(d)^2 / count
// with inv_count = 1 / count: every channel of a block has the same count, so a multiply where
// a division was, three per channel (the sample mean, the shift test, the moments). With the
// two in Normalization::finish, measured, 1 thread, both builds in one process, best of 11
// interleaved: training forward (2, 1024) 14.5 -> 11.6 us, (16, 1024) 17.0 -> 14.4, (256, 1024)
// 72.3 -> 68.3; (8, 512, 7, 7) unchanged. (A product by the reciprocal is within an ulp of a
// double of the quotient.)
// (M2 >= 0 by a max that keeps a NaN: std::max(0.0, NaN) would be 0, a zero variance for a
// channel holding a NaN or an inf.)
inline Moments shifted_moments(double count, double inv_count, double shift, double sum_d, double sum_d2) {
    const double mean_d = sum_d * inv_count;
    return {count, shift, mean_d, std::max(sum_d2 - sum_d * mean_d, 0.0)};
}
// A shift so far from the mean that sum(d)^2 / count, subtracted, would cancel more than half of
// sum(d^2): the sums are taken again around the mean they gave.
inline bool shift_too_far(double inv_count, double sum_d, double sum_d2) {
    return sum_d * (sum_d * inv_count) > 0.5 * sum_d2;
}
// A shift in T: a mean rounded to T, or 0 where that is not finite (a channel holding an inf: an
// inf shift would make every deviation inf - inf or -inf, and the mean NaN where it is +-inf)
template <class T>
T finite_shift(double mean) {
    const T shift = static_cast<T>(mean);
    return std::isfinite(shift) ? shift : T(0);
}

// forward_statistics of small channels (small_channel: each tile one block), tiles [t0, t1) into
// moments[t - t0]: the same shift (the mean of the first rows, at least kShiftSample values) and
// the same reshift rule, the sums taken in one go (see small_channel_sums; they may round
// differently from the block path's, within the same bound). Each step is taken for every tile
// before the next (the sample sums, then the deviation sums, then the moments): a channel's
// steps are a chain of dependent operations (the sums, their reduction across lanes, a
// division), and the tiles' independent chains overlap when they follow each other.
template <class T>
void small_channel_moments(const Plan& p, const T* x, std::size_t t0, std::size_t t1, Moments* moments) {
    const double n = static_cast<double>(p.outer * p.inner), inv_n = 1.0 / n;
    const std::size_t sample_rows = std::min(p.outer, (kShiftSample + p.inner - 1) / p.inner);
    const double inv_sample = 1.0 / static_cast<double>(sample_rows * p.inner);
    thread_local std::vector<T> shifts;
    thread_local std::vector<double> sums;  // sum(d), sum(d^2) of each tile
    shifts.resize(t1 - t0);
    sums.resize(2 * (t1 - t0));
    for (std::size_t t = t0; t < t1; ++t) {
        double sample_sum;
        small_channel_sums<T, 1>(p, t, sample_rows, [x](auto v, std::size_t i, auto* acc) {
            acc[0] = acc[0] + decltype(v)::load(x + i);
        }, &sample_sum);
        shifts[t - t0] = finite_shift<T>(sample_sum * inv_sample);
    }
    auto deviation_sums = [&](std::size_t t) {
        small_channel_sums<T, 2>(p, t, p.outer, [x, shift = shifts[t - t0]](auto v, std::size_t i, auto* acc) {
            using V = decltype(v);
            V d = V::load(x + i) - V(shift);
            acc[0] = acc[0] + d;
            acc[1] = fmadd(d, d, acc[1]);
        }, &sums[2 * (t - t0)]);
    };
    for (std::size_t t = t0; t < t1; ++t) deviation_sums(t);
    for (std::size_t t = t0; t < t1; ++t) {
        const double* const s = &sums[2 * (t - t0)];
        T& shift = shifts[t - t0];
        if (shift_too_far(inv_n, s[0], s[1])) {
            shift = finite_shift<T>(static_cast<double>(shift) + s[0] * inv_n);
            deviation_sums(t);
        }
        moments[t - t0] = shifted_moments(n, inv_n, static_cast<double>(shift), s[0], s[1]);
    }
}

// Statistics of blocks [b0, b1) of tile t, merged block after block, by the shifted-data
// form of the corrected two-pass algorithm (Chan, Golub & LeVeque), per channel:
//   d      = x - shift                     (exact in T for x near the shift)
//   mean_b = shift + sum(d) / n_b
//   m2_b   = sum(d^2) - sum(d)^2 / n_b
// The shift is the mean of the blocks merged so far, rounded to T; a group's first block
// takes the mean of its first rows, at least kShiftSample elements of each channel (off by
// ~1/sqrt(kShiftSample) standard deviations, which the check below tolerates; a sum pass
// over the whole first block made (8, 512, 7, 7) forward 15% slower, (256, 1024) 16%). The
// subtraction cancels only when the shift is far from the block's mean; when sum(d)^2 / n_b
// exceeds half of sum(d^2) (the shift is more than ~1 standard deviation off) the block,
// still in cache, is read again with shift = mean_b. Then m2_b loses at most one bit, and
// the sums over d can run in T (see RunSums) without losing the deviations; usually x is
// read once.
// (A function of T and Layout only: forward's ReLU and streaming variants share one copy.
// The per-element lambdas capture by value: the compiler would otherwise reload every
// captured pointer after each store.)
template <class T, class Layout>
void forward_statistics(const Plan& p, const T* x, std::size_t t, std::size_t b0, std::size_t b1, Moments* moments,
                        Scratch<T>& s) {
    const std::size_t nch = p.tile_nchannels(t);
    s.means.resize(nch);  // the shift of each channel
    for (std::size_t bi = b0; bi < b1; ++bi) {
        const Block b = p.block(t, bi);
        const double count = p.channel_count(b), inv_count = 1.0 / count;
        if (bi == b0) {
            Block sample = b;
            const std::size_t row_elems = p.planar ? b.col_end - b.col_begin : p.inner;  // per channel
            sample.row_end = std::min(b.row_end, b.row_begin + (kShiftSample + row_elems - 1) / row_elems);
            s.sums.assign(nch, 0.0);
            Layout::template reduce_block<T, 1>(p, t, sample, [x](auto v, std::size_t i, std::size_t, auto* acc) {
                using V = decltype(v);
                acc[0] = acc[0] + V::load(x + i);
            }, s.sums.data(), s.acc);
            const double inv_sample = 1.0 / p.channel_count(sample);
            for (std::size_t c = 0; c < nch; ++c) s.means[c] = finite_shift<T>(s.sums[c] * inv_sample);
        } else {
            for (std::size_t c = 0; c < nch; ++c) s.means[c] = finite_shift<T>(moments[c].mean());
        }
        const std::ptrdiff_t ahead = p.statistics_prefetch_distance(t, bi);
        auto deviation_sums = [&] {
            const auto shift = Layout::values(s.means.data(), p.inner, nch, s.expanded, wraps_rows<T>(p, false));
            s.sums.assign(2 * nch, 0.0);
            Layout::template reduce_block<T, 2>(p, t, b, [x, shift, ahead](auto v, std::size_t i, std::size_t col, auto* acc) {
                using V = decltype(v);
                if (ahead) prefetch(x + i, ahead);
                V d = V::load(x + i) - shift.at(v, col);
                acc[0] = acc[0] + d;
                acc[1] = fmadd(d, d, acc[1]);
            }, s.sums.data(), s.acc);
        };
        deviation_sums();
        bool reshift = false;
        for (std::size_t c = 0; c < nch; ++c) {
            const double sum_d = s.sums[2 * c], sum_d2 = s.sums[2 * c + 1];
            if (shift_too_far(inv_count, sum_d, sum_d2)) {
                reshift = true;
                s.means[c] = finite_shift<T>(static_cast<double>(s.means[c]) + sum_d * inv_count);
            }
        }
        if (reshift) deviation_sums();
        // every channel of the tile has seen the same blocks: one count for all
        const double ratio = count / (moments[0].n + count), cross = moments[0].n * ratio;
        for (std::size_t c = 0; c < nch; ++c) {
            const double sum_d = s.sums[2 * c], sum_d2 = s.sums[2 * c + 1];
            moments[c] = merge(moments[c], shifted_moments(count, inv_count, static_cast<double>(s.means[c]), sum_d, sum_d2),
                               ratio, cross);
        }
    }
}

// The normalizing pass computes y = (x - mean_hi) * scale + shift, where
//   scale = invstd * weight
//   shift = bias - (mean - mean_hi) * scale,    mean_hi = mean rounded to T
// x - mean_hi is exact when x is near the mean, and only the rounding residue of the mean
// (|mean - mean_hi| <= half an ulp of the mean) goes into shift: no cancellation even when
// |mean| >> std. mean - mean_hi is taken from the moments' shift + mean_d, not from the mean
// rounded to double: for double data mean_hi is that rounded mean, and the residue what it
// left out (float64, mean 1e9, std 1, (128, 3, 14, 14): y within 2e-15 of the exact value, not 5e-8).
// (A function of T only, one copy for every layout and option: the per-channel loops'
// branches on the optional arrays would otherwise be compiled into every copy of the pass.)
template <class T>
struct Normalization {
    std::vector<T> mean_hi, scale, shift;
    explicit Normalization(std::size_t channels) : mean_hi(channels), scale(channels), shift(channels) {}
    void finish(const BatchNormForwardArgs& args, const Plan& p, std::size_t c0, std::size_t nch, const Moments* moments);
};

// Training: normalize with the batch statistics and update the running ones
//   var = m2 / n (biased);  invstd = 1 / sqrt(var + eps)
//   running_mean = momentum * mean + (1 - momentum) * running_mean
//   running_var  = momentum * m2 / (n - 1) + (1 - momentum) * running_var   (unbiased)
// Eval: normalize with the running statistics
//   invstd = 1 / sqrt(running_var + eps)
template <class T>
void Normalization<T>::finish(const BatchNormForwardArgs& args, const Plan& p, std::size_t c0, std::size_t nch,
                              const Moments* moments) {
    const T* weight = static_cast<const T*>(args.weight);
    const T* bias = static_cast<const T*>(args.bias);
    T* running_mean = static_cast<T*>(args.running_mean);
    T* running_var = static_cast<T*>(args.running_var);
    T* save_mean = static_cast<T*>(args.save_mean);
    T* save_invstd = static_cast<T*>(args.save_invstd);
    const double n = static_cast<double>(p.outer * p.inner);
    const double momentum = args.momentum, eps = args.eps;
    const bool update_running = args.training && running_mean;
    // A vector of channels at a time, with the scalar form's operations in its order (so the same
    // roundings; x * 1 == x): invstd = 1 / sqrt(var_sum * (1 / divisor) + eps), with var_sum =
    // m2 and divisor = n in training, running_var and 1 in eval; unbiased = m2 * (1 / (n - 1)).
    // (The quotients by the call's counts are products by their reciprocals: a vdivpd zmm takes
    // ~17 cycles, as long as the square root.) The moments are copied out of their structs first.
    // mean_lo: what the double mean, shift + mean_d rounded, leaves out of it (0 in eval mode)
    thread_local std::vector<double> mean, mean_lo, var_sum;
    mean.resize(nch);
    mean_lo.resize(nch);
    var_sum.resize(nch);
    for (std::size_t k = 0; k < nch; ++k) {
        mean[k] = args.training ? moments[k].mean() : static_cast<double>(running_mean[c0 + k]);
        mean_lo[k] = args.training ? (moments[k].shift - mean[k]) + moments[k].mean_d : 0.0;
        var_sum[k] = args.training ? moments[k].m2 : static_cast<double>(running_var[c0 + k]);
    }
    const double inv_divisor = args.training ? 1.0 / n : 1.0, inv_n_1 = 1.0 / (n - 1.0);
    for_each_lane<double>(nch, [&](auto v, std::size_t k) {
        using V = decltype(v);
        const std::size_t c = c0 + k;
        auto load = [](const T* p) { return load_as_double<V>(p); };
        auto store = [](V x, T* p) { store_from_double(x, p); };
        // (+ (m - m): an inf in the channel makes its mean and M2 inf, and its variance inf - inf,
        // NaN, as torch has it, not inf, which would make invstd 0; for a finite mean it adds 0)
        const V m = V::load(&mean[k]), var = V::load(&var_sum[k]) + (args.training ? m - m : V(0.0));
        const V invstd = V(1.0) / sqrt(var * V(inv_divisor) + V(eps));
        if (update_running) {
            store(V(momentum) * m + V(1.0 - momentum) * load(running_mean + c), running_mean + c);
            store(V(momentum) * (var * V(inv_n_1)) + V(1.0 - momentum) * load(running_var + c), running_var + c);
        }
        const V w = weight ? load(weight + c) : V(1.0);
        const V b = bias ? load(bias + c) : V(0.0);
        const V scale_c = invstd * w;
        store(m, &mean_hi[c]);
        store(scale_c, &scale[c]);
        store(b - ((m - load(&mean_hi[c])) + V::load(&mean_lo[k])) * scale_c, &shift[c]);
        store(m, save_mean + c);
        store(invstd, save_invstd + c);
    });
}

template <class T, class Layout, int RELU>
void forward(const BatchNormForwardArgs& args, const Plan& p) {
    const bool stream = p.stream;
    const bool relu = Option<RELU>::get(args.relu);
    const T* x = static_cast<const T*>(args.x);
    T* y = static_cast<T*>(args.y);
    Normalization<T> norm(p.channels);
    auto reduce = [&](std::size_t t0, std::size_t t1, std::size_t b0, std::size_t b1, Moments* moments, Scratch<T>& s) {
        if (!args.training) return;
        if constexpr (std::is_same_v<Layout, Planar>) {
            if (small_channel<T>(p)) {  // b0 == 0, b1 == 1: the whole tiles
                small_channel_moments<T>(p, x, t0, t1, moments);
                return;
            }
        }
        for (std::size_t t = t0; t < t1; ++t)
            forward_statistics<T, Layout>(p, x, t, b0, b1, moments + (t - t0) * p.tile_channels, s);
    };
    auto finish = [&](std::size_t c0, std::size_t nch, const Moments* moments) { norm.finish(args, p, c0, nch, moments); };

    //   y = (x - mean_hi) * scale + shift        y = max(0, y) with the fused ReLU
    // (max(-inf, y) = y without it, in the copy that reads relu at run time: no branch)
    auto apply = [&](std::size_t t, std::size_t b0, std::size_t b1, Scratch<T>& s) {
        const std::size_t c0 = p.channel_begin(t), nch = p.tile_nchannels(t);
        const bool wrap = wraps_rows<T>(p, stream);
        const auto m = Layout::values(&norm.mean_hi[c0], p.inner, nch, s.columns[0], wrap);
        const auto sc = Layout::values(&norm.scale[c0], p.inner, nch, s.columns[1], wrap);
        const auto sh = Layout::values(&norm.shift[c0], p.inner, nch, s.columns[2], wrap);
        const bool backward = stream && store_backward(y, {x});
        const T floor = relu ? T(0) : -std::numeric_limits<T>::infinity();
        const bool last_first = args.training;  // see apply_block
        const std::ptrdiff_t next_tile = p.next_tile_distance(t, args.training);
        for (std::size_t k = b0; k < b1; ++k) {
            const std::size_t bi = last_first ? b0 + b1 - 1 - k : k;
            apply_block<T, Layout::kPerColumn>(p, t, p.block(t, bi), y, stream, backward, [x, m, sc, sh, floor, next_tile](auto v, std::size_t i, std::size_t col) {
                using V = decltype(v);
                if (next_tile) prefetch(x + i, next_tile);
                V out = fmadd(V::load(x + i) - m.at(v, col), sc.at(v, col), sh.at(v, col));
                if (RELU == kRunTime || RELU) out = max(V(floor), out);  // max(0, NaN) is NaN, as torch.relu
                return out;
            });
        }
        if (stream) std::atomic_thread_fence(std::memory_order_seq_cst);  // orders the non-temporal stores
    };

    run_tiles<Moments, T>(p, reduce, finish, apply);
}

template <class T>
void batchnorm_forward(const BatchNormForwardArgs& args) {
    const Plan p(args.shape, 2 * sizeof(T), sizeof(T));  // x, y
    with_layout(p, [&](auto layout) {
        using L = decltype(layout);
        if constexpr (kOptionsAtRunTime<T>)
            forward<T, L, kRunTime>(args, p);
        else
            with_flag(args.relu, [&](auto relu) { forward<T, L, relu>(args, p); });
    });
}

}  // namespace

void register_batchnorm(KernelTable& t) {
    FUSEDOPT_REGISTER(t, batchnorm_forward);
    register_batchnorm_backward(t);
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
