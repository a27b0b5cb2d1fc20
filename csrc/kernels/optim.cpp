// The float32 and float64 optimizer kernels: the update loops of optim_loops.h over arrays of
// one type (Plain).
#include <cstddef>

#include "optim_loops.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {
namespace {

template <class T>
void sgd(const SgdConfig& c, void* const* a, std::size_t n) {
    sgd_arrays<T>(c, Plain<T>{a}, n);
}

template <class T>
void adagrad(const AdagradConfig& c, void* const* a, std::size_t n) {
    adagrad_arrays<T>(c, Plain<T>{a}, n);
}

template <class T>
void rmsprop(const RmspropConfig& c, void* const* a, std::size_t n) {
    rmsprop_arrays<T>(c, Plain<T>{a}, n);
}

template <class T>
void adam(const AdamConfig& c, void* const* a, std::size_t n) {
    adam_arrays<T>(c, Plain<T>{a}, n);
}

}  // namespace

void register_optim(KernelTable& t) {
    FUSEDOPT_REGISTER(t, sgd);
    FUSEDOPT_REGISTER(t, adagrad);
    FUSEDOPT_REGISTER(t, rmsprop);
    FUSEDOPT_REGISTER(t, adam);
}

}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
