"""A process forked after multi-threaded calls gets a working thread pool of its own.

Each case runs a script in a new session (its own process group) with a timeout: a child that
hangs in the thread pool fails the test and is killed with all its processes, instead of
hanging the test run.
"""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import without_fusedopt_settings

TIMEOUT = 60  # seconds for a whole script; each takes ~1 s when nothing hangs

# Shared by every script: a 2-thread SGD call on 1M floats (8 tasks of 131072 elements, so both
# threads take part), its result as a digest, and the number of threads the process has.
COMMON = """
import hashlib, os, sys, time
import numpy as np
import fusedopt

N = 1 << 20

def sgd_digest(seed):
    rng = np.random.default_rng(seed)
    p, g, buf = (rng.standard_normal(N).astype(np.float32) for _ in range(3))
    for _ in range(3):
        fusedopt.sgd_(p, g, buf, lr=0.1, momentum=0.9)
    return hashlib.sha256(p.tobytes() + buf.tobytes()).hexdigest()

def threads_in_process():
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None

# fork; the child exits with 0 when check() is true (else 3, or 1 if it raised); the parent
# waits for it and asserts that
def in_child(check):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if check() else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    return True

def one_thread_digest(seed):
    before = fusedopt.get_num_threads()
    fusedopt.set_num_threads(1)
    try:
        return sgd_digest(seed)
    finally:
        fusedopt.set_num_threads(before)
"""


def run_script(tmp_path, body):
    """Run COMMON + body as a file (spawn and forkserver re-import the main module by its path);
    returns its stdout. Fails on a non-zero exit or on the timeout, killing its process group."""
    script = tmp_path / "script.py"
    script.write_text(COMMON + textwrap.dedent(body))
    env = without_fusedopt_settings(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and any child it forked
        out, err = proc.communicate()
        pytest.fail(f"timed out after {TIMEOUT} s (a forked child hung?)\nstdout: {out}\nstderr: {err}")
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstdout: {out}\nstderr: {err}"
    return out


pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def test_forked_child_runs_multithreaded_calls(tmp_path):
    """The parent's worker is asleep on the pool's condition variable when the process forks; the
    child's calls (several, each waking its workers) return, give the 1-thread result, and run on
    2 threads."""
    out = run_script(tmp_path, """
        fusedopt.set_num_threads(2)
        want = one_thread_digest(1)
        assert sgd_digest(1) == want
        time.sleep(0.2)  # the worker goes back to sleep
        in_child(lambda: fusedopt.get_num_threads() == 2 and all(sgd_digest(1) == want for _ in range(5))
                 and threads_in_process() in (None, 2))  # the caller and one new worker
        assert sgd_digest(1) == want  # the parent's pool still works
        print("ok")
    """)
    assert out.strip() == "ok"


def test_fork_of_a_fork(tmp_path):
    """A child's own pool survives the next fork too (the handler is registered once, runs in every child)."""
    out = run_script(tmp_path, """
        fusedopt.set_num_threads(2)
        want = one_thread_digest(2)
        assert sgd_digest(2) == want
        def child():
            assert sgd_digest(2) == want
            time.sleep(0.1)
            return in_child(lambda: sgd_digest(2) == want and sgd_digest(2) == want) and sgd_digest(2) == want
        in_child(child)
        print("ok")
    """)
    assert out.strip() == "ok"


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_pool(tmp_path, method):
    """multiprocessing.Pool workers (what DataLoader workers and ProcessPoolExecutor do) make
    multi-threaded calls after the parent made some, with every start method."""
    out = run_script(tmp_path, f"""
        import multiprocessing as mp

        def work(seed):
            inherited = fusedopt.get_num_threads()
            fusedopt.set_num_threads(2)
            return [sgd_digest(seed) for _ in range(3)], inherited

        if __name__ == "__main__":
            fusedopt.set_num_threads(2)
            seeds = [3, 4, 5, 6]
            want = [one_thread_digest(s) for s in seeds]
            assert [sgd_digest(s) for s in seeds] == want
            time.sleep(0.1)
            with mp.get_context({method!r}).Pool(2) as pool:
                got = pool.map(work, seeds)
            assert [digests for digests, _ in got] == [[w] * 3 for w in want], got
            if {method!r} == "fork":  # a forked worker keeps the parent's thread count
                assert all(n == 2 for _, n in got), got
            print("ok")
    """)
    assert out.strip() == "ok"


# fusedopt.torch runs fusedopt's regions on torch's libgomp team (fusedopt.torch.use_torch_threads).
TORCH_TEAM = """
import torch
import fusedopt.torch
from fusedopt import _core

torch.set_num_threads(2)
fusedopt.set_num_threads(2)
if not fusedopt.torch.use_torch_threads():
    print("skip: torch's parallel backend is not libgomp")
    sys.exit(0)
torch.ones(1 << 22).add_(1)  # a region of torch's: its team of 2 (the caller and one worker) exists
"""


def run_torch_script(tmp_path, body):
    pytest.importorskip("torch")
    out = run_script(tmp_path, TORCH_TEAM + textwrap.dedent(body))
    if out.startswith("skip:"):
        pytest.skip(out.strip())
    return out


def test_regions_run_on_torchs_openmp_threads(tmp_path):
    """With torch's threads in use a 2-thread call adds no thread to the process (its region runs
    on torch's team) and gives the 1-thread result; back on fusedopt's pool the pool's worker
    appears."""
    out = run_torch_script(tmp_path, """
        want = one_thread_digest(7)
        before = threads_in_process()
        assert all(sgd_digest(7) == want for _ in range(3))
        on_torch_team = threads_in_process()
        fusedopt.torch.use_torch_threads(False)
        assert _core._openmp_parallel() == 0
        assert sgd_digest(7) == want
        print(before, on_torch_team, threads_in_process())
    """)
    if out.split()[0] == "None":
        pytest.skip("needs Linux's /proc/self/task")
    before, on_torch_team, on_pool = map(int, out.split())
    assert on_torch_team == before and on_pool == before + 1, out


def test_forked_child_leaves_torchs_openmp_threads(tmp_path):
    """libgomp's team does not survive fork: a child forked after regions ran on it runs its own
    multi-threaded calls on a pool of its own, and the parent stays on torch's team."""
    out = run_torch_script(tmp_path, """
        want = one_thread_digest(8)
        assert sgd_digest(8) == want
        in_child(lambda: _core._openmp_parallel() == 0 and all(sgd_digest(8) == want for _ in range(3)))
        assert _core._openmp_parallel() != 0 and sgd_digest(8) == want
        print("ok")
    """)
    assert out.strip() == "ok"


def test_small_batch_norm_on_torchs_team_gives_the_one_thread_bits(tmp_path):
    """On torch's team small batch-norm calls run on 2 threads too (batchnorm_tiles.h, run_tasks),
    and a tile of whole rows of one block is cut into a tile of whole channels per thread (Plan):
    forward and backward give the 1-thread bits."""
    out = run_torch_script(tmp_path, """
        rng = np.random.default_rng(9)
        for shape in [(8, 512, 7, 7), (16, 64, 9, 9), (256, 1024), (64, 70, 3, 3), (98, 517)]:
            x, dy = (rng.standard_normal(shape).astype(np.float32) + 3 for _ in range(2))
            c = shape[1]
            weight, bias = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
            got = []
            for threads in (1, 2):
                fusedopt.set_num_threads(threads)
                running_mean, running_var = np.zeros(c, np.float32), np.ones(c, np.float32)
                y, mean, invstd = fusedopt.batchnorm_forward(x, weight, bias, running_mean, running_var)
                dx, dweight, dbias = fusedopt.batchnorm_backward(dy, x, weight, mean, invstd)
                arrays = (y, mean, invstd, running_mean, running_var, dx, dweight, dbias)
                got.append(b"".join(a.tobytes() for a in arrays))
            assert got[0] == got[1], shape
        print("ok")
    """)
    assert out.strip() == "ok"
