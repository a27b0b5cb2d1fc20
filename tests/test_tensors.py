"""torch CPU tensors in the functional API: zero-copy NumPy views of the tensors' own memory."""
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
