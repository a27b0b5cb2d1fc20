"""Mixed precision in the optimizer kernels (issue 15): bfloat16/float16 params and grads,
bfloat16 state, fp32 master weights with a 16-bit copy, stochastic rounding of bfloat16 params.

Oracles, on every ISA, with tails and unaligned starts:
- the conversions: bitwise against NumPy's float16 and reference.to_bfloat16 (and ml_dtypes'
  bfloat16 for every non-NaN), every 16-bit pattern round-tripping through an update that
  changes nothing;
- the mixed kernels: bitwise against fusedopt's own float32 kernel on the widened arrays
  followed by reference rounding (they are that by construction: the same float32 loop);
- the NumPy reference of each mixed update (reference.mixed_): float32 math rounded twice where
  the kernel fuses, so a 16-bit result may sit one 16-bit ulp away (the float32 results differ
  by a few float32 ulps and a rounding boundary can fall between them), float32 results within
  32 float32 ulps of their largest magnitude, as in test_optim;
- stochastic rounding: bitwise against reference.stochastic_round_bfloat16 with the same random
  bits, the NumPy generator against _core.random_bits, unbiased within 5 standard errors,
  bitwise across thread counts and ISAs.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fusedopt
from conftest import FMA_ISAS, assert_isas_agree
from fusedopt import _core, reference

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F32 = np.dtype(np.float32)
F16 = np.dtype(np.float16)

SIZES = [1, 7, 15, 16, 17, 63, 300, 1000]  # tails of every vector width; 300 and 1000 cross a staged block


def rand(rng, n, dtype, scale=1.0, unaligned=False):
    a = (rng.standard_normal(n + 1) * scale).astype(np.float32).astype(dtype)
    return a[1:] if unaligned else a[:n].copy()


def bits(a):
    return a.view(np.uint16 if a.itemsize == 2 else np.uint32 if a.itemsize == 4 else np.uint64)


def same(a, b):
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def round_to(x, dtype):
    """float32 x stored as dtype, by the reference rules."""
    out = np.empty(x.shape, dtype)
    reference._store(out, x)
    return out


# optimizer -> (function name, state arrays, options)
OPTIMIZERS = {
    "sgd": ("sgd_", ["momentum_buffers"], dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "adagrad": ("adagrad_", ["state_sums"], dict(lr=0.05, weight_decay=0.01)),
    "rmsprop": ("rmsprop_", ["square_avgs", "momentum_buffers", "grad_avgs"],
                dict(lr=0.01, centered=True, momentum=0.9)),
    "adam": ("adam_", ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"], dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    "adamw": ("adamw_", ["exp_avgs", "exp_avg_sqs"], dict(lr=0.01)),
}
# (params, grads, state) dtypes
MODES = [
    (BF16, BF16, BF16),
    (BF16, BF16, F32),
    (F16, F16, F32),
    (F16, F16, BF16),
    (F32, BF16, F32),
    (F32, F16, F32),
    (F32, F16, BF16),
    (F32, F32, BF16),
]
MODE_IDS = [f"p{p}-g{g}-s{s}".replace("bfloat16", "bf16").replace("float", "f") for p, g, s in MODES]


def problem(name, sizes, pdt, gdt, sdt, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    params = [rand(rng, n, pdt, unaligned=i % 2 == 1) for i, n in enumerate(sizes)]
    state = {}
    for s in OPTIMIZERS[name][1]:
        arrays = [np.zeros(n, sdt) for n in sizes]
        if s == "state_sums":
            arrays = [np.abs(rand(rng, n, sdt)) for n in sizes]
        state[s] = arrays
    grads = [[rand(rng, n, gdt, unaligned=(i + step) % 2 == 1) for i, n in enumerate(sizes)] for step in range(steps)]
    return params, state, grads


def step_kwargs(name, step):
    return {"step": step}


def run_steps(fn, name, params, state, grads, **extra):
    opts = OPTIMIZERS[name][2]
    for step, g in enumerate(grads, start=1):
        fn(params, g, **state, **opts, **step_kwargs(name, step), **extra)


def fused(name):
    return getattr(fusedopt, OPTIMIZERS[name][0])


# ---- conversions ------------------------------------------------------------------------------

SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-40, -1e-40, 1e-45, 6e-8, 3e-8, 2.9e-8,
                    65504.0, 65519.0, 65520.0, -65520.0, 3.4e38, 3.3961776e38, 3.3961778e38, 1.0 + 2.0**-8,
                    1.0 + 3 * 2.0**-8, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 6.1e-5, 6.09e-5], np.float32)


def float_patterns(rng, n):
    """Random float32 bit patterns (every exponent, quiet NaNs with payloads: arithmetic quiets
    signaling ones), plus the special values."""
    raw = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    raw = np.where((raw & 0x7F800000) == 0x7F800000, raw | 0x400000, raw).view(np.float32)
    near_half = (rng.standard_normal(n) * 2.0 ** rng.integers(-26, 17, n)).astype(np.float32)
    return np.concatenate([SPECIAL, raw, near_half])


@pytest.mark.parametrize("copy_dtype", [BF16, F16], ids=["bf16", "f16"])
@pytest.mark.parametrize("offset", [0, 1])
def test_param_copy_conversion_bitwise(isa, copy_dtype, offset):
    """fp32 params through an update that changes nothing (lr=0, grads 0): the copy is the
    params rounded to nearest even, bitwise as NumPy/the reference round them."""
    rng = np.random.default_rng(1)
    x = float_patterns(rng, 5000)
    p = np.concatenate([np.zeros(offset, np.float32), x])[offset:]
    before = p.copy()
    copy = np.zeros(p.size + 1, copy_dtype)[1:] if offset else np.zeros(p.size, copy_dtype)
    fusedopt.sgd_(p, np.zeros_like(p), lr=0.0, param_copies=copy)
    assert same(p, before)
    want = reference.to_bfloat16(x) if copy_dtype == BF16 else round_to(x, F16)
    nan = np.isnan(x)
    assert np.array_equal(bits(copy)[~nan], bits(want)[~nan])
    if copy_dtype == BF16:
        # ml_dtypes (JAX's bfloat16) rounds the same way for every non-NaN
        with np.errstate(over="ignore"):
            assert np.array_equal(bits(copy)[~nan], bits(x.astype(BF16))[~nan])
        assert np.array_equal(bits(copy)[nan], bits(want)[nan])  # quiet NaNs, sign and payload kept
    else:
        assert np.isnan(copy[nan].astype(np.float32)).all()
        # x86's rule (F16C): quiet, same sign, top payload bits
        want_nan = (bits(x[nan]) >> 16 & 0x8000) | 0x7E00 | (bits(x[nan]) >> 13 & 0x3FF)
        assert np.array_equal(bits(copy)[nan], want_nan.astype(np.uint16))


# a child process: the param copy of x (bfloat16, to nearest even, aligned and not) and a few
# mixed steps with bfloat16 params rounded to nearest and bfloat16 state, saved to argv[2]; prints
# the optional CPU features the kernels used
BF16_ROUNDINGS = '''
import sys
import numpy as np, ml_dtypes, fusedopt
from fusedopt import _core
bf16 = np.dtype(ml_dtypes.bfloat16)
x = np.load(sys.argv[1])
out = {}
for offset in (0, 1):
    p = np.concatenate([np.zeros(offset, np.float32), x])[offset:]
    copy = np.zeros(p.size, bf16)
    fusedopt.sgd_(p, np.zeros_like(p), lr=0.0, param_copies=copy)
    out[f"copy{offset}"] = copy.view(np.uint16)
rng = np.random.default_rng(3)
p, g = (rng.standard_normal((2, 4099)) * np.array([[1.0], [1e-3]])).astype(np.float32).astype(bf16)
m, v = np.zeros_like(p), np.zeros_like(p)
for step in (1, 2, 3):
    fusedopt.adam_(p, g, m, v, step=step, lr=0.01, weight_decay=0.1)
out.update(p=p.view(np.uint16), m=m.view(np.uint16), v=v.view(np.uint16))
np.savez(sys.argv[2], **out)
print(" ".join(_core.cpu_features()))
'''


@pytest.mark.skipif("avx512" not in fusedopt.available_isas(), reason="no avx512 path on this CPU")
def test_avx512_bf16_rounding_with_and_without_avx512_bf16(tmp_path):
    """The avx512 copy rounds float32 to bfloat16 by vcvtneps2bf16 where the CPU has AVX512_BF16,
    by integer ops where it does not (Skylake-X): the second run, in a child process with
    FUSEDOPT_CPU_FEATURES_OFF=avx512bf16, gives the first's bits and the reference's."""
    x = float_patterns(np.random.default_rng(1), 5000)
    np.save(tmp_path / "x.npy", x)
    want = bits(reference.to_bfloat16(x))
    runs = {}
    for off in ("", "avx512bf16"):
        env = dict(os.environ, FUSEDOPT_ISA="avx512", FUSEDOPT_CPU_FEATURES_OFF=off)
        args = [sys.executable, "-c", BF16_ROUNDINGS, str(tmp_path / "x.npy"), str(tmp_path / f"{off}.npz")]
        r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        if off:
            assert "avx512bf16" not in r.stdout.split()
        runs[off] = np.load(tmp_path / f"{off}.npz")
        for offset in (0, 1):
            assert np.array_equal(runs[off][f"copy{offset}"], want), (off, offset)
    for k in ("p", "m", "v"):
        assert np.array_equal(runs[""][k], runs["avx512bf16"][k]), k


@pytest.mark.parametrize("dt", [BF16, F16], ids=["bf16", "f16"])
def test_every_16bit_pattern_round_trips(isa, dt):
    """16-bit params through an update that changes nothing: widened exactly, rounded back to the
    same bits (every pattern but signaling NaNs, which come back quiet)."""
    pat = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    if dt == BF16:
        snan = ((pat & 0x7F80) == 0x7F80) & ((pat & 0x7F) != 0) & ((pat & 0x40) == 0)
    else:
        snan = ((pat & 0x7C00) == 0x7C00) & ((pat & 0x3FF) != 0) & ((pat & 0x200) == 0)
    p = pat.view(dt).copy()
    fusedopt.sgd_(p, np.zeros_like(p), lr=0.0)
    got = bits(p)
    assert np.array_equal(got[~snan], pat[~snan])
    quiet = 0x40 if dt == BF16 else 0x200
    assert np.array_equal(got[snan], pat[snan] | quiet)


# ---- the mixed kernels ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_mixed_is_the_float32_kernel_rounded(isa, name, mode):
    """Bitwise: the mixed call equals fusedopt's float32 kernel on the widened arrays, each
    written array rounded back after every step."""
    pdt, gdt, sdt = mode
    params, state, grads = problem(name, SIZES, pdt, gdt, sdt)
    w_params = [p.astype(np.float32) for p in params]
    w_state = {k: [a.astype(np.float32) for a in v] for k, v in state.items()}
    opts = OPTIMIZERS[name][2]
    for step, g in enumerate(grads, start=1):
        fused(name)(params, g, **state, **opts, step=step)
        fused(name)(w_params, [x.astype(np.float32) for x in g], **w_state, **opts, step=step)
        w_params = [round_to(x, pdt).astype(np.float32) for x in w_params]
        w_state = {k: [round_to(x, sdt).astype(np.float32) for x in v] for k, v in w_state.items()}
    for got, want in zip(params, w_params):
        assert same(got, round_to(want, pdt)), isa
    for k in state:
        for got, want in zip(state[k], w_state[k]):
            assert same(got, round_to(want, sdt)), k


def ulp16(x, dtype):
    """The spacing of dtype (bfloat16 or float16) at |x| (float32 values)."""
    a = np.abs(x).astype(np.float32)
    if dtype == F16:
        return np.spacing(a.astype(np.float16)).astype(np.float32)
    return np.maximum(np.spacing(a) * np.float32(65536), np.float32(2.0**-133))


def assert_close_16(got, want, ulps=1):
    """16-bit arrays within `ulps` units in the last place of their own dtype (NaNs alike)."""
    g, w = got.astype(np.float32), want.astype(np.float32)
    assert np.array_equal(np.isnan(g), np.isnan(w))
    ok = ~np.isnan(w)
    tol = ulps * np.maximum(ulp16(w[ok], got.dtype), ulp16(g[ok], got.dtype))
    diff = np.abs(g[ok] - w[ok])
    assert np.all(diff <= tol), float(np.max(diff / tol))


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_mixed_matches_reference(isa, name, mode):
    """Against reference.mixed_ (one step: the float32 results then differ by a few float32
    ulps, so a 16-bit result lies within one 16-bit ulp of the reference's)."""
    pdt, gdt, sdt = mode
    params, state, grads = problem(name, SIZES, pdt, gdt, sdt, steps=1)
    ref_params, ref_state = [p.copy() for p in params], {k: [a.copy() for a in v] for k, v in state.items()}
    opts = OPTIMIZERS[name][2]
    fused(name)(params, grads[0], **state, **opts, step=1)
    reference.mixed_(getattr(reference, OPTIMIZERS[name][0]), ref_params, grads[0], **ref_state, **opts, step=1)
    for got, want in zip(params + sum(state.values(), []), ref_params + sum(ref_state.values(), [])):
        if got.dtype == F32:
            scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
            np.testing.assert_allclose(got, want, rtol=0, atol=32 * np.finfo(np.float32).eps * scale)
        else:
            assert_close_16(got, want)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_isas_agree_bitwise(mode):
    """One kernel source and bit-exact conversions: every ISA of the same FMA kind, same bits."""
    before = fusedopt.isa()
    by_isa = {}
    try:
        for isa in fusedopt.available_isas():
            fusedopt.set_isa(isa)
            params, state, grads = problem("adam", SIZES, *mode)
            run_steps(fusedopt.adam_, "adam", params, state, grads)
            by_isa[isa] = params + sum(state.values(), [])
    finally:
        fusedopt.set_isa(before)
    assert_isas_agree(by_isa, same)


@pytest.mark.parametrize("state_dtype", [F32, BF16], ids=["sf32", "sbf16"])
@pytest.mark.parametrize("copy_dtype", [BF16, F16], ids=["bf16", "f16"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_master_weights(isa, name, copy_dtype, state_dtype):
    """fp32 params updated exactly as without a copy; the copy is them rounded to nearest even.
    The grads are of the copy's dtype, as the model's are. (The calls with a copy run compiled
    loops of their own, Fixed or Staged in mixed.h, and those without other ones: two paths that
    must agree.)"""
    params, state, grads = problem(name, SIZES, F32, copy_dtype, state_dtype)
    params2, state2 = [p.copy() for p in params], {k: [a.copy() for a in v] for k, v in state.items()}
    copies = [np.full(p.size, np.nan, copy_dtype) for p in params]
    for step, g in enumerate(grads, start=1):
        fused(name)(params, g, **state, **OPTIMIZERS[name][2], step=step, param_copies=copies)
        fused(name)(params2, g, **state2, **OPTIMIZERS[name][2], step=step)
        for c, p in zip(copies, params):
            assert same(c, round_to(p, copy_dtype))
    for a, b in zip(params + sum(state.values(), []), params2 + sum(state2.values(), [])):
        assert same(a, b)


# ---- stochastic rounding -----------------------------------------------------------------------

def test_random_bits_generator():
    """The NumPy generator is the kernels' (also across a 2^32 element boundary), on every ISA."""
    before = fusedopt.isa()
    try:
        for isa in fusedopt.available_isas():
            fusedopt.set_isa(isa)
            for seed, step, tensor, offset, n in [(0, 1, 0, 0, 1000), (12345, 7, 3, 33, 77),
                                                  (2**63, 2, 1, 2**32 - 20, 50)]:
                assert np.array_equal(_core.random_bits(seed, step, tensor, offset, n),
                                      reference.random_bits(seed, step, tensor, offset, n)), isa
    finally:
        fusedopt.set_isa(before)
    # keyed: another seed, step or tensor gives other bits
    base = _core.random_bits(1, 1, 0, 0, 64)
    for other in [(2, 1, 0), (1, 2, 0), (1, 1, 1)]:
        assert np.mean(_core.random_bits(*other, 0, 64) == base) < 0.1
    # and the bits look uniform: each of the 16 bits the rounding uses is set about half the time
    b = _core.random_bits(9, 9, 0, 0, 1 << 16)
    assert b.max() < (1 << 16)
    freq = [np.mean((b >> k) & 1) for k in range(16)]
    assert np.allclose(freq, 0.5, atol=0.01), freq
    # the two elements whose bits are the halves of one hash (16 apart in a group of 32) and
    # neighbours are uncorrelated: correlation within 5 standard errors of 0 (1/sqrt(n) each)
    groups = b.reshape(-1, 2, 16).astype(np.float64)
    for x, y in [(groups[:, 0], groups[:, 1]), (b[:-1].astype(np.float64), b[1:].astype(np.float64))]:
        r = np.corrcoef(x.ravel(), y.ravel())[0, 1]
        assert abs(r) < 5 / np.sqrt(x.size), r


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_stochastic_rounding_matches_reference(isa, name):
    """Bitwise: the float32 kernel's result rounded by the reference's stochastic rule with the
    reference generator's bits (tensor index = position in the list, element index = offset)."""
    params, state, grads = problem(name, SIZES, BF16, BF16, BF16)
    w_params = [p.astype(np.float32) for p in params]
    w_state = {k: [a.astype(np.float32) for a in v] for k, v in state.items()}
    opts = OPTIMIZERS[name][2]
    for step, g in enumerate(grads, start=1):
        fused(name)(params, g, **state, **opts, step=step, stochastic_rounding=True, seed=42)
        fused(name)(w_params, [x.astype(np.float32) for x in g], **w_state, **opts, step=step)
        w_params = [reference.stochastic_round_bfloat16(x, reference.random_bits(42, step, t, 0, x.size))
                    .astype(np.float32) for t, x in enumerate(w_params)]
        w_state = {k: [round_to(x, BF16).astype(np.float32) for x in v] for k, v in w_state.items()}
    for got, want in zip(params, w_params):
        assert same(got, want.astype(BF16))
    # and the reference's mixed update with stochastic rounding agrees within one bf16 ulp
    params, state, grads = problem(name, SIZES, BF16, BF16, BF16, steps=1)
    ref_params, ref_state = [p.copy() for p in params], {k: [a.copy() for a in v] for k, v in state.items()}
    fused(name)(params, grads[0], **state, **opts, step=1, stochastic_rounding=True, seed=3)
    reference.mixed_(getattr(reference, OPTIMIZERS[name][0]), ref_params, grads[0], **ref_state, **opts, step=1,
                     stochastic_rounding=True, seed=3)
    for got, want in zip(params, ref_params):
        assert_close_16(got, want)


def test_stochastic_rounding_unbiased(isa):
    """Updates far below bf16's resolution: round to nearest loses them, stochastic rounding
    keeps them on average. Each element of 1 - d (d = 0.3 ulp of bf16 below 1) rounds to 1 - 2^-8
    with probability 0.3; the mean error is within 5 standard errors of 0."""
    n = 200_003
    ulp = 2.0**-8  # bf16's spacing just below 1
    lr = np.float32(0.3 * ulp)
    exact = float(np.float32(1) - lr)
    for step in (1, 2):
        p = np.ones(n, BF16)
        fusedopt.sgd_(p, np.ones(n, BF16), lr=float(lr), step=step, stochastic_rounding=True, seed=7)
        values = p.astype(np.float64)
        assert set(np.unique(values)) <= {1.0, 1.0 - ulp}
        frac = np.mean(values == 1.0 - ulp)
        sigma = np.sqrt(0.3 * 0.7 / n)
        assert abs(frac - 0.3) < 5 * sigma, (step, frac)
        assert abs(values.mean() - exact) < 5 * sigma * ulp
        # negative values round symmetrically (the magnitude's bits get the random carry)
        q = -np.ones(n, BF16)
        fusedopt.sgd_(q, -np.ones(n, BF16), lr=float(lr), step=step, stochastic_rounding=True, seed=7)
        assert abs(np.mean(q.astype(np.float64) == -(1.0 - ulp)) - 0.3) < 5 * sigma
    p = np.ones(n, BF16)
    fusedopt.sgd_(p, np.ones(n, BF16), lr=float(lr))  # round to nearest: the update is lost
    assert (p.astype(np.float32) == 1).all()


def test_stochastic_rounding_nan_inf_unchanged(isa):
    p = np.array([np.nan, np.inf, -np.inf, -np.nan, 1.0, 3.389e38] * 7, np.float32).astype(BF16)
    before = bits(p).copy()
    fusedopt.sgd_(p, np.zeros_like(p), lr=0.1, step=1, stochastic_rounding=True, seed=1)
    assert np.array_equal(bits(p), before)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_stochastic_rounding_thread_count_and_isa(name, threads):
    """The random bits depend on (seed, step, tensor, element), not on the chunking: 1 and 2
    threads, and every ISA of one FMA kind, give the same bits (tensors large enough to split)."""
    sizes = [300_001, 5, 400_017]
    before = fusedopt.isa()
    got = {}
    try:
        for isa in fusedopt.available_isas():
            fusedopt.set_isa(isa)
            for n_threads in (1, 2):
                fusedopt.set_num_threads(n_threads)
                params, state, grads = problem(name, sizes, BF16, BF16, BF16, steps=2, seed=5)
                run_steps(fused(name), name, params, state, grads, stochastic_rounding=True, seed=99)
                got[isa, n_threads] = params
    finally:
        fusedopt.set_isa(before)
    for isa in fusedopt.available_isas():
        assert all(same(a, b) for a, b in zip(got[isa, 1], got[isa, 2])), isa
    for fma in (True, False):
        group = [isa for isa in fusedopt.available_isas() if (isa in FMA_ISAS) == fma]
        for isa in group[1:]:
            assert all(same(a, b) for a, b in zip(got[group[0], 1], got[isa, 1])), isa


def test_large_mixed_thread_count(threads):
    """Mixed calls cut across threads (cuts inside a staged block) give the same bits."""
    got = []
    for n_threads in (1, 2):
        fusedopt.set_num_threads(n_threads)
        params, state, grads = problem("adam", [1_000_003], F32, BF16, BF16, steps=2, seed=2)
        copies = [np.zeros(1_000_003, BF16)]
        run_steps(fusedopt.adam_, "adam", params, state, grads, param_copies=copies)
        got.append(params + copies + sum(state.values(), []))
    assert all(same(a, b) for a, b in zip(*got))


# ---- checks -----------------------------------------------------------------------------------

def test_skip_if_nonfinite_16bit_grads(isa):
    for gdt, pdt in [(BF16, BF16), (F16, F32), (BF16, F32), (F16, F16)]:
        p = np.ones(100, pdt)
        g = np.ones(100, gdt)
        g[77] = np.inf
        m, v = np.zeros(100, np.float32), np.zeros(100, np.float32)
        assert fusedopt.adam_(p, g, m, v, step=1, lr=0.1, skip_if_nonfinite=True) is False
        assert (p.astype(np.float32) == 1).all() and not m.any()
        g[77] = 1
        assert fusedopt.adam_(p, g, m, v, step=1, lr=0.1, skip_if_nonfinite=True) is True
        assert (p.astype(np.float32) != 1).all()


def test_all_finite_16bit_grads(isa):
    """fusedopt.all_finite takes the grads' every dtype: 16-bit ones unscaled in float32, as the
    updates unscale them (a float16 60000 times 1 / 1e-35 is inf in float32)."""
    for gdt in (BF16, F16):
        g = [np.ones(300, gdt), np.full(77, 60000, gdt)]
        assert fusedopt.all_finite(g) and fusedopt.all_finite(g, grad_scale=0.5)
        assert not fusedopt.all_finite(g, grad_scale=1e-35)
        for bad in (np.inf, -np.inf, np.nan):
            g[0][255] = bad
            assert not fusedopt.all_finite(g)
            g[0][255] = 1
    with pytest.raises(TypeError, match=r"grads\[1\] has dtype float32 but grads\[0\] has bfloat16"):
        fusedopt.all_finite([np.ones(3, BF16), np.ones(3, np.float32)])


def bad_calls():
    f64 = np.dtype(np.float64)
    adam = fusedopt.adam_
    return [
        ("fp16 state", TypeError, "exp_avgs", lambda a: adam(a[BF16], a["gb"], a[F16], a[F32], step=1)),
        ("bf16 state of f64 params", TypeError, "exp_avg_sqs",
         lambda a: adam(a[f64], a["g64"], a["s64"], a[BF16], step=1)),
        ("f32 grads of bf16 params", TypeError, "grads", lambda a: adam(a[BF16], a[F32], a["s"], a["s2"], step=1)),
        ("bf16 grads of f64 params", TypeError, "grads", lambda a: adam(a[f64], a[BF16], a["s64"], a["s642"], step=1)),
        ("f16 grads of bf16 params", TypeError, "grads", lambda a: adam(a[BF16], a[F16], a["s"], a["s2"], step=1)),
        ("copy of bf16 params", TypeError, "param_copies",
         lambda a: adam(a[BF16], a["gb"], a["s"], a["s2"], step=1, param_copies=a[F16])),
        ("f32 copy", TypeError, "param_copies",
         lambda a: adam(a[F32], a["g"], a["s"], a["s2"], step=1, param_copies=a["c32"])),
        ("SR of f32 params", TypeError, "stochastic_rounding",
         lambda a: adam(a[F32], a["g"], a["s"], a["s2"], step=1, stochastic_rounding=True, seed=1)),
        ("SR without seed", ValueError, "seed",
         lambda a: adam(a[BF16], a["gb"], a["s"], a["s2"], step=1, stochastic_rounding=True)),
        ("SR of sgd without step", ValueError, "step",
         lambda a: fusedopt.sgd_(a[BF16], a["gb"], lr=0.1, stochastic_rounding=True, seed=1)),
        ("int grads", TypeError, "grads", lambda a: adam(a[F32], a["i"], a["s"], a["s2"], step=1)),
        ("mixed dtypes in one list of params", TypeError, "params[1]",
         lambda a: adam([a[F32], a[BF16]], [a["g"], a["gb"]], [a["s"], a["sb"]], [a["s2"], a["s3"]], step=1)),
        ("f16 grads of bf16 params beside f32 ones", TypeError, "grads[1]",
         lambda a: adam([a[BF16], a["pb"]], [a["gb"], a[F16]], [a["s"], a["sb"]], [a["s2"], a["s3"]], step=1)),
        ("shape of a copy", ValueError, "param_copies",
         lambda a: adam(a[F32], a["g"], a["s"], a["s2"], step=1, param_copies=a["short"])),
    ]


@pytest.mark.parametrize("case", bad_calls(), ids=[c[0] for c in bad_calls()])
def test_bad_combinations_raise_before_writing(case):
    _, exc, name, call = case
    rng = np.random.default_rng(0)
    n = 10
    arrays = {d: rand(rng, n, d) for d in (F32, BF16, F16, np.dtype(np.float64))}
    arrays.update(g=rand(rng, n, F32), g2=rand(rng, n, F32), gb=rand(rng, n, BF16), g64=rand(rng, n, np.float64),
                  s=rand(rng, n, F32), s2=rand(rng, n, F32), s3=rand(rng, n, F32), sb=rand(rng, n, BF16),
                  s64=rand(rng, n, np.float64), s642=rand(rng, n, np.float64), c32=rand(rng, n, F32),
                  p2=rand(rng, n, F32), pb=rand(rng, n, BF16), i=np.arange(n), short=rand(rng, n - 1, BF16))
    before = {k: v.tobytes() for k, v in arrays.items()}
    with pytest.raises(exc, match=name.replace("[", r"\[")):
        call(arrays)
    assert {k: v.tobytes() for k, v in arrays.items()} == before


def test_state_dtype_may_differ_between_tensors(isa):
    """A list call may keep some tensors' state in float32 and others in bfloat16 or 8-bit (small
    tensors are not worth quantizing): each tensor updated as in a call of its own."""
    rng = np.random.default_rng(4)
    sizes = [5, 700, 300]
    params = [rand(rng, n, F32) for n in sizes]
    grads = [rand(rng, n, F32) for n in sizes]
    exp_avgs = [np.zeros(5, F32), np.zeros(700, BF16), fusedopt.quantized_zeros_like(params[2], signed=True)]
    exp_avg_sqs = [np.zeros(5, BF16), fusedopt.quantized_zeros_like(params[1], signed=False), np.zeros(300, F32)]
    alone = [p.copy() for p in params]
    alone_m = [np.zeros(5, F32), np.zeros(700, BF16), fusedopt.quantized_zeros_like(params[2], signed=True)]
    alone_v = [np.zeros(5, BF16), fusedopt.quantized_zeros_like(params[1], signed=False), np.zeros(300, F32)]
    fusedopt.adam_(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=0.01)
    for t in range(3):
        fusedopt.adam_(alone[t], grads[t], alone_m[t], alone_v[t], step=1, lr=0.01)
        assert same(params[t], alone[t])


def test_grad_dtype_may_differ_between_tensors(isa):
    """float32 params in one call may take grads of different dtypes (a low-precision backward
    gives a model's weights bfloat16 grads and leaves its biases' float32): each tensor updated
    as in a call of its own; skip_if_nonfinite finds an inf among the grads of either dtype."""
    rng = np.random.default_rng(5)
    sizes = [700, 5, 300, 33]
    grad_dtypes = [BF16, F32, F16, F32]
    params = [rand(rng, n, F32) for n in sizes]
    grads = [rand(rng, n, d) for n, d in zip(sizes, grad_dtypes)]
    exp_avgs = [np.zeros(n, F32) for n in sizes]
    exp_avg_sqs = [np.zeros(n, F32) if n != 300 else fusedopt.quantized_zeros_like(params[2], signed=False)
                   for n in sizes]
    alone = [(p.copy(), m.copy(), v.copy() if isinstance(v, np.ndarray) else fusedopt.quantized_zeros_like(p, False))
             for p, m, v in zip(params, exp_avgs, exp_avg_sqs)]
    for t in (0, 1, 2, 3):
        for bad in (np.inf, np.nan):
            before = [p.tobytes() for p in params]
            grads[t][t + 1] = bad
            assert fusedopt.adam_(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=0.01, grad_scale=2.0,
                                  skip_if_nonfinite=True) is False
            assert [p.tobytes() for p in params] == before
            grads[t][t + 1] = 1
    assert fusedopt.adam_(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=0.01, grad_scale=2.0,
                          skip_if_nonfinite=True) is True
    for t, (p, m, v) in enumerate(alone):
        fusedopt.adam_(p, grads[t], m, v, step=1, lr=0.01, grad_scale=2.0)
        assert same(params[t], p) and same(exp_avgs[t], m)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_unscale_grads_in_mixed_calls(isa, name, mode):
    """unscale_grads=True in a mixed call (each block's grads written after its update): grads
    become grad * (1 / grad_scale) in float32 rounded to their dtype, every tail and block, and the
    update is bitwise the one without it."""
    pdt, gdt, sdt = mode
    params, state, grads = problem(name, SIZES, pdt, gdt, sdt, steps=1)
    twin = ([p.copy() for p in params], {k: [a.copy() for a in v] for k, v in state.items()})
    g = grads[0]
    g_copy = [a.copy() for a in g]
    want = [round_to(a.astype(np.float32) * np.float32(1 / 8.0), gdt) for a in g]
    run_steps(fused(name), name, params, state, [g], grad_scale=8.0, unscale_grads=True)
    run_steps(fused(name), name, twin[0], twin[1], [g_copy], grad_scale=8.0)
    assert all(same(a, b) for a, b in zip(g, want))
    assert all(same(a, b) for a, b in zip(params, twin[0]))


def test_torch_bf16_tensors():
    torch = pytest.importorskip("torch")
    p = torch.randn(1000).to(torch.bfloat16)
    g = torch.randn(1000).to(torch.bfloat16)
    m, v = torch.zeros(1000, dtype=torch.bfloat16), torch.zeros(1000)
    p_np = p.view(torch.int16).numpy().view(BF16).copy()
    g_np, m_np, v_np = g.view(torch.int16).numpy().view(BF16).copy(), np.zeros(1000, BF16), np.zeros(1000, np.float32)
    fusedopt.adamw_(p, g, m, v, step=1, lr=0.01, stochastic_rounding=True, seed=5)
    fusedopt.adamw_(p_np, g_np, m_np, v_np, step=1, lr=0.01, stochastic_rounding=True, seed=5)
    assert p.view(torch.int16).numpy().tobytes() == p_np.tobytes()
    assert v.numpy().tobytes() == v_np.tobytes()


# ---- 8-bit blockwise state --------------------------------------------------------------------

# optimizer -> which of its state arrays are non-negative (unsigned code)
NONNEGATIVE = {"exp_avg_sqs", "max_exp_avg_sqs", "state_sums", "square_avgs"}
SIZES_8BIT = [1, 17, 255, 256, 257, 700, 1000]  # partial blocks, exact blocks, several blocks
# rmsprop_ refuses centered=True with 8-bit square_avgs or grad_avgs (their difference would be noise)
OPTIMIZERS_8BIT = {**OPTIMIZERS,
                   "rmsprop": ("rmsprop_", ["square_avgs", "momentum_buffers"], dict(lr=0.01, momentum=0.9))}


def quantized_problem(name, sizes, pdt, gdt, steps=3, seed=0):
    params, state, grads = problem(name, sizes, pdt, gdt, F32, steps=steps, seed=seed)
    q = {k: [fusedopt.quantize(a, signed=k not in NONNEGATIVE) for a in v] for k, v in state.items()
         if k in OPTIMIZERS_8BIT[name][1]}
    return params, q, grads


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_8bit_special_blocks_between_ordinary_ones(isa, name, threads):
    """A block's codes are written during the next block's loop, a NaN block's and an all-zero
    block's at once: blocks of each kind in turn, as the reference requantizes them."""
    n = 256 * 9 + 37
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(n).astype(F32)]
    grad = rng.standard_normal(n).astype(F32)
    grad[256 * 2 + 5] = np.nan  # block 2 poisoned
    grad[256 * 4:256 * 5] = 0.0  # block 4: zero grads on zero state
    grad[256 * 7 + 9] = np.inf  # block 7
    state = {k: [fusedopt.quantize(np.zeros(n, F32), signed=k not in NONNEGATIVE)] for k in OPTIMIZERS_8BIT[name][1]}
    opts = OPTIMIZERS_8BIT[name][2]
    w_params = [params[0].copy()]
    w_state = {k: [np.zeros(n, F32)] for k in state}
    old = fusedopt.get_num_threads()
    fusedopt.set_num_threads(threads)
    try:
        fused(name)(params, [grad], **state, **opts, step=1)
    finally:
        fusedopt.set_num_threads(old)
    fused(name)(w_params, [grad], **w_state, **opts, step=1)
    assert same(params[0], w_params[0])
    for k in state:
        codes, scales = reference.quantize_blockwise(w_state[k][0], k not in NONNEGATIVE)
        assert np.array_equal(state[k][0].codes, codes), k
        assert same(state[k][0].scales, scales), k
        assert np.isnan(scales[2]) and np.isnan(scales[7]) and not np.isnan(scales[3])


@pytest.mark.parametrize("pdt,gdt", [(F32, F32), (BF16, BF16), (F32, BF16), (F16, F16)],
                         ids=["f32", "bf16", "f32-bf16grads", "f16"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_8bit_state_is_the_float32_kernel_requantized(isa, name, pdt, gdt):
    """Bitwise: each step decodes every block, runs the float32 kernel, re-encodes the block
    (the reference codec's codes and scales), params rounded to their dtype."""
    params, state, grads = quantized_problem(name, SIZES_8BIT, pdt, gdt)
    opts = OPTIMIZERS_8BIT[name][2]
    w_params = [p.astype(np.float32) for p in params]
    w_codes = {k: [(q.codes.copy(), q.scales.copy()) for q in v] for k, v in state.items()}
    for step, g in enumerate(grads, start=1):
        fused(name)(params, g, **state, **opts, step=step)
        w_state = {k: [reference.dequantize_blockwise(c, s, k not in NONNEGATIVE) for c, s in v]
                   for k, v in w_codes.items()}
        fused(name)(w_params, [x.astype(np.float32) for x in g], **w_state, **opts, step=step)
        w_params = [round_to(x, pdt).astype(np.float32) for x in w_params]
        w_codes = {k: [reference.quantize_blockwise(x, k not in NONNEGATIVE) for x in v] for k, v in w_state.items()}
    for got, want in zip(params, w_params):
        assert same(got, round_to(want, pdt))
    for k in state:
        for q, (codes, scales) in zip(state[k], w_codes[k]):
            assert np.array_equal(q.codes, codes), k
            assert same(q.scales, scales), k


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_8bit_state_matches_reference(isa, name):
    """reference.mixed_ with QuantizedState: one step; params within 32 float32 ulps, and the
    state's decoded values within one code step (2^-3 relative) of the reference's, whose float32
    inputs differ by a few ulps (a code boundary can fall between them)."""
    params, state, grads = quantized_problem(name, SIZES_8BIT, F32, F32, steps=1)
    ref_params, ref_state = [p.copy() for p in params], {k: [q.copy() for q in v] for k, v in state.items()}
    opts = OPTIMIZERS_8BIT[name][2]
    fused(name)(params, grads[0], **state, **opts, step=1)
    reference.mixed_(getattr(reference, OPTIMIZERS[name][0]), ref_params, grads[0], **ref_state, **opts, step=1)
    for got, want in zip(params, ref_params):
        scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
        np.testing.assert_allclose(got, want, rtol=0, atol=32 * np.finfo(np.float32).eps * scale)
    for k in state:
        for q, r in zip(state[k], ref_state[k]):
            a, b = q.dequantize(), r.dequantize()
            np.testing.assert_allclose(a, b, rtol=2.0**-3, atol=float(np.max(r.scales, initial=0)) * 2.0**-15)


def test_8bit_state_thread_count(threads):
    """Thread cuts fall on block boundaries: 1 and 2 threads give the same codes, scales and params."""
    got = []
    for n_threads in (1, 2):
        fusedopt.set_num_threads(n_threads)
        params, state, grads = quantized_problem("adam", [300_001, 3, 400_100], BF16, BF16, steps=2, seed=3)
        run_steps(fusedopt.adam_, "adam", params, state, grads, stochastic_rounding=True, seed=1)
        got.append((params, state))
    (p1, s1), (p2, s2) = got
    assert all(same(a, b) for a, b in zip(p1, p2))
    for k in s1:
        assert all(a == b for a, b in zip(s1[k], s2[k])), k


def test_8bit_state_errors():
    rng = np.random.default_rng(0)
    p, g = rand(rng, 300, F32), rand(rng, 300, F32)
    m, v = fusedopt.quantized_zeros_like(p, signed=True), fusedopt.quantized_zeros_like(p, signed=False)
    before = [p.tobytes(), m.codes.tobytes(), m.scales.tobytes(), v.codes.tobytes(), v.scales.tobytes()]
    cases = [
        (ValueError, "exp_avgs is an unsigned QuantizedState", dict(exp_avgs=v, exp_avg_sqs=m)),
        (ValueError, "exp_avg_sqs has shape",
         dict(exp_avgs=m, exp_avg_sqs=fusedopt.quantized_zeros_like(p[:299], False))),
        (TypeError, "float64", dict(params=p.astype(np.float64), grads=g.astype(np.float64))),
        (ValueError, "exp_avgs and exp_avg_sqs overlap", dict(exp_avgs=m, exp_avg_sqs=fusedopt.QuantizedState(
            m.codes, m.scales, False))),
    ]
    for exc, match, kw in cases:
        args = {"params": p, "grads": g, "exp_avgs": m, "exp_avg_sqs": v, **kw}
        with pytest.raises(exc, match=match):
            fusedopt.adam_(**args, step=1)
        assert [p.tobytes(), m.codes.tobytes(), m.scales.tobytes(), v.codes.tobytes(), v.scales.tobytes()] == before
