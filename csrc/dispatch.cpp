#include "dispatch.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <stdexcept>

// Each ISA's copy of the kernels fills its table (csrc/kernels/table.cpp, compiled per ISA).
#define FUSEDOPT_DECLARE_ISA(ns) \
    namespace fusedopt { namespace ns { void fill_table(KernelTable&); } }
FUSEDOPT_DECLARE_ISA(scalar)
#ifdef FUSEDOPT_HAVE_SSE2
FUSEDOPT_DECLARE_ISA(sse2)
#endif
#ifdef FUSEDOPT_HAVE_AVX2
FUSEDOPT_DECLARE_ISA(avx2)
#endif
#ifdef FUSEDOPT_HAVE_AVX512
FUSEDOPT_DECLARE_ISA(avx512)
#endif
#ifdef FUSEDOPT_HAVE_NEON
FUSEDOPT_DECLARE_ISA(neon)
#endif

namespace fusedopt {

CpuFeatures cpu_features_in_use;

namespace {

struct IsaEntry {
    const char* name;
    void (*fill)(KernelTable&);
    bool (*supported)();
};

bool always() { return true; }
#if defined(FUSEDOPT_HAVE_AVX2) || defined(FUSEDOPT_HAVE_AVX512)
// __builtin_cpu_supports also checks that the OS saves the wide registers (XGETBV). F16C (the
// float16 conversions of the avx2 and avx512 paths) came before AVX2 on every CPU, but is a
// separate CPUID bit: asked for, not assumed.
bool cpu_has_avx2() {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool cpu_has_avx512() {
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#endif
// AVX512_BF16, used by the avx512 kernels only: false in a build without them. Every build knows
// the name, so that FUSEDOPT_CPU_FEATURES_OFF=avx512bf16 is valid on any machine (the sanitizer
// build, which compiles only the ISAs its CPU runs, refused it where the CPU had no AVX-512).
bool cpu_has_avx512bf16() {
#ifdef FUSEDOPT_HAVE_AVX512
    return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
}

struct FeatureEntry {
    const char* name;
    bool CpuFeatures::*flag;
    bool (*supported)();
};
std::vector<FeatureEntry> features() {
    return {
        {"avx512bf16", &CpuFeatures::avx512bf16, cpu_has_avx512bf16},
    };
}

// What the CPU has, less FUSEDOPT_CPU_FEATURES_OFF
CpuFeatures detect_features() {
    CpuFeatures found;
    for (const FeatureEntry& f : features()) found.*f.flag = f.supported();
    const char* off = std::getenv("FUSEDOPT_CPU_FEATURES_OFF");
    std::string names = off ? off : "";
    for (std::size_t at = 0; at < names.size();) {
        const std::size_t comma = std::min(names.find(',', at), names.size());
        const std::string name = names.substr(at, comma - at);
        at = comma + 1;
        if (name.empty()) continue;
        bool known = false;
        std::string all;
        for (const FeatureEntry& f : features()) {
            all += (all.empty() ? "" : ", ") + std::string(f.name);
            if (name == f.name) {
                found.*f.flag = false;
                known = true;
            }
        }
        if (!known)
            throw std::invalid_argument("FUSEDOPT_CPU_FEATURES_OFF: unknown CPU feature '" + name +
                                        "'; known to this build: " + (all.empty() ? "none" : all));
    }
    return found;
}

// Worst first: the default is the last supported entry.
const IsaEntry kIsas[] = {
    {"scalar", scalar::fill_table, always},
#ifdef FUSEDOPT_HAVE_SSE2
    {"sse2", sse2::fill_table, always},
#endif
#ifdef FUSEDOPT_HAVE_NEON
    {"neon", neon::fill_table, always},
#endif
#ifdef FUSEDOPT_HAVE_AVX2
    {"avx2", avx2::fill_table, cpu_has_avx2},
#endif
#ifdef FUSEDOPT_HAVE_AVX512
    {"avx512", avx512::fill_table, cpu_has_avx512},
#endif
};
constexpr std::size_t kNumIsas = sizeof(kIsas) / sizeof(kIsas[0]);

struct Tables {
    KernelTable table[kNumIsas];
    Tables() {
        cpu_features_in_use = detect_features();
        for (std::size_t i = 0; i < kNumIsas; ++i) {
            table[i] = KernelTable{};
            table[i].isa = kIsas[i].name;
            // fill() is compiled for its ISA too: even storing the pointers may use its instructions
            if (kIsas[i].supported()) kIsas[i].fill(table[i]);
        }
    }
};

const Tables& tables() {
    static const Tables t;
    return t;
}

const KernelTable* best() {
    const KernelTable* t = nullptr;
    for (std::size_t i = 0; i < kNumIsas; ++i)
        if (kIsas[i].supported()) t = &tables().table[i];
    return t;
}

std::atomic<const KernelTable*> active{nullptr};

}  // namespace

std::vector<std::string> cpu_features() {
    tables();
    std::vector<std::string> names;
    for (const FeatureEntry& f : features())
        if (cpu_features_in_use.*f.flag) names.push_back(f.name);
    return names;
}

std::vector<std::string> available_isas() {
    std::vector<std::string> names;
    for (std::size_t i = 0; i < kNumIsas; ++i)
        if (kIsas[i].supported()) names.push_back(kIsas[i].name);
    return names;
}

void set_isa(const std::string& name) {
    for (std::size_t i = 0; i < kNumIsas; ++i) {
        if (name == kIsas[i].name && kIsas[i].supported()) {
            active.store(&tables().table[i]);
            return;
        }
    }
    std::string usable;
    for (const std::string& n : available_isas()) usable += (usable.empty() ? "" : ", ") + n;
    bool compiled = false;
    for (std::size_t i = 0; i < kNumIsas; ++i) compiled |= (name == kIsas[i].name);
    throw std::invalid_argument("ISA '" + name + "' is " +
                                (compiled ? "not supported by this CPU" : "unknown or not compiled into this build") +
                                "; usable here: " + usable);
}

const KernelTable& kernels() {
    const KernelTable* t = active.load(std::memory_order_relaxed);
    if (t == nullptr) {
        t = best();
        active.store(t);
    }
    return *t;
}

}  // namespace fusedopt
