// The table of kernel pointers, one table per ISA compiled in, and the choice among them.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "kernels/batchnorm.h"
#include "kernels/optim.h"

namespace fusedopt {

// An elementwise kernel over one chunk: arrays[k] points at element 0 of the chunk in the k-th
// array of the tensor (param, grad, then the optimizer's state in the order of its Config).
template <class Config>
using ElementwiseKernel = void (*)(const Config&, void* const* arrays, std::size_t n);

// DType: kernels/optim.h

// A mixed-precision optimizer kernel over one chunk (kernels/optim.h, MixedChunk).
template <class Config>
using MixedKernel = void (*)(const Config&, const MixedChunk&);

// Fills both dtype slots of a table entry from a kernel template: FUSEDOPT_REGISTER(t, adam)
// sets t.adam[kFloat32] = adam<float> and t.adam[kFloat64] = adam<double>.
#define FUSEDOPT_REGISTER(table, kernel)         \
    do {                                         \
        (table).kernel[kFloat32] = kernel<float>;  \
        (table).kernel[kFloat64] = kernel<double>; \
    } while (0)

// max(a, b), NaN if either is: max_abs's blocks combined (a NaN gradient makes torch's inf-norm NaN)
inline double max_keeping_nan(double a, double b) { return std::isnan(a) || std::isnan(b) ? NAN : std::max(a, b); }

struct KernelTable {
    const char* isa;
    ElementwiseKernel<SgdConfig> sgd[2];  // indexed by DType
    ElementwiseKernel<AdagradConfig> adagrad[2];
    ElementwiseKernel<RmspropConfig> rmsprop[2];
    ElementwiseKernel<AdamConfig> adam[2];
    // any storage dtypes, float32 math (mixed.h: the float32 loops over blocks)
    MixedKernel<SgdConfig> sgd_mixed;
    MixedKernel<AdagradConfig> adagrad_mixed;
    MixedKernel<RmspropConfig> rmsprop_mixed;
    MixedKernel<AdamConfig> adam_mixed;
    // out[j] = the 32 random bits of element offset + j of `tensor` (stochastic rounding)
    void (*random_bits)(std::uint64_t seed, std::uint64_t step, std::uint64_t tensor, std::uint64_t offset,
                        std::uint32_t* out, std::size_t n);
    void (*batchnorm_forward[2])(const BatchNormForwardArgs&);  // batchnorm_forward.cpp, indexed by DType
    void (*batchnorm_backward[2])(const BatchNormBackwardArgs&);
    ElementwiseKernel<StreamConfig> stream[2];  // the benchmark's bandwidth probe
    // reduce.cpp: one block of one array -> a double; combined in block order by reduce_blocks
    // (max_abs's with max_keeping_nan).
    // Gradients of every dtype an update takes: indexed by DType up to kFloat16.
    double (*sum_squares[4])(const void* x, std::size_t n);
    double (*sum_abs[4])(const void* x, std::size_t n);
    double (*nonfinite_probe[4])(const void* x, std::size_t n, double scale);  // NaN iff an x*scale is inf/NaN
    double (*max_abs[4])(const void* x, std::size_t n);
    double (*sum_abs_pow[4])(const void* x, std::size_t n, double p);
    ElementwiseKernel<ScaleConfig> scale[4];
    ElementwiseKernel<ClampConfig> clamp[4];
    // quantize.cpp: n float32 <-> 8-bit codes + one scale per kQuantBlock, from a block boundary
    void (*quantize_blockwise)(const float* in, unsigned char* codes, float* scales, std::size_t n, bool is_signed);
    void (*dequantize_blockwise)(const unsigned char* codes, const float* scales, float* out, std::size_t n, bool is_signed);
};

// Optional CPU features beyond an ISA's baseline, which that ISA's kernels use where the CPU has
// them. Detected in one place with the ISAs (dispatch.cpp), when the kernel tables are built,
// before any kernel runs; a feature named in the environment variable FUSEDOPT_CPU_FEATURES_OFF
// (comma-separated, e.g. "avx512bf16") is taken as absent, so that tests can run on this CPU the
// paths of the CPUs without it (an unknown name is an std::invalid_argument, from the first
// kernels() or cpu_features() call).
struct CpuFeatures {
    bool avx512bf16 = false;  // vcvtneps2bf16: the avx512 copy's float -> bfloat16 (simd/avx512.h)
};
extern CpuFeatures cpu_features_in_use;
// the names of the features in cpu_features_in_use
std::vector<std::string> cpu_features();

// ISAs compiled into this build that this CPU (and OS) can run, worst first.
std::vector<std::string> available_isas();
// Makes `name` the active table; throws std::invalid_argument naming the usable ones otherwise.
void set_isa(const std::string& name);
const KernelTable& kernels();

}  // namespace fusedopt
