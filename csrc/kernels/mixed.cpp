// The mixed-precision and 8-bit-state kernels' entries of the table (mixed.h has the driver; each
// optimizer's instantiation has a source of its own, mixed_adam.cpp, ...), and the random bits
// of stochastic rounding.
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "mixed.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {
namespace {

// The bits the stores of a stochastically rounded call add (random_block's, as uint32 < 65536)
void random_bits_of(std::uint64_t seed, std::uint64_t step, std::uint64_t tensor, std::uint64_t offset,
                    std::uint32_t* out, std::size_t n) {
    alignas(64) std::uint32_t random[kRandomBuffer];
    for (std::size_t lo = 0, len = 0; lo < n; lo += len) {
        const std::uint64_t index = offset + lo;
        len = block_length(n - lo, index);
        random_block(index, len, rounding_key(seed, step, tensor, index >> 32), random);
        std::copy_n(random + index % kRandomGroup, len, out + lo);
    }
}

}  // namespace

void register_mixed(KernelTable& t) {
    register_mixed_sgd(t);
    register_mixed_adagrad(t);
    register_mixed_rmsprop(t);
    register_mixed_adam(t);
    t.random_bits = random_bits_of;
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
