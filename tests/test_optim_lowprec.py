"""fusedopt.optim's low-precision options (issue 15): state_dtype="float32" | "bfloat16" | "int8",
master_weights=True and stochastic_rounding=True on every class.

Oracle: the functional update functions driven by hand, with state made as the semantics say
(int8: signed code for exp_avg/momentum_buffer/grad_avg, unsigned for the rest, params under
MIN_8BIT_SIZE elements in float32; master weights: the float32 param, the model's param written as
its copy; stochastic rounding: seed + group index, step counted). The class must give the same
bits, on every step, for every class x state_dtype x (fp32 params, bf16 params with master
weights, bf16 params with stochastic rounding). Then: checkpoints (state_dict, optim.save/load,
pickle) continue bitwise, the conversions between state dtypes are fusedopt.quantize /
dequantize / bfloat16 rounding exactly, and every bad combination is an error that changes nothing.
"""
import copy
import importlib.util
import pickle

import numpy as np
import pytest

import fusedopt
import fusedopt.optim as optim

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F32 = np.dtype(np.float32)

# class -> (constructor keywords, per-group keywords): every state array of the class in use
CONFIGS = {
    "SGD": (dict(lr=0.05, momentum=0.9), [dict(nesterov=True), dict(dampening=0.1, weight_decay=1e-2)]),
    "Adagrad": (dict(lr=0.1, initial_accumulator_value=0.1), [{}, dict(lr_decay=0.01, weight_decay=1e-2)]),
    # (not centered: refused with 8-bit state; centered with bf16 state is test_mixed_precision's)
    "RMSprop": (dict(lr=0.01), [dict(alpha=0.9, momentum=0.5), dict(momentum=0.9, weight_decay=1e-2)]),
    "Adam": (dict(lr=0.01, amsgrad=True), [{}, dict(weight_decay=1e-2, betas=(0.8, 0.99))]),
    "AdamW": (dict(lr=0.01), [dict(amsgrad=True), {}]),
}
NAMES = list(CONFIGS)
# the params of each group: 8-bit state for the big ones, float32 for those under MIN_8BIT_SIZE
SHAPES = [[(70, 64), (300,)], [(5000,), (3, 7)]]
STATE_DTYPES = ["float32", "bfloat16", "int8"]
MODES = {"fp32": (F32, {}), "bf16-master": (BF16, dict(master_weights=True)),
         "bf16-sr": (BF16, dict(stochastic_rounding=True, seed=12345)),
         "fp16-master": (np.dtype(np.float16), dict(master_weights=True))}
SIGNED = {"exp_avg", "momentum_buffer", "grad_avg"}


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(np.float32).astype(dtype) for s in shapes] for shapes in SHAPES]


def make_grads(dtype, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[[(rng.standard_normal(s) * 0.1).astype(np.float32).astype(dtype) for s in shapes] for shapes in SHAPES]
            for _ in range(steps)]


def flat(per_group):
    return [a for group in per_group for a in group]


def make_optimizer(name, params, **options):
    kwargs, group_opts = CONFIGS[name]
    return getattr(optim, name)([{"params": ps, **o} for ps, o in zip(params, group_opts)], **kwargs, **options)


def hyperparameters(name, k):
    kwargs, group_opts = CONFIGS[name]
    return {**optim.__dict__[name].default_hyperparameters, **kwargs, **group_opts[k]}


def state_names(name, h):
    """The state a group keeps, in the order of the function's arguments."""
    if name == "SGD":
        return ["momentum_buffer"] if h["momentum"] else []
    if name == "Adagrad":
        return ["sum"]
    if name == "RMSprop":
        return ["square_avg"] + ["momentum_buffer"] * (h["momentum"] > 0) + ["grad_avg"] * h["centered"]
    return ["exp_avg", "exp_avg_sq"] + ["max_exp_avg_sq"] * h["amsgrad"]


ARGUMENTS = {"momentum_buffer": "momentum_buffers", "sum": "state_sums", "square_avg": "square_avgs",
             "grad_avg": "grad_avgs", "exp_avg": "exp_avgs", "exp_avg_sq": "exp_avg_sqs",
             "max_exp_avg_sq": "max_exp_avg_sqs"}


def new_state(param, name, fill, state_dtype):
    """A state array as the semantics say the class makes it."""
    if state_dtype == "int8" and param.size >= optim.MIN_8BIT_SIZE:
        q = fusedopt.quantized_zeros_like(param, signed=name in SIGNED)
        return fusedopt.quantize(np.full(param.shape, fill, np.float32), name in SIGNED, out=q) if fill else q
    return np.full(param.shape, fill, BF16 if state_dtype == "bfloat16" else np.float32)


class Functional:
    """The functional calls by hand: one call per group and step."""

    def __init__(self, name, params, state_dtype, master_weights=False, stochastic_rounding=False, seed=None):
        self.name, self.params, self.t = name, params, 0
        self.master, self.sr, self.seed = master_weights, stochastic_rounding, seed
        self.hyper = [hyperparameters(name, k) for k in range(len(params))]
        self.masters = [[p.astype(np.float32) for p in ps] for ps in params] if master_weights else None
        self.state = [{s: [new_state(p, s, h.get("initial_accumulator_value", 0) if s == "sum" else 0, state_dtype)
                           for p in ps] for s in state_names(name, h)} for ps, h in zip(params, self.hyper)]

    def step(self, grads):
        self.t += 1
        t = self.t
        for k, (ps, gs, h, state) in enumerate(zip(self.params, grads, self.hyper, self.state)):
            kwargs = {ARGUMENTS[s]: arrays for s, arrays in state.items()}
            kwargs.update({key: value for key, value in h.items() if key not in ("initial_accumulator_value", "betas")})
            if "betas" in h:
                kwargs["beta1"], kwargs["beta2"] = h["betas"]
            if self.name in ("Adam", "AdamW", "Adagrad"):
                kwargs["step"] = t
            elif self.name == "SGD":
                kwargs["step"] = 1 if t == 1 and h["momentum"] else t if self.sr else None
            elif self.sr:
                kwargs["step"] = t
            if self.sr:
                kwargs.update(stochastic_rounding=True, seed=self.seed + k)
            fn = {"SGD": fusedopt.sgd_, "Adagrad": fusedopt.adagrad_, "RMSprop": fusedopt.rmsprop_}.get(
                self.name, fusedopt.adam_)
            if self.master:
                fn(self.masters[k], gs, param_copies=ps, **kwargs)
            else:
                fn(ps, gs, **kwargs)


def same(a, b):
    if isinstance(a, fusedopt.QuantizedState) or isinstance(b, fusedopt.QuantizedState):
        return a == b
    return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_matches(opt, ref):
    """The optimizer's params and state equal the functional run's, bit for bit."""
    for k, ps in enumerate(ref.params):
        for j, p in enumerate(ps):
            got_p = opt.param_groups[k]["params"][j]
            assert same(got_p, p), (k, j)
            state = opt.state[got_p]
            assert state.get("step") == ref.t or opt.__class__.__name__ == "SGD" and not ref.sr
            for s, arrays in ref.state[k].items():
                assert same(state[s], arrays[j]), (k, j, s)
            if ref.master:
                assert same(state["master_param"], ref.masters[k][j]), (k, j)
            expected = set(ref.state[k]) | ({"master_param"} if ref.master else set())
            assert set(state) - {"step"} == expected


def fingerprint(opt):
    """Everything an optimizer holds, comparable with ==."""
    def value(v):
        if isinstance(v, fusedopt.QuantizedState):
            return ("q", v.signed, v.codes.tobytes(), v.scales.tobytes())
        return (v.dtype.str, v.tobytes()) if isinstance(v, np.ndarray) else v
    params = [p for g in opt.param_groups for p in g["params"]]
    return ([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
            {i: {k: value(v) for k, v in opt.state[p].items()} for i, p in enumerate(params) if p in opt.state},
            [p.tobytes() for p in params])


def run_both(name, state_dtype, mode, steps=3):
    dtype, options = MODES[mode]
    params, twins = make_params(dtype), make_params(dtype)
    opt = make_optimizer(name, params, state_dtype=state_dtype, **options)
    ref = Functional(name, twins, state_dtype, **options)
    grads = make_grads(dtype, steps)
    for g in grads:
        assert opt.step(flat(g)) is True
        ref.step(g)
        assert_matches(opt, ref)
    return opt, ref


# ---- the numbers ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_class_equals_functional_calls(name, state_dtype, mode):
    opt, ref = run_both(name, state_dtype, mode)
    dtype = MODES[mode][0]
    # what the semantics promise about the state's form
    big, small = opt.param_groups[0]["params"]
    kinds = {type(v) if isinstance(v, fusedopt.QuantizedState) else v.dtype
             for s, v in opt.state[big].items() if s not in ("step", "master_param")}
    expected = {"float32": F32, "bfloat16": BF16, "int8": fusedopt.QuantizedState}[state_dtype]
    assert kinds == {expected}
    assert {v.dtype for s, v in opt.state[small].items() if s not in ("step", "master_param")} == {
        BF16 if state_dtype == "bfloat16" else F32}
    if mode.endswith("master"):
        params = [p for g in opt.param_groups for p in g["params"]]
        assert all(same(p, opt.state[p]["master_param"].astype(dtype)) for p in params)


@pytest.mark.parametrize("mode", list(MODES))
def test_skip_if_nonfinite_over_groups_of_16bit_grads(mode):
    """A step of several kernel calls (two groups) checks all grads, of whatever dtype, before the
    first call: skipped as a whole for an inf in the last group's, else the step taken."""
    dtype, options = MODES[mode]
    opt, twin = (make_optimizer("AdamW", make_params(dtype), state_dtype="int8", **options) for _ in range(2))
    grads = flat(make_grads(dtype, 1)[0])
    before = fingerprint(opt)
    bad = [g.copy() for g in grads]
    bad[-1][1, 2] = np.inf
    assert opt.step(bad, skip_if_nonfinite=True) is False
    assert fingerprint(opt) == before and opt.skipped_steps == 1
    assert opt.step(grads, skip_if_nonfinite=True) is True
    assert twin.step(grads) is True
    assert fingerprint(opt) == fingerprint(twin)


def test_stochastic_rounding_changes_with_the_seed_only():
    """Same seed: the same bits (another optimizer, another run); another seed: other bits; each
    group has its own stream (seed + group index)."""
    runs = []
    for seed in (7, 7, 8):
        params = make_params(BF16)
        opt = make_optimizer("Adam", params, stochastic_rounding=True, seed=seed)
        for g in make_grads(BF16, 3):
            opt.step(flat(g))
        runs.append((opt, b"".join(p.tobytes() for p in flat(params))))
    assert runs[0][1] == runs[1][1] and runs[0][1] != runs[2][1]
    assert [g["seed"] for g in runs[0][0].param_groups] == [7, 8]
    drawn = [make_optimizer("Adam", make_params(BF16), stochastic_rounding=True).param_groups[0]["seed"]
             for _ in range(2)]
    assert drawn[0] != drawn[1] and all(0 <= s < 2**64 for s in drawn)


def test_small_tensors_threshold():
    """int8: params under min_8bit_size keep float32 state; min_8bit_size=0 quantizes every one."""
    for threshold, quantized in ((optim.MIN_8BIT_SIZE, [True, False, True, False]), (0, [True] * 4)):
        params = make_params(F32)
        opt = make_optimizer("AdamW", params, state_dtype="int8", min_8bit_size=threshold)
        opt.step(flat(make_grads(F32, 1)[0]))
        assert [isinstance(opt.state[p]["exp_avg"], fusedopt.QuantizedState) for p in flat(params)] == quantized
        assert [isinstance(opt.state[p]["exp_avg_sq"], fusedopt.QuantizedState) for p in flat(params)] == quantized


# ---- checkpoints ------------------------------------------------------------------------------

def roundtrip_state_dict(opt, fresh):
    fresh.load_state_dict(opt.state_dict())
    return fresh


def roundtrip_file(opt, fresh, tmp_path):
    optim.save(tmp_path / "ckpt.npz", opt)
    optim.load(tmp_path / "ckpt.npz", fresh)
    return fresh


@pytest.mark.parametrize("how", ["state_dict", "file", "pickle", "deepcopy"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
@pytest.mark.parametrize("name", ["SGD", "RMSprop", "AdamW"])
def test_checkpoint_continues_bitwise(name, state_dtype, mode, how, tmp_path):
    dtype, options = MODES[mode]
    params = make_params(dtype)
    opt = make_optimizer(name, params, state_dtype=state_dtype, **options)
    grads = make_grads(dtype, 4)
    for g in grads[:2]:
        opt.step(flat(g))
    if how in ("pickle", "deepcopy"):
        other = pickle.loads(pickle.dumps(opt)) if how == "pickle" else copy.deepcopy(opt)
    else:
        # another optimizer (another seed, when it has one) over copies of the params
        twins = [[p.copy() for p in ps] for ps in params]
        fresh = make_optimizer(name, twins, state_dtype=state_dtype, **{**options, "seed": 99} if "seed" in options
                               else options)
        other = roundtrip_state_dict(opt, fresh) if how == "state_dict" else roundtrip_file(opt, fresh, tmp_path)
    assert fingerprint(other) == fingerprint(opt)
    for g in grads[2:]:
        opt.step(flat(g))
        other.step(flat(g))
    assert fingerprint(other) == fingerprint(opt)
    if state_dtype == "int8":
        q = opt.state[opt.param_groups[0]["params"][0]]
        assert any(isinstance(v, fusedopt.QuantizedState) for v in q.values())


def convert(value, to, signed):
    """The conversion a load makes, written out: float32 -> bfloat16 rounds to nearest even,
    -> int8 is fusedopt.quantize, int8 -> is dequantize."""
    if isinstance(value, fusedopt.QuantizedState):
        value = value.dequantize()
    value = value.astype(np.float32)
    if to == "int8":
        return fusedopt.quantize(value, signed)
    return value.astype(BF16) if to == "bfloat16" else value


@pytest.mark.parametrize("target", STATE_DTYPES)
@pytest.mark.parametrize("source", STATE_DTYPES)
@pytest.mark.parametrize("name", ["Adagrad", "RMSprop", "Adam"])
def test_checkpoint_converts_between_state_dtypes(name, source, target, tmp_path):
    """A checkpoint with state in `source` loads into an optimizer keeping `target`: each big
    array converted as convert() says (small ones float32 in both int8 optimizers), then the
    step continues as the functional calls from the converted state."""
    params = make_params(F32)
    opt = make_optimizer(name, params, state_dtype=source)
    grads = make_grads(F32, 3)
    for g in grads[:2]:
        opt.step(flat(g))
    twins = [[p.copy() for p in ps] for ps in params]
    fresh = make_optimizer(name, twins, state_dtype=target)
    optim.save(tmp_path / "ckpt.npz", opt)
    optim.load(tmp_path / "ckpt.npz", fresh)
    ref = Functional(name, [[p.copy() for p in ps] for ps in params], target)
    ref.t = 2
    for k, ps in enumerate(params):
        for j, p in enumerate(ps):
            kept = "float32" if p.size < optim.MIN_8BIT_SIZE and target == "int8" else target
            for s in ref.state[k]:
                want = convert(opt.state[p][s], kept, s in SIGNED)
                assert same(fresh.state[twins[k][j]][s], want), (s, source, target)
                ref.state[k][s][j] = want.copy()
    fresh.step(flat(grads[2]))
    ref.step(grads[2])
    assert_matches(fresh, ref)


@pytest.mark.parametrize("target", ["float32", "bfloat16", "int8"])
def test_checkpoint_state_in_fortran_order_converts_into_c_order(target):
    """State arrays of a checkpoint in another memory order (Fortran order: a state_dict made by
    other code) are converted into C-order arrays, which a step updates in place."""
    source = "bfloat16" if target == "float32" else "float32"
    opt = make_optimizer("Adam", make_params(F32), state_dtype=source)
    opt.step(flat(make_grads(F32, 1)[0]))
    sd = opt.state_dict()
    for state in sd["state"].values():
        for name, value in state.items():
            if isinstance(value, np.ndarray) and value.ndim == 2:
                state[name] = np.asfortranarray(value)
    loaded = make_optimizer("Adam", make_params(F32), state_dtype=target)
    loaded.load_state_dict(sd)
    for state in loaded.state.values():
        for value in state.values():
            assert not isinstance(value, np.ndarray) or value.flags.c_contiguous
    assert loaded.step(flat(make_grads(F32, 2)[1])) is True


@pytest.mark.parametrize("source,target", [("float32", "bfloat16"), ("float32", "int8"), ("int8", "float32"),
                                           ("bfloat16", "int8")])
def test_checkpoint_of_a_0d_param_converts_into_0d_state(source, target):
    """A 0-d param's converted state keeps its shape () (NumPy's ascontiguousarray makes 0-d
    arrays 1-d, which the next step refused), here and through fusedopt.torch."""
    def make(state_dtype, param):
        return optim.Adam([param], lr=0.1, state_dtype=state_dtype, min_8bit_size=0)
    opt = make(source, np.array(1.5, np.float32))
    opt.step([np.array(0.5, np.float32)])
    loaded = make(target, np.array(1.5, np.float32))
    loaded.load_state_dict(opt.state_dict())
    assert all(v.shape == () for k, v in next(iter(loaded.state.values())).items() if k != "step")
    assert loaded.step([np.array(0.5, np.float32)]) is True
    if importlib.util.find_spec("torch") is None:
        return
    import torch

    from fusedopt import torch as ft
    p, q = torch.nn.Parameter(torch.tensor(1.5)), torch.nn.Parameter(torch.tensor(1.5))
    opt = ft.Adam([p], lr=0.1, state_dtype=source, min_8bit_size=0)
    p.grad = q.grad = torch.tensor(0.5)
    opt.step()
    loaded = ft.Adam([q], lr=0.1, state_dtype=target, min_8bit_size=0)
    loaded.load_state_dict(opt.state_dict())
    loaded.step()
    assert all(v.shape == () for k, v in loaded.state[q].items() if not k.endswith("_scales"))


def test_torch_style_fp32_checkpoint_into_int8_quantizes_exactly():
    """A state_dict of an fp32 AdamW (as torch.optim.AdamW keeps it) loads into an int8 AdamW as
    fusedopt.quantize of each array; loaded back into an fp32 AdamW it is its dequantize, within the
    code's error of the fp32 original."""
    params = make_params(F32)
    fp32 = make_optimizer("AdamW", params)
    for g in make_grads(F32, 2):
        fp32.step(flat(g))
    int8 = make_optimizer("AdamW", [[p.copy() for p in ps] for ps in params], state_dtype="int8")
    int8.load_state_dict(fp32.state_dict())
    back = make_optimizer("AdamW", [[p.copy() for p in ps] for ps in params])
    back.load_state_dict(int8.state_dict())
    big = params[0][0]
    got = int8.state[int8.param_groups[0]["params"][0]]
    assert got["exp_avg"] == fusedopt.quantize(fp32.state[big]["exp_avg"], True)
    assert got["exp_avg_sq"] == fusedopt.quantize(fp32.state[big]["exp_avg_sq"], False)
    returned = back.state[back.param_groups[0]["params"][0]]["exp_avg"].reshape(-1)
    want = fp32.state[big]["exp_avg"].reshape(-1)
    assert np.array_equal(returned, got["exp_avg"].dequantize().reshape(-1))
    blocks = np.abs(np.concatenate([want, np.zeros(-want.size % 256, np.float32)])).reshape(-1, 256).max(axis=1)
    absmax = np.repeat(blocks, 256)[:want.size]  # each element's block scale
    # within the code's range (1.25 * 2^-16 of the block's absmax and up) at most 2^-4 relative error
    assert np.all(np.abs(returned - want) <= np.maximum(2.0**-4 * np.abs(want), 1.25 * 2.0**-16 * absmax))


# ---- bad combinations -------------------------------------------------------------------------

def p32(n=8):
    return np.zeros(n, np.float32)


def pbf(n=8):
    return np.zeros(n, BF16)


CONSTRUCTION_ERRORS = [
    ("unknown state_dtype", lambda: optim.Adam([p32()], state_dtype="int4"), ValueError, "state_dtype must be one of"),
    ("state_dtype float16", lambda: optim.Adam([p32()], state_dtype="float16"), ValueError, "state_dtype"),
    ("state_dtype not a str", lambda: optim.Adam([p32()], state_dtype=np.int8), TypeError, "state_dtype"),
    ("master weights of fp32 params", lambda: optim.AdamW([p32()], master_weights=True), TypeError,
     "master_weights=True keeps float32 master weights"),
    ("stochastic rounding of fp32 params", lambda: optim.SGD([p32()], stochastic_rounding=True), TypeError,
     "stochastic_rounding=True rounds bfloat16"),
    ("stochastic rounding of fp16 params", lambda: optim.SGD([np.zeros(3, np.float16)], stochastic_rounding=True),
     TypeError, "bfloat16"),
    ("both", lambda: optim.Adam([pbf()], master_weights=True, stochastic_rounding=True), ValueError,
     "exclude each other"),
    ("int8 state of float64", lambda: optim.Adam([np.zeros(3)], state_dtype="int8"), TypeError,
     "state of float64 params is float64"),
    ("bf16 state of float64", lambda: optim.RMSprop([np.zeros(3)], state_dtype="bfloat16"), TypeError, "float64"),
    ("seed without stochastic rounding", lambda: optim.Adam([pbf()], seed=1), ValueError, "stochastic_rounding"),
    ("negative seed", lambda: optim.Adam([pbf()], stochastic_rounding=True, seed=-1), ValueError, "seed"),
    ("seed 2**64", lambda: optim.Adam([pbf()], stochastic_rounding=True, seed=2**64), ValueError, "seed"),
    ("float seed", lambda: optim.Adam([pbf()], stochastic_rounding=True, seed=1.5), TypeError, "seed must be an int"),
    ("master_weights not a bool", lambda: optim.Adam([pbf()], master_weights=1), TypeError, "must be a bool"),
    ("negative min_8bit_size", lambda: optim.Adam([p32()], state_dtype="int8", min_8bit_size=-1), ValueError,
     "min_8bit_size"),
    ("int param", lambda: optim.Adam([np.zeros(3, np.int8)], state_dtype="int8"), TypeError, "dtype int8"),
]


@pytest.mark.parametrize("desc,make,exc,match", CONSTRUCTION_ERRORS, ids=[c[0] for c in CONSTRUCTION_ERRORS])
def test_bad_combination_raises_at_construction(desc, make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_add_param_group_checks_the_options():
    """A later group is checked against the options; refused, it leaves the optimizer as it was."""
    opt = optim.AdamW([pbf(300)], master_weights=True)
    opt.step([np.ones(300, BF16)])
    before = fingerprint(opt)
    with pytest.raises(TypeError, match="master weights"):
        opt.add_param_group({"params": [p32()]})
    assert fingerprint(opt) == before and len(opt.param_groups) == 1
    opt.add_param_group({"params": [np.zeros(5, np.float16)]})  # fp16 params take master weights too
    sr = optim.Adam([pbf()], stochastic_rounding=True, seed=4)
    sr.add_param_group({"params": [pbf()]})
    sr.add_param_group({"params": [pbf()], "seed": 40})
    assert [g["seed"] for g in sr.param_groups] == [4, 5, 40]
    with pytest.raises(ValueError, match="seed"):
        sr.add_param_group({"params": [pbf()], "seed": -3})
    assert len(sr.param_groups) == 3


def used(name="Adam", state_dtype="int8", mode="bf16-master"):
    dtype, options = MODES[mode]
    opt = make_optimizer(name, make_params(dtype), state_dtype=state_dtype, **options)
    for g in make_grads(dtype, 2):
        opt.step(flat(g))
    return opt


def edit(state_dict, index, name, value):
    state_dict["state"][index][name] = value
    return state_dict


BAD_LOADS = [
    ("bf16 master", lambda sd: edit(sd, 0, "master_param", sd["state"][0]["master_param"].astype(BF16)), ValueError,
     "master_param'\\] has dtype bfloat16"),
    ("signed exp_avg_sq", lambda sd: edit(sd, 0, "exp_avg_sq", fusedopt.quantized_zeros_like(np.zeros((70, 64)), True)),
     ValueError, "signed QuantizedState"),
    ("negative exp_avg_sq", lambda sd: edit(sd, 0, "exp_avg_sq", -np.ones((70, 64), np.float32)), ValueError,
     "negative"),
    ("float64 state", lambda sd: edit(sd, 0, "exp_avg", np.zeros((70, 64))), ValueError, "dtype float64"),
    ("float16 state", lambda sd: edit(sd, 2, "exp_avg", np.zeros(5000, np.float16)), ValueError, "float16"),
    ("quantized of another shape", lambda sd: edit(sd, 0, "exp_avg", fusedopt.quantized_zeros_like(np.zeros(5), True)),
     ValueError, "shape"),
    ("int state", lambda sd: edit(sd, 1, "exp_avg", np.zeros(300, np.int8)), TypeError, "dtype int8"),
    # a QuantizedState whose scales were replaced after it was made, on the last param: the params
    # before it would have been loaded already had it been found while copying
    ("quantized with replaced scales", lambda sd: (setattr(sd["state"][2]["exp_avg"], "scales",
                                                           np.zeros(3, np.float32)), sd)[1], ValueError,
     r"state'\]\[2\]\['exp_avg'\]: scales has shape \(3,\)"),
    ("bad seed", lambda sd: (sd["param_groups"][1].__setitem__("seed", "x"), sd)[1], TypeError, "seed"),
]


@pytest.mark.parametrize("desc,change,exc,match", BAD_LOADS, ids=[c[0] for c in BAD_LOADS])
def test_bad_load_leaves_optimizer_unchanged(desc, change, exc, match):
    opt = used(mode="bf16-sr" if desc == "bad seed" else "bf16-master")
    bad = change(opt.state_dict())
    before = fingerprint(opt)
    with pytest.raises(exc, match=match):
        opt.load_state_dict(bad)
    assert fingerprint(opt) == before


def test_stochastic_rounding_loads_a_checkpoint_without_seeds():
    """A round-to-nearest bf16 optimizer's checkpoint loads into a stochastic-rounding one, which
    keeps its own seeds."""
    nearest = used("Adam", "float32", "bf16-master")
    plain = make_optimizer("Adam", make_params(BF16))
    plain.step(flat(make_grads(BF16, 1)[0]))
    sr = make_optimizer("Adam", make_params(BF16), stochastic_rounding=True, seed=5)
    sr.load_state_dict(plain.state_dict())
    assert [g["seed"] for g in sr.param_groups] == [5, 6]
    assert fingerprint(sr)[1] == fingerprint(plain)[1]
    with pytest.raises(ValueError, match="master_param"):  # master weights are state the other one lacks
        plain.load_state_dict(nearest.state_dict())


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_checkpoints_between_rounding_modes(name):
    """What fusedopt.torch's classes load, these do: a round-to-nearest checkpoint into stochastic
    rounding (SGD's state, which keeps no step, means a step was taken) and back (the seeds, and
    SGD's step, dropped); one without master weights into master_weights (the master made from
    the param at the next step, as at a first step)."""
    sr, master = dict(stochastic_rounding=True, seed=5), dict(master_weights=True)
    for source, target in [({}, sr), (sr, {}), ({}, master), (sr, master)]:
        src = make_optimizer(name, make_params(BF16), **source)
        src.step(flat(make_grads(BF16, 1)[0]))
        dst = make_optimizer(name, make_params(BF16, seed=3), **target)
        dst.load_state_dict(src.state_dict())
        for p, q in zip(flat(src.param_groups[k]["params"] for k in range(2)),
                        flat(dst.param_groups[k]["params"] for k in range(2))):
            arrays = {key for key, value in src.state[p].items() if isinstance(value, np.ndarray)}
            assert arrays == {key for key, value in dst.state[q].items() if isinstance(value, np.ndarray)}
            assert all(same(dst.state[q][key], src.state[p][key]) for key in arrays)
            assert ("step" in dst.state[q]) == (name != "SGD" or "seed" in target)
        assert dst.step(flat(make_grads(BF16, 2)[1])) is True
        q = dst.param_groups[0]["params"][0]
        assert ("master_param" in dst.state[q]) == ("master_weights" in target)


def replace_state(k, j, name, make):
    def change(opt):
        p = opt.param_groups[k]["params"][j]
        opt.state[p][name] = make(opt.state[p][name])
    return change


def share_codes(opt):
    """The 8-bit exp_avg codes of group 0's first param and of group 1's first param made
    overlapping views of one buffer (their values kept)."""
    first, other = opt.param_groups[0]["params"][0], opt.param_groups[1]["params"][0]
    a, b = opt.state[first]["exp_avg"], opt.state[other]["exp_avg"]
    buffer = np.zeros(a.size + b.size, np.uint8)
    start = a.size - 100
    buffer[start:start + b.size] = b.codes.reshape(-1)
    buffer[:a.size] = a.codes.reshape(-1)
    opt.state[first]["exp_avg"] = fusedopt.QuantizedState(buffer[:a.size].reshape(a.shape), a.scales, True)
    opt.state[other]["exp_avg"] = fusedopt.QuantizedState(buffer[start:start + b.size].reshape(b.shape), b.scales, True)


STEP_ERRORS = [
    ("8-bit state sharing memory", share_codes, ValueError,
     r"state\['exp_avg'\] of param_groups\[0\]\['params'\]\[0\] and state\['exp_avg'\] of "
     r"param_groups\[1\]\['params'\]\[0\] overlap"),
    ("fp64 grads", None, TypeError, "has dtype float64"),
    ("signed code for exp_avg_sq", replace_state(1, 0, "exp_avg_sq", lambda q: fusedopt.QuantizedState(
        q.codes.copy(), q.scales.copy(), True)), ValueError, "signed"),
    ("master of another shape", replace_state(1, 0, "master_param", lambda m: np.zeros(m.size + 1, np.float32)),
     ValueError, "shape"),
    ("read-only codes", replace_state(1, 0, "exp_avg", lambda q: fusedopt.QuantizedState(
        np.broadcast_to(q.codes, q.shape), q.scales, True)), ValueError, "writable"),
]


@pytest.mark.parametrize("desc,change,exc,match", STEP_ERRORS, ids=[c[0] for c in STEP_ERRORS])
def test_step_error_changes_nothing(desc, change, exc, match):
    """A step refused by the last group's checks (after the first group's call could have run)
    writes nothing: params, masters and 8-bit state stay byte-identical."""
    opt = used("Adam", "int8", "bf16-master")
    grads = flat(make_grads(BF16, 1, seed=9)[0])
    if change is None:
        grads[-2] = grads[-2].astype(np.float64)
    else:
        change(opt)
    before = fingerprint(opt)
    with pytest.raises(exc, match=match):
        opt.step(grads)
    assert fingerprint(opt) == before


# ---- fusedopt.torch ---------------------------------------------------------------------------

def to_torch(a):
    import torch

    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def to_numpy(t):
    from fusedopt._tensors import tensor_to_ndarray

    return tensor_to_ndarray(t.detach(), "a tensor").copy()


def numpy_form(state):
    """A fusedopt.torch param state in fusedopt.optim's form: <name>_codes + <name>_scales ->
    QuantizedState under <name>, step -> int."""
    import torch

    out = {}
    for key, value in state.items():
        if key.endswith("_scales"):
            continue
        if key == "step":
            out[key] = int(value)
        elif key.endswith("_codes"):
            name = key[:-len("_codes")]
            assert value.dtype == torch.uint8 and name not in state
            out[name] = fusedopt.QuantizedState(to_numpy(value), to_numpy(state[name + "_scales"]), name in SIGNED)
        else:
            assert value.dtype.is_floating_point
            out[key] = to_numpy(value)
    return out


def torch_optimizer(name, params, **options):
    import fusedopt.torch as ft

    kwargs, group_opts = CONFIGS[name]
    return getattr(ft, name)([{"params": ps, **o} for ps, o in zip(params, group_opts)], **kwargs, **options)


def torch_params(params):
    import torch

    return [[torch.nn.Parameter(to_torch(p)) for p in ps] for ps in params]


def torch_step(opt, grads):
    for group, gs in zip(opt.param_groups, grads):
        for p, g in zip(group["params"], gs):
            p.grad = to_torch(g)
    opt.step()


def assert_torch_matches(topt, opt):
    """A fusedopt.torch optimizer's params and state equal a fusedopt.optim one's, bit for bit."""
    tparams = [p for g in topt.param_groups for p in g["params"]]
    params = [p for g in opt.param_groups for p in g["params"]]
    for tp, p in zip(tparams, params):
        assert same(to_numpy(tp), p)
        got, want = numpy_form(topt.state[tp]), opt.state[p]
        assert set(got) - {"step"} == set(want) - {"step"}
        for key, value in want.items():
            assert got[key] == value if key == "step" else same(got[key], value), key


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_torch_class_equals_numpy_class(name, state_dtype, mode):
    """fusedopt.torch.X(..., same options) gives the bits of fusedopt.optim.X (itself checked against
    the functional calls above), state included: 8-bit state as <name>_codes (uint8) + <name>_scales tensors."""
    torch = pytest.importorskip("torch")
    dtype, options = MODES[mode]
    params = make_params(dtype)
    opt = make_optimizer(name, params, state_dtype=state_dtype, **options)
    topt = torch_optimizer(name, torch_params(params), state_dtype=state_dtype, **options)
    assert [g.get("seed") for g in topt.param_groups] == [g.get("seed") for g in opt.param_groups]
    for g in make_grads(dtype, 3):
        opt.step(flat(g))
        torch_step(topt, g)
        assert_torch_matches(topt, opt)
    if state_dtype == "int8":
        big = topt.state[topt.param_groups[0]["params"][0]]
        first = next(s for s in big if s.endswith("_codes"))
        assert big[first].dtype == torch.uint8 and big[first.replace("_codes", "_scales")].shape == (18,)  # 4480 / 256


@pytest.mark.parametrize("how", ["torch.save", "deepcopy"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
@pytest.mark.parametrize("name", ["SGD", "Adagrad", "AdamW"])
def test_torch_checkpoint_continues_bitwise(name, state_dtype, mode, how):
    torch = pytest.importorskip("torch")
    import io

    dtype, options = MODES[mode]
    params = make_params(dtype)
    topt = torch_optimizer(name, torch_params(params), state_dtype=state_dtype, **options)
    grads = make_grads(dtype, 4)
    for g in grads[:2]:
        torch_step(topt, g)
    if how == "deepcopy":
        other = copy.deepcopy(topt)
    else:
        buffer = io.BytesIO()
        torch.save(topt.state_dict(), buffer)
        buffer.seek(0)
        twins = [[torch.nn.Parameter(p.detach().clone()) for p in g["params"]] for g in topt.param_groups]
        other = torch_optimizer(name, twins, state_dtype=state_dtype, **{**options, "seed": 1} if "seed" in options
                                else options)
        other.load_state_dict(torch.load(buffer))
    for g in grads[2:]:
        torch_step(topt, g)
        torch_step(other, g)
    for a, b in zip([p for g in topt.param_groups for p in g["params"]],
                    [p for g in other.param_groups for p in g["params"]]):
        assert same(to_numpy(a), to_numpy(b))
        sa, sb = numpy_form(topt.state[a]), numpy_form(other.state[b])
        assert sa.keys() == sb.keys() and all(sa[k] == sb[k] if k == "step" else same(sa[k], sb[k]) for k in sa)
    assert [g.get("seed") for g in other.param_groups] == [g.get("seed") for g in topt.param_groups]
    assert other.defaults["state_dtype"] == state_dtype


def test_torch_adamw_checkpoint_into_int8_and_back():
    """torch.optim.AdamW's fp32 checkpoint loads into fusedopt.torch.AdamW(state_dtype="int8"):
    each big state tensor becomes fusedopt.quantize of it (small ones stay fp32), and the steps
    after are fusedopt.optim.AdamW(state_dtype="int8")'s from the same loaded state. Loaded back
    into fusedopt.torch.AdamW (float32 state) the state is the dequantized codes."""
    torch = pytest.importorskip("torch")
    params = make_params(F32)
    reference_opt = torch_optimizer("AdamW", torch_params(params))
    tparams = [[p for p in g["params"]] for g in reference_opt.param_groups]
    plain = torch.optim.AdamW([{"params": ps, **o} for ps, o in zip(tparams, CONFIGS["AdamW"][1])],
                              **CONFIGS["AdamW"][0])
    grads = make_grads(F32, 4)
    for g in grads[:2]:
        torch_step(plain, g)
    sd = plain.state_dict()
    current = [[p.detach().numpy().copy() for p in ps] for ps in tparams]
    int8 = torch_optimizer("AdamW", torch_params(current), state_dtype="int8")
    int8.load_state_dict(sd)
    opt = make_optimizer("AdamW", [[p.copy() for p in ps] for ps in current], state_dtype="int8")
    opt.load_state_dict({"state": {i: numpy_form(s) for i, s in sd["state"].items()},
                         "param_groups": [{k: v for k, v in g.items() if k in opt.param_groups[0]}
                                          for g in sd["param_groups"]]})
    first = int8.state[int8.param_groups[0]["params"][0]]
    want = sd["state"][0]["exp_avg"].numpy()
    assert numpy_form(first)["exp_avg"] == fusedopt.quantize(want, True)
    assert first["exp_avg_codes"].dtype == torch.uint8 and first["exp_avg_scales"].dtype == torch.float32
    assert "exp_avg" not in first  # (torch.optim would take codes under its name for values)
    assert int8.state[int8.param_groups[0]["params"][1]]["exp_avg"].dtype == torch.float32  # 300 elements
    assert_torch_matches(int8, opt)
    for g in grads[2:]:
        torch_step(int8, g)
        opt.step(flat(g))
    assert_torch_matches(int8, opt)
    back = torch_optimizer("AdamW", torch_params(current))
    back.load_state_dict(int8.state_dict())
    got = back.state[back.param_groups[0]["params"][0]]["exp_avg"]
    assert got.dtype == torch.float32
    assert same(got.numpy(), numpy_form(int8.state[int8.param_groups[0]["params"][0]])["exp_avg"].dequantize())


@pytest.mark.parametrize("name", NAMES)
def test_torch_int8_checkpoint_into_torch_optim_never_steps_on_codes(name):
    """torch.optim casts a checkpoint's state tensors to the param's dtype: 8-bit codes under its
    own names would become values 0 .. 255 and the step would go on with them. Under
    <name>_codes the step of torch's Adam, AdamW, Adagrad and RMSprop raises; torch's SGD takes
    the missing momentum_buffer for none yet and starts it afresh (the grad, not the codes). A
    checkpoint with codes under the state's own name (as earlier versions saved them) still
    loads into fusedopt.torch, to the same state."""
    torch = pytest.importorskip("torch")
    params = make_params(F32)
    int8 = torch_optimizer(name, torch_params(params), state_dtype="int8")
    for g in make_grads(F32, 2):
        torch_step(int8, g)
    sd = int8.state_dict()
    plain = getattr(torch.optim, name)([{"params": g["params"]} for g in int8.param_groups])
    plain.load_state_dict(copy.deepcopy(sd))
    assert all(p.grad is not None for g in plain.param_groups for p in g["params"])
    if name != "SGD":
        with pytest.raises(KeyError):
            plain.step()
    else:
        big = plain.param_groups[0]["params"][0]
        assert "momentum_buffer" not in plain.state[big] and plain.param_groups[0]["momentum"] > 0
        grad = big.grad.clone()
        wd = plain.param_groups[0]["weight_decay"]
        want = grad + wd * big.detach() if wd else grad
        plain.step()
        assert torch.equal(plain.state[big]["momentum_buffer"], want)
    old_form = copy.deepcopy(sd)
    for state in old_form["state"].values():
        for key in [key for key in state if key.endswith("_codes")]:
            state[key[:-len("_codes")]] = state.pop(key)
    loaded = torch_optimizer(name, torch_params(params), state_dtype="int8")
    loaded.load_state_dict(old_form)
    for a, b in zip(*(map(numpy_form, opt.state.values()) for opt in (int8, loaded))):
        assert a.keys() == b.keys() and all(a[k] == b[k] if k == "step" else same(a[k], b[k]) for k in a)


def test_torch_centered_rmsprop_checkpoint_into_int8_refused_at_load():
    """A centered RMSprop's checkpoint (its groups' centered=True replace the optimizer's) into an
    8-bit RMSprop: refused by load_state_dict, before anything changes, as fusedopt.optim's load
    and add_param_group refuse it, not by every step after."""
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    w = torch.nn.Parameter(torch.ones(5000))
    centered = ft.RMSprop([w], lr=0.01, centered=True)
    w.grad = torch.full_like(w, 0.5)
    centered.step()
    int8 = ft.RMSprop([w], lr=0.01, state_dtype="int8")
    with pytest.raises(ValueError, match="centered"):
        int8.load_state_dict(centered.state_dict())
    assert not int8.param_groups[0]["centered"] and not int8.state


def test_torch_sgd_checkpoint_into_stochastic_rounding():
    """torch.optim.SGD keeps no step: its momentum buffers load into fusedopt.torch.SGD(
    stochastic_rounding=True) as one step taken (the buffers continue, not restarted), the steps
    after as fusedopt.optim.SGD's from the same state with step 1."""
    torch = pytest.importorskip("torch")
    params = make_params(BF16)
    tparams = torch_params(params)
    plain = torch.optim.SGD([{"params": ps, **o} for ps, o in zip(tparams, CONFIGS["SGD"][1])], **CONFIGS["SGD"][0])
    grads = make_grads(BF16, 3)
    torch_step(plain, grads[0])
    sd = plain.state_dict()
    current = [[to_numpy(p) for p in ps] for ps in tparams]
    sr = torch_optimizer("SGD", torch_params(current), stochastic_rounding=True, seed=21)
    sr.load_state_dict(sd)
    opt = make_optimizer("SGD", [[p.copy() for p in ps] for ps in current], stochastic_rounding=True, seed=21)
    opt.load_state_dict({"state": {i: {**numpy_form(s), "step": 1} for i, s in sd["state"].items()},
                         "param_groups": [{k: v for k, v in g.items() if k in opt.param_groups[0]}
                                          for g in sd["param_groups"]]})
    assert int(sr.state[sr.param_groups[0]["params"][0]]["step"]) == 1
    for g in grads[1:]:
        torch_step(sr, g)
        opt.step(flat(g))
    assert_torch_matches(sr, opt)


def test_torch_bad_combinations():
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    w32 = torch.nn.Parameter(torch.zeros(8))
    wbf = torch.nn.Parameter(torch.zeros(8, dtype=torch.bfloat16))
    for make, exc, match in [
        (lambda: ft.AdamW([w32], master_weights=True), TypeError, "master_weights=True keeps float32"),
        (lambda: ft.SGD([w32], stochastic_rounding=True), TypeError, "rounds bfloat16"),
        (lambda: ft.Adam([wbf], state_dtype="fp8"), ValueError, "state_dtype must be one of"),
        (lambda: ft.Adam([torch.nn.Parameter(torch.zeros(8, dtype=torch.float64))], state_dtype="int8"),
         TypeError, "float64"),
        (lambda: ft.Adam([wbf], master_weights=True, stochastic_rounding=True), ValueError, "exclude"),
        (lambda: ft.Adam([{"params": [wbf], "state_dtype": "int8"}]), ValueError, "optimizer's options"),
        (lambda: ft.RMSprop([wbf], seed=3), ValueError, "stochastic_rounding"),
    ]:
        with pytest.raises(exc, match=match):
            make()
    opt = ft.Adam([wbf], master_weights=True)
    with pytest.raises(TypeError, match="master_weights"):
        opt.add_param_group({"params": [w32]})
    assert len(opt.param_groups) == 1


TORCH_BAD_LOADS = [
    ("bf16 master", lambda sd: sd["state"][0].__setitem__("master_param", sd["state"][0]["master_param"].bfloat16()),
     ValueError, "has dtype bfloat16"),
    ("codes without scales", lambda sd: sd["state"][0].pop("exp_avg_scales"), ValueError, "without its"),
    ("scales of another size", lambda sd: sd["state"][0].__setitem__("exp_avg_scales", sd["state"][0][
        "exp_avg_scales"][:3].clone()), ValueError, "scales"),
    ("float64 state", lambda sd: sd["state"][2].update(exp_avg=sd["state"][2].pop("master_param").double(),
                                                       exp_avg_codes=None, exp_avg_scales=None), ValueError, "float64"),
    ("codes and float state", lambda sd: sd["state"][0].__setitem__("exp_avg", sd["state"][0]["master_param"]),
     ValueError, "both"),
    ("float codes", lambda sd: sd["state"][0].__setitem__("exp_avg_codes", sd["state"][0]["master_param"]),
     TypeError, "uint8"),
    ("negative exp_avg_sq", lambda sd: sd["state"][1].__setitem__("exp_avg_sq", -sd["state"][1]["exp_avg_sq"] - 1),
     None, None),  # float32 state of a small param: loads (torch would too)
    ("negative exp_avg_sq into int8", lambda sd: sd["state"][0].update(
        exp_avg_sq=-sd["state"][0]["master_param"].abs() - 1, exp_avg_sq_codes=None, exp_avg_sq_scales=None),
     ValueError, "negative"),
]


@pytest.mark.parametrize("desc,change,exc,match", TORCH_BAD_LOADS, ids=[c[0] for c in TORCH_BAD_LOADS])
def test_torch_bad_load_changes_nothing(desc, change, exc, match):
    pytest.importorskip("torch")
    params = make_params(BF16)
    opt = torch_optimizer("Adam", torch_params(params), state_dtype="int8", master_weights=True)
    for g in make_grads(BF16, 2):
        torch_step(opt, g)
    sd = copy.deepcopy(opt.state_dict())
    change(sd)
    sd["state"] = {i: {k: v for k, v in state.items() if v is not None} for i, state in sd["state"].items()}
    before = {i: numpy_form(opt.state[p]) for i, p in enumerate(opt.param_groups[0]["params"])}
    if exc is None:
        opt.load_state_dict(sd)
        return
    with pytest.raises(exc, match=match):
        opt.load_state_dict(sd)
    after = {i: numpy_form(opt.state[p]) for i, p in enumerate(opt.param_groups[0]["params"])}
    assert all(same(after[i][k], v) if k != "step" else after[i][k] == v for i in before for k, v in before[i].items())


def test_torch_replaced_scales_are_used():
    """An 8-bit state's scales tensor replaced between steps (by a copy): the next step updates
    the new one, as it does a replaced codes tensor (the same bits as without the replacement)."""
    pytest.importorskip("torch")
    opts = [torch_optimizer("AdamW", torch_params(make_params(F32)), state_dtype="int8") for _ in range(2)]
    grads = make_grads(F32, 4)
    for t, g in enumerate(grads):
        for k, opt in enumerate(opts):
            if t == 2 and k == 1:
                for state in opt.state.values():
                    for key in [key for key in state if key.endswith("_scales")]:
                        state[key] = state[key].clone()
            torch_step(opt, g)
    for a, b in zip(*(map(numpy_form, opt.state.values()) for opt in opts)):
        assert a.keys() == b.keys() and all(a[key] == b[key] if key == "step" else same(a[key], b[key]) for key in a)


def test_torch_master_weights_start_at_the_first_step():
    """The master is the param as it is at its first step (weights loaded into the model after the
    optimizer was made count), also for Adagrad, whose state torch makes at construction."""
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    w = torch.nn.Parameter(torch.zeros(300, dtype=torch.bfloat16))
    opt = ft.Adagrad([w], lr=0.1, master_weights=True, state_dtype="bfloat16")
    assert set(opt.state[w]) == {"sum", "step"} and opt.state[w]["sum"].dtype == torch.bfloat16
    with torch.no_grad():
        w.fill_(3.0)
    w.grad = torch.zeros_like(w)
    opt.step()
    assert torch.equal(opt.state[w]["master_param"], torch.full((300,), 3.0)) and torch.equal(w, torch.full_like(w, 3))


def test_centered_rmsprop_refuses_8bit_state():
    """square_avg - grad_avg**2 nearly cancels where gradients are steadier than their noise: with
    8-bit codes (off by up to 1/16) it went negative (NaN params by step ~300 at 1% gradient noise).
    Refused before anything is written, in the functional API, the NumPy class (constructor and a
    group switched to centered later) and the torch class; bfloat16 state stays allowed."""
    p = np.ones(4096, F32)
    g = np.full(4096, 0.5, F32)
    square_avg, grad_avg = (fusedopt.quantized_zeros_like(p, signed=s) for s in (False, True))
    before = [p.copy(), square_avg.codes.copy(), grad_avg.codes.copy()]
    for sq, ga, bad in ((square_avg, np.zeros_like(p), "square_avgs"), (np.zeros_like(p), grad_avg, "grad_avgs")):
        with pytest.raises(TypeError, match=rf"{bad}\[0\] is 8-bit state, which centered=True cannot use"):
            fusedopt.rmsprop_([p], [g], [sq], lr=1e-3, centered=True, grad_avgs=[ga])
    assert all(np.array_equal(a, b) for a, b in zip(before, [p, square_avg.codes, grad_avg.codes]))
    fusedopt.rmsprop_([p], [g], [square_avg], lr=1e-3)  # not centered: the 8-bit square_avg is fine

    with pytest.raises(ValueError, match="centered=True takes square_avg - grad_avg"):
        optim.RMSprop([np.ones(4096, F32)], state_dtype="int8", centered=True)
    optim.RMSprop([np.ones(4096, F32)], state_dtype="bfloat16", centered=True)
    param = np.ones(4096, F32)
    opt = optim.RMSprop([param], state_dtype="int8")
    opt.step([g])
    opt.param_groups[0]["centered"] = True
    kept = param.copy()
    with pytest.raises(ValueError, match="centered=True takes square_avg - grad_avg"):
        opt.step([g])
    assert np.array_equal(param, kept)

    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft
    w = torch.nn.Parameter(torch.ones(4096))
    with pytest.raises(ValueError, match="centered=True takes square_avg - grad_avg"):
        ft.RMSprop([w], state_dtype="int8", centered=True)
    opt_t = ft.RMSprop([w], state_dtype="int8")
    w.grad = torch.full((4096,), 0.5)
    opt_t.step()
    opt_t.param_groups[0]["centered"] = True
    kept_t = w.detach().clone()
    with pytest.raises(ValueError, match="centered=True takes square_avg - grad_avg"):
        opt_t.step()
    assert torch.equal(w.detach(), kept_t)


@pytest.mark.parametrize("api", ["numpy", "torch"])
def test_param_appended_to_a_group_is_checked_against_the_options(api):
    """A param appended to a group's list after construction (both classes allow it) of a dtype
    the options refuse: the step raises before any call writes (it wrote the other params' call
    first, then raised in the second)."""
    if api == "numpy":
        first = np.ones(8, BF16)
        opt = optim.AdamW([first], stochastic_rounding=True, seed=3)
        opt.step([np.ones(8, BF16)])
        opt.param_groups[0]["params"].append(np.ones(8, F32))
        kept = first.copy()
        with pytest.raises(TypeError, match=r"params'\]\[1\] has dtype float32; stochastic_rounding=True"):
            opt.step([np.ones(8, BF16), np.ones(8, F32)])
        assert np.array_equal(first.view(np.uint16), kept.view(np.uint16)) and opt.state[first]["step"] == 1
        return
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft
    first = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    opt_t = ft.AdamW([first], stochastic_rounding=True, seed=np.uint64(2**64 - 1))  # a NumPy seed: an int
    first.grad = torch.ones(8, dtype=torch.bfloat16)
    opt_t.step()
    added = torch.nn.Parameter(torch.ones(8))
    added.grad = torch.ones(8)
    opt_t.param_groups[0]["params"].append(added)
    kept_t = first.detach().clone()
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[1\] has dtype torch.float32; "
                                        "stochastic_rounding=True"):
        opt_t.step()
    assert torch.equal(first.detach(), kept_t) and float(opt_t.state[first]["step"]) == 1
    opt_t.param_groups[0]["params"].pop()
    opt_t.param_groups[0]["seed"] = None  # a seed set by hand: checked before any call writes
    with pytest.raises(TypeError, match="seed must be an int, got None"):
        opt_t.step()
    assert torch.equal(first.detach(), kept_t)
