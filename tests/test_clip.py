"""Gradient norms, clipping, grad_scale and skip_if_nonfinite."""
import ml_dtypes
import numpy as np
import pytest

import fusedopt
from conftest import placed
from test_errors import snapshot


def grads_list(dtype, sizes=(0, 1, 7, 100, 70001), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dtype) for n in sizes]


def numpy_norm(grads, p):
    flat = np.concatenate([g.ravel().astype(np.float64) for g in grads])
    return float(np.max(np.abs(flat))) if np.isinf(p) else float(np.sum(np.abs(flat) ** p) ** (1 / p))


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, float("inf")])
def test_grad_norm_matches_numpy(isa, dtype, p):
    grads = grads_list(dtype)
    got, want = fusedopt.grad_norm(grads, p), numpy_norm(grads, p)
    print(f"norm {p} {isa}: rel diff {abs(got - want) / want:.2g}")
    assert got == pytest.approx(want, rel=1e-12)  # float64 sums either way: order-only differences


def test_float32_norm_survives_overflowing_squares():
    g = np.array([3e30, 4e30], np.float32)  # squares overflow float32, not float64
    assert fusedopt.grad_norm(g) == pytest.approx(5e30, rel=1e-7)


@pytest.mark.parametrize("p", [1.0, 2.0, float("inf")])
def test_nonfinite_norms(dtype, p):
    g = grads_list(dtype, (50,))
    g[0][7] = np.inf
    assert fusedopt.grad_norm(g, p) == np.inf
    g[0][9] = np.nan
    assert np.isnan(fusedopt.grad_norm(g, p))


def test_norm_is_the_same_for_any_thread_count(threads):
    grads = grads_list(np.float32, (3_000_001, 5, 200_000))
    fusedopt.set_num_threads(1)
    one = fusedopt.grad_norm(grads)
    fusedopt.set_num_threads(2)
    assert fusedopt.grad_norm(grads) == one  # bitwise: fixed blocks, combined in order


@pytest.mark.parametrize("max_norm", [0.5, 1e6, float("inf")])  # inf: the norm only, as torch users call it
def test_clip_grad_norm(isa, dtype, max_norm):
    grads = grads_list(dtype)
    original = [g.copy() for g in grads]
    total = fusedopt.clip_grad_norm_(grads, max_norm)
    assert total == pytest.approx(numpy_norm(original, 2.0), rel=1e-12)
    coef = min(1.0, max_norm / (total + 1e-6))
    for g, w in zip(grads, [g * dtype(coef) for g in original]):
        np.testing.assert_array_equal(g, w)  # one multiply by the same factor: exact


HALF = [np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)]


@pytest.mark.parametrize("half", HALF, ids=["bf16", "f16"])
def test_16bit_grads_norms_and_clipping(isa, threads, half):
    """bfloat16 / float16 grads (a low-precision backward) are computed on as float32, as the
    updates compute on them: norms of the exact widened values (float64 sums), clipping's product
    and clamp in float32 rounded to nearest even; the same bits on any thread count."""
    grads = grads_list(half, (0, 1, 7, 100, 70001, 3000))
    for p in (1.0, 2.0, 3.0, float("inf")):
        assert fusedopt.grad_norm(grads, p) == pytest.approx(numpy_norm(grads, p), rel=1e-12)
    for nthreads in (1, 2):
        fusedopt.set_num_threads(nthreads)
        clipped = [g.copy() for g in grads]
        total = fusedopt.clip_grad_norm_(clipped, 1.0)
        coef = np.float32(1.0 / (total + 1e-6))
        for g, c in zip(grads, clipped):
            assert np.array_equal((g.astype(np.float32) * coef).astype(half).view(np.uint16), c.view(np.uint16))
        clamped = [g.copy() for g in grads]
        fusedopt.clip_grad_value_(clamped, 0.3)
        for g, c in zip(grads, clamped):
            assert np.array_equal(np.clip(g.astype(np.float32), -0.3, 0.3).astype(half).view(np.uint16),
                                  c.view(np.uint16))
    grads[4][5000] = np.inf
    assert fusedopt.grad_norm(grads) == np.inf and not fusedopt.all_finite(grads)
    grads[4][9] = np.nan
    assert np.isnan(fusedopt.grad_norm(grads)) and np.isnan(fusedopt.grad_norm(grads, float("inf")))
    with pytest.raises(TypeError, match=r"grads\[1\] has dtype float32 but grads\[0\] has"):
        fusedopt.grad_norm([grads[0], np.ones(3, np.float32)])


def test_clip_grad_norm_matches_torch(isa):
    torch = pytest.importorskip("torch")
    grads = grads_list(np.float32)
    tgrads = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for t, g in zip(tgrads, grads):
        t.grad = torch.from_numpy(g.copy())
    want_total = torch.nn.utils.clip_grad_norm_(tgrads, 1.0)
    total = fusedopt.clip_grad_norm_(grads, 1.0)
    assert total == pytest.approx(float(want_total), rel=1e-6)
    for g, t in zip(grads, tgrads):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_clip_grad_norm_nonfinite():
    grads = grads_list(np.float32, (10, 20))
    grads[1][3] = np.nan
    before = snapshot(grads)
    with pytest.raises(RuntimeError, match="non-finite"):
        fusedopt.clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)
    assert snapshot(grads) == before
    assert np.isnan(fusedopt.clip_grad_norm_(grads, 1.0))
    assert np.all(np.isnan(grads[0]))  # scaled by a NaN factor, as torch does


@pytest.mark.parametrize("clip_value", [0.5, float("inf")])  # inf: no limit, as torch
def test_clip_grad_value(isa, dtype, clip_value):
    grads = grads_list(dtype)
    grads[2][3] = np.nan
    grads[1][0] = np.inf
    want = [np.clip(g, -clip_value, clip_value) for g in grads]
    fusedopt.clip_grad_value_(grads, clip_value)
    for g, w in zip(grads, want):
        np.testing.assert_array_equal(g, w)  # NaN stays NaN, as with np.clip / torch.clamp_


@pytest.mark.parametrize("call,match", [
    (lambda g: fusedopt.clip_grad_norm_(g, -1.0), "max_norm"),
    (lambda g: fusedopt.clip_grad_norm_(g, float("nan")), "max_norm"),
    (lambda g: fusedopt.clip_grad_value_(g, float("nan")), "clip_value"),
    (lambda g: fusedopt.clip_grad_norm_(g, 1.0, norm_type=0.0), "norm_type"),
    (lambda g: fusedopt.clip_grad_norm_(g, 1.0, norm_type=float("nan")), "norm_type"),
    (lambda g: fusedopt.clip_grad_value_(g, -1.0), "clip_value"),
    (lambda g: fusedopt.clip_grad_norm_(g + [g[0][::2]], 1.0), "C-contiguous"),
    (lambda g: fusedopt.clip_grad_norm_(g + [g[0]], 1.0), "overlap"),
])
def test_clip_bad_input(call, match):
    grads = grads_list(np.float32, (10, 20))
    before = snapshot(grads)
    with pytest.raises(ValueError, match=match):
        call(grads)
    assert snapshot(grads) == before


def test_grad_scale_divides_the_gradient(isa, dtype):
    """grad_scale=s gives the same update as grads / s (exact for a power of two)."""
    rng = np.random.default_rng(3)
    p1 = rng.standard_normal(37).astype(dtype)
    g = rng.standard_normal(37).astype(dtype)
    p2, m1, v1, m2, v2 = p1.copy(), *(np.zeros_like(p1) for _ in range(4))
    assert fusedopt.adam_(p1, g * dtype(1024), m1, v1, step=1, grad_scale=1024.0) is True
    fusedopt.adam_(p2, g, m2, v2, step=1)
    np.testing.assert_array_equal(p1, p2)
    with pytest.raises(ValueError, match="grad_scale"):
        fusedopt.adam_(p1, g, m1, v1, step=2, grad_scale=0.0)


@pytest.mark.parametrize("name", ["sgd_", "adagrad_", "rmsprop_", "adam_", "adamw_"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_skip_if_nonfinite_writes_nothing(name, bad):
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(n).astype(np.float32) for n in (5, 70000)]
    grads = [rng.standard_normal(p.size).astype(np.float32) for p in params]
    grads[1][-1] = bad  # in the last tensor: nothing of the first may be written either
    state = [[np.abs(rng.standard_normal(p.size)).astype(np.float32) for p in params] for _ in range(2)]
    before = snapshot([params, state])
    fn = getattr(fusedopt, name)
    kwargs = {"lr": 0.1, "skip_if_nonfinite": True}
    if name in ("adagrad_", "adam_", "adamw_"):
        kwargs["step"] = 1
    args = (params, grads, *state[: 2 if name.startswith("adam") else 1])
    assert fn(*args, **kwargs) is False
    assert snapshot([params, state]) == before
    grads[1][-1] = 0.0
    assert fn(*args, **kwargs) is True
    assert snapshot([params, state]) != before


@pytest.mark.parametrize("in_line", [4, 16, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16, np.float16])
def test_clipping_does_not_depend_on_where_the_vectors_start(isa, dtype, in_line):
    # scale and clamp start their vectors on the grad's first cache line (reduce.cpp), the
    # elements before it one at a time: the same bits wherever the grad starts.
    itemsize = np.dtype(dtype).itemsize
    values = (np.random.default_rng(5).standard_normal(1000) * 3).astype(dtype)
    with_nan = values.copy()
    with_nan[7] = np.nan  # (clamped: NaN stays; a NaN norm would make every element NaN)
    clips = [(values, lambda g: fusedopt.clip_grad_norm_([g], 1.0)),
             (with_nan, lambda g: fusedopt.clip_grad_value_([g], 0.5))]
    results = []
    for offset in (0, in_line - in_line % itemsize):
        outs = []
        for start_values, clip in clips:
            g = placed(1000, offset, dtype, boundary=64)
            g[...] = start_values
            clip(g)
            outs.append(g.tobytes())
        results.append(outs)
    assert results[0] == results[1]


@pytest.mark.parametrize("in_line", [0, 4, 16, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16, np.float16])
def test_all_finite_sees_every_element_wherever_the_vectors_start(isa, dtype, in_line):
    # the probe does the elements before the grad's first cache line one at a time (reduce.cpp):
    # an inf or NaN there, in the vectors or in the tail is found
    itemsize = np.dtype(dtype).itemsize
    g = placed(300, in_line - in_line % itemsize, dtype, boundary=64)
    for k in [0, 1, 2, 5, 11, 15, 16, 17, 31, 32, 33, 63, 64, 150, 298, 299]:
        for bad in (np.inf, np.nan):
            g[...] = 1.0
            assert fusedopt.all_finite([g])
            g[k] = bad
            assert not fusedopt.all_finite([g]), (k, bad)
