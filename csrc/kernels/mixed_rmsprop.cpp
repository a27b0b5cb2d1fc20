// rmsprop's mixed-precision and 8-bit-state kernel (mixed.h)
#include "mixed.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {

FUSEDOPT_MIXED(rmsprop, RmspropConfig, 5, false)  // square_avg: unsigned; momentum_buffer: signed; grad_avg: never 8-bit

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
