"""The 8-bit blockwise codec (csrc/kernels/quantize.h, fusedopt.lowbit) against its NumPy
reference (fusedopt.reference.quantize_blockwise / dequantize_blockwise), on every ISA."""
import pickle

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, reference
from fusedopt.lowbit import QUANT_BLOCK, QuantizedState

SIZES = [1, 7, 255, 256, 257, 1000, 4096 + 13]
SMALLEST = {True: 1.25 * 2.0**-16, False: 1.25 * 2.0**-32}  # the smallest nonzero code / scale
TOP = {True: 0x7F, False: 0xFF}


def wide_values(rng, n, signed):
    """Values spread over ~40 binades below 1e3, some exact zeros, both signs when signed."""
    x = np.exp2(rng.uniform(-40, 10, n)) * (rng.choice([-1.0, 1.0], n) if signed else 1.0)
    x[rng.random(n) < 0.05] = 0.0
    return x.astype(np.float32)


def bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def grid(signed, scale=1.0):
    """value(k) * scale for k = 0 .. top, in float64."""
    k = np.arange(TOP[signed] + 1, dtype=np.uint8)
    return reference.dequantize_blockwise(k, np.array([scale], np.float32), signed).astype(np.float64)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("n", SIZES)
def test_matches_reference_bitwise(isa, signed, n):
    rng = np.random.default_rng(n)
    x = wide_values(rng, n, signed)
    q = fusedopt.quantize(x, signed)
    codes, scales = reference.quantize_blockwise(x, signed)
    assert q.codes.shape == x.shape and q.scales.shape == (-(-n // QUANT_BLOCK),)
    np.testing.assert_array_equal(q.codes, codes)
    np.testing.assert_array_equal(bits(q.scales), bits(scales))
    np.testing.assert_array_equal(bits(q.dequantize()), bits(reference.dequantize_blockwise(codes, scales, signed)))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_same_bits_on_every_thread_count(threads, signed):
    n = 3 * 131072 + 77  # enough for 2 threads to split, on a block boundary
    x = wide_values(np.random.default_rng(1), n, signed)
    fusedopt.set_num_threads(1)
    one = fusedopt.quantize(x, signed)
    out1 = one.dequantize()
    fusedopt.set_num_threads(2)
    two = fusedopt.quantize(x, signed)
    assert one == two
    np.testing.assert_array_equal(bits(two.dequantize()), bits(out1))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_every_code_round_trips(isa, signed):
    # one block holding all 256 codes: decode, then encode -> the same codes and the same scale
    rng = np.random.default_rng(2)
    codes = rng.permutation(np.arange(256, dtype=np.uint8))
    # down to the scales whose smallest code is still a float32 with 3 exact mantissa bits
    # (1.25 * 2^-16 * 2^-126 is; 1.25 * 2^-32 * 2^-126 underflows to 0)
    for scale in [1.0, 3.5, 1e-30, 7e35, 2.0**-126 if signed else 2.0**-112]:
        q = QuantizedState(codes.copy(), np.array([scale], np.float32), signed)
        again = fusedopt.quantize(q.dequantize(), signed)
        assert again == q, scale
    # and any quantized state: quantize(dequantize(q)) == q, partial last block included
    q = fusedopt.quantize(wide_values(rng, 5000, signed), signed)
    assert fusedopt.quantize(q.dequantize(), signed) == q


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_grid(signed):
    g = grid(signed, 1.0)
    assert g[0] == 0.0 and g[TOP[signed]] == 1.0 and g[1] == SMALLEST[signed]
    assert np.all(np.diff(g) > 0)
    # 8 steps per binade: each value is 2^(1/8)-ish above the last, never more than 1/8 relative
    rel_step = np.diff(g[1:]) / g[1:-1]
    assert rel_step.max() <= 0.125 + 1e-12 and rel_step.min() >= 1 / 15 - 1e-12
    if signed:  # the sign bit mirrors every magnitude
        k = np.arange(128, dtype=np.uint8)
        neg = reference.dequantize_blockwise(k | 0x80, np.array([1.0], np.float32), True)
        np.testing.assert_array_equal(neg, -g)
        assert np.signbit(neg[0])


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_error_bound_over_the_range(isa, signed):
    """Within the range the code is the nearest grid value, so the relative error is <= 2^-4;
    below the smallest code: signed -> the nearer of 0 and the smallest, unsigned -> the smallest."""
    rng = np.random.default_rng(3)
    blocks = 400
    lo = np.log2(SMALLEST[signed]) - 4
    x = np.exp2(rng.uniform(lo, 0, (blocks, QUANT_BLOCK)))
    x *= rng.uniform(0.5, 1e4, (blocks, 1))
    if signed:
        x *= rng.choice([-1.0, 1.0], x.shape)
    x = x.astype(np.float32)
    q = fusedopt.quantize(x, signed)
    d = q.dequantize().astype(np.float64)
    x64 = x.astype(np.float64)
    scale = np.abs(x64).max(axis=1, keepdims=True)
    np.testing.assert_array_equal(q.scales, scale[:, 0].astype(np.float32))
    y = np.abs(x64) / scale
    err = np.abs(d - x64)
    inside = y >= SMALLEST[signed]
    assert inside.sum() > 0.5 * x.size and (~inside).sum() > 1000
    rel = err[inside] / np.abs(x64[inside])
    assert rel.max() <= 2.0**-4 * (1 + 1e-5), rel.max()
    # nearest: no grid value is closer (up to the fp32 roundings of 1/scale and the products)
    g = grid(signed)
    idx = np.clip(np.searchsorted(g, y), 1, len(g) - 1)
    best = np.minimum(np.abs(g[idx] - y), np.abs(g[idx - 1] - y)) * scale
    nearest = inside | signed  # unsigned rounds up below the range, on purpose (checked below)
    assert np.all((err <= best + 2.0**-21 * np.abs(x64))[nearest])
    # below the range
    small = y[~inside]
    got = np.abs(d[~inside]) / np.broadcast_to(scale, x.shape)[~inside]
    if signed:
        expect = np.where(small > SMALLEST[True] / 2, SMALLEST[True], 0.0)
    else:
        expect = np.full_like(small, SMALLEST[False])  # never 0 for a positive value
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    # signs survive
    if signed:
        assert np.all(np.signbit(d) == np.signbit(x))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_ties_round_to_the_larger_code(isa, signed):
    # a block whose absmax is 1.0 (so |x| / scale is x, exactly) holding every midpoint between
    # two neighbouring nonzero codes: each encodes to the larger; the midpoint between 0 and the
    # smallest code (signed) encodes to 0
    g = grid(signed).astype(np.float32)
    mid = (g[1:-1] + g[2:]) / 2  # exact: 5 significant bits
    assert np.all((mid > g[1:-1]) & (mid < g[2:]))
    x = np.concatenate([[1.0], mid, [SMALLEST[signed] / 2] if signed else []]).astype(np.float32)
    expect = np.concatenate([[TOP[signed]], np.arange(2, TOP[signed] + 1), [0] if signed else []])
    q = fusedopt.quantize(x, signed)
    np.testing.assert_array_equal(q.codes, expect.astype(np.uint8))
    np.testing.assert_array_equal(reference.quantize_blockwise(x, signed)[0], q.codes)


def test_unsigned_positive_never_zero(isa):
    x = np.full(300, 1e-30, np.float32)
    x[5] = 1e30  # 60 orders of magnitude below the block's absmax
    x[290] = 3.0
    q = fusedopt.quantize(x, False)
    d = q.dequantize()
    assert np.all(d > 0)
    assert d[5] == np.float32(1e30) and d[290] == np.float32(3.0)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_zero_nan_inf_subnormal_blocks(isa, signed):
    n = 5 * QUANT_BLOCK + 3
    x = wide_values(np.random.default_rng(4), n, signed)
    x[0:256] = 0.0
    if signed:
        x[10:20] = -0.0
    x[256 + 17] = np.nan  # block 1
    x[512 + 3] = np.inf  # block 2
    x[768:1024] = np.float32(1e-40)  # block 3: fp32 subnormals only
    if signed:
        x[768:1024:2] *= -1
    q = fusedopt.quantize(x, signed)
    codes, scales = reference.quantize_blockwise(x, signed)
    np.testing.assert_array_equal(q.codes, codes)
    np.testing.assert_array_equal(bits(q.scales), bits(scales))
    assert q.scales[0] == 0 and np.isnan(q.scales[1]) and np.isnan(q.scales[2]) and q.scales[3] == 0
    sign_codes = (np.signbit(x) * 0x80).astype(np.uint8) if signed else np.zeros(n, np.uint8)
    for b in range(4):
        np.testing.assert_array_equal(q.codes[256 * b:256 * b + 256], sign_codes[256 * b:256 * b + 256])
    d = q.dequantize()
    assert np.all(d[:256] == 0) and np.all(np.isnan(d[256:768])) and np.all(d[768:1024] == 0)
    if signed:
        assert np.all(np.signbit(d[10:20])) and not np.any(np.signbit(d[20:256]))
    # the last blocks are untouched by their neighbours' specials
    clean = fusedopt.quantize(x[1024:], signed)
    np.testing.assert_array_equal(q.codes[1024:], clean.codes)
    np.testing.assert_array_equal(q.scales[4:], clean.scales)


def test_unsigned_takes_magnitudes_in_the_kernel():
    # the kernel encodes |x| for the unsigned code; fusedopt.quantize refuses negatives first
    x = np.linspace(-2, 1, 300, dtype=np.float32)
    codes, scales = np.empty(300, np.uint8), np.empty(2, np.float32)
    _core.quantize_blockwise(x, codes, scales, False)
    ref_codes, ref_scales = reference.quantize_blockwise(np.abs(x), False)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(scales, ref_scales)
    with pytest.raises(ValueError, match="non-negative"):
        fusedopt.quantize(x, False)


def test_shapes_dtypes_and_sources():
    x = np.random.default_rng(5).standard_normal((3, 5, 70))
    q = fusedopt.quantize(x, True)  # float64 is converted to float32 first
    assert q.shape == (3, 5, 70) and q.size == 1050 and q.nbytes == 1050 + 4 * 5
    np.testing.assert_array_equal(q.codes, reference.quantize_blockwise(x.astype(np.float32), True)[0])
    assert q.dequantize().shape == (3, 5, 70)
    scalar = fusedopt.quantize(np.array(-2.5, np.float32), True)
    assert scalar.shape == () and scalar.dequantize() == np.float32(-2.5)
    empty = fusedopt.quantize(np.zeros((0, 4), np.float32), False)
    assert empty.shape == (0, 4) and empty.scales.shape == (0,) and empty.dequantize().shape == (0, 4)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    b = np.linspace(0, 3, 100).astype(ml_dtypes.bfloat16)
    assert fusedopt.quantize(b, False) == fusedopt.quantize(b.astype(np.float32), False)


def test_torch_tensor_source():
    torch = pytest.importorskip("torch")
    t = torch.linspace(-1, 2, 600)
    assert fusedopt.quantize(t, True) == fusedopt.quantize(t.numpy(), True)
    z = fusedopt.quantized_zeros_like(t.reshape(20, 30), signed=False)
    assert z.shape == (20, 30) and not z.signed


def test_quantized_zeros_like():
    for shape in [(), (5,), (300, 7), (2_200_000,)]:
        z = fusedopt.quantized_zeros_like(np.empty(shape, np.float32), signed=True)
        assert z.shape == shape and z.codes.dtype == np.uint8 and z.codes.flags.c_contiguous
        assert z.codes.flags.writeable and not np.any(z.codes) and not np.any(z.scales)
        assert z.scales.shape == (-(-int(np.prod(shape)) // 256),)
        assert np.all(z.dequantize() == 0)


def test_state_object():
    x = np.linspace(-3, 3, 1000, dtype=np.float32)
    q = fusedopt.quantize(x, True)
    assert repr(q) == "QuantizedState(shape=(1000,), signed, 4 blocks of 256, 1016 bytes)"
    p = pickle.loads(pickle.dumps(q))
    assert p == q and p is not q and p.codes is not q.codes
    c = q.copy()
    assert c == q
    c.codes[7] ^= 1
    assert c != q
    c = q.copy()
    c.scales[0] = np.nextafter(c.scales[0], np.float32(np.inf))
    assert c != q
    assert q != QuantizedState(q.codes, q.scales, False)  # same bits, the other code
    assert q != fusedopt.quantize(x.reshape(10, 100), True)  # same bits, another shape
    # NaN scales compare by their bits
    n = fusedopt.quantize(np.full(10, np.nan, np.float32), True)
    assert n == n.copy()
    with pytest.raises(TypeError):
        hash(q)
    # quantize into an existing state
    out = fusedopt.quantized_zeros_like(x, signed=True)
    assert fusedopt.quantize(x, True, out=out) is out and out == q


def test_bad_arguments_change_nothing():
    x = np.linspace(0, 1, 600, dtype=np.float32)
    codes, scales = np.zeros(600, np.uint8), np.zeros(3, np.float32)
    cases = [
        ((x.astype(np.float64), codes, scales, True), TypeError, "float32"),
        ((x, codes.astype(np.int8), scales, True), TypeError, "uint8"),
        ((x, codes, scales.astype(np.float64), True), TypeError, "float32"),
        ((x, codes[:599], scales, True), ValueError, "codes has 599"),
        ((x, codes, scales[:2], True), ValueError, "one per block"),
        ((x, np.zeros(1200, np.uint8)[::2], scales, True), ValueError, "C-contiguous"),
        ((x, codes, np.zeros(6, np.float32)[::2], True), ValueError, "C-contiguous"),
        ((x, x.view(np.uint8)[:600], scales, True), ValueError, "share memory"),
        ((list(x), codes, scales, True), TypeError, "numpy.ndarray"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            _core.quantize_blockwise(*args)
        assert not codes.any() and not scales.any()
    read_only = np.zeros(600, np.uint8)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _core.quantize_blockwise(x, read_only, scales, True)
    q = fusedopt.quantize(x, False)
    out = np.zeros(600, np.float32)
    with pytest.raises(ValueError, match="values has 599|codes has 600"):
        _core.dequantize_blockwise(q.codes, q.scales, out[:599], False)
    with pytest.raises(TypeError, match="float32"):
        q.dequantize(np.zeros(600, np.float64))
    assert not out.any()
    # QuantizedState and quantize check their arguments
    with pytest.raises(TypeError, match="uint8"):
        QuantizedState(np.zeros(3, np.int8), np.zeros(1, np.float32), True)
    with pytest.raises(TypeError, match="float32"):
        QuantizedState(np.zeros(3, np.uint8), np.zeros(1), True)
    with pytest.raises(ValueError, match="one scale per block"):
        QuantizedState(np.zeros(300, np.uint8), np.zeros(1, np.float32), True)
    with pytest.raises(ValueError, match="C-contiguous"):
        QuantizedState(np.zeros((20, 20), np.uint8).T, np.zeros(2, np.float32), True)
    with pytest.raises(TypeError, match="signed"):
        QuantizedState(np.zeros(3, np.uint8), np.zeros(1, np.float32), 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating-point"):
        fusedopt.quantize(np.arange(10), True)
    with pytest.raises(TypeError, match="signed"):
        fusedopt.quantize(x, "yes")  # type: ignore[arg-type]
    before = q.copy()
    with pytest.raises(ValueError, match="signed=True"):
        fusedopt.quantize(x, True, out=q)
    with pytest.raises(ValueError, match="shape"):
        fusedopt.quantize(x[:10], False, out=q)
    assert q == before


# ---- the low-bit bench section (python/fusedopt/bench_lowbit.py) ----------------------------------

def test_bench_probe_moves_the_mode_bytes():
    from fusedopt import bench_lowbit

    n = 1 << 12
    for mode in bench_lowbit.MODES:
        for optimizer, (_, states, _) in bench_lowbit.OPTIMIZERS.items():
            rw, ro, wo = mode.traffic(len(states))
            passes = bench_lowbit._probe_passes(n, rw, ro, wo)
            got = [sum(a.nbytes for p in passes for a in p[k]) for k in range(3)]
            # read-only bytes are paired with a write-only array when no read-write one is left
            assert got[0] == rw * n and got[1] == ro * n and got[2] >= wo * n, (mode, optimizer)
            assert all(len(p[0]) <= 4 and len(p[1]) <= 2 and len(p[2]) <= 1 and (p[0] or p[2]) for p in passes)
    adam8 = bench_lowbit.ModeProblem("adamw", bench_lowbit.MODES[3], [(300,)])
    assert adam8.state_bytes == 2 * (1 + 4 / 256) and adam8.bytes_per_param == 2 * 6 + 4


def test_bench_rows_and_table():
    from fusedopt import bench_lowbit

    rows = bench_lowbit._step_rows("sgd_momentum", "64K", [1], quick=True)
    assert [r["mode"] for r in rows] == [m.name for m in bench_lowbit.MODES]
    fp32 = rows[0]
    assert fp32["fusedopt_s"] > 0 and fp32["probe_s"] > 0 and fp32["bytes_per_param"] == 20
    # the arithmetic floor: one fp32 per-param time for every mode, times its params
    assert fp32["floor_s"] > 0 and len({r["floor_s"] for r in rows if "floor_s" in r}) == 1
    for r in rows:
        assert ("unavailable" in r) != ("fusedopt_s" in r)
        if "unavailable" in r:
            assert r["unavailable"].startswith("not available: ")
    text = bench_lowbit.table(rows)
    assert text.count("| sgd_momentum | 64K | 1 |") == len(bench_lowbit.MODES)
    with pytest.raises(ValueError, match="threads"):
        bench_lowbit.rows(True, [0])


def test_bench_times_foreign_steps_in_a_child_process():
    """The optional 8-bit libraries are timed by a child process (here with torch's own fused
    step, which _torch_step builds for any other library name): one (best, median) per thread count."""
    pytest.importorskip("torch")
    from fusedopt import bench_lowbit

    times = bench_lowbit._foreign_times("torch", "adamw", "64K", [1, 2], quick=True)
    assert sorted(times) == [1, 2]
    assert all(0 < best <= median for best, median in times.values())


@pytest.mark.parametrize("optimizer", ["adamw", "sgd_momentum"])
def test_fused_8bit_state_is_the_codec_around_the_fp32_update(isa, threads, optimizer):
    """An update over QuantizedState (the blockwise driver) gives the bits of: dequantize, the
    float32 update, quantize; on every ISA, 1 and 2 threads, tensors with partial last blocks."""
    fn, states, hyper = {
        "adamw": (fusedopt.adamw_, {"exp_avgs": True, "exp_avg_sqs": False}, {"lr": 1e-3, "weight_decay": 1e-2}),
        "sgd_momentum": (fusedopt.sgd_, {"momentum_buffers": True}, {"lr": 1e-2, "momentum": 0.9}),
    }[optimizer]
    rng = np.random.default_rng(7)
    shapes = [(300_001,), (3, 70), (5,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    emulated = [p.copy() for p in params]
    fused_state = {k: [fusedopt.quantized_zeros_like(p, signed=s) for p in params] for k, s in states.items()}
    emulated_state = {k: [q.copy() for q in v] for k, v in fused_state.items()}
    for t in range(1, 5):
        fusedopt.set_num_threads(1 + t % 2)
        grads = [(rng.standard_normal(s) * 10.0 ** rng.uniform(-4, 1)).astype(np.float32) for s in shapes]
        try:
            fn(params, grads, **fused_state, step=t, **hyper)
        except TypeError:
            pytest.skip("this build's update functions take no QuantizedState")
        floats = {k: [q.dequantize() for q in v] for k, v in emulated_state.items()}
        fn(emulated, grads, **floats, step=t, **hyper)
        for k, v in emulated_state.items():
            for q, f in zip(v, floats[k]):
                fusedopt.quantize(f, q.signed, out=q)
        for a, b in zip(params, emulated):
            np.testing.assert_array_equal(bits(a), bits(b))
        for k in states:
            assert fused_state[k] == emulated_state[k]
