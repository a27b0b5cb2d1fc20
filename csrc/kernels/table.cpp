// One ISA's table of kernels: each kernel source registers its entries.
#include "../dispatch.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {

void register_optim(KernelTable&);

void fill_table(KernelTable& t) {
    register_optim(t);
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
