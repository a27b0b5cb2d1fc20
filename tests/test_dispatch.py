"""ISA choice at import (FUSEDOPT_ISA), in-process switching, and the thread settings."""

import pytest

import fusedopt
from conftest import run_python


def test_default_is_the_best_available():
    r = run_python("import fusedopt; print(fusedopt.isa(), fusedopt.available_isas()[-1])")
    assert r.returncode == 0, r.stderr
    chosen, best = r.stdout.split()
    assert chosen == best


@pytest.mark.parametrize("name", fusedopt.available_isas())
def test_env_override_selects_isa(name):
    r = run_python("import fusedopt; print(fusedopt.isa())", FUSEDOPT_ISA=name)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == name


@pytest.mark.parametrize("name", ["bogus", "avx512", "neon", "AVX2"])
def test_env_override_unusable_is_an_import_error(name):
    if name in fusedopt.available_isas():
        pytest.skip(f"{name} is usable here")
    r = run_python("import fusedopt", FUSEDOPT_ISA=name)
    assert r.returncode == 1  # a Python exception, not a signal (illegal instruction)
    assert "ImportError" in r.stderr and "FUSEDOPT_ISA" in r.stderr and "usable here" in r.stderr


def test_available_isas_include_scalar_and_the_active_one():
    isas = fusedopt.available_isas()
    assert isas[0] == "scalar"
    assert fusedopt.isa() in isas


def test_set_isa_switches_in_process(isa):
    assert fusedopt.isa() == isa


def test_num_threads_env_and_setter(threads):
    r = run_python("import fusedopt; print(fusedopt.get_num_threads())", FUSEDOPT_NUM_THREADS="1")
    assert r.stdout.strip() == "1"
    r = run_python("import os, fusedopt; print(fusedopt.get_num_threads(), len(os.sched_getaffinity(0)))")
    threads_default, cpus = r.stdout.split()
    assert threads_default == cpus
    fusedopt.set_num_threads(3)
    assert fusedopt.get_num_threads() == 3
    with pytest.raises(ValueError, match="num_threads"):
        fusedopt.set_num_threads(0)


def cpu_flags():
    """The CPU's feature flags as Linux lists them, or None elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None


def test_cpu_features_detected_and_turned_off_by_env():
    """dispatch.cpp's detection of the optional features (AVX512_BF16): what the CPU has (as Linux
    reports it), less what FUSEDOPT_CPU_FEATURES_OFF names."""
    code = "from fusedopt import _core; print(','.join(_core.cpu_features()))"
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    found = [n for n in r.stdout.strip().split(",") if n]
    assert set(found) <= {"avx512bf16"}
    flags = cpu_flags()
    if flags is not None:
        assert ("avx512bf16" in found) == ("avx512_bf16" in flags and "avx512" in fusedopt.available_isas())
    r = run_python(code, FUSEDOPT_CPU_FEATURES_OFF="avx512bf16")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_cpu_features_off_unknown_name_is_an_error():
    r = run_python("from fusedopt import _core; _core.cpu_features()", FUSEDOPT_CPU_FEATURES_OFF="avx512bf16,bogus")
    assert r.returncode == 1
    assert "ValueError" in r.stderr and "unknown CPU feature 'bogus'" in r.stderr
    # and from the first kernel call, when nothing asked before
    code = "import numpy as np, fusedopt; x = np.ones(4, np.float32); fusedopt.sgd_(x, x.copy(), lr=0.1)"
    r = run_python(code, FUSEDOPT_CPU_FEATURES_OFF="bogus")
    assert r.returncode == 1
    assert "ValueError" in r.stderr and "FUSEDOPT_CPU_FEATURES_OFF" in r.stderr
