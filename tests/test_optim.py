"""Fused optimizer kernels against the NumPy reference, on every ISA and both dtypes.

Tolerance: fusedopt and the reference compute the same operations in the same order and dtype;
the only difference is that ISAs with FMA round a*b+c once instead of twice. Each such step
moves a result by an ulp; over 12 steps, and through cancellations such as centered RMSprop's
square_avg - grad_avg**2, we see up to ~8 ulps of the array's largest magnitude. So arrays
must agree within 32 ulps of their largest magnitude (close()); between ISAs of the same FMA
kind, and between 1 and 2 threads, the results must be bitwise identical.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedopt
from conftest import assert_isas_agree, assert_matches_reference, placed
from fusedopt import reference


def assert_close(actual, expected, ulps=32):
    """|actual - expected| <= ulps * eps * max(1, max|expected|), elementwise (NaNs must match)."""
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0, where=np.isfinite(expected))))
    tol = ulps * np.finfo(expected.dtype).eps * scale
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol)


# optimizer -> the state arrays it may use (passed by keyword), and whether it takes `step`
STATE = {
    "sgd": ["momentum_buffers"],
    "adagrad": ["state_sums"],
    "rmsprop": ["square_avgs", "momentum_buffers", "grad_avgs"],
    "adam": ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"],
    "adamw": ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"],
}
TAKES_STEP = {"sgd", "adagrad", "adam", "adamw"}

CASES = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, weight_decay=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("sgd", dict(lr=0.05, momentum=0.5, weight_decay=1e-2, maximize=True, nesterov=True)),
    ("adagrad", dict()),
    ("adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1)),
    ("adagrad", dict(maximize=True, eps=1e-6)),
    ("rmsprop", dict()),
    ("rmsprop", dict(centered=True)),
    ("rmsprop", dict(momentum=0.9)),
    ("rmsprop", dict(centered=True, momentum=0.9, weight_decay=0.01)),
    ("rmsprop", dict(eps_inside_sqrt=True, alpha=0.9)),
    ("rmsprop", dict(maximize=True, lr=0.001)),
    ("adam", dict()),
    ("adam", dict(lr=0.01, weight_decay=0.1)),
    ("adam", dict(amsgrad=True)),
    ("adam", dict(decoupled_weight_decay=True, weight_decay=0.1)),
    ("adam", dict(maximize=True, amsgrad=True, weight_decay=0.01)),
    ("adam", dict(beta1=0.0, beta2=0.5, eps=1e-3)),
    ("adamw", dict()),
    ("adamw", dict(amsgrad=True, lr=0.01)),
]
CASE_IDS = [f"{name}-" + "-".join(f"{k}={v}" for k, v in opts.items()) for name, opts in CASES]

SIZES = [0, 1, 7, 15, 16, 17, 63, 1000]


def arrays(sizes, dtype, rng, unaligned=True):
    """Random arrays of the given sizes; every other one an unaligned view (a[1:])."""
    out = []
    for i, n in enumerate(sizes):
        a = rng.standard_normal(n + 1).astype(dtype)
        out.append(a[1:] if unaligned and i % 2 else a[:n].copy())
    return out


def make_problem(name, sizes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = arrays(sizes, dtype, rng)
    state = {}
    for s in STATE[name]:
        state[s] = [np.zeros_like(p) for p in params]
    if name == "adagrad":  # a positive initial accumulator exercises more than zeros
        state["state_sums"] = [np.abs(a) for a in arrays(sizes, dtype, rng)]
    grads = [arrays(sizes, dtype, rng) for _ in range(12)]
    return params, state, grads


def run(module, name, opts, params, state, grads_per_step, first_step=1):
    fn = getattr(module, name + "_")
    for step, grads in enumerate(grads_per_step, start=first_step):
        extra = {"step": step} if name in TAKES_STEP else {}
        fn(params, grads, **state, **opts, **extra)


def results(params, state):
    return [params] + [state[k] for k in sorted(state)]


def max_diff(actual, expected):
    diffs = [np.max(np.abs(a.astype(np.float64) - e)) for a, e in zip(actual, expected) if a.size]
    return max(diffs, default=0.0)


@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_matches_reference(isa, dtype, name, opts):
    params, state, grads = make_problem(name, SIZES, dtype)
    ref_params, ref_state = [p.copy() for p in params], {k: [a.copy() for a in v] for k, v in state.items()}
    run(fusedopt, name, opts, params, state, grads)
    run(reference, name, opts, ref_params, ref_state, grads)
    for got, want in zip(results(params, state), results(ref_params, ref_state)):
        print(f"{name} {opts} {isa} {dtype.__name__}: max diff {max_diff(got, want):.3g}")
        for g, w in zip(got, want):
            assert_close(g, w)


@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_isas_agree_bitwise(dtype, name, opts):
    """One kernel source: every ISA of the same FMA kind gives the same bits."""
    before = fusedopt.isa()
    by_isa = {}
    try:
        for isa in fusedopt.available_isas():
            fusedopt.set_isa(isa)
            params, state, grads = make_problem(name, SIZES, dtype)
            run(fusedopt, name, opts, params, state, grads)
            by_isa[isa] = results(params, state)
    finally:
        fusedopt.set_isa(before)
    assert_isas_agree(by_isa, lambda a, b: all(x.tobytes() == y.tobytes() for x, y in zip(a, b)))


@pytest.mark.parametrize("name", sorted(STATE))
def test_large_array_and_thread_count(isa, name, threads):
    """1,000,003 elements (cut across threads), against the reference and 1 vs 2 threads."""
    opts = {"lr": 0.01, "momentum": 0.9} if name == "sgd" else {}
    got = {}
    for n_threads in (1, 2):
        fusedopt.set_num_threads(n_threads)
        params, state, grads = make_problem(name, [1_000_003], np.float32, seed=1)
        run(fusedopt, name, opts, params, state, grads[:3])
        got[n_threads] = results(params, state)
    for a, b in zip(got[1], got[2]):
        assert a[0].tobytes() == b[0].tobytes()
    params, state, grads = make_problem(name, [1_000_003], np.float32, seed=1)
    run(reference, name, opts, params, state, grads[:3])
    for g, w in zip(got[2], results(params, state)):
        assert_close(g[0], w[0])


def test_single_array_and_list_agree():
    p1, s1, g1 = make_problem("adam", [33], np.float32)
    p2, s2, g2 = make_problem("adam", [33], np.float32)
    for step in (1, 2, 3):
        fusedopt.adam_(p1, g1[step], **s1, step=step)
        fusedopt.adam_(p2[0], g2[step][0], *[s2[k][0] for k in ("exp_avgs", "exp_avg_sqs")], step=step)
    assert p1[0].tobytes() == p2[0].tobytes()


def test_sgd_first_step_initializes_buffer():
    """torch: the momentum buffer starts as the first gradient, without dampening."""
    p = np.ones(5, np.float32)
    buf = np.full(5, np.nan, np.float32)  # contents ignored on step 1
    g = np.arange(5, dtype=np.float32)
    fusedopt.sgd_(p, g, buf, lr=0.1, momentum=0.9, dampening=0.5, step=1)
    np.testing.assert_array_equal(buf, g)
    np.testing.assert_allclose(p, 1 - 0.1 * g, rtol=1e-7)
    fusedopt.sgd_(p, g, buf, lr=0.1, momentum=0.9, dampening=0.5, step=2)
    np.testing.assert_allclose(buf, 0.9 * g + 0.5 * g, rtol=1e-6)


def test_adam_first_step_moves_each_param_by_lr():
    """Bias correction makes Adam's first step exactly lr * sign(g) (up to eps)."""
    p = np.zeros(100, np.float64)
    g = np.random.default_rng(0).standard_normal(100)
    fusedopt.adam_(p, g, np.zeros(100), np.zeros(100), step=1, lr=0.01, eps=0.0)
    np.testing.assert_allclose(p, -0.01 * np.sign(g), rtol=1e-15)


def test_hyperparameters_reach_the_kernel():
    """A change of each hyperparameter changes the result (none is silently ignored)."""
    def adam_after(**opts):
        params, state, grads = make_problem("adam", [64], np.float64)
        run(fusedopt, "adam", opts, params, state, grads[:3])
        return params[0]
    base = adam_after()
    for opts in [dict(lr=2e-3), dict(beta1=0.8), dict(beta2=0.99), dict(eps=1e-2), dict(weight_decay=0.5),
                 dict(amsgrad=True), dict(maximize=True)]:
        assert not np.array_equal(adam_after(**opts), base), opts


# ---- property tests -------------------------------------------------------------------------

HYPER = {
    "sgd": dict(lr=st.floats(0, 1), momentum=st.floats(0, 1), dampening=st.floats(0, 1),
                weight_decay=st.floats(0, 1), maximize=st.booleans()),
    "adagrad": dict(lr=st.floats(0, 1), lr_decay=st.floats(0, 1), weight_decay=st.floats(0, 1),
                    eps=st.floats(1e-10, 1), maximize=st.booleans()),
    "rmsprop": dict(lr=st.floats(0, 1), alpha=st.floats(0, 1), eps=st.floats(1e-8, 1), weight_decay=st.floats(0, 1),
                    momentum=st.floats(0, 1), centered=st.booleans(), maximize=st.booleans(),
                    eps_inside_sqrt=st.booleans()),
    "adam": dict(lr=st.floats(0, 1), beta1=st.floats(0, 0.999), beta2=st.floats(0, 0.9999), eps=st.floats(1e-8, 1),
                 weight_decay=st.floats(0, 1), amsgrad=st.booleans(), maximize=st.booleans(),
                 decoupled_weight_decay=st.booleans()),
}


@st.composite
def problems(draw):
    name = draw(st.sampled_from(sorted(HYPER)))
    opts = draw(st.fixed_dictionaries(HYPER[name]))
    if name == "sgd" and draw(st.booleans()) and opts["momentum"] > 0:
        opts.update(nesterov=True, dampening=0.0)
    if name == "rmsprop" and opts["centered"]:
        # centered's variance square_avg - grad_avg**2 is exactly 0 in exact arithmetic when
        # alpha = 0, so its sign (sqrt: NaN or not) is decided by rounding in any implementation
        opts["alpha"] = max(opts["alpha"], 0.5)
    sizes = draw(st.lists(st.integers(0, 70), min_size=1, max_size=4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return name, opts, sizes, dtype, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_property_matches_reference(problem):
    name, opts, sizes, dtype, seed = problem
    params, state, grads = make_problem(name, sizes, dtype, seed)
    # Hyperparameters near their limits amplify one rounding difference (e.g. alpha ~ 1 makes
    # sqrt(square_avg) tiny), so these random cases get a looser, still ulp-scale, tolerance,
    # plus 8x the reference's own rounding loss (assert_matches_reference: RMSprop, momentum 1,
    # lr 0, where the buffer sums steps of ~1e3 to 0.05).
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    wide = np.float64 if dtype == np.float32 else np.longdouble
    # Each step starts both from the reference's arrays: random hyperparameters also draw
    # unstable maps (RMSprop, lr 0.3, weight_decay 0.95, eps 6e-5: g + weight_decay * param near
    # 0 divided by ~eps), where an FMA's one-ulp difference in the first step grows ~10x a step,
    # and compounding it over steps would test the map's conditioning, not the kernel.
    for step in range(1, 4):
        ref_params, ref_state = [p.copy() for p in params], {k: [a.copy() for a in v] for k, v in state.items()}
        wide_params = [p.astype(wide) for p in params]
        wide_state = {k: [a.astype(wide) for a in v] for k, v in state.items()}
        wide_grads = [[g.astype(wide) for g in grads[step - 1]]]
        with np.errstate(all="ignore"):  # extreme hyperparameters may overflow in both
            run(fusedopt, name, opts, params, state, grads[step - 1:step], first_step=step)
            run(reference, name, opts, ref_params, ref_state, grads[step - 1:step], first_step=step)
            run(reference, name, opts, wide_params, wide_state, wide_grads, first_step=step)
        for got, want, wider in zip(results(params, state), results(ref_params, ref_state),
                                    results(wide_params, wide_state)):
            for g, w, x in zip(got, want, wider):
                assert_matches_reference(g, w, x, tol["rtol"], tol["atol"], f"{name} {opts}")
                g[...] = w


# ---- against torch.optim, when torch is importable --------------------------------------------

TORCH_CASES = [
    ("SGD", "sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD", "sgd", dict(lr=0.1, momentum=0.9, dampening=0.2)),
    ("Adagrad", "adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.01)),
    ("RMSprop", "rmsprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.01)),
    ("Adam", "adam", dict(lr=0.01, weight_decay=0.01, amsgrad=True)),
    ("AdamW", "adamw", dict(lr=0.01, weight_decay=0.1)),
]


@pytest.mark.parametrize("torch_name,name,opts", TORCH_CASES, ids=[c[0] + str(i) for i, c in enumerate(TORCH_CASES)])
def test_matches_torch(isa, torch_name, name, opts):
    torch = pytest.importorskip("torch")
    torch_opts = dict(opts)
    if "beta1" in opts or name.startswith("adam"):
        torch_opts["betas"] = (torch_opts.pop("beta1", 0.9), torch_opts.pop("beta2", 0.999))
    params, state, grads = make_problem(name, [1000, 17], np.float32)
    state = {k: [np.zeros_like(a) for a in v] for k, v in state.items()}  # torch starts from zeros
    tparams = [torch.tensor(p.copy()) for p in params]
    opt = getattr(torch.optim, torch_name)(tparams, foreach=False, **torch_opts)
    for step, g in enumerate(grads, start=1):
        for tp, tg in zip(tparams, g):
            tp.grad = torch.tensor(tg)
        opt.step()
        extra = {"step": step} if name in TAKES_STEP else {}
        getattr(fusedopt, name + "_")(params, g, **state, **opts, **extra)
    for p, tp in zip(params, tparams):
        print(f"{torch_name}: max diff vs torch {np.max(np.abs(p - tp.numpy())):.3g}")
        np.testing.assert_allclose(p, tp.numpy(), rtol=1e-5, atol=1e-6)


# ---- skip_if_nonfinite looks at the unscaled gradient --------------------------------------------

def one_step(name, p, g, state, **kw):
    extra = {"step": 1} if name in TAKES_STEP else {}
    return getattr(fusedopt, name + "_")(p, g, **state, lr=0.1, **extra, **kw)


@pytest.mark.parametrize("name", sorted(STATE))
@pytest.mark.parametrize("maximize", [False, True])
def test_skip_if_nonfinite_checks_the_unscaled_grads(isa, dtype, name, maximize):
    """A grad finite as given but inf once divided by grad_scale (0.5): the update would write
    NaN/inf, so the step is skipped (torch's GradScaler checks the unscaled grads). Checked at
    every position of a vector and of the tail, in a list of two arrays."""
    big = np.finfo(dtype).max * dtype(0.75)  # finite; twice it is not
    for n, where in [(40, 0), (40, 17), (40, 39), (3, 2)]:
        rng = np.random.default_rng(n + where)
        params = [rng.standard_normal(n).astype(dtype) for _ in range(2)]
        grads = [rng.standard_normal(n).astype(dtype) for _ in range(2)]
        grads[1][where] = -big if where % 2 else big
        state = {k: [np.zeros_like(p) for p in params] for k in STATE[name]}
        before = [a.tobytes() for a in params + [a for v in state.values() for a in v]]
        assert fusedopt.all_finite(grads) and not fusedopt.all_finite(grads, grad_scale=0.5)
        assert one_step(name, params, grads, state, grad_scale=0.5, skip_if_nonfinite=True,
                        maximize=maximize) is False
        assert [a.tobytes() for a in params + [a for v in state.values() for a in v]] == before
        # scaled by 1 / 0.75 instead, it stays finite: the step is taken, and writes finite numbers
        assert one_step(name, params, grads, state, grad_scale=0.75, skip_if_nonfinite=True,
                        maximize=maximize) is True
        assert all(np.isfinite(p).all() for p in params)


@pytest.mark.parametrize("name", sorted(STATE))
@pytest.mark.parametrize("maximize", [False, True])
def test_unscale_grads_writes_the_unscaled_grads(isa, dtype, name, maximize):
    """unscale_grads=True: grads become grad * (1 / grad_scale) (not negated by maximize), in the
    update's own pass, and the update is bitwise the one without it; a skipped step writes no
    grad; read-only grads, or no grad_scale, are refused before anything is written."""
    rng = np.random.default_rng(7)
    sizes = [40, 3, 17]
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [(rng.standard_normal(n) * 1024).astype(dtype) for n in sizes]
    state = {k: [np.zeros_like(p) for p in params] for k in STATE[name]}
    twin = ([p.copy() for p in params], [g.copy() for g in grads], {k: [a.copy() for a in v] for k, v in state.items()})
    expected = [g * dtype(1 / 3.0) for g in grads]
    assert one_step(name, params, grads, state, grad_scale=3.0, unscale_grads=True, maximize=maximize) is True
    assert one_step(name, twin[0], twin[1], twin[2], grad_scale=3.0, maximize=maximize) is True
    assert all(g.tobytes() == e.tobytes() for g, e in zip(grads, expected))
    assert all(p.tobytes() == q.tobytes() for p, q in zip(params, twin[0]))
    grads[2][16] = np.inf
    before = [a.tobytes() for a in grads]
    assert one_step(name, params, grads, state, grad_scale=3.0, unscale_grads=True, skip_if_nonfinite=True) is False
    assert [a.tobytes() for a in grads] == before
    grads[1].flags.writeable = False
    before = [a.tobytes() for a in params + grads]
    with pytest.raises(ValueError, match=r"grads\[1\] is read-only"):
        one_step(name, params, grads, state, grad_scale=3.0, unscale_grads=True)
    with pytest.raises(ValueError, match="needs grad_scale"):
        one_step(name, params, grads, state, unscale_grads=True)
    assert [a.tobytes() for a in params + grads] == before


@pytest.mark.parametrize("state_dtype", ["param", "bfloat16"])
def test_amsgrad_keeps_a_nan_of_max_exp_avg_sq(isa, dtype, state_dtype):
    """max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq) is torch.maximum: a NaN in either operand
    is the result (x86's max and its scalar copy drop a NaN first operand); at every position of a
    vector and of the tail, as the reference."""
    if state_dtype == "bfloat16" and dtype == np.float64:
        pytest.skip("float64 params keep float64 state")
    sdt = dtype if state_dtype == "param" else np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    for where in (0, 5, 16, 39):
        for nan_in in ("max_exp_avg_sqs", "exp_avg_sqs"):
            rng = np.random.default_rng(where)
            p = rng.standard_normal(40).astype(dtype)
            g = rng.standard_normal(40).astype(dtype)
            state = {k: np.abs(rng.standard_normal(40)).astype(sdt) for k in ("exp_avgs", "exp_avg_sqs",
                                                                               "max_exp_avg_sqs")}
            state[nan_in][where] = np.nan
            ref_p, ref_state = p.copy(), {k: v.astype(dtype) for k, v in state.items()}
            fusedopt.adam_(p, g, **state, step=3, lr=0.01, amsgrad=True)
            reference.adam_(ref_p, g, **ref_state, step=3, lr=0.01, amsgrad=True)
            assert np.isnan(p[where]) and np.isnan(ref_p[where])
            assert np.isnan(state["max_exp_avg_sqs"][where]) and np.isnan(ref_state["max_exp_avg_sqs"][where])
            assert np.isfinite(np.delete(p, where)).all()


def test_all_finite_grad_scale_is_checked():
    g = np.ones(4, np.float32)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="grad_scale"):
            fusedopt.all_finite(g, grad_scale=bad)
    # a grad_scale so small that 1 / grad_scale is inf in float32: every unscaled grad is inf or NaN
    assert not fusedopt.all_finite(g, grad_scale=1e-39)
    assert fusedopt.all_finite(g.astype(np.float64), grad_scale=1e-39)


@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 7), (40_000,), (2_200_001,)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.uint8])
@pytest.mark.parametrize("in_line", [0, 16, 40])
def test_zeros_like_takes_its_params_place_in_a_cache_line(shape, dtype, in_line):
    # The update kernels start their vectors on the param's first cache line (optim_loops.h,
    # Plain::head): state of the param's dtype sits at the param's offset within a line, so its
    # vectors are on lines too; state of another dtype starts on a line. Big arrays take their
    # own offsets (multiples of 64) within a huge page on top.
    param = placed(shape, in_line - in_line % np.dtype(dtype).itemsize, dtype, boundary=64)
    for fill in (0.0, 0.5):
        for state_dtype in (None, np.float32, np.float64):
            state = fusedopt.zeros_like(param, fill, state_dtype)
            expected_dtype = param.dtype if state_dtype is None else np.dtype(state_dtype)
            assert state.shape == param.shape and state.dtype == expected_dtype
            assert state.flags.c_contiguous and state.flags.writeable and not np.shares_memory(state, param)
            expected_in_line = param.ctypes.data % 64 if expected_dtype == param.dtype else 0
            assert state.ctypes.data % 64 == expected_in_line or state.size == 0  # (empty slices point anywhere)
            np.testing.assert_array_equal(state, np.full(shape, fill, expected_dtype))
    assert fusedopt.zeros_like([[1.0, 2.0]]).shape == (1, 2)


@pytest.mark.parametrize("in_line", [4, 16, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["adam_", "adamw_", "sgd_", "adagrad_", "rmsprop_"])
def test_results_do_not_depend_on_where_the_vectors_start(isa, name, dtype, in_line):
    # The kernels do the elements before the param's first cache line one at a time: the same
    # bits as the vectors give them, wherever the arrays start (each element is updated alone).
    # Arrays on a line (no head) against arrays in_line bytes into one.
    n = 1000
    itemsize = np.dtype(dtype).itemsize
    rng = np.random.default_rng(3)
    values = [rng.standard_normal(n).astype(dtype) for _ in range(6)]
    results = []
    for offset in (0, in_line - in_line % itemsize):
        arrays = []
        for k, v in enumerate(values):
            a = placed(n, offset, dtype, boundary=64)
            a[...] = np.abs(v) if k >= 3 else v  # second-moment state is >= 0
            arrays.append(a)
        p, g, s1, s2, s3, s4 = arrays
        np.maximum(s4, s2, out=s4)  # amsgrad's max_exp_avg_sq >= exp_avg_sq
        state = {"adam_": dict(exp_avgs=s1, exp_avg_sqs=s2, max_exp_avg_sqs=s4, amsgrad=True, step=3),
                 "adamw_": dict(exp_avgs=s1, exp_avg_sqs=s2, step=3),
                 "sgd_": dict(momentum_buffers=s1, momentum=0.9, nesterov=True),
                 "adagrad_": dict(state_sums=s3, step=3),
                 "rmsprop_": dict(square_avgs=s3, momentum_buffers=s1, grad_avgs=s2, momentum=0.9, centered=True)}[name]
        getattr(fusedopt, name)(p, g, lr=1e-2, weight_decay=1e-2, **state)
        results.append([a.copy() for a in arrays])
    for before, after in zip(*results):
        assert before.tobytes() == after.tobytes()
