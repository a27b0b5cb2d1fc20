"""fusedopt.optim: the optimizer classes against the update functions driven by hand (NumPy
reference) and against torch.optim, checkpoints, skipped steps and bad input.

Every class runs 100 steps over three param groups with different hyperparameters while a
cosine schedule changes each group's lr.

Tolerance: the kernels and the reference compute the same operations in the same order and
dtype, except that FMA rounds a*b+c once instead of twice; torch orders some operations
differently again (lerp, addcdiv). Those differences are ulps of each step's increment, which is
small next to the param (about lr), so even summed over 100 steps they stay near an ulp of the
param: we measure at most 2 ulps of max(1, |param|) on avx2, sse2 and scalar (printed by each
test). ULPS = 16 leaves room for other ISAs and compilers while still catching a wrong formula,
which is off by far more after 100 steps.
"""
import copy
import json
import math
import os
import pickle
import zipfile
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

import fusedopt
import fusedopt.optim as optim
from fusedopt import reference
from test_optim import assert_close

STEPS = 100
ULPS = 16  # see the module docstring

# torch.optim's defaults (written out here to check the classes against them), plus our extension
DEFAULTS = {
    "SGD": dict(lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False),
    "Adagrad": dict(lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10, maximize=False),
    "RMSprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, maximize=False,
                    eps_inside_sqrt=False),
    "Adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, maximize=False,
                 decoupled_weight_decay=False),
    "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False,
                  decoupled_weight_decay=True),
}
NAMES = list(DEFAULTS)

# class -> (constructor keyword arguments, hyperparameters of each of the three groups)
CONFIGS = {
    "SGD": (dict(lr=0.05, momentum=0.9),
            [dict(nesterov=True), dict(dampening=0.1, weight_decay=1e-2), dict(momentum=0, maximize=True, lr=0.02)]),
    "Adagrad": (dict(lr=0.1, initial_accumulator_value=0.1),
                [{}, dict(lr_decay=0.01, weight_decay=1e-2),
                 dict(maximize=True, eps=1e-6, initial_accumulator_value=0)]),
    "RMSprop": (dict(lr=0.01),
                [dict(centered=True, momentum=0.5), dict(momentum=0.9, weight_decay=1e-2),
                 dict(alpha=0.9, eps_inside_sqrt=True)]),
    "Adam": (dict(lr=0.01, amsgrad=True),
             [{}, dict(amsgrad=False, weight_decay=1e-2, betas=(0.8, 0.99)),
              dict(decoupled_weight_decay=True, weight_decay=0.1, maximize=True)]),
    "AdamW": (dict(lr=0.01), [dict(amsgrad=True), {}, dict(weight_decay=0.0, eps=1e-6)]),
}
SHAPES = [[(5,), (3, 7)], [(64,)], [(1,), (17,)]]  # the params of each group


def schedule(t):
    """lr factor at step t (0-based): cosine from 1 down to 0.5 over the run."""
    return 0.75 + 0.25 * math.cos(math.pi * t / STEPS)


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in shapes] for shapes in SHAPES]


def make_grads(dtype, steps=STEPS, seed=1):
    """grads[t][group][j]: the gradient of param j of the group at step t."""
    rng = np.random.default_rng(seed)
    return [[[rng.standard_normal(s).astype(dtype) for s in shapes] for shapes in SHAPES] for _ in range(steps)]


def flat(per_group):
    return [a for group in per_group for a in group]


def make_optimizer(name, params):
    kwargs, group_opts = CONFIGS[name]
    return getattr(optim, name)([{"params": ps, **opts} for ps, opts in zip(params, group_opts)], **kwargs)


def group_hyperparameters(name):
    kwargs, group_opts = CONFIGS[name]
    return [{**DEFAULTS[name], **kwargs, **opts} for opts in group_opts]


def train(opt, name, grads, steps):
    """opt.step at each step number t in steps, each group's lr following the schedule."""
    for t in steps:
        for group, h in zip(opt.param_groups, group_hyperparameters(name)):
            group["lr"] = h["lr"] * schedule(t)
        assert opt.step(flat(grads[t])) is True


def zeros(arrays):
    return [np.zeros_like(a) for a in arrays]


def reference_train(name, params, grads):
    """The reference update functions driven by hand: one call per group and step, state allocated
    at the first step as torch does."""
    groups = group_hyperparameters(name)
    state = [None] * len(groups)
    for t, step_grads in enumerate(grads):
        step = t + 1
        for k, (h, ps, gs) in enumerate(zip(groups, params, step_grads)):
            lr = h["lr"] * schedule(t)
            if name == "SGD":
                if step == 1:  # contents ignored: step=1 sets the buffers to the first gradient
                    state[k] = [np.empty_like(p) for p in ps] if h["momentum"] else None
                reference.sgd_(ps, gs, state[k], lr=lr, momentum=h["momentum"], dampening=h["dampening"],
                               nesterov=h["nesterov"], weight_decay=h["weight_decay"], maximize=h["maximize"],
                               step=step)
            elif name == "Adagrad":
                if step == 1:
                    state[k] = [np.full_like(p, h["initial_accumulator_value"]) for p in ps]
                reference.adagrad_(ps, gs, state[k], step=step, lr=lr, lr_decay=h["lr_decay"],
                                   weight_decay=h["weight_decay"], eps=h["eps"], maximize=h["maximize"])
            elif name == "RMSprop":
                if step == 1:
                    state[k] = dict(square_avgs=zeros(ps), momentum_buffers=zeros(ps), grad_avgs=zeros(ps))
                reference.rmsprop_(ps, gs, **state[k], lr=lr, alpha=h["alpha"], eps=h["eps"],
                                   weight_decay=h["weight_decay"], momentum=h["momentum"], centered=h["centered"],
                                   maximize=h["maximize"], eps_inside_sqrt=h["eps_inside_sqrt"])
            else:
                if step == 1:
                    state[k] = dict(exp_avgs=zeros(ps), exp_avg_sqs=zeros(ps), max_exp_avg_sqs=zeros(ps))
                reference.adam_(ps, gs, **state[k], step=step, lr=lr, beta1=h["betas"][0], beta2=h["betas"][1],
                                eps=h["eps"], weight_decay=h["weight_decay"],
                                decoupled_weight_decay=h["decoupled_weight_decay"], amsgrad=h["amsgrad"],
                                maximize=h["maximize"])


def max_ulps(actual, expected):
    scale = max(1.0, float(np.max(np.abs(expected))))
    return float(np.max(np.abs(actual.astype(np.float64) - expected))) / (np.finfo(expected.dtype).eps * scale)


def fingerprint(opt):
    """Everything an optimizer holds, comparable with ==: hyperparameters, state and params as bytes."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    state = {i: {k: (v.dtype.str, v.tobytes()) if isinstance(v, np.ndarray) else v for k, v in opt.state[p].items()}
             for i, p in enumerate(p for g in opt.param_groups for p in g["params"]) if p in opt.state}
    params = [p.tobytes() for g in opt.param_groups for p in g["params"]]
    return groups, state, params, opt.skipped_steps


# ---- the numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_matches_reference(name, dtype):
    params, grads = make_params(dtype), make_grads(dtype)
    ref_params = [[p.copy() for p in ps] for ps in params]
    train(make_optimizer(name, params), name, grads, range(STEPS))
    reference_train(name, ref_params, grads)
    print(f"{name} {dtype.__name__}: max diff {max(map(max_ulps, flat(params), flat(ref_params))):.1f} ulps")
    for got, want in zip(flat(params), flat(ref_params)):
        assert_close(got, want, ulps=ULPS)


@pytest.mark.parametrize("without_grads", [False, True], ids=["all grads", "some grads None"])
@pytest.mark.parametrize("name", NAMES)
def test_matches_torch(isa, name, dtype, without_grads):
    """without_grads: at step t, params (t + k) % 5 for k < t % 3 have no grad (None), which
    torch and fusedopt both leave out of that step (their step counts then differ)."""
    torch = pytest.importorskip("torch")
    kwargs, group_opts = CONFIGS[name]
    # torch has no eps_inside_sqrt, and its Adagrad starts every group's sum at the constructor's
    # initial_accumulator_value, ignoring a group's own (fusedopt uses the group's): leave both out
    group_opts = [{k: v for k, v in opts.items() if k not in ("eps_inside_sqrt", "initial_accumulator_value")}
                  for opts in group_opts]
    params, grads = make_params(dtype), make_grads(dtype)
    tparams = [[torch.tensor(p.copy()) for p in ps] for ps in params]
    opt = getattr(optim, name)([{"params": ps, **o} for ps, o in zip(params, group_opts)], **kwargs)
    topt = getattr(torch.optim, name)([{"params": ps, **o} for ps, o in zip(tparams, group_opts)], foreach=False,
                                      **kwargs)
    for t in range(STEPS):
        for group, tgroup, h in zip(opt.param_groups, topt.param_groups, group_hyperparameters(name)):
            group["lr"] = tgroup["lr"] = h["lr"] * schedule(t)
        missing = {(t + k) % 5 for k in range(t % 3)} if without_grads else set()
        step_grads = [None if i in missing else g for i, g in enumerate(flat(grads[t]))]
        for tp, g in zip(flat(tparams), step_grads):
            tp.grad = None if g is None else torch.tensor(g)
        topt.step()
        opt.step(step_grads)
    print(f"{name} {dtype.__name__}: max diff vs torch "
          f"{max(max_ulps(p, tp.numpy()) for p, tp in zip(flat(params), flat(tparams))):.1f} ulps")
    for p, tp in zip(flat(params), flat(tparams)):
        assert_close(p, tp.numpy(), ulps=ULPS)


@pytest.mark.parametrize("name", NAMES)
def test_a_param_without_grad_sits_the_step_out(name):
    """A grad of None leaves its param out of the step, as torch leaves out a param whose .grad is
    None: each param ends bitwise as an optimizer of that param alone, given only the steps it had
    a grad in, and a param never given one has no state."""
    params, grads = make_params(np.float32), make_grads(np.float32, steps=12)
    hyperparameters = group_hyperparameters(name)
    group_of = [k for k, ps in enumerate(params) for _ in ps]
    alone = [getattr(optim, name)([{"params": [p.copy()], **hyperparameters[k]}])
             for p, k in zip(flat(params), group_of)]
    opt = make_optimizer(name, params)
    for t in range(12):
        missing = {(t + k) % 4 for k in range(t % 3)} | {4}  # param 4 never has a grad
        step_grads = [None if i in missing else g for i, g in enumerate(flat(grads[t]))]
        for group, h in zip(opt.param_groups, hyperparameters):
            group["lr"] = h["lr"] * schedule(t)
        assert opt.step(step_grads)
        for i, (one, g) in enumerate(zip(alone, step_grads)):
            if g is not None:
                one.param_groups[0]["lr"] = hyperparameters[group_of[i]]["lr"] * schedule(t)
                one.step([g])
    for i, (p, one) in enumerate(zip(flat(params), alone)):
        assert p.tobytes() == one.param_groups[0]["params"][0].tobytes(), f"param {i}"
        assert fingerprint(opt)[1].get(i) == fingerprint(one)[1].get(0), f"state of param {i}"
    assert flat(params)[4] not in opt.state


@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_torchs(name):
    opt = getattr(optim, name)([np.zeros(3)])
    assert opt.defaults == DEFAULTS[name]
    assert {k: v for k, v in opt.param_groups[0].items() if k != "params"} == DEFAULTS[name]
    torch = pytest.importorskip("torch")
    tgroup = getattr(torch.optim, name)([torch.zeros(3)]).param_groups[0]
    assert {k: tgroup[k] for k in DEFAULTS[name] if k in tgroup} == \
           {k: v for k, v in DEFAULTS[name].items() if k in tgroup}


def test_grads_per_group_and_flat_agree():
    params_a, params_b, grads = make_params(np.float32), make_params(np.float32), make_grads(np.float32, steps=3)
    opt_a, opt_b = make_optimizer("Adam", params_a), make_optimizer("Adam", params_b)
    for g in grads:
        opt_a.step(flat(g))
        opt_b.step(g)
    assert fingerprint(opt_a) == fingerprint(opt_b)


def test_one_kernel_call_per_group(monkeypatch):
    calls = []

    def counting_adam_(params, *args, **kwargs):
        if params:  # the hyperparameter checks call it on empty lists
            calls.append(len(params))
        return fusedopt.adam_(params, *args, **kwargs)

    monkeypatch.setattr(optim.Adam, "update", staticmethod(counting_adam_))
    opt = make_optimizer("Adam", make_params(np.float32))
    for g in make_grads(np.float32, steps=2):
        opt.step(flat(g))
    assert calls == [2, 1, 2] * 2


def test_sgd_first_step_sets_buffer_to_gradient():
    """torch: the momentum buffer starts as the first gradient, without dampening."""
    p = np.ones(8, np.float32)
    g1, g2 = np.arange(8, dtype=np.float32), np.full(8, 0.5, np.float32)
    opt = optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.5)
    opt.step([g1])
    np.testing.assert_array_equal(opt.state[p]["momentum_buffer"], g1)
    assert "step" not in opt.state[p]  # torch's SGD counts no steps
    assert_close(p, 1 - np.float32(0.1) * g1, ulps=2)
    opt.step([g2])
    assert_close(opt.state[p]["momentum_buffer"], np.float32(0.9) * g1 + np.float32(0.5) * g2, ulps=2)


def test_sgd_momentum_switched_on_later_starts_from_that_gradient():
    p = np.ones(8)
    opt = optim.SGD([p], lr=0.1)
    opt.step([np.ones(8)])
    assert opt.state == {}  # no momentum: no state, as torch
    opt.param_groups[0]["momentum"] = 0.9
    g = np.linspace(-1, 1, 8)
    opt.step([g])
    np.testing.assert_array_equal(opt.state[p]["momentum_buffer"], g)


def test_adagrad_initial_accumulator_value():
    a, b = np.zeros(5, np.float32), np.zeros(3, np.float32)
    opt = optim.Adagrad([{"params": [a]}, {"params": [b], "initial_accumulator_value": 2.0}],
                        initial_accumulator_value=0.5)
    assert opt.state == {}  # allocated at the first step
    g = np.float32(3.0)
    opt.step([np.full(5, g), np.full(3, g)])
    assert_close(opt.state[a]["sum"], np.full(5, 0.5 + g * g, np.float32), ulps=1)
    assert_close(opt.state[b]["sum"], np.full(3, 2.0 + g * g, np.float32), ulps=1)
    assert opt.state[a]["step"] == opt.state[b]["step"] == 1


def test_params_with_different_step_counts_each_get_their_own():
    """After loading, the params of one group may have taken different numbers of steps: each
    gets its own bias correction (one call per distinct step count)."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(9) for _ in range(3)]
    opt = optim.Adam(params, lr=0.01)
    state = {i: {"step": step, "exp_avg": rng.standard_normal(9), "exp_avg_sq": rng.random(9)}
             for i, step in enumerate([5, 2, 5])}
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    expected = [p.copy() for p in params]
    grads = [rng.standard_normal(9) for _ in range(3)]
    for i in range(3):
        s = {k: v.copy() for k, v in state[i].items() if k != "step"}
        fusedopt.adam_(expected[i], grads[i], s["exp_avg"], s["exp_avg_sq"], step=state[i]["step"] + 1, lr=0.01)
    opt.step(grads)
    for got, want in zip(params, expected):
        assert got.tobytes() == want.tobytes()
    assert [opt.state[p]["step"] for p in params] == [6, 3, 6]


def test_group_may_mix_dtypes():
    """As in torch, a group may hold float32 and float64 params: one call per dtype, the same
    numbers as separate optimizers, and a non-finite grad of either dtype skips the whole step."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6)
    a_alone, b_alone = a.copy(), b.copy()
    mixed, opt_a, opt_b = optim.Adam([a, b], lr=0.01), optim.Adam([a_alone], lr=0.01), optim.Adam([b_alone], lr=0.01)
    for _ in range(3):
        ga, gb = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6)
        mixed.step([ga, gb], skip_if_nonfinite=True)
        opt_a.step([ga])
        opt_b.step([gb])
    assert a.tobytes() == a_alone.tobytes() and b.tobytes() == b_alone.tobytes()
    before = fingerprint(mixed)
    assert mixed.step([ga, np.full(6, np.nan)], skip_if_nonfinite=True) is False
    assert fingerprint(mixed)[:3] == before[:3]


def test_add_param_group():
    a, b = np.zeros(4), np.zeros(2)
    opt = optim.SGD([a], lr=0.1)
    opt.step([np.ones(4)])
    opt.add_param_group({"params": b, "lr": 1.0})  # a lone array, as torch accepts a lone tensor
    opt.step([[np.ones(4)], [np.ones(2)]])
    np.testing.assert_allclose(a, -0.2)
    np.testing.assert_allclose(b, -1.0)
    assert opt.state_dict()["param_groups"][1]["params"] == [1]


# ---- grad_scale and skipped steps --------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_grad_scale_divides_the_grads(name):
    """A power-of-two scale is exact, so scaled grads with grad_scale give the same bits."""
    params_a, params_b, grads = make_params(np.float32), make_params(np.float32), make_grads(np.float32, steps=5)
    opt_a, opt_b = make_optimizer(name, params_a), make_optimizer(name, params_b)
    for g in grads:
        opt_a.step(flat(g))
        opt_b.step([x * np.float32(1024) for x in flat(g)], grad_scale=1024.0)
    assert fingerprint(opt_a) == fingerprint(opt_b)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("groups", ["one", "three"])
@pytest.mark.parametrize("bad_step", [0, 3], ids=["first-step", "later-step"])
def test_nonfinite_step_is_skipped_as_a_whole(name, groups, bad_step):
    """A NaN or inf in the last gradient: nothing changes (no state allocated, no step counted),
    and training then continues exactly as if the bad step had never been taken."""
    def make(params):
        if groups == "one":
            return getattr(optim, name)(flat(params), **CONFIGS[name][0])
        return make_optimizer(name, params)

    params_a, params_b, grads = make_params(np.float32), make_params(np.float32), make_grads(np.float32, steps=6)
    opt_a, opt_b = make(params_a), make(params_b)
    for t, g in enumerate(grads):
        if t == bad_step:
            bad = [x.copy() for x in flat(g)]
            bad[-1][-1] = np.nan if t else np.inf
            before = fingerprint(opt_b)
            assert opt_b.step(bad, skip_if_nonfinite=True) is False
            assert opt_b.skipped_steps == 1
            opt_b.skipped_steps = 0
            assert fingerprint(opt_b) == before
        assert opt_a.step(flat(g)) is True
        assert opt_b.step(flat(g), skip_if_nonfinite=True) is True
    assert fingerprint(opt_a) == fingerprint(opt_b)


def test_skip_with_different_step_counts_in_one_group():
    """Two step counts in one group means two kernel calls: the check covers both before either writes."""
    params = [np.zeros(4, np.float32), np.zeros(4, np.float32)]
    opt = optim.Adam(params)
    opt.step([np.ones(4, np.float32), np.ones(4, np.float32)])
    opt.state[params[1]]["step"] = 7
    before = fingerprint(opt)
    assert opt.step([np.ones(4, np.float32), np.full(4, np.inf, np.float32)], skip_if_nonfinite=True) is False
    assert fingerprint(opt)[:3] == before[:3] and opt.skipped_steps == 1


# ---- checkpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("via", ["state_dict", "file"])
@pytest.mark.parametrize("into", ["fresh", "used"])
def test_resume_is_bitwise_identical(name, via, into, tmp_path):
    """Stop after 50 of 100 steps, load the checkpoint into another optimizer over copies of the
    params (a fresh one, or one that took other steps: its arrays are overwritten), continue."""
    grads = make_grads(np.float32)
    straight = make_params(np.float32)
    train(make_optimizer(name, straight), name, grads, range(STEPS))

    first = make_params(np.float32)
    opt = make_optimizer(name, first)
    train(opt, name, grads, range(STEPS // 2))
    if via == "file":
        optim.save(tmp_path / "ckpt.npz", opt)
    else:
        checkpoint = opt.state_dict()
    resumed = [[p.copy() for p in ps] for ps in first]
    opt = make_optimizer(name, resumed)
    if into == "used":
        train(opt, name, make_grads(np.float32, steps=3, seed=7), range(3))
        for p, saved in zip(flat(resumed), flat(first)):  # params are not in a checkpoint: restore them
            np.copyto(p, saved)
        arrays_before = {(id(p), k): id(v) for p, s in opt.state.items() for k, v in s.items()
                         if isinstance(v, np.ndarray)}
    if via == "file":
        optim.load(tmp_path / "ckpt.npz", opt)
    else:
        opt.load_state_dict(checkpoint)
    if into == "used":  # copied into the existing arrays
        assert {(id(p), k): id(v) for p, s in opt.state.items() for k, v in s.items()
                if isinstance(v, np.ndarray)} == arrays_before
    train(opt, name, grads, range(STEPS // 2, STEPS))
    for a, b in zip(flat(straight), flat(resumed)):
        assert a.tobytes() == b.tobytes()


def test_state_dict_is_plain_numbers_and_copies():
    opt = make_optimizer("Adam", make_params(np.float64))
    opt.param_groups[0]["lr"] = np.float32(0.5)  # a schedule may set NumPy scalars
    opt.step(flat(make_grads(np.float64, steps=1)[0]))
    sd = opt.state_dict()
    assert type(sd["param_groups"][0]["lr"]) is float and sd["param_groups"][0]["lr"] == 0.5
    assert sd["param_groups"][1]["betas"] == (0.8, 0.99)
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2], [3, 4]]
    assert sorted(sd["state"]) == [0, 1, 2, 3, 4]
    assert type(sd["state"][0]["step"]) is int
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert set(sd["state"][2]) == {"step", "exp_avg", "exp_avg_sq"}  # this group has amsgrad=False
    before = fingerprint(opt)
    sd["state"][0]["exp_avg"][...] = 7.0
    sd["param_groups"][0]["eps"] = 1.0
    assert fingerprint(opt) == before


def test_save_is_atomic(tmp_path, monkeypatch):
    """A crash while writing (at the data, the fsync or the rename) leaves the previous checkpoint,
    and no temporary file behind."""
    path = tmp_path / "ckpt.npz"
    params, grads = make_params(np.float32), make_grads(np.float32, steps=2)
    opt = make_optimizer("Adam", params)
    opt.step(flat(grads[0]))
    optim.save(path, opt)
    saved, saved_bytes = fingerprint(opt), path.read_bytes()
    opt.step(flat(grads[1]))

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    def savez_then_crash(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        crash()

    crashes = [(os, "replace", crash), (os, "fsync", crash), (np, "savez", savez_then_crash)]
    for module, function, replacement in crashes:
        with monkeypatch.context() as m:
            m.setattr(module, function, replacement)
            with pytest.raises(OSError, match="simulated crash"):
                optim.save(path, opt)
        assert path.read_bytes() == saved_bytes
        assert os.listdir(tmp_path) == ["ckpt.npz"]
    optim.load(path, opt)
    assert fingerprint(opt)[:2] == saved[:2]


# A used Adam optimizer (amsgrad in two of its three groups) and its state_dict, for the bad cases.
def used_adam(dtype=np.float32):
    opt = make_optimizer("Adam", make_params(dtype))
    for g in make_grads(dtype, steps=2):
        opt.step(flat(g))
    return opt


def edit(sd, path, value=None, delete=False):
    *keys, last = path
    target = sd
    for k in keys:
        target = target[k]
    if delete:
        del target[last]
    else:
        target[last] = value
    return sd


BAD_STATE_DICTS = [
    ("not a dict", lambda sd: [sd], ValueError, "a state_dict is a dict"),
    ("extra top-level key", lambda sd: {**sd, "extra": 1}, ValueError, "a state_dict is a dict"),
    ("missing state array", lambda sd: edit(sd, ["state", 0, "exp_avg_sq"], delete=True), ValueError, "needs"),
    ("missing max_exp_avg_sq (amsgrad)", lambda sd: edit(sd, ["state", 1, "max_exp_avg_sq"], delete=True),
     ValueError, "needs"),
    ("missing step", lambda sd: edit(sd, ["state", 0, "step"], delete=True), ValueError, "needs"),
    ("unknown state key", lambda sd: edit(sd, ["state", 0, "momentum_buffer"], np.zeros(5, np.float32)),
     ValueError, "allows"),
    ("step 0", lambda sd: edit(sd, ["state", 0, "step"], 0), ValueError, "step"),
    ("step float", lambda sd: edit(sd, ["state", 0, "step"], 2.0), ValueError, "step"),
    # a step the kernels cannot take (a C++ long long, and the next step is step + 1): these loaded,
    # then every step failed
    ("step 2**63", lambda sd: edit(sd, ["state", 0, "step"], 2**63), ValueError, r"step'\] must be an int from 1"),
    ("step 10**30", lambda sd: edit(sd, ["state", 0, "step"], 10**30), ValueError, r"step'\] must be an int from 1"),
    ("step 2**63 - 1", lambda sd: edit(sd, ["state", 2, "step"], 2**63 - 1), ValueError, "2\\*\\*63 - 2"),
    ("step True", lambda sd: edit(sd, ["state", 0, "step"], True), ValueError, "step"),
    ("wrong dtype", lambda sd: edit(sd, ["state", 4, "exp_avg"], np.zeros(17)), ValueError, "dtype float64"),
    ("wrong shape", lambda sd: edit(sd, ["state", 1, "exp_avg"], np.zeros((7, 3), np.float32)), ValueError, "shape"),
    ("list, not array", lambda sd: edit(sd, ["state", 0, "exp_avg"], [0.0] * 5), TypeError, "numpy.ndarray"),
    ("param index out of range", lambda sd: edit(sd, ["state", 5], dict(sd["state"][4])),
     ValueError, "no param has index 5"),
    ("missing hyperparameter", lambda sd: edit(sd, ["param_groups", 0, "eps"], delete=True), ValueError, "missing"),
    ("unknown hyperparameter", lambda sd: edit(sd, ["param_groups", 0, "momentum"], 0.9), ValueError, "unknown"),
    ("invalid hyperparameter", lambda sd: edit(sd, ["param_groups", 2, "betas"], (0.9, 1.5)), ValueError, "beta2"),
    ("hyperparameter type", lambda sd: edit(sd, ["param_groups", 2, "amsgrad"], "yes"),
     TypeError, "amsgrad must be a bool"),
    ("too few groups", lambda sd: edit(sd, ["param_groups"], sd["param_groups"][:2]), ValueError, "2 param groups"),
    ("group params differ", lambda sd: edit(sd, ["param_groups", 1, "params"], [2, 3]), ValueError, "another model"),
]


@pytest.mark.parametrize("desc,change,exc,match", BAD_STATE_DICTS, ids=[c[0] for c in BAD_STATE_DICTS])
def test_bad_state_dict_leaves_optimizer_unchanged(desc, change, exc, match):
    opt = used_adam()
    bad = change(opt.state_dict())
    before = fingerprint(opt)
    with pytest.raises(exc, match=match):
        opt.load_state_dict(bad)
    assert fingerprint(opt) == before


def test_checkpoint_of_another_model_or_class_is_refused(tmp_path):
    opt = used_adam()
    before = fingerprint(opt)
    others = [
        ("other shapes", optim.Adam([{"params": [np.zeros(s, np.float32) for s in shapes]} for shapes in
                                     [[(5,), (7, 3)], [(64,)], [(1,), (17,)]]], amsgrad=True), "shape"),
        ("other dtype", used_adam(np.float64), "dtype"),
        ("one group", optim.Adam([np.zeros(5, np.float32)]), "param groups"),
        ("other class", optim.AdamW([{"params": ps} for ps in make_params(np.float32)]), "AdamW"),
        ("SGD", optim.SGD([{"params": ps} for ps in make_params(np.float32)], momentum=0.9), "SGD"),
    ]
    for desc, other, match in others:
        other.step([np.ones_like(p) for g in other.param_groups for p in g["params"]])
        optim.save(tmp_path / "other.npz", other)
        with pytest.raises(ValueError, match=match):
            optim.load(tmp_path / "other.npz", opt)
        if desc != "other class":  # AdamW's state_dict is a valid Adam state_dict (decoupled_weight_decay=True)
            with pytest.raises(ValueError):
                opt.load_state_dict(other.state_dict())
        assert fingerprint(opt) == before, desc


def npy_file(path):
    with open(path, "wb") as f:  # np.save(path) would append ".npy" to the name
        np.save(f, np.zeros(3))


def npz_without_meta(path):
    np.savez(path, x=np.zeros(3))


def npz_with_meta(meta):
    def write(path):
        np.savez(path, meta=np.array(json.dumps(meta)))
    return write


def corrupt_middle(path):
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    # the middle of the largest member's data (after its local header: 30 bytes, name, extra field),
    # not of the file, which may fall into a header field the reader ignores
    at = info.header_offset
    start = at + 30 + int.from_bytes(data[at + 26:at + 28], "little") + int.from_bytes(data[at + 28:at + 30], "little")
    data[start + info.file_size // 2] ^= 0xFF  # the zip CRC check fails
    path.write_bytes(bytes(data))


def central_directory_patched(offset, value):
    """A damage: the first zip central directory entry's 2 bytes at offset set to value (zipfile
    then raises NotImplementedError or RuntimeError, not BadZipFile)."""
    def damage(path):
        data = bytearray(path.read_bytes())
        at = data.index(b"PK\x01\x02") + offset
        data[at:at + 2] = value.to_bytes(2, "little")
        path.write_bytes(bytes(data))
    return damage


BAD_FILES = [
    ("zip entry: unknown compression method", central_directory_patched(10, 99)),
    ("zip entry: encrypted", central_directory_patched(8, 1)),
    ("zip entry: unknown version needed", central_directory_patched(6, 173)),
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])),
    ("cut at the end", lambda p: p.write_bytes(p.read_bytes()[:-10])),
    ("a byte flipped", corrupt_middle),
    ("empty", lambda p: p.write_bytes(b"")),
    ("text", lambda p: p.write_text("not a checkpoint")),
    (".npy, not .npz", npy_file),
    ("npz without meta", npz_without_meta),
    ("meta not JSON", lambda p: np.savez(p, meta=np.array("{not json"))),
    ("meta of another format", npz_with_meta({"format": "something else"})),
    ("bad state index", npz_with_meta({"format": optim.CHECKPOINT_FORMAT, "optimizer": "Adam",
                                       "param_groups": [], "state": {"x": {}}})),
    ("bad array name", lambda p: np.savez(p, meta=np.array(json.dumps(
        {"format": optim.CHECKPOINT_FORMAT, "optimizer": "Adam", "param_groups": [], "state": {}})), junk=np.zeros(2))),
    *[(f"encoded {encoded!r}", npz_with_meta({"format": optim.CHECKPOINT_FORMAT, "optimizer": "Adam",
                                              "param_groups": [], "state": {}, "encoded": encoded}))
      for encoded in ([], {"0": "bfloat16"}, {"0": None})],
]


@pytest.mark.parametrize("desc,damage", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_unreadable_file_leaves_optimizer_unchanged(desc, damage, tmp_path):
    path = tmp_path / "ckpt.npz"
    opt = used_adam()
    optim.save(path, opt)
    opt.step(flat(make_grads(np.float32, steps=1, seed=5)[0]))  # differ from the file
    damage(path)
    before = fingerprint(opt)
    with pytest.raises(ValueError, match="not a readable fusedopt optimizer checkpoint"):
        optim.load(path, opt)
    assert fingerprint(opt) == before


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        optim.load(tmp_path / "nothing.npz", used_adam())


def test_checkpoint_file_needs_no_pickle(tmp_path):
    optim.save(tmp_path / "ckpt.npz", used_adam())
    with np.load(tmp_path / "ckpt.npz", allow_pickle=False) as f:
        meta = json.loads(str(f["meta"][()]))
        assert meta["optimizer"] == "Adam" and meta["state"]["0"] == {"step": 2}
        assert "state/0/exp_avg" in f.files
    with zipfile.ZipFile(tmp_path / "ckpt.npz") as z:
        assert z.testzip() is None


# ---- bad input ---------------------------------------------------------------------------------


def p32(n=4):
    return np.zeros(n, np.float32)


def readonly():
    a = p32()
    a.flags.writeable = False
    return a


def same_twice():
    a = p32()
    return optim.Adam([{"params": [a]}, {"params": [p32(), a]}])


CONSTRUCTION_ERRORS = [
    ("empty params", lambda: optim.SGD([]), ValueError, "empty parameter list"),
    ("a lone array", lambda: optim.Adam(p32()), TypeError, "list of numpy arrays"),
    ("not iterable", lambda: optim.Adam(3), TypeError, "list of numpy arrays"),
    ("python list param", lambda: optim.Adam([p32(), [1.0, 2.0]]), TypeError,
     r"\['params'\]\[1\] must be a numpy.ndarray"),
    ("int32 param", lambda: optim.Adam([np.zeros(3, np.int32)]), TypeError, "float32, float64, bfloat16"),
    ("big-endian param", lambda: optim.Adam([np.zeros(3, ">f4")]), TypeError, "dtype"),
    ("non-contiguous param", lambda: optim.Adam([np.zeros(8, np.float32)[::2]]), ValueError, "C-contiguous"),
    ("read-only param", lambda: optim.Adam([readonly()]), ValueError, "read-only"),
    ("param twice in a group", lambda: optim.Adam([p32()] * 2), ValueError, "more than one place"),
    ("param in two groups", same_twice, ValueError, r"param_groups\[1\]\['params'\]\[1\] appears in more than one"),
    ("dicts and arrays mixed", lambda: optim.Adam([p32(), {"params": [p32()]}]), TypeError, "mixes"),
    ("group without params", lambda: optim.Adam([{"lr": 0.1}]), ValueError, "no 'params'"),
    ("group params not a list", lambda: optim.Adam([{"params": 3}]), TypeError, "list of numpy arrays"),
    ("unknown group key", lambda: optim.Adam([{"params": [p32()], "betaz": (0.9, 0.9)}]), ValueError,
     "unknown hyperparameter.*betaz"),
    ("unknown keyword", lambda: optim.Adam([p32()], foreach=False), TypeError, "foreach"),
    ("negative lr", lambda: optim.Adam([p32()], lr=-1.0), ValueError, "Invalid lr value"),
    ("nan lr", lambda: optim.SGD([p32()], lr=float("nan")), ValueError, "Invalid lr value"),
    ("bad lr in a group", lambda: optim.Adam([{"params": [p32()]}, {"params": [p32()], "lr": -1}]), ValueError,
     r"param_groups\[1\]: Invalid lr"),
    ("beta1 = 1", lambda: optim.Adam([p32()], betas=(1.0, 0.999)), ValueError, "beta1"),
    ("betas a number", lambda: optim.Adam([p32()], betas=0.9), TypeError, "betas must be a tuple of 2 numbers"),
    ("amsgrad a string", lambda: optim.Adam([p32()], amsgrad="yes"), TypeError, "amsgrad must be a bool"),
    ("lr a string", lambda: optim.Adam([p32()], lr="0.1"), TypeError, "lr must be a number"),
    ("AdamW lr * weight_decay > 1", lambda: optim.AdamW([p32()], lr=1.0, weight_decay=2.0), ValueError,
     "lr \\* weight_decay"),
    ("momentum > 1", lambda: optim.SGD([p32()], momentum=1.5), ValueError, "momentum"),
    ("nesterov without momentum", lambda: optim.SGD([p32()], nesterov=True), ValueError, "Nesterov"),
    ("negative initial accumulator", lambda: optim.Adagrad([p32()], initial_accumulator_value=-1), ValueError,
     "initial_accumulator_value"),
    ("negative lr_decay", lambda: optim.Adagrad([p32()], lr_decay=-1), ValueError, "lr_decay"),
    ("alpha > 1", lambda: optim.RMSprop([p32()], alpha=2.0), ValueError, "alpha"),
    ("negative eps", lambda: optim.RMSprop([p32()], eps=-1e-8), ValueError, "eps"),
]


@pytest.mark.parametrize("desc,make,exc,match", CONSTRUCTION_ERRORS, ids=[c[0] for c in CONSTRUCTION_ERRORS])
def test_construction_errors(desc, make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def set_last_group(key, value):
    def change(opt, grads):
        opt.param_groups[-1][key] = value
        return grads
    return change


def replace_grad(i, make):
    def change(opt, grads):
        grads[i] = make(grads[i])
        return grads
    return change


def grad_in_param_memory(opt, grads):
    grads[4] = opt.param_groups[0]["params"][1].reshape(-1)[:17]
    return grads


# the params of used_adam() (groups of 2, 1 and 2 params) by group and index, as a step's errors name them
THREE_GROUP_NAMES = [rf"param_groups\[{k}\]\['params'\]\[{j}\]" for k, j in [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1)]]

STEP_ERRORS = [
    ("too few grads", lambda opt, g: g[:-1], ValueError, "got 4 grads but the optimizer has 5 params"),
    ("grads not a list", lambda opt, g: g[0], TypeError, "grads must be a list"),
    ("group lists mismatch", lambda opt, g: [g[:2], g[2:3]], ValueError, "2 lists of grads"),
    ("group list too short", lambda opt, g: [g[:2], g[2:3], g[3:4]], ValueError, r"grads\[2\] has 1 arrays"),
    ("wrong shape in the last group", replace_grad(4, lambda x: x[:5].copy()), ValueError,
     r"grads\[4\] \(the grad of {p[4]}\) has shape \(5,\) but its param has shape \(17,\)"),
    ("wrong dtype", replace_grad(3, lambda x: x.astype(np.float64)), TypeError,
     r"grads\[3\] \(the grad of {p[3]}\) has dtype float64"),
    ("list, not array", replace_grad(4, lambda x: x.tolist()), TypeError,
     r"grads\[4\] \(the grad of {p[4]}\) must be a numpy.ndarray"),
    ("non-contiguous", replace_grad(1, lambda x: np.asfortranarray(x)), ValueError,
     r"grads\[1\] \(the grad of {p[1]}\) is not C-contiguous"),
    ("lr set negative in the last group", set_last_group("lr", -0.1), ValueError, r"param_groups\[2\]: Invalid lr"),
    ("typo key set in a group", set_last_group("learning_rate", 0.1), ValueError, "unknown hyperparameter"),
    ("amsgrad set to None", set_last_group("amsgrad", None), TypeError, "amsgrad must be a bool"),
    ("bad grad_scale", lambda opt, g: (g, {"grad_scale": 0.0}), ValueError, "grad_scale"),
    ("read-only param", lambda opt, g: (setattr(opt.param_groups[-1]["params"][-1].flags, "writeable", False), g)[1],
     ValueError, r"{p[4]} is read-only"),
    # grads[4] (the last group's) a view of params[1] (the first group's): the first call would
    # change what the last one reads (before the step checked across its calls, it did)
    ("a grad in a param's memory", grad_in_param_memory, ValueError,
     r"{p[1]} and grads\[4\] \(the grad of {p[4]}\) overlap"),
]


def test_an_array_in_two_places_is_named_by_both():
    """One array object serving twice in a step (a param given as another param's grad; two
    params' state sharing an array): the overlap error names both places."""
    a, b = np.ones(3, np.float32), np.ones(3, np.float32)
    # named in the order the step walks them (p0, g0, p1, g1), not by address: the same on any run
    with pytest.raises(ValueError, match=r"grads\[0\] \(the grad of param_groups\[0\]\['params'\]\[0\]\) and "
                                         r"param_groups\[0\]\['params'\]\[1\] overlap"):
        optim.SGD([a, b], lr=0.1).step([b, a])
    opt = optim.Adam([a, b], lr=0.1)
    opt.step([np.ones(3, np.float32), np.ones(3, np.float32)])
    opt.state[b]["exp_avg"] = opt.state[a]["exp_avg"]
    with pytest.raises(ValueError, match=r"state\['exp_avg'\] of param_groups\[0\]\['params'\]\[0\] and "
                                         r"state\['exp_avg'\] of param_groups\[0\]\['params'\]\[1\] overlap"):
        opt.step([np.ones(3, np.float32), np.ones(3, np.float32)])


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_params_given_one_grad_array_step_as_with_copies(name):
    """Grads are only read: params of one group and of two groups (one call each, checked across
    calls) may be given one grad array, as torch.optim steps them."""
    def run(share):
        params = [np.linspace(-1, 1, 12, dtype=np.float32) * k for k in (1, 2, 3)]
        opt = getattr(optim, name)([{"params": params[:2]}, {"params": params[2:], "lr": 0.05}], lr=0.1,
                                   momentum=0.9) if name == "SGD" else optim.Adam(
            [{"params": params[:2]}, {"params": params[2:], "lr": 0.05}], lr=0.1)
        g = np.linspace(0.5, -0.5, 12, dtype=np.float32)
        for _ in range(3):
            opt.step([g, g, g] if share else [g.copy(), g.copy(), g.copy()])
        return params
    for shared, copied in zip(run(True), run(False)):
        np.testing.assert_array_equal(shared, copied)


def test_hyperparameters_changed_in_place_are_checked_again():
    """A step reuses the hyperparameters checked by the last one only while the group is unchanged:
    a list changed in place, a value that does not compare with the last one, or an equal value of
    another type, is checked again; so is a group given new params."""
    p, g = np.zeros(3, np.float32), np.ones(3, np.float32)
    opt = optim.Adam([p])
    opt.param_groups[0]["betas"] = betas = [0.9, 0.999]
    opt.step([g])
    betas[1] = 1.5
    with pytest.raises(ValueError, match="beta2"):
        opt.step([g])
    betas[1] = 0.999
    opt.param_groups[0]["lr"] = np.array([1e-3, 1e-3])
    with pytest.raises(TypeError, match="lr must be a number"):
        opt.step([g])
    opt.param_groups[0]["lr"] = 1e-3
    assert opt.step([g]) and opt.state[p]["step"] == 2
    opt.param_groups[0]["amsgrad"] = 0  # == False
    with pytest.raises(TypeError, match="amsgrad must be a bool"):
        opt.step([g])
    opt.param_groups[0]["amsgrad"] = True  # newly needs max_exp_avg_sq
    q, p_before, p_step = np.zeros(3, np.float32), p.copy(), opt.state[p]["step"]
    opt.param_groups[0]["params"] = [q]  # q takes p's index, not its state: it starts fresh
    assert opt.step([g]) and opt.state[q]["step"] == 1
    assert set(opt.state[q]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert np.all(q != 0) and np.array_equal(p, p_before)
    assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"} and opt.state[p]["step"] == p_step


@pytest.mark.parametrize("desc,change,exc,match", STEP_ERRORS, ids=[c[0] for c in STEP_ERRORS])
def test_step_errors_change_nothing(desc, change, exc, match):
    opt = used_adam()
    grads = change(opt, flat(make_grads(np.float32, steps=1, seed=3)[0]))
    grads, options = grads if isinstance(grads, tuple) else (grads, {})
    before = fingerprint(opt)
    with pytest.raises(exc, match=match.replace("{p[", "{p0[").format(p0=THREE_GROUP_NAMES)):
        opt.step(grads, **options)
    assert fingerprint(opt)[1:] == before[1:]  # state, params, skipped_steps (groups: changed by the test)


ONE_GROUP_STEP_ERRORS = [c for c in STEP_ERRORS if "group" not in c[0]]


@pytest.mark.parametrize("desc,change,exc,match", ONE_GROUP_STEP_ERRORS, ids=[c[0] for c in ONE_GROUP_STEP_ERRORS])
def test_one_group_step_errors_change_nothing(desc, change, exc, match):
    """One group makes one kernel call, whose own checks of the grads are the step's (same messages)."""
    opt = make_optimizer("Adam", [flat(make_params(np.float32))])
    for g in make_grads(np.float32, steps=2):
        opt.step(flat(g))
    grads = change(opt, flat(make_grads(np.float32, steps=1, seed=3)[0]))
    grads, options = grads if isinstance(grads, tuple) else (grads, {})
    before = fingerprint(opt)
    with pytest.raises(exc, match=match.format(p=[rf"param_groups\[0\]\['params'\]\[{j}\]" for j in range(5)])):
        opt.step(grads, **options)
    assert fingerprint(opt) == before


def test_the_largest_step_loads_and_steps():
    opt = used_adam()
    sd = opt.state_dict()
    sd["state"][0]["step"] = 2**63 - 2
    opt.load_state_dict(sd)
    assert opt.step(flat(make_grads(np.float32, steps=1)[0]))
    assert opt.state[opt.param_groups[0]["params"][0]]["step"] == 2**63 - 1


# ---- a step that raises writes nothing, across groups ----------------------------------------


def set_param(k, j, make):
    def change(opt):
        opt.param_groups[k]["params"][j] = make(opt.param_groups[k]["params"][j])
    return change


def set_state(k, j, name, make):
    def change(opt):
        state = opt.state[opt.param_groups[k]["params"][j]]
        state[name] = make(state[name])
    return change


def readonly_copy(a):
    a = a.copy()
    a.flags.writeable = False
    return a


# changes to the last groups of used_adam() (groups of 2, 1, 2 params) that make the step raise; each
# used to leave group 0 updated (with its step count not) or was not caught at all
MULTI_GROUP_ERRORS = [
    ("param of another shape", set_param(1, 0, lambda p: np.zeros(65, p.dtype)), ValueError,
     r"grads\[2\] \(the grad of param_groups\[1\]\['params'\]\[0\]\) has shape \(64,\) "
     r"but its param has shape \(65,\)"),
    ("param of another dtype", set_param(2, 1, lambda p: p.astype(np.float64)), TypeError,
     r"grads\[4\] \(the grad of param_groups\[2\]\['params'\]\[1\]\) has dtype float32"),
    ("param of an integer dtype", set_param(2, 0, lambda p: p.astype(np.int32)), TypeError,
     r"param_groups\[2\]\['params'\]\[0\] has dtype int32"),
    ("param big-endian", set_param(2, 0, lambda p: p.astype(">f4")), TypeError,
     r"param_groups\[2\]\['params'\]\[0\] has dtype >f4"),
    ("param non-contiguous", set_param(2, 1, lambda p: np.zeros(34, p.dtype)[::2]), ValueError,
     r"param_groups\[2\]\['params'\]\[1\] is not C-contiguous"),
    ("param read-only", set_param(1, 0, readonly_copy), ValueError, r"param_groups\[1\]\['params'\]\[0\] is read-only"),
    ("param not an array", set_param(2, 1, lambda p: p.tolist()), TypeError,
     r"param_groups\[2\]\['params'\]\[1\] must be a numpy.ndarray, got list"),
    ("param a view of another group's", lambda opt: opt.param_groups[2]["params"].__setitem__(
        1, opt.param_groups[1]["params"][0][10:27]), ValueError, r"param_groups\[1\]\['params'\]\[0\].* overlap"),
    ("state of another shape", set_state(2, 1, "exp_avg", lambda a: np.zeros(18, a.dtype)), ValueError,
     r"state\['exp_avg'\] of param_groups\[2\]\['params'\]\[1\] has shape \(18,\) but its param has shape \(17,\)"),
    ("state of another dtype", set_state(1, 0, "exp_avg_sq", lambda a: a.astype(np.float64)), TypeError,
     r"state\['exp_avg_sq'\] of param_groups\[1\]\['params'\]\[0\] has dtype float64"),
    ("state read-only", set_state(2, 0, "exp_avg", readonly_copy), ValueError,
     r"state\['exp_avg'\] of param_groups\[2\]\['params'\]\[0\] is read-only"),
    ("state shared with another param's", lambda opt: opt.state[opt.param_groups[2]["params"][1]].__setitem__(
        "exp_avg_sq", opt.state[opt.param_groups[0]["params"][0]]["exp_avg_sq"][:1]), ValueError,
     r"state\['exp_avg_sq'\] of param_groups\[2\]\['params'\]\[1\] has shape|overlap"),
    ("step count too large", set_state(2, 0, "step", lambda step: 2**63 - 1), ValueError,
     r"state\['step'\] of param_groups\[2\]\['params'\]\[0\] is 9223372036854775807; a step count is an int"),
    ("step count not an int", set_state(1, 0, "step", lambda step: step + 0.5), ValueError,
     r"state\['step'\] of param_groups\[1\]\['params'\]\[0\] is 2.5"),
    ("state a view of another state", lambda opt: opt.state[opt.param_groups[2]["params"][1]].__setitem__(
        "exp_avg", opt.state[opt.param_groups[1]["params"][0]]["exp_avg"][:17]), ValueError,
     r"state\['exp_avg'\] of param_groups\[1\]\['params'\]\[0\] and state\['exp_avg'\] of "
     r"param_groups\[2\]\['params'\]\[1\] overlap"),
]


@pytest.mark.parametrize("desc,change,exc,match", MULTI_GROUP_ERRORS, ids=[c[0] for c in MULTI_GROUP_ERRORS])
def test_multi_group_step_that_raises_writes_nothing(desc, change, exc, match):
    """Every check of every call runs before the first call writes; the error names the param by its
    group and its index there. Undone, the optimizer goes on bitwise as one that never raised."""
    opt, straight = used_adam(), used_adam()
    saved = [list(group["params"]) for group in opt.param_groups]
    saved_state = {id(p): dict(s) for p, s in opt.state.items()}
    grads = flat(make_grads(np.float32, steps=1, seed=3)[0])
    before = [p.tobytes() for p in flat(saved)], fingerprint(opt)[1]
    change(opt)
    with pytest.raises(exc, match=match):
        opt.step(grads)
    assert [p.tobytes() for p in flat(saved)] == before[0]
    for group, params in zip(opt.param_groups, saved):  # undo the change
        group["params"] = params
    for p in flat(saved):
        opt.state[p].clear()
        opt.state[p].update(saved_state[id(p)])
    assert fingerprint(opt)[1] == before[1]  # no state written, no step counted
    for optimizer in (opt, straight):
        optimizer.step(grads)
    assert fingerprint(opt) == fingerprint(straight)


# ---- state follows its param ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_state_follows_its_param(name):
    """Params appended to, inserted into and removed from a group between steps: each keeps its
    state (it ends bitwise as an optimizer of that param alone, given the steps it took part in)
    and a new param starts fresh. Positional state gave an inserted param its neighbour's state."""
    rng = np.random.default_rng(0)
    kwargs = {**CONFIGS[name][0], **CONFIGS[name][1][0]}
    a, b, c, d = (rng.standard_normal(n).astype(np.float32) for n in (5, 8, 8, 3))
    alone = {id(x): getattr(optim, name)([x.copy()], **kwargs) for x in (a, b, c, d)}
    opt = getattr(optim, name)([a, b], **kwargs)
    layouts = [[a, b], [a, b], [c, a, b], [c, a, b, d], [c, b, d], [c, b, d, a], [d, a]]
    for layout in layouts:
        opt.param_groups[0]["params"] = list(layout)
        grads = [rng.standard_normal(x.shape).astype(np.float32) for x in layout]
        opt.step(grads)
        for x, g in zip(layout, grads):
            alone[id(x)].step([g])
    for x in (a, b, c, d):
        one = alone[id(x)]
        assert x.tobytes() == one.param_groups[0]["params"][0].tobytes()
        mine, its = opt.state.get(x, {}), one.state.get(one.param_groups[0]["params"][0], {})
        assert mine.keys() == its.keys()
        for key in mine:
            assert np.asarray(mine[key]).tobytes() == np.asarray(its[key]).tobytes(), key
    # state_dict stays in torch's layout: indices of the current params
    sd = opt.state_dict()
    assert sd["param_groups"][0]["params"] == [0, 1]
    assert set(sd["state"]) <= {0, 1}
    copies = [x.copy() for x in (d, a)]
    other = getattr(optim, name)(copies, **kwargs)
    other.load_state_dict(sd)
    g = [rng.standard_normal(x.shape).astype(np.float32) for x in (d, a)]
    opt.step(g)
    other.step(g)
    assert [x.tobytes() for x in (d, a)] == [x.tobytes() for x in copies]


def test_param_state_mapping():
    a, b = np.zeros(3, np.float32), np.zeros(3, np.float32)  # equal arrays, different params
    opt = optim.Adam([a, b])
    assert len(opt.state) == 0 and opt.state == {} and a not in opt.state
    opt.step([np.ones(3, np.float32), None])
    assert a in opt.state and b not in opt.state and list(opt.state) == [a]
    assert opt.state[a]["step"] == 1
    with pytest.raises(KeyError):
        opt.state[b]
    del opt.state[a]
    assert len(opt.state) == 0


# ---- hyperparameters of other number types -----------------------------------------------------


@pytest.mark.parametrize("value", [Fraction(1, 10), Decimal("0.1"), np.float32(0.1), np.float64(0.1), np.int64(1)])
def test_hyperparameters_of_other_number_types_are_stored_as_python_numbers(value, tmp_path):
    """Fraction(1, 10) was accepted, then optim.save failed (JSON); Decimal was refused."""
    p = np.zeros(4, np.float32)
    opt = optim.Adam([p], lr=value, betas=(value * 0 + Fraction(9, 10) if isinstance(value, Fraction) else 0.9, 0.999))
    opt.add_param_group({"params": [np.zeros(2, np.float32)], "eps": value})
    assert type(opt.defaults["lr"]) is (int if isinstance(value, np.integer) else float)
    assert type(opt.param_groups[1]["eps"]) is type(opt.defaults["lr"])
    assert all(type(b) is float for b in opt.param_groups[0]["betas"])
    opt.step([np.ones(4, np.float32), np.ones(2, np.float32)])
    optim.save(tmp_path / "ckpt.npz", opt)
    other = optim.Adam([np.zeros(4, np.float32)])
    other.add_param_group({"params": [np.zeros(2, np.float32)]})
    optim.load(tmp_path / "ckpt.npz", other)
    assert other.param_groups[0]["lr"] == float(value)


@pytest.mark.parametrize("value,exc,match", [(10**400, ValueError, "lr must be a number a float can hold"),
                                             (Decimal("sNaN"), ValueError, "lr must be a number"),
                                             ("0.001", TypeError, "lr must be a number"),
                                             (None, TypeError, "lr must be a number"),
                                             (float("nan"), ValueError, "lr")])
def test_hyperparameters_that_are_refused(value, exc, match):
    p = np.zeros(4, np.float32)
    with pytest.raises(exc, match=match):
        optim.Adam([p], lr=value)
    opt = optim.Adam([p])
    opt.step([np.ones(4, np.float32)])
    before = fingerprint(opt)
    opt.param_groups[0]["lr"] = value
    with pytest.raises(exc, match=match):
        opt.step([np.ones(4, np.float32)])
    assert fingerprint(opt)[1:] == before[1:]


# ---- pickling, copying, printing ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
@pytest.mark.parametrize("after", [0, 1, 7])
def test_pickled_or_copied_optimizer_continues_bitwise(name, how, after):
    """Failed after the first step (the step's cache held lambdas)."""
    opt = make_optimizer(name, make_params(np.float32))
    grads = make_grads(np.float32, steps=after + 5)
    train(opt, name, grads, range(after))
    copy_ = pickle.loads(pickle.dumps(opt)) if how == "pickle" else copy.deepcopy(opt)
    copied_params = flat([g["params"] for g in copy_.param_groups])
    assert all(x is not y for x, y in zip(copied_params, flat([g["params"] for g in opt.param_groups])))
    assert all(p in copy_.state for p in copied_params) == bool(after) or name == "SGD"
    assert fingerprint(copy_) == fingerprint(opt)
    train(opt, name, grads, range(after, after + 5))
    train(copy_, name, grads, range(after, after + 5))
    assert fingerprint(copy_) == fingerprint(opt)


def test_repr_shows_class_groups_and_hyperparameters():
    opt = optim.AdamW([{"params": [np.zeros((10, 5), np.float32)]},
                       {"params": [np.zeros(5, np.float32), np.zeros(3, np.float32)], "weight_decay": 0.0}], lr=3e-4)
    text = repr(opt)
    assert text.startswith("AdamW (\nParameter Group 0\n") and text.endswith("\n)")
    group1 = text[text.index("Parameter Group 1"):]
    for line in ["params: 2 arrays, 8 elements", "lr: 0.0003", "weight_decay: 0.0", "betas: (0.9, 0.999)",
                 "amsgrad: False"]:
        assert f"\n    {line}\n" in group1, line
    assert "params: 1 arrays, 50 elements" in text and "weight_decay: 0.01" in text


@pytest.mark.parametrize("groups", ["one", "three"])
def test_skip_checks_the_unscaled_grads(groups):
    """A finite float32 grad of 3e38 with grad_scale=0.5 is inf once unscaled: skipped, nothing written
    (it passed the check, and the step wrote NaN into the param)."""
    params = make_params(np.float32)
    opt = make_optimizer("Adam", params) if groups == "three" else optim.Adam(flat(params), lr=0.01)
    grads = flat(make_grads(np.float32, steps=1)[0])
    opt.step(grads)
    before = fingerprint(opt)
    grads[4][2] = np.float32(3e38)
    assert opt.step(grads, grad_scale=0.5, skip_if_nonfinite=True) is False
    assert opt.skipped_steps == 1 and fingerprint(opt)[:3] == before[:3]
    assert opt.step(grads, grad_scale=4.0, skip_if_nonfinite=True) is True
    assert all(np.isfinite(p).all() for p in flat(params))
