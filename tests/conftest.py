import os
import subprocess
import sys

import numpy as np
import pytest

import fusedopt

# ISAs whose vectors fuse a*b+c (one rounding); the others round twice. Within each group every
# ISA must give bitwise the same results, since each kernel is one source compiled per ISA.
FMA_ISAS = {"avx2", "avx512", "neon"}


def placed(shape, byte_offset, dtype=np.float32, boundary=4096):
    """An uninitialized C-contiguous array starting byte_offset bytes past a multiple of boundary
    (a 4 KiB page, or a 64-byte cache line): where an array starts changes the kernels' speed,
    never their results."""
    itemsize = np.dtype(dtype).itemsize
    n = int(np.prod(shape))
    buf = np.empty(n * itemsize + 2 * boundary, np.uint8)
    start = (byte_offset - buf.ctypes.data) % boundary
    view = buf[start:start + n * itemsize].view(dtype).reshape(shape)
    assert n == 0 or view.ctypes.data % boundary == byte_offset % boundary  # (empty slices point anywhere)
    return view


def without_fusedopt_settings(environ):
    """environ less every FUSEDOPT_* variable, for a child process whose settings are the test's
    alone, whatever the environment running the tests sets (FUSEDOPT_NUM_THREADS=1 made the
    thread-count test fail)."""
    return {k: v for k, v in environ.items() if not k.startswith("FUSEDOPT_")}


def run_python(code, **env):
    """Runs code in a new interpreter that imports this test run's fusedopt (PYTHONPATH: the
    tests' sys.path), with no FUSEDOPT_* setting but those in env; the CompletedProcess."""
    full_env = without_fusedopt_settings(os.environ)
    full_env.update(PYTHONPATH=os.pathsep.join(p for p in sys.path if p), **env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=60)


def assert_matches_reference(got, want, wider, rtol, atol, what):
    """got within rtol / atol of the reference's result want, plus, elementwise, 8x the
    reference's own rounding loss: want against wider, the same steps in a wider type (None:
    none). Where a result is a small difference of large terms, an FMA's one ulp of a term is
    many ulps of the result, and the reference loses as much. NaNs must match."""
    rounding = 0.0
    if wider is not None:
        with np.errstate(all="ignore"):
            rounding = np.nan_to_num(np.abs(want.astype(wider.dtype) - wider), nan=0.0, posinf=0.0).astype(np.float64)
    ok = np.isclose(got, want, rtol=rtol, atol=atol + 8 * rounding, equal_nan=True)
    assert ok.all(), f"{what}: index {np.flatnonzero(~ok)[:5]}: {got[~ok][:5]} != {want[~ok][:5]}"


def assert_isas_agree(by_isa, same):
    """by_isa: ISA -> the arrays a run produced on it. Within each group (fused multiply-add or
    not) every ISA's arrays must equal the first ISA's by `same` (bitwise, as the caller defines it)."""
    for fma in (True, False):
        group = [isa for isa in by_isa if (isa in FMA_ISAS) == fma]
        for isa in group[1:]:
            for a, b in zip(by_isa[group[0]], by_isa[isa]):
                assert same(a, b), f"{isa} differs from {group[0]}"


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
