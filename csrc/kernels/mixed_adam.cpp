// adam's mixed-precision and 8-bit-state kernel (mixed.h)
#include "mixed.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {

FUSEDOPT_MIXED(adam, AdamConfig, 5, true)  // exp_avg: signed; exp_avg_sq, max_exp_avg_sq: unsigned

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
