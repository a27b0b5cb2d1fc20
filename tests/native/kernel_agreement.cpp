// Every kernel of the KernelTable, on every ISA this build and CPU can run, against the scalar
// copy of the same sources: a C++ program with no Python, so that it can be cross-compiled and
// run under emulation (NEON under qemu-aarch64, see .ci/neon) as well as natively (SSE2, AVX2,
// AVX-512 on x86). tests/native/build.sh compiles the kernel sources once per ISA, each copy in
// namespace fusedopt::<isa>, as CMakeLists.txt does, plus one more copy:
//
//   scalar_fma: the scalar ISA with FUSEDOPT_HAS_FMA set, so that Scalar<T>::fmadd is one
//               std::fma, as on the ISAs whose vectors fuse a*b+c (avx2, avx512, neon: the
//               FMA_ISAS of tests/conftest.py). It is the same-kind reference of those ISAs.
//
// What must agree, and how closely (err = max|got - want| / max(1, max|scale|), the measure of
// tests/test_optim.py and tests/test_batchnorm.py; NaN must meet NaN, of any payload):
//   - every element a kernel computes without summing across elements (the optimizers, scale,
//     clamp, stream, the batch-norm eval forward's y and eval backward's dx), and max_abs,
//     nonfinite_probe and sum_abs_pow: bitwise equal to the scalar copy of the same FMA kind.
//     Those without a multiply-add (scale, clamp, stream, max_abs, nonfinite_probe,
//     sum_abs_pow) bitwise equal to the plain scalar copy too.
//   - against the plain (unfused) scalar copy, an ISA that fuses differs by the rounding of the
//     products: optimizers within 32 ulps of max(1, max|want|) per array, the tolerance
//     tests/test_optim.py justifies between the fused ISAs and the unfused NumPy reference.
//   - sums, whose order depends on the vector width (batch-norm training statistics and
//     everything computed from them, dweight/dbias; sum_squares/sum_abs): the tolerances the
//     Python tests justify against their float64 oracles: batch norm 1e-6 (float32) / 1e-13
//     (float64) of max(1, max|want|) (dweight, dbias: of the sums of absolute values), from
//     tests/test_batchnorm.py; sum_squares / sum_abs 1e-12 relative, from tests/test_clip.py.
//     (Each ISA is within those of the oracle, so two ISAs could differ by twice as much; the
//     measured differences are 3x (batch norm float32) to 30x below the bounds used.)
//   - the kernels over 16-bit and 8-bit storage (the mixed-precision optimizers, with bfloat16 /
//     float16 params, grads and param copies, bfloat16 or 8-bit state, stochastic rounding;
//     the gradient reductions and clipping over 16-bit grads, random_bits, the 8-bit codec; see
//     "16-bit and 8-bit storage" below):
//     bitwise equal to the scalar copy of the same FMA kind, and within one unit of the storage
//     format of the plain scalar copy (the conversions alone, the probe, the random bits and the
//     codec: bitwise equal to both).
// Sizes with vector tails, starts offset by 0..3 elements from a 64-byte line (the same for
// every array, or different ones), guard bytes around every array (a kernel must write nothing
// outside its elements) and inputs checked unchanged.
//
//   usage: kernel_agreement [isa ...]     (default: every available ISA but scalar)
// Prints the largest difference per kernel and dtype; exits 1 on any disagreement.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "../../csrc/dispatch.h"

namespace fusedopt {
namespace scalar_fma {
void fill_table(KernelTable&);
}  // namespace scalar_fma
}  // namespace fusedopt

namespace {

using namespace fusedopt;

// tests/conftest.py's FMA_ISAS: the ISAs whose vectors round a*b+c once
bool fuses(const std::string& isa) { return isa == "avx2" || isa == "avx512" || isa == "neon"; }

const std::size_t kSizes[] = {0, 1, 3, 7, 17, 63, 1000, 4099};
// array k of a call starts offset(variant, k) elements past a 64-byte line: the same offset for
// every array (variants 0..3), or a different one for each (variant 4)
constexpr int kAlignVariants = 5;
std::size_t offset(int variant, std::size_t k) { return variant < 4 ? variant : (k + 1) % 4; }
std::string align_name(int variant) { return variant < 4 ? "+" + std::to_string(variant) : "mixed"; }

template <class T> const char* dtype_name() { return sizeof(T) == 4 ? "f32" : "f64"; }
template <class T> DType dtype_of() { return sizeof(T) == 4 ? kFloat32 : kFloat64; }

// ---- data ------------------------------------------------------------------------------------

struct Rng {  // splitmix64: the same numbers on every platform
    std::uint64_t state;
    explicit Rng(std::uint64_t seed) : state(seed) {}
    double uniform(double lo = 0.0, double hi = 1.0) {
        std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        return lo + (hi - lo) * static_cast<double>(z >> 11) * 0x1.0p-53;
    }
};

template <class T>
std::vector<T> uniform(Rng& rng, std::size_t n, double lo, double hi) {
    std::vector<T> v(n);
    for (T& x : v) x = static_cast<T>(rng.uniform(lo, hi));
    return v;
}

// ---- memory ------------------------------------------------------------------------------------

// The arrays of one call, each starting kGuardBytes + its offset past a page boundary (so the
// distances between arrays modulo 4 KiB, which batch norm's store order (batchnorm_tiles.h) depends on, are
// the offsets' differences), every other byte kSentinel.
constexpr std::size_t kPage = 4096, kGuardBytes = 128;
constexpr unsigned char kSentinel = 0xA5;

class Arena {
  public:
    Arena(const std::vector<std::size_t>& bytes, const std::vector<std::size_t>& offset_bytes) : bytes_(bytes) {
        std::size_t total = 0;
        for (std::size_t k = 0; k < bytes.size(); ++k) {
            regions_.push_back(total);
            starts_.push_back(total + kGuardBytes + offset_bytes[k]);
            total += (kGuardBytes + offset_bytes[k] + bytes[k] + kGuardBytes + kPage - 1) / kPage * kPage;
        }
        regions_.push_back(total);
        total_ = std::max(total, kPage);
        mem_.reset(static_cast<unsigned char*>(std::aligned_alloc(kPage, total_)));
        if (!mem_) {
            std::fprintf(stderr, "out of memory\n");
            std::exit(2);
        }
        std::memset(mem_.get(), kSentinel, total_);
    }
    void* data(std::size_t k) const { return mem_.get() + starts_[k]; }
    // the first byte outside every array that is not kSentinel any more, or -1
    long written_outside() const {
        for (std::size_t k = 0; k < starts_.size(); ++k) {
            for (std::size_t b = regions_[k]; b < starts_[k]; ++b)
                if (mem_[b] != kSentinel) return static_cast<long>(b);
            for (std::size_t b = starts_[k] + bytes_[k]; b < regions_[k + 1]; ++b)
                if (mem_[b] != kSentinel) return static_cast<long>(b);
        }
        return -1;
    }

  private:
    struct Free {
        void operator()(unsigned char* p) const { std::free(p); }
    };
    std::vector<std::size_t> bytes_, starts_, regions_;  // region k: [regions_[k], regions_[k + 1])
    std::size_t total_ = 0;
    std::unique_ptr<unsigned char[], Free> mem_;
};

// ---- results -------------------------------------------------------------------------------------

// How an array (or a reduction's result) is checked after a call:
enum class Mode {
    kInput,        // read only: still its initial bytes
    kExact,        // bitwise equal to both scalar copies (no multiply-add involved)
    kElementwise,  // bitwise equal to the scalar copy of the same FMA kind, within tol of plain scalar
    kSummed,       // within tol of plain scalar (summation order depends on the vector width)
};

struct Stat {  // one kernel and dtype on one ISA
    std::string kernel, dtype;
    double tol = 0.0;
    long cases = 0, bitwise_cases = 0, failures = 0;
    double max_err = 0.0, seconds = 0.0;
    std::string worst;
};

struct Report {
    std::deque<Stat> stats;  // stat() hands out references: they must outlive later insertions
    long failures = 0, printed = 0;
    Stat& stat(const std::string& kernel, const std::string& dtype, double tol) {
        for (Stat& s : stats)
            if (s.kernel == kernel && s.dtype == dtype) return s;
        Stat& s = stats.emplace_back();
        s.kernel = kernel;
        s.dtype = dtype;
        s.tol = tol;
        return s;
    }
    void fail(Stat& s, const std::string& what) {
        ++s.failures;
        ++failures;
        if (++printed <= 40) std::printf("  FAIL %s %s: %s\n", s.kernel.c_str(), s.dtype.c_str(), what.c_str());
        if (printed == 40) std::printf("  (further failures not printed)\n");
    }
};

struct Tables {
    std::string isa, same_kind_name;
    const KernelTable* test;       // the ISA under test
    const KernelTable* same_kind;  // the scalar copy that fuses as it does (or not)
    const KernelTable* scalar;     // the plain scalar copy: the build's reference
};

template <class T>
bool same(T a, T b) {
    return std::memcmp(&a, &b, sizeof(T)) == 0 || (std::isnan(a) && std::isnan(b));
}

std::string num(double x) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.17g", x);
    return buf;
}

// err of got against want (see the file comment); non-finite values must match exactly
template <class T>
double rel_err(const T* got, const T* want, std::size_t n, double scale, std::size_t* where) {
    double max_abs_diff = 0.0;
    *where = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
        double d;
        if (std::isfinite(g) && std::isfinite(w))
            d = std::fabs(g - w);
        else
            d = same(got[i], want[i]) ? 0.0 : std::numeric_limits<double>::infinity();
        if (d > max_abs_diff) {
            max_abs_diff = d;
            *where = i;
        }
    }
    return max_abs_diff / std::max(1.0, scale);
}

template <class T>
double max_finite_abs(const T* x, std::size_t n) {
    double m = 0.0;
    for (std::size_t i = 0; i < n; ++i)
        if (std::isfinite(x[i])) m = std::max(m, std::fabs(static_cast<double>(x[i])));
    return m;
}

// One array of a call. Arrays of T hold `init`; a byte array (a boolean mask) holds `bytes`.
template <class T>
struct ArraySpec {
    const char* name;
    std::vector<T> init;
    Mode mode;
    double scale = -1.0;  // kSummed: err relative to max(1, scale); < 0: max|plain scalar result|
    std::vector<std::uint8_t> bytes = {};
};

// Runs call(table, pointers) -> double on the ISA under test and on both scalar copies, each on
// its own copy of the arrays placed alike, checks every array, and returns the three results
// (test, same kind, plain scalar) for the caller to check.
template <class T, class Call>
std::array<double, 3> run_case(Report& rep, Stat& st, const Tables& tb, const std::string& where,
                               const std::vector<ArraySpec<T>>& arrays, int align, Call&& call) {
    const std::size_t na = arrays.size();
    std::vector<std::size_t> bytes(na), offsets(na);
    for (std::size_t k = 0; k < na; ++k) {
        bytes[k] = arrays[k].bytes.empty() ? arrays[k].init.size() * sizeof(T) : arrays[k].bytes.size();
        offsets[k] = offset(align, k) * sizeof(T);
    }
    const auto start = std::chrono::steady_clock::now();
    std::array<double, 3> results{};
    std::vector<std::unique_ptr<Arena>> runs;
    const KernelTable* tables[3] = {tb.test, tb.same_kind, tb.scalar};
    for (int r = 0; r < 3; ++r) {
        runs.push_back(std::make_unique<Arena>(bytes, offsets));
        std::vector<void*> ptrs(na);
        for (std::size_t k = 0; k < na; ++k) {
            ptrs[k] = runs[r]->data(k);
            if (!arrays[k].bytes.empty())
                std::memcpy(ptrs[k], arrays[k].bytes.data(), arrays[k].bytes.size());
            else if (!arrays[k].init.empty())
                std::memcpy(ptrs[k], arrays[k].init.data(), arrays[k].init.size() * sizeof(T));
        }
        results[r] = call(*tables[r], ptrs.data());
    }
    ++st.cases;
    bool bitwise = false;
    for (int r = 0; r < 3; ++r) {
        const long b = runs[r]->written_outside();
        if (b >= 0) rep.fail(st, where + ": " + (r == 0 ? tb.isa : r == 1 ? tb.same_kind_name : "scalar") +
                                     " wrote outside its arrays (arena byte " + std::to_string(b) + ")");
    }
    for (std::size_t k = 0; k < na; ++k) {
        const ArraySpec<T>& a = arrays[k];
        if (!a.bytes.empty()) {
            for (int r = 0; r < 3; ++r)
                if (std::memcmp(runs[r]->data(k), a.bytes.data(), a.bytes.size()) != 0)
                    rep.fail(st, where + ": input " + a.name + " changed");
            continue;
        }
        const std::size_t n = a.init.size();
        const T* got = static_cast<const T*>(runs[0]->data(k));
        const T* kind = static_cast<const T*>(runs[1]->data(k));
        const T* plain = static_cast<const T*>(runs[2]->data(k));
        auto bitwise_equal = [&](const T* want, const std::string& want_name) {
            for (std::size_t i = 0; i < n; ++i)
                if (!same(got[i], want[i])) {
                    rep.fail(st, where + ": " + a.name + "[" + std::to_string(i) + "] = " + num(got[i]) + ", " +
                                     want_name + " gives " + num(want[i]) + " (bitwise expected)");
                    return;
                }
        };
        switch (a.mode) {
            case Mode::kInput:
                for (int r = 0; r < 3; ++r)
                    if (n && std::memcmp(runs[r]->data(k), a.init.data(), n * sizeof(T)) != 0)
                        rep.fail(st, where + ": input " + a.name + " changed");
                continue;
            case Mode::kExact:
                bitwise_equal(plain, "scalar");
                [[fallthrough]];
            case Mode::kElementwise:
                bitwise_equal(kind, tb.same_kind_name);
                bitwise = true;
                [[fallthrough]];
            case Mode::kSummed: {
                std::size_t i = 0;
                const double scale = a.scale >= 0.0 ? a.scale : max_finite_abs(plain, n);
                const double err = rel_err(got, plain, n, scale, &i);
                if (err > st.max_err) {
                    st.max_err = err;
                    st.worst = where + " " + a.name;
                }
                if (!(err <= st.tol))
                    rep.fail(st, where + ": " + a.name + "[" + std::to_string(i) + "] = " + num(got[i]) +
                                     ", scalar gives " + num(plain[i]) + ": err " + num(err) + " > tol " + num(st.tol));
            }
        }
    }
    if (bitwise) ++st.bitwise_cases;
    st.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return results;
}

// ---- optimizers ----------------------------------------------------------------------------------

// A kernel's arrays for n elements: param and grad in [-1, 1], the state as in a run.
template <class T, class Config, std::size_t N, class MakeArrays>
void check_elementwise(Report& rep, const Tables& tb, const char* kernel, ElementwiseKernel<Config> (KernelTable::*entry)[N],
                       const Config& c, const std::string& config, double tol, MakeArrays&& make_arrays) {
    Stat& st = rep.stat(kernel, dtype_name<T>(), tol);
    std::uint64_t seed = 1;
    for (std::size_t n : kSizes) {
        for (int align = 0; align < kAlignVariants; ++align) {
            Rng rng(seed++);
            const std::vector<ArraySpec<T>> arrays = make_arrays(rng, n);
            const std::string where = config + " n=" + std::to_string(n) + " align=" + align_name(align);
            run_case<T>(rep, st, tb, where, arrays, align, [&](const KernelTable& t, void* const* ptrs) {
                (t.*entry)[dtype_of<T>()](c, ptrs, n);
                return 0.0;
            });
        }
    }
}

// 32 ulps of max(1, max|want|): tests/test_optim.py's assert_close
template <class T> double optimizer_tol() { return 32 * static_cast<double>(std::numeric_limits<T>::epsilon()); }

std::string flags(std::initializer_list<std::pair<bool, const char*>> named) {
    std::string s;
    for (const auto& [on, name] : named)
        if (on) s += std::string(s.empty() ? "" : ",") + name;
    return s.empty() ? "plain" : s;
}

template <class T>
void check_optimizers(Report& rep, const Tables& tb) {
    const double tol = optimizer_tol<T>();
    const Mode upd = Mode::kElementwise;
    for (int bits = 0; bits < 32; ++bits) {
        const bool wd = bits & 1, mom = bits & 2, first = bits & 4, nesterov = bits & 8, maximize = bits & 16;
        if ((first || nesterov) && !mom) continue;  // only with momentum
        SgdConfig c;
        c.g.grad_mult = maximize ? -1.0 : 1.0;
        c.g.weight_decay = wd ? 0.01 : 0.0;
        c.lr = 0.05;
        c.momentum = mom ? 0.9 : 0.0;
        c.dampening = 0.1;
        c.first_step = first;
        c.nesterov = nesterov;
        const std::string name = flags({{wd, "wd"}, {mom, "momentum"}, {first, "first_step"}, {nesterov, "nesterov"}, {maximize, "maximize"}});
        check_elementwise<T>(rep, tb, "sgd", &KernelTable::sgd, c, name, tol, [&](Rng& rng, std::size_t n) {
            return std::vector<ArraySpec<T>>{{"param", uniform<T>(rng, n, -1, 1), upd},
                                             {"grad", uniform<T>(rng, n, -1, 1), Mode::kInput},
                                             {"momentum_buffer", uniform<T>(rng, n, -0.5, 0.5), mom ? upd : Mode::kInput}};
        });
    }
    for (int bits = 0; bits < 4; ++bits) {
        const bool wd = bits & 1, maximize = bits & 2;
        AdagradConfig c;
        c.g.grad_mult = maximize ? -1.0 : 1.0;
        c.g.weight_decay = wd ? 0.01 : 0.0;
        c.clr = 0.01 / (1 + 2 * 0.001);  // step 3, lr_decay 0.001
        c.eps = 1e-10;
        check_elementwise<T>(rep, tb, "adagrad", &KernelTable::adagrad, c, flags({{wd, "wd"}, {maximize, "maximize"}}), tol,
                             [&](Rng& rng, std::size_t n) {
                                 return std::vector<ArraySpec<T>>{{"param", uniform<T>(rng, n, -1, 1), upd},
                                                                  {"grad", uniform<T>(rng, n, -1, 1), Mode::kInput},
                                                                  {"state_sum", uniform<T>(rng, n, 0, 2), upd}};
                             });
    }
    for (int bits = 0; bits < 32; ++bits) {
        const bool wd = bits & 1, centered = bits & 2, mom = bits & 4, inside = bits & 8, maximize = bits & 16;
        RmspropConfig c;
        c.g.grad_mult = maximize ? -1.0 : 1.0;
        c.g.weight_decay = wd ? 0.01 : 0.0;
        c.lr = 0.01;
        c.alpha = 0.99;
        c.eps = 1e-8;
        c.momentum = mom ? 0.9 : 0.0;
        c.centered = centered;
        c.eps_inside_sqrt = inside;
        const std::string name = flags({{wd, "wd"}, {centered, "centered"}, {mom, "momentum"}, {inside, "eps_inside_sqrt"}, {maximize, "maximize"}});
        check_elementwise<T>(rep, tb, "rmsprop", &KernelTable::rmsprop, c, name, tol, [&](Rng& rng, std::size_t n) {
            std::vector<T> square_avg = uniform<T>(rng, n, 0.01, 1), grad_avg(n);
            for (std::size_t i = 0; i < n; ++i)  // |grad_avg| < sqrt(square_avg): a variance >= 0
                grad_avg[i] = static_cast<T>(rng.uniform(-0.5, 0.5) * std::sqrt(static_cast<double>(square_avg[i])));
            return std::vector<ArraySpec<T>>{{"param", uniform<T>(rng, n, -1, 1), upd},
                                             {"grad", uniform<T>(rng, n, -1, 1), Mode::kInput},
                                             {"square_avg", square_avg, upd},
                                             {"momentum_buffer", uniform<T>(rng, n, -0.1, 0.1), mom ? upd : Mode::kInput},
                                             {"grad_avg", grad_avg, centered ? upd : Mode::kInput}};
        });
    }
    for (int bits = 0; bits < 16; ++bits) {
        const bool wd = bits & 1, amsgrad = bits & 2, adamw = bits & 4, maximize = bits & 8;
        const double lr = 0.001, beta1 = 0.9, beta2 = 0.999, step = 3;
        AdamConfig c;
        c.g.grad_mult = maximize ? -1.0 : 1.0;
        c.g.weight_decay = wd && !adamw ? 0.01 : 0.0;
        c.param_scale = adamw ? 1.0 - lr * 0.01 : 1.0;
        c.beta1 = beta1;
        c.beta2 = beta2;
        c.eps = 1e-8;
        c.neg_step_size = -lr / (1.0 - std::pow(beta1, step));
        c.inv_bias_correction2_sqrt = 1.0 / std::sqrt(1.0 - std::pow(beta2, step));
        c.amsgrad = amsgrad;
        const std::string name = flags({{wd && !adamw, "wd"}, {adamw, "adamw"}, {amsgrad, "amsgrad"}, {maximize, "maximize"}});
        if (wd && adamw) continue;  // adamw's decay is param_scale
        check_elementwise<T>(rep, tb, "adam", &KernelTable::adam, c, name, tol, [&](Rng& rng, std::size_t n) {
            return std::vector<ArraySpec<T>>{{"param", uniform<T>(rng, n, -1, 1), upd},
                                             {"grad", uniform<T>(rng, n, -1, 1), Mode::kInput},
                                             {"exp_avg", uniform<T>(rng, n, -0.1, 0.1), upd},
                                             {"exp_avg_sq", uniform<T>(rng, n, 0, 0.01), upd},
                                             {"max_exp_avg_sq", uniform<T>(rng, n, 0, 0.012), amsgrad ? upd : Mode::kInput}};
        });
    }
}

// ---- scale, clamp, stream --------------------------------------------------------------------------

// values in [-2, 2] with an inf, a -inf, a NaN and a -0.0 among them (where n allows)
template <class T>
std::vector<T> with_specials(Rng& rng, std::size_t n) {
    std::vector<T> v = uniform<T>(rng, n, -2, 2);
    const T specials[] = {std::numeric_limits<T>::infinity(), -std::numeric_limits<T>::infinity(),
                          std::numeric_limits<T>::quiet_NaN(), T(-0.0)};
    for (std::size_t s = 0; s < 4 && 4 * s < n; ++s) v[(n - 1 - 5 * s) % n] = specials[s];
    return v;
}

template <class T>
void check_scale_clamp_stream(Report& rep, const Tables& tb) {
    for (double factor : {0.37, -3.0, 0.0}) {
        const ScaleConfig c{factor};
        check_elementwise<T>(rep, tb, "scale", &KernelTable::scale, c, "factor=" + num(factor), 0.0,
                             [](Rng& rng, std::size_t n) {
                                 return std::vector<ArraySpec<T>>{{"x", with_specials<T>(rng, n), Mode::kExact}};
                             });
    }
    const double inf = std::numeric_limits<double>::infinity();
    for (auto [lo, hi] : {std::pair{-0.5, 0.5}, {0.0, 0.0}, {0.25, 2.0}, {-inf, 1.0}}) {
        const ClampConfig c{lo, hi};
        check_elementwise<T>(rep, tb, "clamp", &KernelTable::clamp, c, "[" + num(lo) + "," + num(hi) + "]", 0.0,
                             [](Rng& rng, std::size_t n) {
                                 return std::vector<ArraySpec<T>>{{"x", with_specials<T>(rng, n), Mode::kExact}};
                             });
    }
    for (int rw = 0; rw <= 4; ++rw)
        for (int ro = 0; ro <= 2; ++ro)
            for (int wo = 0; wo <= 1; ++wo)
                for (bool streamed : {false, true}) {
                    if (rw + ro + wo == 0 || (streamed && wo == 0)) continue;
                    StreamConfig c;
                    c.n_read_write = rw;
                    c.n_read_only = ro;
                    c.n_write_only = wo;
                    c.stream_writes = streamed;
                    const std::string name = "rw=" + std::to_string(rw) + " ro=" + std::to_string(ro) + " wo=" +
                                             std::to_string(wo) + (streamed ? " streamed" : "");
                    check_elementwise<T>(rep, tb, "stream", &KernelTable::stream, c, name, 0.0, [&](Rng& rng, std::size_t n) {
                        std::vector<ArraySpec<T>> a;
                        for (int k = 0; k < rw; ++k) a.push_back({"read_write", uniform<T>(rng, n, -1, 1), Mode::kExact});
                        for (int k = 0; k < ro; ++k) a.push_back({"read_only", uniform<T>(rng, n, -1, 1), Mode::kInput});
                        if (wo) a.push_back({"write_only", std::vector<T>(n, std::numeric_limits<T>::quiet_NaN()), Mode::kExact});
                        return a;
                    });
                }
}

// ---- reductions ------------------------------------------------------------------------------------

template <class T>
void check_reductions(Report& rep, const Tables& tb) {
    const DType dt = dtype_of<T>();
    const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
    // sums of squares and absolute values in double: order-only differences (tests/test_clip.py)
    const double sum_tol = 1e-12;
    Stat& squares = rep.stat("sum_squares", dtype_name<T>(), sum_tol);
    Stat& abs_sum = rep.stat("sum_abs", dtype_name<T>(), sum_tol);
    Stat& probe = rep.stat("nonfinite_probe", dtype_name<T>(), 0.0);
    Stat& max_abs = rep.stat("max_abs", dtype_name<T>(), 0.0);
    Stat& pow_sum = rep.stat("sum_abs_pow", dtype_name<T>(), 0.0);
    // relative difference of two sums of non-negative terms; non-finite ones must match
    auto sum_err = [](double got, double want) {
        if (!std::isfinite(got) || !std::isfinite(want)) return same(got, want) ? 0.0 : std::numeric_limits<double>::infinity();
        return want == 0.0 ? (got == 0.0 ? 0.0 : std::numeric_limits<double>::infinity()) : std::fabs(got - want) / want;
    };
    auto check = [&](Stat& st, const std::string& where, const std::array<double, 3>& r, bool exact) {
        double err = 0.0;
        if (exact) {
            if (!same(r[0], r[1]) || !same(r[0], r[2])) err = std::numeric_limits<double>::infinity();
        } else {
            err = sum_err(r[0], r[2]);
        }
        if (exact) ++st.bitwise_cases;
        if (err > st.max_err) {
            st.max_err = err;
            st.worst = where;
        }
        if (!(err <= st.tol))
            rep.fail(st, where + ": " + tb.isa + " gives " + num(r[0]) + ", " + tb.same_kind_name + " " + num(r[1]) +
                             ", scalar " + num(r[2]));
    };
    std::vector<std::size_t> sizes(std::begin(kSizes), std::end(kSizes));
    sizes.push_back(65536);  // a whole block of reduce_blocks (parallel.h: kReduceBlock)
    const char* const variants[] = {"finite", "huge", "inf", "nan", "nan+inf"};
    std::uint64_t seed = 1000;
    for (std::size_t n : sizes)
        for (int align = 0; align < 4; ++align)
            for (const char* variant : variants) {
                const std::string v = variant;
                if (n == 0 && v != "finite") continue;
                Rng rng(seed++);
                std::vector<T> x = uniform<T>(rng, n, -2, 2);
                // huge: squares overflow float32 (not the double sums); float64's overflow to inf
                if (v == "huge")
                    for (T& e : x) e *= static_cast<T>(sizeof(T) == 4 ? 1e30 : 1e200);
                if (v == "nan" || v == "nan+inf") x[n / 3] = nan;
                if (v == "inf" || v == "nan+inf") x[n - 1] = -inf;
                const std::vector<ArraySpec<T>> arrays{{"x", x, Mode::kInput}};
                const std::string where = v + " n=" + std::to_string(n) + " align=" + align_name(align);
                check(squares, where, run_case<T>(rep, squares, tb, where, arrays, align, [&](const KernelTable& t, void* const* p) {
                          return t.sum_squares[dt](p[0], n);
                      }), false);
                check(abs_sum, where, run_case<T>(rep, abs_sum, tb, where, arrays, align, [&](const KernelTable& t, void* const* p) {
                          return t.sum_abs[dt](p[0], n);
                      }), false);
                check(probe, where, run_case<T>(rep, probe, tb, where, arrays, align, [&](const KernelTable& t, void* const* p) {
                          return t.nonfinite_probe[dt](p[0], n, 2.0);  // huge finite values overflow once scaled
                      }), true);
                check(max_abs, where, run_case<T>(rep, max_abs, tb, where, arrays, align, [&](const KernelTable& t, void* const* p) {
                          return t.max_abs[dt](p[0], n);
                      }), true);
                // the same scalar std::pow loop on every ISA: the whole block only costs time under emulation
                if (n > 4099) continue;
                for (double p : {0.5, 1.5, 3.0})
                    check(pow_sum, where + " p=" + num(p),
                          run_case<T>(rep, pow_sum, tb, where, arrays, align, [&](const KernelTable& t, void* const* ptrs) {
                              return t.sum_abs_pow[dt](ptrs[0], n, p);
                          }), true);
            }
}

// ---- batch norm ------------------------------------------------------------------------------------

struct BnShape {
    std::size_t outer, channels, inner;
    const char* what;
};

// tests/test_batchnorm.py's LAYOUTS as (outer, channels, inner), and a few more
const BnShape kBnShapes[] = {
    {1, 1, 1, "one element"},
    {6, 5, 1, "(N, C)"},
    {21, 4, 1, "(N, L, C)"},
    {4, 3, 7, "short runs"},
    {2, 3, 45, "planar"},
    {2, 3, 30, "inner 30: columns"},
    {2, 4, 42, "inner 42: planar"},
    {2, 3, 12, "NCDHW columns"},
    {60, 3, 1, "NHWC, 3 channels"},
    {24, 5, 1, "NDHWC, 5 channels"},
    {333, 2, 1, "2 channels"},
    {1000, 1, 1, "1 channel"},
    {2000, 40, 1, "columns, several row blocks"},
    {40, 300, 1, "columns, several tiles"},
    {70, 3, 33, "planar, several row blocks"},
    {2, 2, 9000, "planar, column chunks"},
    {12000, 6, 1, "short rows, several blocks"},
    {3000, 7, 1, "short rows, period 7"},
    {64, 2, 4608, "planar, 2 groups of blocks"},
    {16384, 20, 1, "channels-last, 2 groups"},
};

template <class T>
void check_batchnorm(Report& rep, const Tables& tb) {
    // tests/test_batchnorm.py's TOL and TOL_CHANNEL
    const double tol = sizeof(T) == 4 ? 1e-6 : 1e-13;
    Stat& fwd = rep.stat("batchnorm_forward", dtype_name<T>(), tol);
    Stat& bwd = rep.stat("batchnorm_backward", dtype_name<T>(), tol);
    const DType dt = dtype_of<T>();
    const T nan = std::numeric_limits<T>::quiet_NaN();
    std::vector<BnShape> shapes(std::begin(kBnShapes), std::end(kBnShapes));
    // outputs of at least kStreamMinBytes: written by non-temporal stores on x86
    const std::size_t stream_min = kStreamMinBytes / sizeof(T);
    shapes.push_back({stream_min / (4 * 4096) + 1, 4, 4096, "planar, streamed output"});
    shapes.push_back({stream_min / 32 + 1, 32, 1, "channels-last, streamed output"});
    // short channel rows (7x7) past 8 MB: many rows summed as columns, few planar and not streamed
    shapes.push_back({25, stream_min / (25 * 49) + 1, 49, "short rows as columns"});
    shapes.push_back({24, stream_min / (24 * 49) + 1, 49, "short planar rows, not streamed"});
    std::uint64_t seed = 5000;
    for (const BnShape& s : shapes) {
        const std::size_t n = s.outer * s.channels * s.inner, C = s.channels;
        const bool full = n < 200000;  // every combination of options; fewer on the largest shapes
        for (int align : {0, 4})
            for (bool drift : {false, true}) {
                if (drift && !full) continue;
                Rng rng(seed++);
                // x: centered near 0.5, or far from 0 and drifting along the rows (the forward's
                // shift is then off for later blocks: its reshift path)
                std::vector<T> x(n);
                for (std::size_t i = 0; i < n; ++i) {
                    const double row = static_cast<double>(i / (C * s.inner));
                    x[i] = static_cast<T>((drift ? 100.0 + 0.05 * row : 0.5) + rng.uniform(-3, 3));
                }
                const std::vector<T> weight = uniform<T>(rng, C, -2, 2), bias = uniform<T>(rng, C, -1, 1);
                const std::vector<T> running_mean = uniform<T>(rng, C, -1, 1), running_var = uniform<T>(rng, C, 0.5, 1.5);
                const std::vector<T> dy = uniform<T>(rng, n, -1, 1);
                const std::string where0 = std::string(s.what) + " (" + std::to_string(s.outer) + "," + std::to_string(C) +
                                           "," + std::to_string(s.inner) + ")" + (drift ? " drifting" : "") +
                                           " align=" + align_name(align);

                // forward: training / eval, affine, running statistics, fused relu
                for (int bits = 0; bits < 16; ++bits) {
                    const bool training = bits & 1, affine = bits & 2, running = bits & 4, relu = bits & 8;
                    if (!training && !running) continue;  // eval needs the running statistics
                    if (!full && bits != (1 | 2 | 4 | 8) && bits != (2 | 4)) continue;
                    const Mode per_element = training ? Mode::kSummed : Mode::kElementwise;
                    const std::vector<ArraySpec<T>> a{
                        {"x", x, Mode::kInput},
                        {"weight", weight, Mode::kInput},
                        {"bias", bias, Mode::kInput},
                        {"running_mean", running_mean, training && running ? Mode::kSummed : Mode::kInput},
                        {"running_var", running_var, training && running ? Mode::kSummed : Mode::kInput},
                        {"y", std::vector<T>(n, nan), per_element},
                        {"save_mean", std::vector<T>(C, nan), per_element},
                        {"save_invstd", std::vector<T>(C, nan), per_element},
                    };
                    const std::string where = where0 + " " + flags({{training, "training"}, {!training, "eval"},
                                                                    {affine, "affine"}, {running, "running"}, {relu, "relu"}});
                    run_case<T>(rep, fwd, tb, where, a, align, [&](const KernelTable& t, void* const* p) {
                        BatchNormForwardArgs args;
                        args.shape = {s.outer, C, s.inner};
                        args.x = p[0];
                        args.weight = affine ? p[1] : nullptr;
                        args.bias = affine ? p[2] : nullptr;
                        args.running_mean = running ? p[3] : nullptr;
                        args.running_var = running ? p[4] : nullptr;
                        args.y = p[5];
                        args.save_mean = p[6];
                        args.save_invstd = p[7];
                        args.momentum = 0.3;
                        args.eps = 1e-3;
                        args.training = training;
                        args.relu = relu;
                        t.batchnorm_forward[dt](args);
                        return 0.0;
                    });
                }

                // backward, from saved statistics near x's: training / eval, the ReLU mask as the
                // forward's output or as booleans, with or without weight (then dweight, dbias)
                std::vector<T> save_mean(C), save_invstd(C), relu_output = uniform<T>(rng, n, -1, 1);
                for (std::size_t c = 0; c < C; ++c) {
                    save_mean[c] = static_cast<T>((drift ? 100.0 + 0.025 * static_cast<double>(s.outer) : 0.5) + rng.uniform(-0.1, 0.1));
                    save_invstd[c] = static_cast<T>(rng.uniform(0.4, 0.6));
                }
                for (std::size_t i = 0; i < n; i += 7) relu_output[i] = T(i % 2 ? 0.0 : -0.0);  // the boundary of relu
                std::vector<std::uint8_t> relu_mask(n);
                for (std::size_t i = 0; i < n; ++i) relu_mask[i] = relu_output[i] > T(0);
                for (int bits = 0; bits < 12; ++bits) {
                    const bool training = bits & 1, affine = bits & 2;
                    const ReluMask mask = static_cast<ReluMask>(bits >> 2);
                    if (!full && bits != (1 | 2 | 4) && bits != 8 && bits != 1) continue;
                    // dweight and dbias are sums over terms of both signs: err relative to the sums
                    // of |terms| (tests/test_batchnorm.py's abs_sums)
                    double dw_abs = 0.0, db_abs = 0.0;
                    std::vector<double> dw_c(C), db_c(C);
                    for (std::size_t i = 0; i < n; ++i) {
                        const std::size_t c = i / s.inner % C;
                        const bool pass = mask == ReluMask::kNone || relu_output[i] > T(0);
                        const double g = pass ? std::fabs(static_cast<double>(dy[i])) : 0.0;
                        dw_c[c] += g * std::fabs(static_cast<double>(x[i]) - static_cast<double>(save_mean[c]));
                        db_c[c] += g;
                    }
                    for (std::size_t c = 0; c < C; ++c) {
                        dw_abs = std::max(dw_abs, dw_c[c] * static_cast<double>(save_invstd[c]));
                        db_abs = std::max(db_abs, db_c[c]);
                    }
                    const std::vector<ArraySpec<T>> a{
                        {"dy", dy, Mode::kInput},
                        {"x", x, Mode::kInput},
                        {"relu_output", mask == ReluMask::kValues ? relu_output : std::vector<T>{}, Mode::kInput, -1.0,
                         mask == ReluMask::kBool ? relu_mask : std::vector<std::uint8_t>{}},
                        {"weight", weight, Mode::kInput},
                        {"save_mean", save_mean, Mode::kInput},
                        {"save_invstd", save_invstd, Mode::kInput},
                        {"dx", std::vector<T>(n, nan), training ? Mode::kSummed : Mode::kElementwise},
                        {"dweight", std::vector<T>(C, nan), affine ? Mode::kSummed : Mode::kInput, dw_abs},
                        {"dbias", std::vector<T>(C, nan), affine ? Mode::kSummed : Mode::kInput, db_abs},
                    };
                    const char* mask_name = mask == ReluMask::kNone ? "" : mask == ReluMask::kValues ? "relu_output" : "relu_mask";
                    const std::string where = where0 + " " + flags({{training, "training"}, {!training, "eval"}, {affine, "weight"}}) +
                                              (*mask_name ? std::string(" ") + mask_name : "");
                    run_case<T>(rep, bwd, tb, where, a, align, [&](const KernelTable& t, void* const* p) {
                        BatchNormBackwardArgs args;
                        args.shape = {s.outer, C, s.inner};
                        args.dy = p[0];
                        args.x = p[1];
                        args.relu_output = mask == ReluMask::kNone ? nullptr : p[2];
                        args.relu_mask = mask;
                        args.weight = affine ? p[3] : nullptr;
                        args.save_mean = p[4];
                        args.save_invstd = p[5];
                        args.dx = p[6];
                        args.dweight = affine ? p[7] : nullptr;
                        args.dbias = affine ? p[8] : nullptr;
                        args.training = training;
                        t.batchnorm_backward[dt](args);
                        return 0.0;
                    });
                }
            }
    }
}

// ---- 16-bit and 8-bit storage: mixed-precision optimizers, conversions, 8-bit codec ----------------
//
// The arrays of these kernels are stored as float32, bfloat16, float16 or 8-bit codes (plus one
// float32 scale per 256-element block). Each written array must be bitwise equal to the scalar
// copy of the same FMA kind (codes and scales alike), and, decoded, within one unit of its storage
// of the plain scalar copy: err = max|got - want| / max(1, max|want|) / unit, unit = 32 float32
// ulps for float32 (as the optimizers above), 2^-7 for bfloat16 and 2^-10 for float16 (one ulp at
// the largest magnitude: one rounding that went the other way after the products' fused or
// unfused rounding), 2^-3 for 8-bit codes (one code step at the block's absmax). So these rows
// print err in units (tol 1); the conversions and the codec are checked bitwise against both.

double storage_unit(DType d) {
    switch (d) {
        case kBFloat16: return 0x1p-7;
        case kFloat16: return 0x1p-10;
        case kQuant8Signed:
        case kQuant8Unsigned: return 0x1p-3;
        default: return 32 * static_cast<double>(std::numeric_limits<float>::epsilon());
    }
}
std::size_t storage_size(DType d) { return d == kBFloat16 || d == kFloat16 ? 2 : d == kQuant8Signed || d == kQuant8Unsigned ? 1 : 4; }
bool is_quant(DType d) { return d == kQuant8Signed || d == kQuant8Unsigned; }
const char* storage_name(DType d) {
    switch (d) {
        case kBFloat16: return "bf16";
        case kFloat16: return "f16";
        case kQuant8Signed: return "q8s";
        case kQuant8Unsigned: return "q8u";
        case kFloat64: return "f64";
        default: return "f32";
    }
}

std::uint32_t float_bits(float x) {
    std::uint32_t b;
    std::memcpy(&b, &x, 4);
    return b;
}
float bits_float(std::uint32_t b) {
    float x;
    std::memcpy(&x, &b, 4);
    return x;
}
// float16 bits -> value, by the definition (independent of convert.h)
double half_value(std::uint16_t h) {
    const int e = (h >> 10) & 0x1F, m = h & 0x3FF;
    const double s = h & 0x8000 ? -1.0 : 1.0;
    if (e == 31) return m ? std::numeric_limits<double>::quiet_NaN() : s * std::numeric_limits<double>::infinity();
    return s * (e ? std::ldexp(1024.0 + m, e - 25) : std::ldexp(static_cast<double>(m), -24));
}
// value -> float16 bits for the test's inputs: truncated (any float16 value will do as input)
std::uint16_t half_bits(float x) {
    const std::uint32_t b = float_bits(x), sign = (b >> 16) & 0x8000u, a = b & 0x7FFFFFFFu;
    if (a >= 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7C00u | (a > 0x7F800000u ? 0x200u : 0u));
    if (a >= 0x47800000u) return static_cast<std::uint16_t>(sign | 0x7BFFu);  // >= 65536: the largest
    if (a < 0x33800000u) return static_cast<std::uint16_t>(sign);             // < 2^-24: zero
    if (a < 0x38800000u)  // subnormal: m * 2^-24
        return static_cast<std::uint16_t>(sign | static_cast<std::uint32_t>(std::ldexp(bits_float(a), 24)));
    return static_cast<std::uint16_t>(sign | (((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3FFu));
}

// One array of a call in its storage: bytes (codes for 8-bit) and, for 8-bit, the block scales.
struct Stored {
    const char* name;
    DType dtype;
    std::vector<std::uint8_t> bytes;
    std::vector<float> scales;
    bool written = false;
    bool exact = false;  // also bitwise equal to the plain scalar copy
    std::size_t n = 0;
};

// values (float) -> storage; 8-bit by the plain scalar copy's encoder
Stored store_as(const Tables& tb, const char* name, DType d, const std::vector<float>& v, bool written) {
    Stored s{name, d, {}, {}, written, false, v.size()};
    const std::size_t n = v.size();
    s.bytes.resize(n * storage_size(d));
    for (std::size_t i = 0; i < n; ++i) {
        if (d == kFloat32) std::memcpy(&s.bytes[4 * i], &v[i], 4);
        else if (d == kBFloat16 || d == kFloat16) {
            const std::uint16_t h = d == kBFloat16 ? static_cast<std::uint16_t>(float_bits(v[i]) >> 16) : half_bits(v[i]);
            std::memcpy(&s.bytes[2 * i], &h, 2);
        }
    }
    if (is_quant(d)) {
        s.scales.resize((n + 255) / 256);
        tb.scalar->quantize_blockwise(v.data(), s.bytes.data(), s.scales.data(), n, d == kQuant8Signed);
    }
    return s;
}

std::vector<double> decode(const Tables& tb, DType d, const std::uint8_t* p, const float* scales, std::size_t n) {
    std::vector<double> out(n);
    if (is_quant(d)) {
        std::vector<float> f(n);
        tb.scalar->dequantize_blockwise(p, scales, f.data(), n, d == kQuant8Signed);
        for (std::size_t i = 0; i < n; ++i) out[i] = f[i];
        return out;
    }
    for (std::size_t i = 0; i < n; ++i) {
        if (d == kFloat32) {
            float x;
            std::memcpy(&x, p + 4 * i, 4);
            out[i] = x;
        } else {
            std::uint16_t h;
            std::memcpy(&h, p + 2 * i, 2);
            out[i] = d == kBFloat16 ? bits_float(static_cast<std::uint32_t>(h) << 16) : half_value(h);
        }
    }
    return out;
}

// As run_case, for stored arrays: call(table, data pointers, scale pointers) -> double, on the
// ISA under test and both scalar copies; checks every array (see the section comment).
template <class Call>
std::array<double, 3> run_stored(Report& rep, Stat& st, const Tables& tb, const std::string& where,
                                 const std::vector<Stored>& arrays, int align, Call&& call) {
    // arena arrays: each array's bytes, then its scales when 8-bit
    std::vector<std::size_t> bytes, offsets, data_at(arrays.size()), scales_at(arrays.size(), SIZE_MAX);
    for (std::size_t k = 0; k < arrays.size(); ++k) {
        data_at[k] = bytes.size();
        bytes.push_back(arrays[k].bytes.size());
        offsets.push_back(offset(align, k) * storage_size(arrays[k].dtype));
        if (is_quant(arrays[k].dtype)) {
            scales_at[k] = bytes.size();
            bytes.push_back(arrays[k].scales.size() * 4);
            offsets.push_back(offset(align, k + 1) * 4);
        }
    }
    const auto start = std::chrono::steady_clock::now();
    std::array<double, 3> results{};
    std::vector<std::unique_ptr<Arena>> runs;
    const KernelTable* tables[3] = {tb.test, tb.same_kind, tb.scalar};
    for (int r = 0; r < 3; ++r) {
        runs.push_back(std::make_unique<Arena>(bytes, offsets));
        std::vector<void*> data(arrays.size());
        std::vector<float*> scales(arrays.size(), nullptr);
        for (std::size_t k = 0; k < arrays.size(); ++k) {
            data[k] = runs[r]->data(data_at[k]);
            std::memcpy(data[k], arrays[k].bytes.data(), arrays[k].bytes.size());
            if (scales_at[k] != SIZE_MAX) {
                scales[k] = static_cast<float*>(runs[r]->data(scales_at[k]));
                std::memcpy(scales[k], arrays[k].scales.data(), arrays[k].scales.size() * 4);
            }
        }
        results[r] = call(*tables[r], data.data(), scales.data());
    }
    ++st.cases;
    for (int r = 0; r < 3; ++r) {
        const long b = runs[r]->written_outside();
        if (b >= 0) rep.fail(st, where + ": " + (r == 0 ? tb.isa : r == 1 ? tb.same_kind_name : "scalar") +
                                     " wrote outside its arrays (arena byte " + std::to_string(b) + ")");
    }
    bool bitwise = false;
    for (std::size_t k = 0; k < arrays.size(); ++k) {
        const Stored& a = arrays[k];
        auto bytes_of = [&](int r) { return static_cast<const std::uint8_t*>(runs[r]->data(data_at[k])); };
        auto scales_of = [&](int r) {
            return scales_at[k] == SIZE_MAX ? nullptr : static_cast<const float*>(runs[r]->data(scales_at[k]));
        };
        const std::size_t nscales = a.scales.size() * 4;
        if (!a.written) {
            for (int r = 0; r < 3; ++r)
                if (std::memcmp(bytes_of(r), a.bytes.data(), a.bytes.size()) != 0 ||
                    (nscales && std::memcmp(scales_of(r), a.scales.data(), nscales) != 0))
                    rep.fail(st, where + ": input " + a.name + " changed");
            continue;
        }
        const std::vector<double> got = decode(tb, a.dtype, bytes_of(0), scales_of(0), a.n);
        auto bitwise_equal = [&](int r, const std::string& want_name) {
            const std::size_t es = storage_size(a.dtype);
            for (std::size_t i = 0; i < a.n; ++i)
                if (std::memcmp(bytes_of(0) + es * i, bytes_of(r) + es * i, es) != 0) {
                    const std::vector<double> want = decode(tb, a.dtype, bytes_of(r), scales_of(r), a.n);
                    char buf[160];
                    std::uint32_t g = 0, w = 0;
                    std::memcpy(&g, bytes_of(0) + es * i, es);
                    std::memcpy(&w, bytes_of(r) + es * i, es);
                    std::snprintf(buf, sizeof(buf), " (0x%x), %s gives ", g, want_name.c_str());
                    rep.fail(st, where + ": " + a.name + "[" + std::to_string(i) + "] = " + num(got[i]) + buf +
                                     num(want[i]) + " (0x" + [&] { char h[16]; std::snprintf(h, 16, "%x", w); return std::string(h); }() +
                                     ", bitwise expected)");
                    return;
                }
            for (std::size_t b = 0; b < nscales / 4; ++b)
                if (!same(scales_of(0)[b], scales_of(r)[b])) {
                    rep.fail(st, where + ": " + a.name + " scale of block " + std::to_string(b) + " = " + num(scales_of(0)[b]) +
                                     ", " + want_name + " gives " + num(scales_of(r)[b]) + " (bitwise expected)");
                    return;
                }
        };
        bitwise_equal(1, tb.same_kind_name);
        if (a.exact) bitwise_equal(2, "scalar");
        bitwise = true;
        const std::vector<double> want = decode(tb, a.dtype, bytes_of(2), scales_of(2), a.n);
        std::size_t i = 0;
        const double err = rel_err(got.data(), want.data(), a.n, max_finite_abs(want.data(), a.n), &i) / storage_unit(a.dtype);
        if (err > st.max_err) {
            st.max_err = err;
            st.worst = where + " " + a.name;
        }
        if (!(err <= st.tol))
            rep.fail(st, where + ": " + a.name + "[" + std::to_string(i) + "] = " + num(got[i]) + ", scalar gives " +
                             num(want[i]) + ": err " + num(err) + " units > tol " + num(st.tol));
    }
    if (bitwise) ++st.bitwise_cases;
    st.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return results;
}

const std::size_t kStoredSizes[] = {0, 1, 7, 63, 255, 256, 257, 1000, 4099};

// Float32 values for the conversions: random magnitudes over float16's and bfloat16's ranges and
// beyond, and at every 4th element a value at one of their edges: ties of both roundings,
// float16's largest / overflow / subnormals / underflow, bfloat16's overflow, inf, NaNs (quiet,
// signaling, with payloads), -0.0, float32 subnormals.
std::vector<float> conversion_values(Rng& rng, std::size_t n) {
    static const std::uint32_t edges[] = {
        0x3F808000u, 0x3F818000u, 0xBF808000u,  // bfloat16 ties (to even: down, up, negative)
        0x3F801000u, 0x3F803000u, 0xC0801000u,  // float16 ties
        0x477FE000u, 0x477FEFFFu, 0x477FF000u, 0xC77FF000u, 0x47800000u,  // float16: 65504, below/at the overflow tie
        0x33800000u, 0x33000000u, 0x33000001u, 0x33C00000u, 0x387FC000u, 0x38000000u, 0x38001000u,  // float16 subnormals / underflow
        0x7F7FFFFFu, 0x7F7F8000u, 0x7F7F7FFFu, 0xFF7FFFFFu,  // bfloat16's overflow
        0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00001u, 0x7F800001u, 0x7F810000u, 0xFF80FFFFu, 0x7FBFFFFFu,  // inf, NaNs
        0x80000000u, 0x00000001u, 0x807FFFFFu, 0x00408000u, 0x00018000u,  // -0.0, float32 subnormals (and a bfloat16 tie)
    };
    std::vector<float> v(n);
    std::size_t e = static_cast<std::size_t>(rng.uniform(0, 32));
    for (std::size_t i = 0; i < n; ++i) {
        if (i % 4 == 3) {
            v[i] = bits_float(edges[e++ % (sizeof(edges) / sizeof(edges[0]))]);
        } else {
            const double m = std::ldexp(rng.uniform(1, 2), static_cast<int>(rng.uniform(-30, 20)));
            v[i] = static_cast<float>(rng.uniform() < 0.5 ? -m : m);
        }
    }
    return v;
}

// One combination of storages of a mixed call.
struct Combo {
    const char* name;
    DType param, grad, state, copy;  // copy kFloat64: none
    bool stochastic;
    std::uint64_t offset;  // the chunk's first element in its tensor (a block boundary with 8-bit state)
};
// near 2^32: the random bits' counter wraps inside the larger sizes (a block boundary too)
constexpr std::uint64_t kNearWrap = (std::uint64_t(1) << 32) - 512;
const Combo kCombos[] = {
    {"bf16/bf16/bf16", kBFloat16, kBFloat16, kBFloat16, kFloat64, false, 0},
    {"bf16 sr/bf16/q8", kBFloat16, kBFloat16, kQuant8Signed, kFloat64, true, kNearWrap},
    {"f16/f16/f32", kFloat16, kFloat16, kFloat32, kFloat64, false, 256},
    {"f32/bf16/f32", kFloat32, kBFloat16, kFloat32, kFloat64, false, 0},
    {"f32/bf16/q8+bf16", kFloat32, kBFloat16, kQuant8Signed, kBFloat16, false, 512},
    {"f32/f16/bf16+f16", kFloat32, kFloat16, kBFloat16, kFloat16, false, 0},
    {"bf16 sr/f32/f32+f16", kBFloat16, kFloat32, kFloat32, kFloat16, true, kNearWrap + 100},
    {"f16/f16/q8", kFloat16, kFloat16, kQuant8Signed, kFloat64, false, 768},  // Staged, 8-bit
};

// A state array of an optimizer: its name, initial range and whether it is signed (8-bit code).
struct StateRole {
    const char* name;
    double lo, hi;
    bool used, is_signed;
};

template <class Config>
void check_mixed(Report& rep, const Tables& tb, const char* kernel, MixedKernel<Config> KernelTable::*entry, const Config& c,
                 const std::string& config, const std::vector<StateRole>& state) {
    std::uint64_t seed = 7000;
    const std::size_t narrays = 2 + state.size();
    for (const Combo& combo : kCombos) {
        Stat& st = rep.stat(std::string(kernel) + "_mixed", combo.name, 1.0);
        for (std::size_t n : kStoredSizes)
            for (int align = 0; align < kAlignVariants; ++align) {
                if (n > 1000 && align != 4 && align != 1) continue;  // time under emulation
                Rng rng(seed++);
                std::vector<Stored> a;
                a.push_back(store_as(tb, "param", combo.param, uniform<float>(rng, n, -1, 1), true));
                a.push_back(store_as(tb, "grad", combo.grad, uniform<float>(rng, n, -1, 1), false));
                std::vector<DType> dtypes{combo.param, combo.grad};
                for (const StateRole& s : state) {
                    DType d = combo.state;
                    if (d == kQuant8Signed && !s.is_signed) d = kQuant8Unsigned;
                    dtypes.push_back(d);
                    a.push_back(store_as(tb, s.name, d, uniform<float>(rng, s.used ? n : 0, s.lo, s.hi), s.used));
                }
                const bool copy = combo.copy != kFloat64;
                if (copy) a.push_back(store_as(tb, "param_copy", combo.copy, std::vector<float>(n, 0.0f), true));
                const std::string where = config + " n=" + std::to_string(n) + " align=" + align_name(align);
                run_stored(rep, st, tb, where, a, align, [&](const KernelTable& t, void* const* data, float* const* scales) {
                    void* d[8];
                    for (std::size_t k = 0; k < narrays; ++k) d[k] = k < 2 || state[k - 2].used ? data[k] : nullptr;
                    const MixedChunk m{d, dtypes.data(), scales, copy ? data[narrays] : nullptr, combo.copy, n, 2, combo.offset,
                                       combo.stochastic, 1234, 3};
                    (t.*entry)(c, m);
                    return 0.0;
                });
            }
    }
}

void check_mixed_optimizers(Report& rep, const Tables& tb) {
    for (int bits = 0; bits < 3; ++bits) {  // plain; wd, momentum, nesterov; momentum, first step, maximize
        SgdConfig c;
        c.g.grad_mult = bits == 2 ? -1.0 : 1.0;
        c.g.weight_decay = bits == 1 ? 0.01 : 0.0;
        c.lr = 0.05;
        c.momentum = bits ? 0.9 : 0.0;
        c.dampening = bits == 1 ? 0.0 : 0.1;
        c.nesterov = bits == 1;
        c.first_step = bits == 2;
        const char* name = bits == 0 ? "plain" : bits == 1 ? "wd,momentum,nesterov" : "momentum,first_step,maximize";
        check_mixed(rep, tb, "sgd", &KernelTable::sgd_mixed, c, name, {{"momentum_buffer", -0.5, 0.5, bits != 0, true}});
    }
    for (bool wd : {false, true}) {
        AdagradConfig c;
        c.g.weight_decay = wd ? 0.01 : 0.0;
        c.clr = 0.01 / (1 + 2 * 0.001);
        c.eps = 1e-10;
        check_mixed(rep, tb, "adagrad", &KernelTable::adagrad_mixed, c, wd ? "wd" : "plain", {{"state_sum", 0, 2, true, false}});
    }
    for (int bits = 0; bits < 2; ++bits) {  // plain; wd, centered, momentum, maximize
        RmspropConfig c;
        c.g.grad_mult = bits ? -1.0 : 1.0;
        c.g.weight_decay = bits ? 0.01 : 0.0;
        c.lr = 0.01;
        c.alpha = 0.99;
        c.eps = 1e-8;
        c.momentum = bits ? 0.9 : 0.0;
        c.centered = bits;
        check_mixed(rep, tb, "rmsprop", &KernelTable::rmsprop_mixed, c, bits ? "wd,centered,momentum,maximize" : "plain",
                    {{"square_avg", 0.25, 1, true, false}, {"momentum_buffer", -0.1, 0.1, bits != 0, true},
                     {"grad_avg", -0.4, 0.4, bits != 0, true}});
    }
    for (int bits = 0; bits < 2; ++bits) {  // adamw; amsgrad, wd, maximize
        const double lr = 0.001, beta1 = 0.9, beta2 = 0.999, step = 3;
        AdamConfig c;
        c.g.grad_mult = bits ? -1.0 : 1.0;
        c.g.weight_decay = bits ? 0.01 : 0.0;
        c.param_scale = bits ? 1.0 : 1.0 - lr * 0.01;
        c.beta1 = beta1;
        c.beta2 = beta2;
        c.eps = 1e-8;
        c.neg_step_size = -lr / (1.0 - std::pow(beta1, step));
        c.inv_bias_correction2_sqrt = 1.0 / std::sqrt(1.0 - std::pow(beta2, step));
        c.amsgrad = bits;
        check_mixed(rep, tb, "adam", &KernelTable::adam_mixed, c, bits ? "wd,amsgrad,maximize" : "adamw",
                    {{"exp_avg", -0.1, 0.1, true, true}, {"exp_avg_sq", 0, 0.01, true, false},
                     {"max_exp_avg_sq", 0, 0.012, bits != 0, false}});
    }
}

// The conversions alone: sgd_mixed with lr 0 and no momentum leaves the values as they are, so
// each output is the conversion of its input, bitwise equal on every ISA: float32 params to
// their bfloat16 / float16 copies (round to nearest even), 16-bit params widened and narrowed
// back (stochastic rounding of an unchanged bfloat16 value must give it back too: only its
// NaNs' quieting and inf are at stake there; the optimizer cases above round updated values).
void check_conversions(Report& rep, const Tables& tb) {
    SgdConfig c;
    c.lr = 0.0;
    struct Conv {
        const char* name;
        DType param, copy;
        bool stochastic;
    };
    const Conv convs[] = {{"f32 -> bf16 copy", kFloat32, kBFloat16, false}, {"f32 -> f16 copy", kFloat32, kFloat16, false},
                          {"bf16 -> bf16, f16 copy", kBFloat16, kFloat16, false}, {"f16 -> f16, bf16 copy", kFloat16, kBFloat16, false},
                          {"bf16 sr -> bf16", kBFloat16, kFloat64, true}};
    Stat& st = rep.stat("conversions", "16-bit", 0.0);
    std::uint64_t seed = 8000;
    for (const Conv& conv : convs)
        for (std::size_t n : kStoredSizes)
            for (int align = 0; align < kAlignVariants; ++align) {
                Rng rng(seed++);
                std::vector<float> values = conversion_values(rng, n);
                std::vector<Stored> a;
                a.push_back(store_as(tb, "param", conv.param, values, true));
                a.push_back(store_as(tb, "grad", kFloat32, std::vector<float>(n, 0.0f), false));
                const bool copy = conv.copy != kFloat64;
                if (copy) a.push_back(store_as(tb, "param_copy", conv.copy, std::vector<float>(n, 0.0f), true));
                for (Stored& s : a) s.exact = true;
                const DType dtypes[3] = {conv.param, kFloat32, kFloat32};
                const std::string where = std::string(conv.name) + " n=" + std::to_string(n) + " align=" + align_name(align);
                run_stored(rep, st, tb, where, a, align, [&](const KernelTable& t, void* const* data, float* const* scales) {
                    void* d[3] = {data[0], data[1], nullptr};
                    const MixedChunk m{d, dtypes, scales, copy ? data[2] : nullptr, conv.copy, n, 0, kNearWrap, conv.stochastic, 99, 1};
                    t.sgd_mixed(c, m);
                    return 0.0;
                });
            }
}

// The reductions and clipping over 16-bit grads (bitwise but for the double sums' order; the
// probe is one product per element, summed only as NaN or 0), random_bits, and the 8-bit codec:
// bitwise equal on every ISA.
void check_probe16_codec(Report& rep, const Tables& tb) {
    Stat& probe = rep.stat("nonfinite_probe", "16-bit", 0.0);
    Stat& squares16 = rep.stat("sum_squares", "16-bit", 1e-12);
    Stat& abs16 = rep.stat("sum_abs", "16-bit", 1e-12);
    Stat& pow16 = rep.stat("sum_abs_pow", "16-bit", 0.0);
    Stat& max16 = rep.stat("max_abs", "16-bit", 0.0);
    Stat& scale16 = rep.stat("scale", "16-bit", 0.0);
    Stat& clamp16 = rep.stat("clamp", "16-bit", 0.0);
    Stat& bits = rep.stat("random_bits", "u32", 0.0);
    Stat& quant = rep.stat("quantize_blockwise", "q8", 0.0);
    Stat& dequant = rep.stat("dequantize_blockwise", "q8", 0.0);
    std::uint64_t seed = 9000;
    for (std::size_t n : kStoredSizes)
        for (int align = 0; align < 4; ++align) {
            const std::string at = " n=" + std::to_string(n) + " align=" + align_name(align);
            for (DType d : {kBFloat16, kFloat16})
                for (const char* variant : {"finite", "huge", "inf", "nan"}) {
                    const std::string v = variant;
                    if (n == 0 && v != "finite") continue;
                    Rng rng(seed++);
                    std::vector<float> x = uniform<float>(rng, n, -2, 2);
                    if (v == "huge") for (float& e : x) e *= d == kBFloat16 ? 2e38f : 6e4f;  // x * 2 overflows bfloat16's range only
                    if (v == "inf") x[n - 1] = -std::numeric_limits<float>::infinity();
                    if (v == "nan") x[n / 3] = std::numeric_limits<float>::quiet_NaN();
                    const std::vector<Stored> a{store_as(tb, "x", d, x, false)};
                    const std::string where = std::string(storage_name(d)) + " " + v + at;
                    // the reductions over 16-bit grads: double sums within tol of the plain
                    // scalar copy's (their order follows the vector width), the rest bitwise
                    auto reduction = [&](Stat& st, double tol, auto f) {
                        const std::array<double, 3> r = run_stored(rep, st, tb, where, a, align, [&](const KernelTable& t, void* const* p, float* const*) {
                            return f(t, p[0]);
                        });
                        if (tol == 0.0) ++st.bitwise_cases;
                        for (int k : {0, 1})
                            if (!same(r[k], r[2]) && !(std::fabs(r[k] - r[2]) <= tol * std::max(1.0, std::fabs(r[2]))))
                                rep.fail(st, where + ": " + (k == 0 ? tb.isa : tb.same_kind_name) + " gives " + num(r[k]) +
                                                 ", scalar " + num(r[2]));
                    };
                    reduction(probe, 0.0, [&](const KernelTable& t, void* p) { return t.nonfinite_probe[d](p, n, 2.0); });
                    reduction(squares16, 1e-12, [&](const KernelTable& t, void* p) { return t.sum_squares[d](p, n); });
                    reduction(abs16, 1e-12, [&](const KernelTable& t, void* p) { return t.sum_abs[d](p, n); });
                    reduction(pow16, 0.0, [&](const KernelTable& t, void* p) { return t.sum_abs_pow[d](p, n, 3.0); });
                    reduction(max16, 0.0, [&](const KernelTable& t, void* p) { return t.max_abs[d](p, n); });
                    // clipping in place: exact (one float32 multiply or clamp, rounded to nearest even)
                    Stored w = store_as(tb, "x", d, x, true);
                    w.exact = true;
                    run_stored(rep, scale16, tb, where, {w}, align, [&](const KernelTable& t, void* const* p, float* const*) {
                        t.scale[d](ScaleConfig{0.37}, p, n);
                        return 0.0;
                    });
                    run_stored(rep, clamp16, tb, where, {w}, align, [&](const KernelTable& t, void* const* p, float* const*) {
                        t.clamp[d](ClampConfig{-0.3, 0.7}, p, n);
                        return 0.0;
                    });
                }
            {
                Stored out{"bits", kFloat32, std::vector<std::uint8_t>(4 * n, 0), {}, true, true, n};
                run_stored(rep, bits, tb, at, {out}, align, [&](const KernelTable& t, void* const* p, float* const*) {
                    t.random_bits(5, 7, 3, kNearWrap + 200, static_cast<std::uint32_t*>(p[0]), n);
                    return 0.0;
                });
            }
            for (bool is_signed : {true, false}) {
                const DType q = is_signed ? kQuant8Signed : kQuant8Unsigned;
                Rng rng(seed++);
                // blocks of different magnitudes; one with an inf or NaN, one all zero, one of
                // float32 subnormals, one with values below the smallest code
                std::vector<float> x = conversion_values(rng, n);
                for (std::size_t b = 0; b * 256 < n; ++b) {
                    const std::size_t lo = b * 256, hi = std::min(n, lo + 256);
                    for (std::size_t i = lo; i < hi; ++i) {
                        const float r = static_cast<float>(rng.uniform(-1, 1));
                        switch (b % 6) {
                            case 0: x[i] = r * 3.0f; break;
                            case 1: x[i] = r * 1e-3f * (i % 7 ? 1.0f : 1e-6f); break;
                            case 2: break;  // conversion_values: edges, inf and NaN among them
                            case 3: x[i] = b % 2 ? 0.0f : -0.0f; break;
                            case 4: x[i] = r * 1e-39f; break;
                            default: x[i] = r * (i % 5 ? 1e-12f : 1.0f);
                        }
                    }
                }
                Stored in = store_as(tb, "in", kFloat32, x, false);
                Stored codes = store_as(tb, "codes", q, std::vector<float>(n, 0.0f), true);
                codes.exact = true;
                run_stored(rep, quant, tb, std::string(storage_name(q)) + at, {in, codes}, align,
                           [&](const KernelTable& t, void* const* p, float* const* s) {
                               t.quantize_blockwise(static_cast<const float*>(p[0]), static_cast<unsigned char*>(p[1]), s[1], n, is_signed);
                               return 0.0;
                           });
                // every code, with scales of all kinds (0, NaN, tiny, large)
                Stored in_codes = store_as(tb, "codes", q, std::vector<float>(n, 0.0f), false);
                for (std::size_t i = 0; i < n; ++i) in_codes.bytes[i] = static_cast<std::uint8_t>(rng.uniform(0, 256));
                const float scale_kinds[] = {1.0f, 0.0f, std::numeric_limits<float>::quiet_NaN(), 1e-37f, 3e38f, 0.013f};
                for (std::size_t b = 0; b < in_codes.scales.size(); ++b) in_codes.scales[b] = scale_kinds[(b + n) % 6] * static_cast<float>(rng.uniform(1, 2));
                Stored out = store_as(tb, "out", kFloat32, std::vector<float>(n, 0.0f), true);
                out.exact = true;
                run_stored(rep, dequant, tb, std::string(storage_name(q)) + at, {in_codes, out}, align,
                           [&](const KernelTable& t, void* const* p, float* const* s) {
                               t.dequantize_blockwise(static_cast<const unsigned char*>(p[0]), s[0], static_cast<float*>(p[1]), n, is_signed);
                               return 0.0;
                           });
            }
        }
}

// ---- driver ------------------------------------------------------------------------------------

template <class T>
void check_all(Report& rep, const Tables& tb) {
    check_optimizers<T>(rep, tb);
    check_scale_clamp_stream<T>(rep, tb);
    check_reductions<T>(rep, tb);
    check_batchnorm<T>(rep, tb);
}

}  // namespace

int main(int argc, char** argv) {
    const std::vector<std::string> available = available_isas();
    std::vector<std::string> isas;
    for (int i = 1; i < argc; ++i) isas.push_back(argv[i]);
    if (isas.empty())
        for (const std::string& isa : available)
            if (isa != "scalar") isas.push_back(isa);
    std::string list;
    for (const std::string& isa : available) list += " " + isa;
    std::printf("ISAs compiled in and supported here:%s\n", list.c_str());
    if (isas.empty()) {
        std::printf("no ISA but scalar to compare: nothing tested\n");
        return 1;
    }

    set_isa("scalar");
    const KernelTable scalar = kernels();
    KernelTable scalar_fma{};
    scalar_fma.isa = "scalar_fma";
    fusedopt::scalar_fma::fill_table(scalar_fma);

    long failures = 0;
    for (const std::string& isa : isas) {
        try {
            set_isa(isa);
        } catch (const std::exception& e) {
            std::printf("%s\n", e.what());
            return 1;
        }
        const KernelTable table = kernels();
        const bool fused = fuses(isa);
        const Tables tb{isa, fused ? "scalar_fma" : "scalar", &table, fused ? &scalar_fma : &scalar, &scalar};
        const std::string also = fused ? " (bitwise: against scalar_fma, the scalar copy with a*b+c fused as " + isa + " fuses it)" : "";
        std::printf("\n%s against scalar%s:\n", isa.c_str(), also.c_str());
        const auto start = std::chrono::steady_clock::now();
        Report rep;
        check_all<float>(rep, tb);
        check_all<double>(rep, tb);
        check_mixed_optimizers(rep, tb);
        check_conversions(rep, tb);
        check_probe16_codec(rep, tb);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::printf("  %-19s %-5s %6s %8s %10s %9s %6s  %s\n", "kernel", "dtype", "cases", "bitwise", "max err", "tol",
                    "time", "worst case (err = max|diff| / max(1, max|scalar|))");
        for (const Stat& s : rep.stats)
            std::printf("  %-19s %-5s %6ld %8ld %10.3g %9.3g %5.1fs  %s%s\n", s.kernel.c_str(), s.dtype.c_str(), s.cases,
                        s.bitwise_cases, s.max_err, s.tol, s.seconds, s.max_err > 0 ? s.worst.c_str() : "",
                        s.failures ? ("  FAILED " + std::to_string(s.failures)).c_str() : "");
        std::printf("  %s: %s (%.1f s)\n", isa.c_str(), rep.failures ? "FAILED" : "all kernels agree", seconds);
        failures += rep.failures;
    }
    std::printf("\n%s\n", failures ? "FAILED" : "OK");
    return failures ? 1 : 0;
}
