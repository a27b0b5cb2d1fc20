// The 8-bit blockwise codec of quantize.h as standalone kernels: fp32 state -> codes + scales
// and back (fusedopt.quantize, QuantizedState.dequantize, checkpoint conversion, and the
// codec's own tests and speed measurement). The optimizers' blockwise driver uses
// decode_block/encode_block directly, without these.
#include <cstddef>
#include <cstdint>

#include "../dispatch.h"
#include "../simd/vec.h"
#include "quantize.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {
namespace {

// n elements from a block boundary: block b is in[b * kQuantBlock ..), the last may be partial
template <bool SIGNED>
void quantize_range(const float* in, std::uint8_t* codes, float* scales, std::size_t n) {
    for (std::size_t b = 0; b * kQuantBlock < n; ++b) {
        const std::size_t at = b * kQuantBlock, len = n - at < kQuantBlock ? n - at : kQuantBlock;
        scales[b] = encode_block<SIGNED>(in + at, codes + at, len);
    }
}

template <bool SIGNED>
void dequantize_range(const std::uint8_t* codes, const float* scales, float* out, std::size_t n) {
    for (std::size_t b = 0; b * kQuantBlock < n; ++b) {
        const std::size_t at = b * kQuantBlock, len = n - at < kQuantBlock ? n - at : kQuantBlock;
        decode_block<SIGNED>(codes + at, scales[b], out + at, len);
    }
}

void quantize_blockwise(const float* in, std::uint8_t* codes, float* scales, std::size_t n, bool is_signed) {
    if (is_signed)
        quantize_range<true>(in, codes, scales, n);
    else
        quantize_range<false>(in, codes, scales, n);
}

void dequantize_blockwise(const std::uint8_t* codes, const float* scales, float* out, std::size_t n, bool is_signed) {
    if (is_signed)
        dequantize_range<true>(codes, scales, out, n);
    else
        dequantize_range<false>(codes, scales, out, n);
}

}  // namespace

void register_quantize(KernelTable& t) {
    t.quantize_blockwise = quantize_blockwise;
    t.dequantize_blockwise = dequantize_blockwise;
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
