import numpy as np
import pytest

import fusedopt

# ISAs whose vectors fuse a*b+c (one rounding); the others round twice. Within each group every
# ISA must give bitwise the same results, since each kernel is one source compiled per ISA.
FMA_ISAS = {"avx2", "avx512", "neon"}


@pytest.fixture(params=fusedopt.available_isas())
def isa(request):
    """Run the test once on every ISA this machine supports, restoring the default after."""
    before = fusedopt.isa()
    fusedopt.set_isa(request.param)
    yield request.param
    fusedopt.set_isa(before)


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture
def threads():
    """Restore the thread count after a test that changes it."""
    before = fusedopt.get_num_threads()
    yield
    fusedopt.set_num_threads(before)
