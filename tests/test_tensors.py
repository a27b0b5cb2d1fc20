"""torch CPU tensors in the functional API: zero-copy NumPy views of the tensors' own memory."""
import subprocess
import sys

import numpy as np
import pytest

import fusedopt
from fusedopt import reference

torch = pytest.importorskip("torch")


def test_adam_on_parameters_updates_their_memory():
    rng = np.random.default_rng(0)
    p0, g0 = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(1000).astype(np.float32)
    param = torch.nn.Parameter(torch.from_numpy(p0.copy()))  # requires_grad: .numpy() refuses it
    grad, exp_avg, exp_avg_sq = torch.from_numpy(g0.copy()), torch.zeros(1000), torch.zeros(1000)
    ptr = param.data_ptr()
    fusedopt.adam_([param], [grad], [exp_avg], [exp_avg_sq], step=1, lr=1e-2)
    ref = [p0.copy()], [g0.copy()], [np.zeros(1000, np.float32)], [np.zeros(1000, np.float32)]
    fusedopt.adam_(*ref, step=1, lr=1e-2)
    assert param.data_ptr() == ptr
    np.testing.assert_array_equal(param.detach().numpy(), ref[0][0])
    np.testing.assert_array_equal(exp_avg_sq.numpy(), ref[3][0])


@pytest.mark.parametrize("bad, error, message", [
    (lambda g: g.to(torch.int32), TypeError, "grads has dtype int32"),
    (lambda g: torch.ones(20)[::2], ValueError, "grads is not C-contiguous"),
    (lambda g: torch.ones(10, device="meta"), TypeError, "grads: fusedopt runs on CPU tensors; got a tensor on meta"),
    (lambda g: torch.ones(10).to_sparse(), TypeError, "grads: fusedopt takes dense tensors"),
    (lambda g: torch.ones(10, dtype=torch.complex64), TypeError, "grads has dtype (torch.)?complex64"),
])
def test_bad_tensors_raise_and_write_nothing(bad, error, message):
    param, grad, buf = torch.ones(10), torch.ones(10), torch.zeros(10)
    with pytest.raises(error, match=message):
        fusedopt.sgd_(param, bad(grad), buf, lr=0.1, momentum=0.9)
    assert torch.equal(param, torch.ones(10)) and torch.equal(buf, torch.zeros(10))


def test_overlapping_views_of_one_tensor_are_refused():
    storage = torch.zeros(20)
    with pytest.raises(ValueError, match="overlap in memory"):
        fusedopt.sgd_(storage[:10], torch.ones(10), storage[5:15], lr=0.1, momentum=0.9)


def test_batchnorm_forward_takes_tensors():
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    y, mean, invstd = fusedopt.batchnorm_forward(x)
    y_ref, *_ = reference.batchnorm_forward(x.numpy())
    print("max diff", np.abs(y - y_ref).max())
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)


# Run in a fresh process, so that its peak RSS is this test's: a 1 GiB float32 param and its 1 GiB
# grad are made and touched first, then updated in place by the functional API and by
# fusedopt.torch.SGD. Prints the peak RSS (MiB) after the tensors, after each update, and the
# update's result at every MiB.
_PEAK_RSS_SCRIPT = """
import resource, sys
import torch
import fusedopt
import fusedopt.torch

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux

n = 1 << 28  # float32: 1 GiB
param = torch.nn.Parameter(torch.full((n,), 1.0))
param.grad = torch.full((n,), 0.5)
ptr = param.data_ptr()
optimizer = fusedopt.torch.SGD([param], lr=0.5)  # first: torch's Optimizer imports ~70 MiB of modules
before = peak_mib()
fusedopt.sgd_(param, param.grad, lr=0.5)  # 1 - 0.5 * 0.5
after_functional = peak_mib()
optimizer.step()  # 0.75 - 0.5 * 0.5
after_step = peak_mib()
assert param.data_ptr() == ptr
print(before, after_functional, after_step, *param.detach()[:: 1 << 18].unique().tolist())
"""


def test_a_1gib_tensor_is_updated_without_raising_peak_rss():
    # ~10 s here (making and touching 2 GiB, two passes over them); the timeout bounds a stuck run
    result = subprocess.run([sys.executable, "-c", _PEAK_RSS_SCRIPT], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    before, after_functional, after_step, *values = map(float, result.stdout.split())
    print(f"peak RSS: {before:.0f} MiB with the tensors, {after_functional:.0f} after sgd_, {after_step:.0f} after "
          "SGD.step()")
    assert before > 2048  # the tensors themselves are in it: the measure sees them
    # a copy of the param (or the grad) would add 1024 MiB; the kernels' own memory is a few MiB
    assert after_functional - before < 64
    assert after_step - before < 64
    assert values == [0.5]


def test_written_tensors_tell_autograd():
    """A functional call that writes torch tensors in place bumps their autograd version, as an
    in-place torch op does: a graph that saved one raises at backward instead of differentiating
    at the new values (no bump for arrays not written, nor for a skipped step)."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    y = (w * w).sum()
    fusedopt.clip_grad_value_(w, 0.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    p, g, m, v = torch.ones(3), torch.ones(3), torch.zeros(3), torch.zeros(3)
    fusedopt.adamw_(p, g, m, v, step=1, lr=0.1)
    assert (p._version, m._version, v._version, g._version) == (1, 1, 1, 0)
    fusedopt.adamw_(p, g * float("nan"), m, v, step=2, lr=0.1, skip_if_nonfinite=True)
    assert p._version == 1
    # batch norm's out= tensors as torch's out= ops; its running statistics as torch's batch_norm: no bump
    x, out, running = torch.randn(4, 3), torch.empty(4, 3), [torch.zeros(3), torch.ones(3)]
    _, save_mean, save_invstd = fusedopt.batchnorm_forward(x, None, None, *running, out=out)
    dx = torch.empty(4, 3)
    fusedopt.batchnorm_backward(torch.ones(4, 3), x, None, save_mean, save_invstd, out=dx)
    assert (out._version, dx._version, running[0]._version, running[1]._version) == (1, 1, 0, 0)


def test_zeros_like_takes_tensors():
    """fusedopt.zeros_like of a tensor (one that requires grad, a bfloat16 one): an ndarray of its
    shape and dtype, usable as state beside the tensor."""
    p = torch.nn.Parameter(torch.ones(5))
    state = [fusedopt.zeros_like(p), fusedopt.zeros_like(p)]
    assert type(state[0]) is np.ndarray and state[0].dtype == np.float32 and state[0].shape == (5,)
    assert str(fusedopt.zeros_like(torch.ones(2, 3, dtype=torch.bfloat16)).dtype) == "bfloat16"
    fusedopt.adamw_(p, torch.ones(5), *state, step=1, lr=0.1)
    assert float(p.detach()[0]) < 1.0
