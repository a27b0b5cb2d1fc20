// adagrad's mixed-precision and 8-bit-state kernel (mixed.h)
#include "mixed.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {

FUSEDOPT_MIXED(adagrad, AdagradConfig, 3, false)  // state_sum: unsigned

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
