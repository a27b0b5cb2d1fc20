// One ISA's table of kernels: each kernel source registers its entries.
#include "../dispatch.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {

void register_optim(KernelTable&);
void register_mixed(KernelTable&);
void register_batchnorm(KernelTable&);
void register_stream(KernelTable&);
void register_reduce(KernelTable&);
void register_quantize(KernelTable&);

void fill_table(KernelTable& t) {
    register_optim(t);
    register_mixed(t);
    register_batchnorm(t);
    register_stream(t);
    register_reduce(t);
    register_quantize(t);
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
