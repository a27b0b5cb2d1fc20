"""The thread pool: any thread count gives the same bits, Python threads may call kernels at
once, and idle workers sleep."""
import threading

import numpy as np
import pytest

import fusedopt
from conftest import run_python
from fusedopt import _core, reference
from test_optim import make_problem, results, run


@pytest.fixture(autouse=True)
def own_pool():
    """These tests are about fusedopt's own pool: where fusedopt.torch has been imported (by an
    earlier test) its regions run on torch's OpenMP threads (tests/test_fork.py tests those)."""
    before = _core._openmp_parallel()
    _core._set_openmp_parallel(0)
    yield
    _core._set_openmp_parallel(before)


def test_many_tensors_bitwise_equal_for_any_thread_count(threads):
    """A list of tensors of assorted sizes is cut at different points for 1, 2 and 3 threads."""
    sizes = [1, 70_001, 5, 300_000, 17, 120_000, 0, 65_536]
    got = []
    for n_threads in (1, 2, 3):
        fusedopt.set_num_threads(n_threads)
        params, state, grads = make_problem("adam", sizes, np.float32, seed=5)
        run(fusedopt, "adam", {"amsgrad": True}, params, state, grads[:3])
        got.append([a.tobytes() for arrays in results(params, state) for a in arrays])
    assert got[0] == got[1] == got[2]


def test_python_threads_call_kernels_at_once(threads):
    """The GIL is released in the kernels: 4 Python threads updating their own arrays at once
    (one holding the pool, the others running on their own threads) all get the reference result."""
    fusedopt.set_num_threads(2)
    problems = [make_problem("adam", [200_000, 3], np.float64, seed=s) for s in range(4)]
    expected = []
    for params, state, grads in problems:
        p, s = [x.copy() for x in params], {k: [x.copy() for x in v] for k, v in state.items()}
        run(reference, "adam", {}, p, s, grads[:4])
        expected.append(results(p, s))
    errors = []

    def work(i):
        try:
            params, state, grads = problems[i]
            run(fusedopt, "adam", {}, params, state, grads[:4])
        except Exception as e:  # reported below: an exception in a thread would be lost
            errors.append(e)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    for (params, state, _), want in zip(problems, expected):
        for got_arrays, want_arrays in zip(results(params, state), want):
            for g, w in zip(got_arrays, want_arrays):
                np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-13)


IDLE_SCRIPT = """
import time
import numpy as np
import fusedopt
fusedopt.set_num_threads(2)
p, g, m, v = (np.ones(1_000_000, np.float32) for _ in range(4))
fusedopt.adam_(p, g, m, v, step=1)  # wakes the worker
cpu0, wall0 = time.process_time(), time.perf_counter()
time.sleep(0.3)
print(time.process_time() - cpu0, time.perf_counter() - wall0)
"""


def test_idle_workers_sleep():
    """After a parallel call, the workers wait on a condition variable: no CPU is used while idle.
    In a new interpreter with no other library's threads: the process's CPU time counts every
    thread, and OpenBLAS's worker (NumPy's) spins for a while after it starts or works, as torch's
    OpenMP team does after a region (measured: 25-33 ms in 0.3 s, a fresh interpreter)."""
    proc = run_python(IDLE_SCRIPT, OPENBLAS_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr
    cpu, wall = map(float, proc.stdout.split())
    print(f"{cpu:.4f} s of CPU in {wall:.3f} s idle")
    assert cpu < 0.05 * wall, f"{cpu:.3f} s of CPU while idle"


def run_import(env_value):
    """Import fusedopt in a new interpreter with FUSEDOPT_NUM_THREADS=env_value; (exit code, output)."""
    proc = run_python("import fusedopt; print(fusedopt.get_num_threads())", FUSEDOPT_NUM_THREADS=env_value)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("value", ["abc", "0", "-3", "1.5", "2x", "99999999999", "1025"])
def test_bad_num_threads_variable_is_an_import_error(value):
    """Was ignored (abc, 0, -3) or overflowed to 1,215,752,191 threads (99999999999)."""
    code, out = run_import(value)
    assert code != 0 and "ImportError" in out and f"FUSEDOPT_NUM_THREADS={value!r}" in out, out


@pytest.mark.parametrize("value,threads", [("3", 3), (" 2 ", 2), ("1024", 1024)])
def test_num_threads_variable(value, threads):
    code, out = run_import(value)
    assert code == 0 and out.split() == [str(threads)], out


@pytest.mark.parametrize("n,exc", [(0, ValueError), (-1, ValueError), (1025, ValueError), (2**70, ValueError),
                                   (1.0, TypeError), ("2", TypeError), (True, TypeError), (None, TypeError)])
def test_set_num_threads_checks_its_argument(threads, n, exc):
    before = fusedopt.get_num_threads()
    with pytest.raises(exc, match="set_num_threads: n must be"):
        fusedopt.set_num_threads(n)
    assert fusedopt.get_num_threads() == before


def test_set_num_threads_takes_numpy_ints(threads):
    fusedopt.set_num_threads(np.int64(3))
    assert fusedopt.get_num_threads() == 3
