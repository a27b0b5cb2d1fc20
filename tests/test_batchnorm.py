"""Batch normalization kernels against the float64 NumPy oracle (fusedopt.reference).

Tolerances (err = max|got - want| / max(1, max|want|), want computed in float64):
  float64: 1e-13. Both sides accumulate in float64 but in different orders (blocked two-pass +
           Chan merges vs NumPy's pairwise sums); on these shapes (<= 1.5e5 values per channel)
           they differ by <= ~6e-15 (measured), a 15x margin.
  float32: 1e-6 (~8 ulp of the largest value) for y and dx: the kernel rounds scale/shift (or
           a, k, c) to float32 once and then does 2-3 float32 operations per element (a few ulp
           of the result's magnitude), and the oracle's float64 result is itself rounded to
           float32; measured <= 1.5e-7 (~1 ulp). The same 1e-6 for the per-channel outputs:
           their sums add at most 16 terms per lane in float32 before float64 takes over, an
           error within ~16 ulp of the sum of the terms' absolute values. For the statistics
           the terms are deviations from a shift near the mean (measured <= 1.1e-7 of the
           largest value); dweight and dbias sum terms of both signs, so their error is taken
           relative to the sums of absolute values (abs_sums).
The stability tests use the issue's absolute bound (1e-4) on y; the measured error is ~7e-7.
"""
import gc

import numpy as np
import pytest

import fusedopt
from conftest import placed
from fusedopt import _core, reference
from fusedopt.batchnorm import batchnorm_backward, batchnorm_forward

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-6, np.float64: 1e-13}
TOL_CHANNEL = {np.float32: 1e-6, np.float64: 1e-13}
STREAM_MIN_BYTES = 8 << 20  # kStreamMinBytes (csrc/kernels/batchnorm.h)

# (shape, axis). Channel axis 1 with a long channel run (inner >= 32: the planar layout, one
# channel per tile), with a short one (the columns layout), channels-last, and shapes with
# many blocks, column chunks (inner > 8192) and parallel groups of blocks.
LAYOUTS = [
    ((6, 5), 1),  # (N, C)
    ((7, 4), -1),  # (N, C) spelled as channels-last
    ((4, 3, 7), 1),  # (N, C, L), short runs
    ((2, 3, 45), 1),  # (N, C, L), planar
    ((2, 3, 5, 6), 1),  # NCHW, inner 30: columns
    ((2, 4, 6, 7), 1),  # NCHW, inner 42: planar
    ((2, 3, 2, 2, 3), 1),  # NCDHW, columns
    ((2, 3, 2, 3, 6), 1),  # NCDHW, planar
    ((3, 7, 4), -1),  # (N, L, C)
    ((2, 5, 6, 3), -1),  # NHWC
    ((2, 2, 3, 4, 5), -1),  # NDHWC
    ((2000, 40), 1),  # columns, several row blocks
    ((40, 300), 1),  # columns, several tiles of channels
    ((70, 3, 33), 1),  # planar, several row blocks per channel
    ((2, 2, 90, 100), 1),  # planar, inner 9000 > 8192: column chunks
    ((64, 2, 64, 72), 1),  # planar, few channels: 2 groups of blocks (the split path: >= 2^18 per channel)
    ((8, 64, 32, 20), -1),  # channels-last, 2 groups of blocks
    ((12000, 6), 1),  # columns, rows shorter than 256 bytes and not whole vectors: several blocks
    ((8, 5, 7, 7), 1),  # planar, small channels summed in one go (a row tail each)
    ((16, 3, 64), 1),  # planar, small channels of whole vectors
]


def rel_err(got, want, scale=None):
    """max|got - want| / max(1, max|scale|), scale defaulting to want."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    scale = want if scale is None else np.asarray(scale, np.float64)
    return float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(scale)))))


def abs_sums(dy, x, save_mean, save_invstd, backward_kwargs):
    """The sums behind dweight and dbias taken over absolute values (float64): invstd * sum(|g| *
    |x - mean|) and sum(|g|), the scale of their rounding errors."""
    axis = backward_kwargs["axis"] % x.ndim
    bshape = [1] * x.ndim
    bshape[axis] = x.shape[axis]
    mean = save_mean.astype(np.float64).reshape(bshape)
    x_abs = mean + np.abs(x.astype(np.float64) - mean)
    _, dw_abs, db_abs = reference.batchnorm_backward(np.abs(dy.astype(np.float64)), x_abs, np.ones(x.shape[axis]),
                                                     save_mean.astype(np.float64),
                                                     save_invstd.astype(np.float64), **backward_kwargs)
    return dw_abs, db_abs


def channels(shape, axis):
    return shape[axis % len(shape)]


def make_case(shape, axis, dtype, seed=0, loc=0.5, scale=2.0):
    rng = np.random.default_rng(seed)
    C = channels(shape, axis)
    x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    weight = rng.standard_normal(C).astype(dtype)
    bias = rng.standard_normal(C).astype(dtype)
    running_mean = rng.standard_normal(C).astype(dtype)
    running_var = (rng.random(C) + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, weight, bias, running_mean, running_var, dy


# ---- against the reference ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_matches_reference(isa, dtype, shape, axis):
    x, weight, bias, running_mean, running_var, dy = make_case(shape, axis, dtype)
    tol, tol_c = TOL[dtype], TOL_CHANNEL[dtype]
    worst = {}
    for training in (True, False):
        for affine in (True, False):
            for running in (True, False):
                if not training and not running:
                    continue  # eval needs the running statistics (tested as bad input)
                for relu in (False, True):
                    w, b = (weight, bias) if affine else (None, None)
                    rm_got, rv_got = (running_mean.copy(), running_var.copy()) if running else (None, None)
                    rm_want, rv_want = (running_mean.copy(), running_var.copy()) if running else (None, None)
                    kw = dict(training=training, momentum=0.3, eps=1e-3, axis=axis, relu=relu)
                    y, save_mean, save_invstd = batchnorm_forward(x, w, b, rm_got, rv_got, **kw)
                    y_r, mean_r, invstd_r = reference.batchnorm_forward(x, w, b, rm_want, rv_want, **kw)
                    assert y.dtype == save_mean.dtype == save_invstd.dtype == dtype
                    assert y.shape == x.shape and save_mean.shape == save_invstd.shape == (channels(shape, axis),)
                    errs = {
                        "y": (rel_err(y, y_r), tol),
                        "save_mean": (rel_err(save_mean, mean_r), tol_c),
                        "save_invstd": (rel_err(save_invstd, invstd_r), tol_c),
                    }
                    if running:
                        errs["running_mean"] = (rel_err(rm_got, rm_want), tol_c)
                        errs["running_var"] = (rel_err(rv_got, rv_want), tol_c)
                        if not training:
                            assert np.array_equal(rm_got, running_mean) and np.array_equal(rv_got, running_var)
                    # the backward from the same saved statistics, with the forward's output as
                    # the ReLU mask, then with a boolean mask: the same gradients
                    masks = [y, y > 0] if relu else [None]
                    for mask in masks:
                        bkw = dict(axis=axis, training=training, relu_output=mask)
                        dx, dw, db = batchnorm_backward(dy, x, w, save_mean, save_invstd, **bkw)
                        dx_r, dw_r, db_r = reference.batchnorm_backward(dy, x, w, save_mean, save_invstd, **bkw)
                        errs["dx"] = (rel_err(dx, dx_r), tol)
                        if affine:
                            dw_abs, db_abs = abs_sums(dy, x, save_mean, save_invstd, bkw)
                            errs["dweight"] = (rel_err(dw, dw_r, dw_abs), tol_c)
                            errs["dbias"] = (rel_err(db, db_r, db_abs), tol_c)
                        else:
                            assert dw is None and db is None
                        for name, (err, limit) in errs.items():
                            assert err <= limit, (name, err, limit, dict(training=training, affine=affine,
                                                                         running=running, relu=relu))
                            worst[name] = max(worst.get(name, 0.0), err)
    print(f"{isa} {np.dtype(dtype).name} {shape} axis={axis} max rel err: " +
          " ".join(f"{k} {v:.1e}" for k, v in worst.items()))


@pytest.mark.parametrize("shape,axis", [((17, 32, 64, 64), 1), ((17, 64, 64, 32), -1)], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("offset", [0, 1, 5])
def test_large_outputs_streamed_at_any_alignment(isa, shape, axis, offset):
    """Outputs of 8 MB and more are written with non-temporal stores, which need whole aligned
    lines: misaligned out= views (offset floats past NumPy's alignment) must give the same values."""
    x, weight, bias, running_mean, running_var, dy = make_case(shape, axis, np.float32)
    n = x.size
    y_out = np.empty(n + offset, np.float32)[offset:].reshape(shape)
    dx_out = np.empty(n + offset, np.float32)[offset:].reshape(shape)
    y, save_mean, save_invstd = batchnorm_forward(x, weight, bias, axis=axis, relu=True, out=y_out)
    dx, dw, db = batchnorm_backward(dy, x, weight, save_mean, save_invstd, axis=axis, relu_output=y, out=dx_out)
    y_r, _, _ = reference.batchnorm_forward(x, weight, bias, axis=axis, relu=True)
    dx_r, dw_r, db_r = reference.batchnorm_backward(dy, x, weight, save_mean, save_invstd, axis=axis, relu_output=y)
    assert y is y_out and dx is dx_out
    assert rel_err(y, y_r) <= TOL[np.float32] and rel_err(dx, dx_r) <= TOL[np.float32]
    assert rel_err(dw, dw_r) <= TOL_CHANNEL[np.float32] and rel_err(db, db_r) <= TOL_CHANNEL[np.float32]


@pytest.mark.parametrize("shape,axis", [((3, 5, 40, 41), 1), ((7, 9, 11, 13), -1), ((600, 37), 1),
                                        ((17, 32, 64, 64), 1), ((17, 64, 64, 32), -1)],
                         ids=["NCHW", "NHWC", "NC", "NCHW-streamed", "NHWC-streamed"])
def test_store_order_does_not_change_results(isa, shape, axis):
    """A streamed output a few bytes ahead of an input modulo 4 KiB is written from the end
    backward (4K aliasing, see store_backward): the values must be bitwise those of the forward
    order. (The shapes below 8 MB check that the offsets change nothing there either.)"""
    x0, weight, bias, _, _, dy0 = make_case(shape, axis, np.float32)
    results = []
    for out_offset in (64, 80, 64 + 4096 - 16):  # out 16 bytes ahead of x and dy, level, 16 behind
        x, dy = placed(shape, 64), placed(shape, 64)
        x[...], dy[...] = x0, dy0
        y = batchnorm_forward(x, weight, bias, axis=axis, relu=True, out=placed(shape, out_offset))[0]
        _, save_mean, save_invstd = batchnorm_forward(x, weight, bias, axis=axis)
        dx = batchnorm_backward(dy, x, weight, save_mean, save_invstd, axis=axis, relu_output=y,
                                out=placed(shape, out_offset))[0]
        dx_eval = batchnorm_backward(dy, x, weight, save_mean, save_invstd, axis=axis, training=False,
                                     out=placed(shape, out_offset))[0]
        results.append((y, dx, dx_eval))
    for got in results[1:]:
        for a, b in zip(results[0], got):
            assert a.tobytes() == b.tobytes()


def test_out_arguments_are_written_and_returned():
    x, weight, bias, running_mean, running_var, dy = make_case((4, 3, 5, 5), 1, np.float32)
    out = np.full_like(x, np.nan)
    y, save_mean, save_invstd = batchnorm_forward(x, weight, bias, out=out)
    assert y is out
    assert np.array_equal(out, batchnorm_forward(x, weight, bias)[0])
    dx_out = np.full_like(x, np.nan)
    dx, _, _ = batchnorm_backward(dy, x, weight, save_mean, save_invstd, out=dx_out)
    assert dx is dx_out
    assert np.array_equal(dx_out, batchnorm_backward(dy, x, weight, save_mean, save_invstd)[0])


@pytest.mark.parametrize("shape", [(4, 8, 256, 256), (2, 4, 64, 32)], ids=["8MiB", "64KiB"])
def test_large_fresh_outputs_never_reuse_live_memory(shape):
    """Outputs of 64 KiB or more made without out= come from the buffers of freed earlier outputs
    of the same size (bindings_batchnorm.cpp): one still alive, even only through a view, is
    never handed out again, and every fresh output holds what out= gets."""
    x1, weight, bias, _, _, dy = make_case(shape, 1, np.float32, seed=5)
    x2 = make_case(shape, 1, np.float32, seed=6)[0]
    outputs = []
    for _ in range(4):  # several outputs alive while freed ones are reused
        y, save_mean, save_invstd = batchnorm_forward(x1, weight, bias)
        dx, _, _ = batchnorm_backward(dy, x1, weight, save_mean, save_invstd)
        outputs += [y[1:], dx[:, 2:]]  # views: the arrays themselves are dropped
        del y, dx
    y_want = batchnorm_forward(x1, weight, bias, out=np.empty_like(x1))[0]
    dx_want = batchnorm_backward(dy, x1, weight, save_mean, save_invstd, out=np.empty_like(x1))[0]
    for _ in range(3):  # freed outputs are reused: every buffer in turn
        y2, m2, s2 = batchnorm_forward(x2, weight, bias)
        dx2, _, _ = batchnorm_backward(dy, x2, weight, m2, s2)
        assert not any(np.shares_memory(a, b) for a in outputs for b in (y2, dx2))
        assert np.array_equal(y2, batchnorm_forward(x2, weight, bias, out=np.empty_like(x2))[0])
        assert np.array_equal(dx2, batchnorm_backward(dy, x2, weight, m2, s2, out=np.empty_like(x2))[0])
        del y2, dx2
    for k in range(0, len(outputs), 2):
        assert np.array_equal(outputs[k], y_want[1:]) and np.array_equal(outputs[k + 1], dx_want[:, 2:])


def test_output_pool_reuses_and_is_bounded_by_its_high_water():
    """The pool hands a freed buffer to the next output of its size (the same memory, no new
    one), never holds more than the most its outputs had alive at once, and
    release_output_buffers frees what it keeps."""
    from fusedopt.batchnorm import output_buffer_stats, release_output_buffers

    x, weight, bias, _, _, dy = make_case((4, 8, 32, 32), 1, np.float32)  # 128 KiB: pooled
    page = 4096  # a pool buffer has a page more than its output (placed at x's page offset)
    small = make_case((2, 3, 4, 5), 1, np.float32)[0]  # 480 bytes: NumPy's allocator
    gc.collect()  # outputs of earlier tests in reference cycles: freed now, not during the test
    release_output_buffers()
    base = output_buffer_stats()
    assert base["free_bytes"] == base["free_buffers"] == 0 and base["high_water"] == base["live_bytes"]
    ys = [batchnorm_forward(x, weight, bias)[0] for _ in range(3)]  # three alive at once (a 3-layer net)
    assert output_buffer_stats()["live_bytes"] - base["live_bytes"] == 3 * (x.nbytes + page)
    pointers = {y.ctypes.data for y in ys}
    del ys
    stats = output_buffer_stats()
    assert stats["free_bytes"] == 3 * (x.nbytes + page)
    assert stats["high_water"] == base["live_bytes"] + 3 * (x.nbytes + page)
    for _ in range(5):  # the next steps reuse those buffers: no new memory
        again = [batchnorm_forward(x, weight, bias)[0] for _ in range(3)]
        assert {y.ctypes.data for y in again} == pointers
        del again
    assert output_buffer_stats() == stats
    batchnorm_forward(small, None, None)  # below the pool's size: not counted
    assert output_buffer_stats() == stats
    # another size: the oldest freed buffers make room, the total stays within high_water
    x2 = make_case((4, 8, 32, 64), 1, np.float32)[0]  # 2x the size
    y2 = batchnorm_forward(x2, None, None)[0]
    stats2 = output_buffer_stats()
    assert stats2["high_water"] == stats["high_water"]
    assert stats2["live_bytes"] + stats2["free_bytes"] <= stats2["high_water"]
    assert stats2["free_bytes"] == x.nbytes + page and stats2["free_buffers"] == 1
    del y2
    assert release_output_buffers() == x.nbytes + x2.nbytes + 2 * page
    assert output_buffer_stats() == base


@pytest.mark.parametrize("in_page", [0, 16, 48, 2064, 4080])
def test_pool_outputs_take_their_inputs_place_in_a_page(in_page):
    # (bindings_batchnorm.cpp, new_like: the elementwise pass's vectors then sit on cache lines of
    # both, and no store is a little ahead of a load modulo 4 KiB)
    x0, weight, bias, _, _, dy = make_case((4, 8, 32, 32), 1, np.float32)
    x = placed(x0.shape, in_page)
    x[...] = x0
    y, mean, invstd = batchnorm_forward(x, weight, bias)
    dx = batchnorm_backward(dy, x, weight, mean, invstd)[0]
    for out in (y, dx):
        assert out.ctypes.data % 4096 == in_page and out.flags.c_contiguous and out.flags.writeable
    want_y, want_mean, want_invstd = batchnorm_forward(x0, weight, bias)
    assert y.tobytes() == want_y.tobytes()
    assert dx.tobytes() == batchnorm_backward(dy, x0, weight, want_mean, want_invstd)[0].tobytes()


def test_axis_spellings_agree():
    x, weight, bias, _, _, _ = make_case((3, 4, 5, 6), -1, np.float64)
    y1 = batchnorm_forward(x, weight, bias, axis=-1)[0]
    y2 = batchnorm_forward(x, weight, bias, axis=3)[0]
    assert np.array_equal(y1, y2)
    x2 = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    y3 = batchnorm_forward(x2, weight, bias, axis=1)[0]
    assert rel_err(np.moveaxis(y3, 1, -1), y1) <= 1e-14


def test_reference_matches_torch():
    """The oracle itself against torch.nn.functional.batch_norm + autograd (float64)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for shape, axis in [((4, 3, 5, 6), 1), ((6, 5), 1), ((2, 5, 6, 3), -1)]:
        for training in (True, False):
            for relu in (False, True):
                x, weight, bias, running_mean, running_var, dy = make_case(shape, axis, np.float64)
                rm, rv = running_mean.copy(), running_var.copy()
                y, save_mean, save_invstd = reference.batchnorm_forward(
                    x, weight, bias, rm, rv, training=training, momentum=0.3, eps=1e-3, axis=axis, relu=relu)
                dx, dw, db = reference.batchnorm_backward(dy, x, weight, save_mean, save_invstd, axis=axis,
                                                          training=training, relu_output=y if relu else None)
                # torch wants channels at axis 1
                to_nc = (lambda a: np.moveaxis(a, -1, 1)) if axis == -1 else (lambda a: a)
                xt = torch.tensor(np.ascontiguousarray(to_nc(x)), requires_grad=True)
                wt = torch.tensor(weight, requires_grad=True)
                bt = torch.tensor(bias, requires_grad=True)
                rmt, rvt = torch.tensor(running_mean), torch.tensor(running_var)
                yt = F.batch_norm(xt, rmt, rvt, wt, bt, training=training, momentum=0.3, eps=1e-3)
                if relu:
                    yt = torch.relu(yt)
                yt.backward(torch.tensor(np.ascontiguousarray(to_nc(dy))))
                assert rel_err(to_nc(y), yt.detach().numpy()) < 1e-12
                assert rel_err(rm, rmt.numpy()) < 1e-12 and rel_err(rv, rvt.numpy()) < 1e-12
                assert rel_err(to_nc(dx), xt.grad.numpy()) < 1e-12
                assert rel_err(dw, wt.grad.numpy()) < 1e-12 and rel_err(db, bt.grad.numpy()) < 1e-12


# ---- gradients by finite differences ----------------------------------------------------------


@pytest.mark.parametrize("shape,axis", [((3, 2, 5), 1), ((5, 3), -1), ((2, 2, 3, 3), 1)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [False, True])
def test_gradients_by_finite_differences(isa, shape, axis, training, relu):
    """float64, loss = sum(y * dy): central differences with h = 1e-6 have truncation error
    ~h^2 and rounding error ~1e-16 / h ~ 1e-10 relative; the bound 1e-6 leaves a wide margin."""
    x, weight, bias, running_mean, running_var, dy = make_case(shape, axis, np.float64, seed=1)
    h = 1e-6

    def loss(x_, w_, b_):
        y = batchnorm_forward(x_, w_, b_, running_mean, running_var, training=training, axis=axis, relu=relu,
                              momentum=0.0)[0]
        return float(np.sum(y * dy))

    def numeric(arr, args, k):
        g = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            plus, minus = [a.copy() for a in args], [a.copy() for a in args]
            plus[k][i] += h
            minus[k][i] -= h
            g[i] = (loss(*plus) - loss(*minus)) / (2 * h)
        return g

    args = [x, weight, bias]
    y, save_mean, save_invstd = batchnorm_forward(x, weight, bias, running_mean, running_var, training=training,
                                                  axis=axis, relu=relu, momentum=0.0)
    dx, dw, db = batchnorm_backward(dy, x, weight, save_mean, save_invstd, axis=axis, training=training,
                                    relu_output=y if relu else None)
    for got, k, name in [(dx, 0, "dx"), (dw, 1, "dweight"), (db, 2, "dbias")]:
        want = numeric(args[k], args, k)
        err = rel_err(got, want)
        assert err < 1e-6, (name, err)


# ---- numerical stability -------------------------------------------------------------------------


@pytest.mark.parametrize("shape,axis", [((8, 3, 40, 40), 1), ((8, 3, 5, 5), 1), ((8, 20, 20, 3), -1),
                                        ((3000, 3), 1), ((8, 3, 7, 7), 1)])
@pytest.mark.parametrize("mean", [1e4, 1e5, 1e6])
def test_large_mean_float32(isa, shape, axis, mean):
    """std 1 around a large mean: y within 1e-4 of the float64 truth on the same float32 x
    (E[x^2] - E[x]^2, or x - mean with the mean rounded to float32, would be off by up to
    0.03 / std at mean 1e6)."""
    rng = np.random.default_rng(2)
    C = channels(shape, axis)
    bshape = [1] * len(shape)
    bshape[axis % len(shape)] = C
    x = (mean * np.arange(1, C + 1).reshape(bshape) + rng.standard_normal(shape)).astype(np.float32)
    weight = rng.standard_normal(C).astype(np.float32)
    bias = rng.standard_normal(C).astype(np.float32)
    y, _, save_invstd = batchnorm_forward(x, weight, bias, axis=axis, eps=0.0)
    as64 = [a.astype(np.float64) for a in (x, weight, bias)]
    y_true, _, invstd_true = reference.batchnorm_forward(*as64, axis=axis, eps=0.0)
    err = float(np.max(np.abs(y - y_true)))
    print(f"{isa} mean {mean:g} {shape} max |y - y_true| = {err:.2e}")
    assert err <= 1e-4
    assert rel_err(save_invstd, invstd_true) <= 1e-6


@pytest.mark.parametrize("shape,axis", [((64, 3, 40, 40), 1), ((16384, 3, 2), 1), ((64, 40, 40, 3), -1),
                                        ((8, 3, 7, 7), 1)])
@pytest.mark.parametrize("trend", [1e-3, 1.0, 1e3])
def test_drifting_mean_float32(isa, shape, axis, trend):
    """A mean that moves along the batch (sorted or drifting data): each block's shift, taken
    from the blocks before it, can be many standard deviations off; the statistics must still
    be those of the float64 truth."""
    rng = np.random.default_rng(4)
    n0 = shape[0]
    bshape = [n0] + [1] * (len(shape) - 1)
    x = (1e3 + trend * np.arange(n0).reshape(bshape) + rng.standard_normal(shape)).astype(np.float32)
    y, save_mean, save_invstd = batchnorm_forward(x, axis=axis)
    y_true, mean_true, invstd_true = reference.batchnorm_forward(x.astype(np.float64), axis=axis)
    errs = rel_err(y, y_true), rel_err(save_mean, mean_true), rel_err(save_invstd, invstd_true)
    print(f"{isa} trend {trend:g} {shape} rel err y {errs[0]:.1e} mean {errs[1]:.1e} invstd {errs[2]:.1e}")
    assert max(errs) <= 1e-6


@pytest.mark.parametrize("shape", [(8, 40, 7, 7), (4, 40, 6, 6), (16, 24, 4, 8)])
def test_some_channels_drifting_float32(isa, shape):
    """Small channels get their statistics in batches, a step at a time for every channel of
    the batch: channels far from their first rows' mean (every third drifts along the batch)
    take their sums again beside channels that do not, each around its own large mean."""
    rng = np.random.default_rng(5)
    n0, C = shape[:2]
    drift = np.where(np.arange(C) % 3 == 0, 10.0, 0.0).reshape(1, C, 1, 1) * np.arange(n0).reshape(n0, 1, 1, 1)
    x = (1e4 * np.arange(1, C + 1).reshape(1, C, 1, 1) + drift + rng.standard_normal(shape)).astype(np.float32)
    y, save_mean, save_invstd = batchnorm_forward(x)
    y_true, mean_true, invstd_true = reference.batchnorm_forward(x.astype(np.float64))
    assert float(np.max(np.abs(y - y_true))) <= 1e-4
    assert rel_err(save_mean, mean_true) <= 1e-6
    assert rel_err(save_invstd, invstd_true) <= 1e-6


@pytest.mark.parametrize("shape,axis", [((16, 4, 9, 9), 1), ((128, 3, 14, 14), 1), ((64, 40, 40, 3), -1),
                                        ((4096, 3), 1)])
def test_large_mean_float64(isa, shape, axis):
    """std 1 around 1e9: statistics and y to float64's precision of the deviations (x - 1e9 is
    exact). Blocks merged by their rounded means had invstd 1.8e-10 off on (128, 3, 14, 14), and
    y, normalized around the mean rounded to double, 5e-8."""
    rng = np.random.default_rng(3)
    x = 1e9 + rng.standard_normal(shape)
    y, _, save_invstd = batchnorm_forward(x, axis=axis, eps=0.0)
    reduced = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    d = x - 1e9
    d_centered = d - d.mean(axis=reduced, keepdims=True)
    std = np.sqrt((d_centered ** 2).mean(axis=reduced, keepdims=True))
    y_err, invstd_err = float(np.max(np.abs(y - d_centered / std))), rel_err(save_invstd, 1 / std.ravel())
    print(f"{isa} {shape} max |y - y_true| = {y_err:.1e}, invstd relative error {invstd_err:.1e}")
    assert y_err <= 1e-13 and invstd_err <= 1e-14


@pytest.mark.parametrize("shape,axis", [((4, 1), 1), ((4, 2, 3), 1), ((4, 3, 2), -1)])
def test_float64_means_whose_square_overflows(isa, shape, axis):
    """Channels whose mean is above sqrt(DBL_MAX) (~1.3e154): the merge of the first block into
    the empty moments squared the mean's distance from 0 (inf * 0: a NaN variance). A constant
    channel's variance is 0 (invstd 1 / sqrt(eps), y = 0), a near-constant one's torch's."""
    x = np.full(shape, 1e155)
    y, save_mean, save_invstd = batchnorm_forward(x, axis=axis)
    assert np.all(save_mean == 1e155) and np.allclose(save_invstd, 1 / np.sqrt(1e-5)) and np.all(y == 0)
    near = 1e155 * (1 + 1e-7 * np.arange(x.size).reshape(shape))
    y, save_mean, save_invstd = batchnorm_forward(near, axis=axis)
    ax = tuple(d for d in range(near.ndim) if d != axis % near.ndim)
    want = 1 / np.sqrt(((near - near.mean(axis=ax, keepdims=True)) ** 2).mean(axis=ax) + 1e-5)
    assert np.all(np.isfinite(y)) and np.allclose(save_invstd, want, rtol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((4, 3, 6, 6), 1), ((4, 3, 2, 2), 1), ((4, 6, 6, 3), -1)])
def test_constant_channels(isa, dtype, shape, axis):
    C = channels(shape, axis)
    bshape = [1] * len(shape)
    bshape[axis % len(shape)] = C
    x = np.broadcast_to(np.array([7.3, -1e5, 0.0], dtype).reshape(bshape), shape).copy()
    bias = np.array([0.5, -2.0, 3.0], dtype)
    weight = np.array([2.0, 3.0, 4.0], dtype)
    y, save_mean, save_invstd = batchnorm_forward(x, weight, bias, axis=axis, eps=1e-5)
    assert np.all(np.isfinite(y))
    assert float(np.max(np.abs(y - np.broadcast_to(bias.reshape(bshape), shape)))) <= 1e-6
    # the backward of a constant channel: xhat = 0, so dx = invstd * w * (dy - mean(dy))
    dy = np.random.default_rng(4).standard_normal(shape).astype(dtype)
    dx, dw, db = batchnorm_backward(dy, x, weight, save_mean, save_invstd, axis=axis)
    dx_r, dw_r, db_r = reference.batchnorm_backward(dy, x, weight, save_mean, save_invstd, axis=axis)
    assert rel_err(dx, dx_r) <= TOL[dtype] and rel_err(db, db_r) <= TOL_CHANNEL[dtype]


def test_zero_variance_and_zero_eps_gives_nan_like_torch(isa):
    """var + eps == 0: invstd = 1/sqrt(0) = inf and y = 0 * inf = nan, as torch computes it
    (torch.nn.functional.batch_norm(torch.ones(4, 1), None, None, training=True, eps=0) is nan)."""
    x = np.ones((4, 2, 3), np.float32)
    x[:, 1] = np.arange(12, dtype=np.float32).reshape(4, 3)
    y, save_mean, save_invstd = batchnorm_forward(x, eps=0.0)
    assert np.isinf(save_invstd[0]) and np.all(np.isnan(y[:, 0]))
    assert np.all(np.isfinite(y[:, 1])) and np.isfinite(save_invstd[1])


@pytest.mark.parametrize("shape,axis", [((130, 5, 8, 8), 1), ((8, 5, 7, 7), 1), ((3000, 5), 1), ((40, 9, 9, 5), -1)],
                         ids=["planar-blocks", "planar-small", "columns", "NHWC"])
@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_value_gives_nan_invstd_like_torch(isa, shape, axis, dtype, where, value):
    """An inf or a NaN in a channel (in its first rows, where the shift comes from, or its last
    block): the channel's var is nan (inf - inf), so save_invstd and the running var are nan and y
    is nan, as torch computes them (not invstd = 1 / sqrt(inf) = 0, nor a NaN variance clamped
    to 0); its mean and running mean are the inf (sum(x) / n), or nan; the other channels are
    untouched."""
    x, weight, bias, running_mean, running_var, _ = make_case(shape, axis, dtype)
    index = [0 if where == "first" else n - 1 for n in shape]
    index[axis % len(shape)] = 3
    x[tuple(index)] = value
    rm, rv = running_mean.copy(), running_var.copy()
    with np.errstate(invalid="ignore"):
        y, save_mean, save_invstd = batchnorm_forward(x, weight, bias, rm, rv, axis=axis)
        y_r, mean_r, invstd_r = reference.batchnorm_forward(x, weight, bias, running_mean.copy(), running_var.copy(),
                                                            axis=axis)
    channel = np.moveaxis(y, axis, 0)
    assert np.isnan(save_invstd[3]) and np.isnan(rv[3]) and np.all(np.isnan(channel[3])), (save_mean[3], save_invstd[3])
    assert np.isnan(invstd_r[3])
    for mean in (save_mean[3], rm[3], mean_r[3]):
        assert np.isnan(mean) if np.isnan(value) else mean == value, (save_mean[3], rm[3], mean_r[3])
    others = np.arange(shape[axis]) != 3
    assert rel_err(np.moveaxis(y_r, axis, 0)[others], channel[others]) <= TOL[dtype]
    assert rel_err(save_invstd[others], invstd_r[others]) <= TOL[dtype]


# ---- thread-count invariance --------------------------------------------------------------------


@pytest.mark.parametrize("shape,axis", [
    ((8, 32, 16, 16), 1),  # planar, 32 tiles: each channel whole in one task
    ((96, 3, 64, 72), 1),  # planar, 3 channels: 3 groups of blocks
    ((12288, 32), 1),  # columns, 3 groups of row blocks
    ((48, 32, 32, 8), -1),  # channels-last, 3 groups
    ((16, 64, 64, 6), -1),  # channels-last, short rows that are not whole vectors, 3 groups
    ((64, 600), 1),  # columns, several tiles
    ((8, 40, 7, 7), 1),  # planar, small channels summed in one go
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_for_any_thread_count(isa, threads, shape, axis, dtype):
    x, weight, bias, running_mean, running_var, dy = make_case(shape, axis, dtype, loc=3.0)
    results = []
    for nthreads in (1, 2, 3):
        fusedopt.set_num_threads(nthreads)
        rm, rv = running_mean.copy(), running_var.copy()
        y, save_mean, save_invstd = batchnorm_forward(x, weight, bias, rm, rv, axis=axis, relu=True)
        dx, dw, db = batchnorm_backward(dy, x, weight, save_mean, save_invstd, axis=axis, relu_output=y)
        results.append([a.tobytes() for a in (y, save_mean, save_invstd, rm, rv, dx, dw, db)])
    assert results[0] == results[1] == results[2]


def short_rows_beyond_l2(outer, inner, dtype):
    """An NCHW-like shape (outer, C, inner) whose x takes twice this machine's L2, and over the
    8 MB from which outputs are streamed (STREAM_MIN_BYTES)."""
    itemsize = np.dtype(dtype).itemsize
    nbytes = max(2 * _core.l2_cache_bytes(), STREAM_MIN_BYTES + 4096)
    return (outer, -(-nbytes // (outer * inner * itemsize)), inner)


@pytest.mark.parametrize("outer,inner", [(25, 49), (24, 49), (24, 100)], ids=["columns", "planar", "planar-10x10"])
def test_short_rows_beyond_l2(isa, threads, dtype, outer, inner):
    """Channels of short rows in a tensor larger than L2 and 8 MB: with at least half as many rows
    as a row has elements they are summed in the columns layout (Plan::short_rows_as_columns),
    else planar with their outputs stored, not streamed (Plan::streams). Either way: the
    reference's values, and bitwise the same for any thread count."""
    shape = short_rows_beyond_l2(outer, inner, dtype)
    x, weight, bias, running_mean, running_var, dy = make_case(shape, 1, dtype, loc=3.0)
    results = []
    for nthreads in (1, 2):
        fusedopt.set_num_threads(nthreads)
        rm, rv = running_mean.copy(), running_var.copy()
        y, save_mean, save_invstd = batchnorm_forward(x, weight, bias, rm, rv, relu=True)
        dx, dw, db = batchnorm_backward(dy, x, weight, save_mean, save_invstd, relu_output=y)
        results.append([a.tobytes() for a in (y, save_mean, save_invstd, rm, rv, dx, dw, db)])
    assert results[0] == results[1]
    rm_r, rv_r = running_mean.copy(), running_var.copy()
    y_r, mean_r, invstd_r = reference.batchnorm_forward(x, weight, bias, rm_r, rv_r, relu=True)
    dx_r, dw_r, db_r = reference.batchnorm_backward(dy, x, weight, save_mean, save_invstd, relu_output=y)
    tol, tol_c = TOL[dtype], TOL_CHANNEL[dtype]
    errs = {"y": rel_err(y, y_r), "mean": rel_err(save_mean, mean_r), "invstd": rel_err(save_invstd, invstd_r),
            "running_mean": rel_err(rm, rm_r), "running_var": rel_err(rv, rv_r), "dx": rel_err(dx, dx_r)}
    dw_abs, db_abs = abs_sums(dy, x, save_mean, save_invstd, dict(axis=1, relu_output=y))
    errs_c = {"dweight": rel_err(dw, dw_r, dw_abs), "dbias": rel_err(db, db_r, db_abs)}
    worst = " ".join(f"{k} {v:.1e}" for k, v in {**errs, **errs_c}.items())
    print(f"{isa} {np.dtype(dtype).name} {shape} max rel err: {worst}")
    assert all(err <= tol for err in errs.values()), errs
    assert all(err <= tol_c for err in errs_c.values()), errs_c


# ---- bad input: a clear error, and nothing written ----------------------------------------------


def snapshot(arrays):
    return [None if a is None or not isinstance(a, np.ndarray) else a.tobytes() for a in arrays]


def forward_args(**over):
    x, weight, bias, running_mean, running_var, _ = make_case((4, 3, 5), 1, np.float32)
    args = dict(x=x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    args.update(over)
    return args


def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


BUFFER = np.zeros(8, np.float32)  # shared by running_mean and running_var in one bad case

FORWARD_BAD = [
    (dict(x=[[1.0, 2.0], [3.0, 4.0]]), {}, TypeError, "numpy.ndarray"),
    (dict(x=np.ones((4, 3, 5), np.int32)), {}, TypeError, "float32 or float64"),
    (dict(x=np.ones((4, 3, 5), np.float16)), {}, TypeError, "float32 or float64"),
    (dict(x=np.ones(5, np.float32), weight=None, bias=None, running_mean=None, running_var=None), {},
     ValueError, "rank >= 2"),
    (dict(x=np.ones((0, 3, 5), np.float32)), {}, ValueError, "empty"),
    (dict(x=np.ones((1, 3), np.float32)), {}, ValueError, "more than 1 value per channel"),
    (dict(x=np.ones((1, 3, 1, 1), np.float32)), {}, ValueError, "more than 1 value per channel"),
    (dict(), dict(axis=3), ValueError, "out of range"),
    (dict(), dict(axis=-4), ValueError, "out of range"),
    (dict(x=np.ones((2, 3, 4, 5), np.float32), weight=None, bias=None, running_mean=None, running_var=None),
     dict(axis=2), ValueError, "channel axis"),
    (dict(), dict(axis=0), ValueError, "channel axis"),
    (dict(weight=np.ones(4, np.float32)), {}, ValueError, "weight has shape"),
    (dict(weight=np.ones((3, 1), np.float32)), {}, ValueError, "weight has shape"),
    (dict(weight=np.ones(3, np.float64)), {}, TypeError, "weight has dtype"),
    (dict(weight=[1.0, 1.0, 1.0]), {}, TypeError, "weight must be a numpy.ndarray"),
    (dict(bias=np.ones(2, np.float32)), {}, ValueError, "bias has shape"),
    (dict(running_mean=np.zeros(4, np.float32)), {}, ValueError, "running_mean has shape"),
    (dict(running_var=np.ones(3, np.float64)), {}, TypeError, "running_var has dtype"),
    (dict(running_var=None), {}, ValueError, "running_mean is given without running_var"),
    (dict(running_mean=None), {}, ValueError, "running_var is given without running_mean"),
    (dict(running_mean=None, running_var=None), dict(training=False), ValueError, "required when training=False"),
    (dict(x=np.ones((3, 4, 5), np.float32).transpose(1, 0, 2)), {}, ValueError, "not C-contiguous"),
    (dict(x=np.ones((4, 3, 10), np.float32)[:, :, ::2]), {}, ValueError, "not C-contiguous"),
    (dict(running_mean=read_only(np.zeros(3, np.float32))), {}, ValueError, "running_mean is read-only"),
    (dict(running_var=read_only(np.ones(3, np.float32))), {}, ValueError, "running_var is read-only"),
    (dict(running_mean=np.zeros(6, np.float32)[::2]), {}, ValueError, "running_mean is not C-contiguous"),
    (dict(running_mean=BUFFER[0:3], running_var=BUFFER[2:5]), {}, ValueError, "overlap"),
    (dict(), dict(out=read_only(np.zeros((4, 3, 5), np.float32))), ValueError, "out is read-only"),
    (dict(), dict(out=np.zeros((4, 3, 6), np.float32)), ValueError, "out has shape"),
    (dict(), dict(out=np.zeros((4, 3, 5), np.float64)), TypeError, "out has dtype"),
    (dict(), dict(eps=-1.0), ValueError, "eps"),
    (dict(), dict(eps=float("nan")), ValueError, "eps"),
    (dict(), dict(momentum=float("nan")), ValueError, "momentum"),
]


@pytest.mark.parametrize("over,kwargs,error,match", FORWARD_BAD)
def test_forward_bad_input_raises_and_writes_nothing(over, kwargs, error, match):
    args = forward_args(**over)
    arrays = list(args.values()) + [kwargs.get("out")]
    before = snapshot(arrays)
    with pytest.raises(error, match=match):
        batchnorm_forward(args["x"], args["weight"], args["bias"], args["running_mean"], args["running_var"],
                          **kwargs)
    assert snapshot(arrays) == before


def test_forward_out_overlapping_x_raises_and_writes_nothing():
    x, weight, bias, running_mean, running_var, _ = make_case((4, 3, 5), 1, np.float32)
    buffer = np.arange(4 * 3 * 5 + 5, dtype=np.float32)
    x_view = buffer[:60].reshape(4, 3, 5)
    for out in (x_view, buffer[5:].reshape(4, 3, 5)):
        before = snapshot([buffer, running_mean, running_var])
        with pytest.raises(ValueError, match="overlap"):
            batchnorm_forward(x_view, weight, bias, running_mean, running_var, out=out)
        assert snapshot([buffer, running_mean, running_var]) == before
    # running statistics overlapping x (both written and read)
    with pytest.raises(ValueError, match="overlap"):
        batchnorm_forward(buffer[:60].reshape(4, 3, 5), weight, bias, buffer[:3], running_var)


def test_eval_accepts_read_only_running_statistics():
    x, weight, bias, running_mean, running_var, _ = make_case((4, 3, 5), 1, np.float32)
    rm, rv = read_only(running_mean), read_only(running_var)
    y, save_mean, _ = batchnorm_forward(x, weight, bias, rm, rv, training=False)
    assert np.array_equal(save_mean, running_mean)


def backward_args(**over):
    x, weight, bias, running_mean, running_var, dy = make_case((4, 3, 5), 1, np.float32)
    y, save_mean, save_invstd = batchnorm_forward(x, weight, bias, relu=True)
    args = dict(dy=dy, x=x, weight=weight, save_mean=save_mean, save_invstd=save_invstd)
    args.update(over)
    return args


BACKWARD_BAD = [
    (dict(dy=np.ones((4, 3, 6), np.float32)), {}, ValueError, "dy has shape"),
    (dict(dy=np.ones((4, 3, 5), np.float64)), {}, TypeError, "dy has dtype"),
    (dict(dy=np.ones((4, 5, 3), np.float32).transpose(0, 2, 1)), {}, ValueError, "dy is not C-contiguous"),
    (dict(x=np.ones((4, 3, 5), np.int64)), {}, TypeError, "float32 or float64"),
    (dict(x=np.ones((0, 3, 5), np.float32), dy=np.ones((0, 3, 5), np.float32)), {}, ValueError, "empty"),
    (dict(weight=np.ones(2, np.float32)), {}, ValueError, "weight has shape"),
    (dict(save_mean=np.ones(4, np.float32)), {}, ValueError, "save_mean has shape"),
    (dict(save_invstd=np.ones(3, np.float64)), {}, TypeError, "save_invstd has dtype"),
    (dict(save_invstd=None), {}, TypeError, "save_invstd are required"),
    (dict(), dict(axis=5), ValueError, "out of range"),
    (dict(), dict(relu_output=np.ones((4, 3, 6), np.float32)), ValueError, "relu_output has shape"),
    (dict(), dict(relu_output=np.ones((4, 3, 5), np.int8)), TypeError, "relu_output has dtype"),
    (dict(), dict(relu_output=np.ones((4, 3, 5), np.float64)), TypeError, "relu_output has dtype"),
    (dict(), dict(out=read_only(np.zeros((4, 3, 5), np.float32))), ValueError, "out is read-only"),
    (dict(), dict(out=np.zeros((4, 3, 5), np.float32)[:, :, ::1].T), ValueError, "out has shape"),
    (dict(), dict(out=np.zeros((5, 3, 4), np.float32).transpose(2, 1, 0)), ValueError, "out is not C-contiguous"),
]


@pytest.mark.parametrize("over,kwargs,error,match", BACKWARD_BAD)
def test_backward_bad_input_raises_and_writes_nothing(over, kwargs, error, match):
    args = backward_args(**over)
    arrays = list(args.values()) + [kwargs.get("out"), kwargs.get("relu_output")]
    before = snapshot(arrays)
    with pytest.raises(error, match=match):
        batchnorm_backward(args["dy"], args["x"], args["weight"], args["save_mean"], args["save_invstd"], **kwargs)
    assert snapshot(arrays) == before


def test_backward_out_overlapping_inputs_raises_and_writes_nothing():
    args = backward_args()
    for name in ("dy", "x"):
        arr = args[name]
        before = arr.tobytes()
        with pytest.raises(ValueError, match=f"out and {name} overlap"):
            batchnorm_backward(args["dy"], args["x"], args["weight"], args["save_mean"], args["save_invstd"],
                               out=arr)
        assert arr.tobytes() == before
