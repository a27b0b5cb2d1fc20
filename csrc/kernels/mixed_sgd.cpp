// sgd's mixed-precision and 8-bit-state kernel (mixed.h)
#include "mixed.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {

FUSEDOPT_MIXED(sgd, SgdConfig, 3, true)  // momentum_buffer: signed

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
