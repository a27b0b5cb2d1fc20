"""fusedopt.torch's optimizers against torch.optim's: numbers over 30 steps of a real model on every
ISA, checkpoints both ways, what torch's base class gives (schedulers, hooks, groups), GradScaler,
and the step's plan noticing what changed between steps.

Tolerance: params within 16 ulps of max(1, |param|), as tests/test_optim_classes.py justifies
against torch: the kernels and torch's single-tensor loop differ by FMA and operation order,
ulps of each step's increment. Here the grads come from the model, so a difference also changes
later grads; over 30 steps of this MLP we measure at most 6.1 ulps (RMSprop; printed by the test),
so 16 still catches a wrong formula, which is off by far more. State tensors accumulate those
grad differences: within 32 ulps of each tensor's own largest magnitude (test_optim.py's 32, but
without its floor of 1, which would not test small state such as exp_avg_sq); measured <= 10.2.
"""
import copy
import io
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# after the importorskip: these import torch
import fusedopt  # noqa: E402
import fusedopt.torch as ft  # noqa: E402
from fusedopt import reference  # noqa: E402
from test_optim import assert_close  # noqa: E402

EPS = float(np.finfo(np.float32).eps)
ULPS = 16
STATE_ULPS = 32  # of each state tensor's largest magnitude
STEPS = 30

# (class name, constructor options): every option of every class
CASES = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-3)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=1e-3, initial_accumulator_value=0.1, eps=1e-8)),
    ("Adagrad", dict(lr=0.05, maximize=True)),
    ("RMSprop", dict(lr=0.005)),
    ("RMSprop", dict(lr=0.005, alpha=0.9, momentum=0.5, centered=True, weight_decay=1e-3)),
    ("RMSprop", dict(lr=0.005, momentum=0.3, maximize=True, eps=1e-6)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), amsgrad=True, weight_decay=1e-3)),
    ("Adam", dict(lr=0.01, maximize=True, decoupled_weight_decay=True, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, amsgrad=True, maximize=True, eps=1e-6)),
]
IDS = [f"{name}-{'-'.join(opts)}" for name, opts in CASES]


def make_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, 5)).to(dtype)


def batches(n=STEPS, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(64, 20, generator=g, dtype=dtype), torch.randint(0, 5, (64,), generator=g)) for _ in range(n)]


def groups(model):
    """Two groups (weights with the options given, biases at half the lr): two calls a step."""
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    return weights, biases


def make_optimizer(module, name, model, opts, **extra):
    weights, biases = groups(model)
    kwargs = {**opts, **extra}
    return getattr(module, name)([{"params": weights}, {"params": biases, "lr": opts["lr"] / 2}], **kwargs)


def train(model, opt, data, scheduler=None):
    """Steps over data; an optimizer that maximizes gets the negated loss (so both descend it)."""
    sign = -1.0 if opt.param_groups[0]["maximize"] else 1.0
    for x, y in data:
        opt.zero_grad()
        (sign * torch.nn.functional.cross_entropy(model(x), y)).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def max_ulps(a, b):
    a, b = a.detach().double().numpy(), b.detach().double().numpy()
    return float(np.max(np.abs(a - b), initial=0.0)) / (np.finfo(np.float32).eps * max(1.0, float(np.max(np.abs(b)))))


def rel_diff(a, b):
    """max |a - b| / max |b|."""
    a, b = a.detach().double().numpy(), b.detach().double().numpy()
    return float(np.max(np.abs(a - b), initial=0.0)) / max(float(np.max(np.abs(b), initial=0.0)), 1e-30)


def assert_same_training(model, opt, ref_model, ref_opt):
    """Params and every state tensor agree within ULPS; the state has torch's keys and types."""
    worst = max(max_ulps(p, q) for p, q in zip(model.parameters(), ref_model.parameters()))
    print(f"max diff vs torch: {worst:.2f} ulps")
    state_diffs = []
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert_close(p.detach().numpy(), q.detach().numpy(), ulps=ULPS)
        state, ref_state = opt.state[p], ref_opt.state[q]
        assert sorted(state) == sorted(ref_state)
        for key, value in ref_state.items():
            assert type(state[key]) is type(value)
            if key == "step":
                assert state[key].dtype == value.dtype and state[key].shape == value.shape
                assert float(state[key]) == float(value)
            else:
                state_diffs.append(rel_diff(state[key], value))
    print(f"max state diff vs torch: {max(state_diffs, default=0) / EPS:.2f} ulps of the tensor's max |x|")
    assert max(state_diffs, default=0) <= STATE_ULPS * EPS


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_matches_torch_on_a_model(isa, name, opts):
    """30 steps of an MLP (autograd grads, two groups) with an lr schedule, on every ISA."""
    data = batches()
    model, ref_model = make_model(), make_model()
    opt, ref_opt = make_optimizer(ft, name, model, opts), make_optimizer(torch.optim, name, ref_model, opts,
                                                                        foreach=False)
    assert isinstance(opt, getattr(torch.optim, name))
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    ref_schedule = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=10, gamma=0.5)
    train(model, opt, data, schedule)
    train(ref_model, ref_opt, data, ref_schedule)
    assert opt.param_groups[0]["lr"] == opts["lr"] / 8  # the schedule wrote lr three times
    print(isa, name, opts)
    assert_same_training(model, opt, ref_model, ref_opt)


def test_float64_model_matches_torch():
    data = batches(dtype=torch.float64)
    model, ref_model = make_model(dtype=torch.float64), make_model(dtype=torch.float64)
    opt = ft.Adam(model.parameters(), lr=0.01)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=0.01, foreach=False)
    train(model, opt, data)
    train(ref_model, ref_opt, data)
    assert opt.state[model[0].weight]["step"].dtype == torch.float32  # torch's step dtype, whatever the params'
    for p, q in zip(model.parameters(), ref_model.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=0, atol=1e-13)


def test_rmsprop_eps_inside_sqrt_is_the_textbook_form():
    p0 = np.linspace(-1, 1, 50, dtype=np.float32)
    grads = [np.cos(np.arange(50, dtype=np.float32) * k) for k in range(1, 4)]
    param = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = ft.RMSprop([param], lr=0.01, momentum=0.5, eps_inside_sqrt=True)
    assert opt.param_groups[0]["eps_inside_sqrt"] is True
    assert ft.RMSprop([param]).param_groups[0]["eps_inside_sqrt"] is False
    ref = [p0.copy()], [np.zeros(50, np.float32)], [np.zeros(50, np.float32)]
    for g in grads:
        param.grad = torch.from_numpy(g.copy())
        opt.step()
        reference.rmsprop_(ref[0], [g], ref[1], lr=0.01, momentum=0.5, momentum_buffers=ref[2], eps_inside_sqrt=True)
    assert_close(param.detach().numpy(), ref[0][0])


# ---- checkpoints ------------------------------------------------------------------------------------


def saved_and_loaded(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


@pytest.mark.parametrize("direction", ["torch->fusedopt", "fusedopt->torch"])
@pytest.mark.parametrize("name,opts", [CASES[i] for i in (2, 3, 6, 9, 12)], ids=[IDS[i] for i in (2, 3, 6, 9, 12)])
def test_checkpoint_continues_with_the_same_numbers(name, opts, direction):
    """10 steps with one library, torch.save/torch.load of model and optimizer, 20 more with the
    other: the same numbers as 30 steps with torch alone."""
    data = batches()
    first, second = (torch.optim, ft) if direction == "torch->fusedopt" else (ft, torch.optim)
    model = make_model()
    opt = make_optimizer(first, name, model, opts)
    train(model, opt, data[:10])
    checkpoint = saved_and_loaded({"model": model.state_dict(), "opt": opt.state_dict()})
    resumed = make_model(seed=5)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt = make_optimizer(second, name, resumed, opts)
    resumed_opt.load_state_dict(checkpoint["opt"])
    train(resumed, resumed_opt, data[10:])
    ref_model = make_model()
    ref_opt = make_optimizer(torch.optim, name, ref_model, opts, foreach=False)
    train(ref_model, ref_opt, data)
    assert_same_training(resumed, resumed_opt, ref_model, ref_opt)


def test_state_dict_has_torchs_layout():
    model, ref_model = make_model(), make_model()
    opt, ref_opt = ft.AdamW(model.parameters(), amsgrad=True), torch.optim.AdamW(ref_model.parameters(), amsgrad=True)
    train(model, opt, batches(3))
    train(ref_model, ref_opt, batches(3))
    sd, ref_sd = opt.state_dict(), ref_opt.state_dict()
    assert sd["param_groups"] == ref_sd["param_groups"]
    assert sd["state"].keys() == ref_sd["state"].keys()
    for i, state in sd["state"].items():
        assert {k: (type(v), v.dtype, v.shape) for k, v in state.items()} == \
               {k: (type(v), v.dtype, v.shape) for k, v in ref_sd["state"][i].items()}
    assert float(sd["state"][0]["step"]) == 3.0


# ---- params that are not C-contiguous ------------------------------------------------------------------


def conv_model(seed=0, dtype=torch.float32, memory_format=torch.channels_last):
    """Conv weights in channels_last (dense, not C-contiguous, as CPU conv training keeps them)
    beside a linear layer's C-contiguous ones."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5))
    return model.to(dtype=dtype, memory_format=memory_format)


def conv_batches(n, dtype=torch.float32, memory_format=torch.channels_last):
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(16, 3, 8, 8, generator=g).to(dtype=dtype, memory_format=memory_format),
             torch.randint(0, 5, (16,), generator=g)) for _ in range(n)]


def assert_state_in_param_layout(opt):
    for p, state in opt.state.items():
        for key, value in state.items():
            if key != "step" and value.shape == p.shape:
                assert value.stride() == p.stride(), key


@pytest.mark.parametrize("name,opts", [CASES[i] for i in (2, 3, 6, 10)], ids=[IDS[i] for i in (2, 3, 6, 10)])
def test_channels_last_model_matches_torch(name, opts):
    """A step on params that are dense but not C-contiguous runs in their memory order: torch's
    numbers, and the state in each param's layout (as torch makes it)."""
    model, ref_model = conv_model(), conv_model()
    assert not model[0].weight.is_contiguous()
    opt = getattr(ft, name)(model.parameters(), **opts)
    ref_opt = getattr(torch.optim, name)(ref_model.parameters(), **opts, foreach=False)
    train(model, opt, conv_batches(10))
    train(ref_model, ref_opt, conv_batches(10))
    assert_same_training(model, opt, ref_model, ref_opt)
    assert_state_in_param_layout(opt)


@pytest.mark.parametrize("options", [dict(state_dtype="int8", min_8bit_size=0), dict(state_dtype="bfloat16"),
                                     dict(master_weights=True), dict(stochastic_rounding=True, seed=7)],
                         ids=["int8", "bf16-state", "bf16-master", "bf16-sr"])
def test_channels_last_low_precision(options):
    """8-bit and bfloat16 state, master weights and stochastic rounding on a channels_last model:
    state in the params' layout, a checkpoint that continues bitwise, and, given the same grads,
    the numbers of the same params in contiguous memory (bitwise where an element's update does
    not depend on where it lies; 8-bit blocks and the rounding's random bits follow memory order)."""
    dtype = torch.bfloat16 if "master_weights" in options or "stochastic_rounding" in options else torch.float32
    elementwise = options.get("state_dtype") != "int8" and "stochastic_rounding" not in options
    model = conv_model(dtype=dtype)
    contiguous = conv_model(dtype=dtype, memory_format=torch.contiguous_format)
    opt, contiguous_opt = (ft.AdamW(m.parameters(), lr=1e-2, **options) for m in (model, contiguous))

    def train_both(data):
        for x, y in data:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            for p, q in zip(model.parameters(), contiguous.parameters()):
                q.grad = p.grad.contiguous()
            opt.step()
            contiguous_opt.step()

    data = conv_batches(6, dtype)
    train_both(data[:3])
    assert_state_in_param_layout(opt)
    checkpoint = saved_and_loaded({"model": model.state_dict(), "opt": opt.state_dict()})
    resumed = conv_model(seed=5, dtype=dtype)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt = ft.AdamW(resumed.parameters(), lr=1e-2, **options)
    resumed_opt.load_state_dict(checkpoint["opt"])
    train(resumed, resumed_opt, data[3:])
    train_both(data[3:])
    for p, q, c in zip(model.parameters(), resumed.parameters(), contiguous.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(p, c) if elementwise else rel_diff(p.float(), c.float()) < 0.02


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16", "int8"])
def test_layout_changes_between_steps_and_checkpoints(state_dtype):
    """A model moved to channels_last after some steps, a square weight transposed in place (the
    same memory, another layout), and a checkpoint of the contiguous model loaded into a
    channels_last one with a conversion of its state: the steps go on in each param's new layout,
    its state converted into it, as torch.optim's go on."""
    options = dict(state_dtype=state_dtype, min_8bit_size=0)
    model, ref_model = (conv_model(memory_format=torch.contiguous_format) for _ in range(2))
    square = torch.nn.Parameter(torch.randn(5, 5))  # in a group of its own: only its layout changes
    opt = ft.Adam([{"params": model.parameters()}, {"params": [square]}], lr=0.01, **options)
    ref_square = torch.nn.Parameter(square.detach().clone())
    ref_opt = torch.optim.Adam([{"params": ref_model.parameters()}, {"params": [ref_square]}], lr=0.01, foreach=False)
    data = conv_batches(6, memory_format=torch.contiguous_format)

    def train_both(batches):
        for x, y in batches:
            for m, o, sq in ((model, opt, square), (ref_model, ref_opt, ref_square)):
                o.zero_grad()
                (torch.nn.functional.cross_entropy(m(x), y) + (sq @ torch.ones(5)).square().sum()).backward()
                o.step()

    train_both(data[:2])
    checkpoint = saved_and_loaded(opt.state_dict())
    for m in (model, ref_model):
        m.to(memory_format=torch.channels_last)
    with torch.no_grad():
        square.t_()
        ref_square.t_()
    train_both(data[2:4])
    assert_state_in_param_layout(opt)
    resumed = conv_model(memory_format=torch.channels_last)
    resumed_square = torch.nn.Parameter(torch.randn(5, 5))
    resumed_opt = ft.Adam([{"params": resumed.parameters()}, {"params": [resumed_square]}], lr=0.01,
                          **{**options, "state_dtype": "bfloat16" if state_dtype == "float32" else "float32"})
    resumed_opt.load_state_dict(checkpoint)
    assert_state_in_param_layout(resumed_opt)
    train(resumed, resumed_opt, data[2:4])
    tolerance = 1e-5 if state_dtype == "float32" else 0.05
    for p, q in zip([*model.parameters(), square], [*ref_model.parameters(), ref_square]):
        assert p.stride() == q.stride() and rel_diff(p, q) < tolerance


def test_a_grad_in_another_layout_than_its_param_is_refused():
    """A grad in another memory order than its (not C-contiguous) param's is refused, naming both;
    strides that differ only on dims of size 1 are the same order, as are those of no elements."""
    p = torch.nn.Parameter(torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last))
    contiguous, empty = torch.nn.Parameter(torch.randn(1, 5)), torch.nn.Parameter(torch.randn(0, 3))
    size_one = torch.nn.Parameter(torch.randn(1, 4, 3, 3).to(memory_format=torch.channels_last))
    p.grad = torch.ones(4, 3, 2, 2)  # contiguous
    opt = ft.SGD([p, contiguous, empty, size_one], lr=0.1)
    contiguous.grad, empty.grad = torch.ones(1, 5), torch.ones(3, 0).t()
    size_one.grad = torch.ones(72).as_strided((1, 4, 3, 3), (72, 1, 12, 4))  # size_one's order
    assert size_one.grad.stride() != size_one.stride()
    with pytest.raises(ValueError, match=r"the grad of param_groups\[0\]\['params'\]\[0\] has strides \(12, 4, 2, 1\), "
                                         r"not in its param's memory order \(strides \(12, 1, 6, 3\)\)"):
        opt.step()
    p.grad = torch.ones_like(p)  # in p's layout
    before = size_one.detach().clone()
    opt.step()
    assert torch.equal(size_one, before - 0.1)


# ---- what torch's base class gives -------------------------------------------------------------------


def test_one_cycle_lr_cycles_adams_betas():
    data = batches()
    model, ref_model = make_model(), make_model()
    opt = ft.Adam(model.parameters(), lr=0.01)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=0.01, foreach=False)
    schedules = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=STEPS) for o in (opt, ref_opt)]
    betas = []
    for x, y in data:
        for m, o, s in zip((model, ref_model), (opt, ref_opt), schedules):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()
            s.step()
        betas.append(opt.param_groups[0]["betas"][0])
    assert len(set(betas)) > 10  # the schedule moved beta1
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert_close(p.detach().numpy(), q.detach().numpy(), ulps=ULPS)


def test_one_cycle_lr_takes_nesterov_sgds_momentum_to_zero():
    """A scheduler may set a nesterov SGD's momentum to 0 (torch's constructor alone refuses it):
    torch steps plain SGD there, and so does fusedopt.torch."""
    data = batches(10)
    model, ref_model = make_model(), make_model()
    opts = [ft.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True),
            torch.optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9, nesterov=True, foreach=False)]
    schedules = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=10, base_momentum=0.0,
                                                     max_momentum=0.9) for o in opts]
    momenta = []
    for x, y in data:
        for m, o, s in zip((model, ref_model), opts, schedules):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()
            s.step()
        momenta.append(opts[0].param_groups[0]["momentum"])
    assert 0.0 in momenta
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert_close(p.detach().numpy(), q.detach().numpy(), ulps=ULPS)


def test_add_param_group_zero_grad_and_hooks():
    model = make_model()
    weights, biases = groups(model)
    opt = ft.SGD(weights, lr=0.1, momentum=0.9)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    x, y = batches(1)[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    before = [b.detach().clone() for b in biases]
    opt.step()
    assert calls == ["pre", "post"]
    assert all(torch.equal(b, c) for b, c in zip(biases, before))  # not in the optimizer yet
    opt.add_param_group({"params": biases, "lr": 0.5})
    assert opt.param_groups[1]["momentum"] == 0.9  # the defaults fill the new group, as torch
    opt.step()
    assert not any(torch.equal(b, c) for b, c in zip(biases, before))
    assert set(opt.state) == set(model.parameters())  # state keyed by the param tensors
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_a_param_without_grad_sits_the_step_out():
    a, b = torch.nn.Parameter(torch.ones(5)), torch.nn.Parameter(torch.ones(5))
    opt = ft.Adam([a, b], lr=0.1)
    a.grad = torch.ones(5)
    opt.step()
    assert b not in opt.state and torch.equal(b.detach(), torch.ones(5))
    b.grad = torch.ones(5)
    opt.step()
    opt.step()
    assert float(opt.state[a]["step"]) == 3 and float(opt.state[b]["step"]) == 2
    ref_a, ref_b = torch.nn.Parameter(torch.ones(5)), torch.nn.Parameter(torch.ones(5))
    ref = torch.optim.Adam([ref_a, ref_b], lr=0.1, foreach=False)
    ref_a.grad = torch.ones(5)
    ref.step()
    ref_b.grad = torch.ones(5)
    ref.step()
    ref.step()
    assert_close(a.detach().numpy(), ref_a.detach().numpy())
    assert_close(b.detach().numpy(), ref_b.detach().numpy())


def test_closure_is_called_with_grad_enabled():
    model = make_model()
    opt = ft.AdamW(model.parameters())
    x, y = batches(1)[0]

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert loss.item() > 0 and float(opt.state[model[0].weight]["step"]) == 1


# ---- GradScaler ----------------------------------------------------------------------------------------


def test_grad_scaler_unscales_in_the_kernel_and_skips_nonfinite_steps():
    data = batches(8)
    model, ref_model = make_model(), make_model()
    opt = ft.AdamW(model.parameters(), lr=0.01)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=0.01, fused=True)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0 ** 12) for _ in range(2)]
    for t, (x, y) in enumerate(data):
        for m, o, scaler in zip((model, ref_model), (opt, ref_opt), scalers):
            o.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(x), y)
            scaler.scale(loss).backward()
            if t == 3:  # an overflow: the step must be skipped and the scale backed off
                m[0].weight.grad[0, 0] = float("inf")
            before = [p.detach().clone() for p in m.parameters()]
            scaler.step(o)
            scaler.update()
            if t == 3:
                assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before))
    assert scalers[0].get_scale() == scalers[1].get_scale() == 2.0 ** 11
    assert float(opt.state[model[0].weight]["step"]) == 7
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert_close(p.detach().numpy(), q.detach().numpy(), ulps=ULPS)


def test_grad_scaler_after_unscale_for_clipping():
    """scaler.unscale_ first (to clip): the optimizer gets no grad_scale, the grads are unscaled."""
    model, ref_model = make_model(), make_model()
    opts = [ft.SGD(model.parameters(), lr=0.1, momentum=0.9), torch.optim.SGD(ref_model.parameters(), lr=0.1,
                                                                             momentum=0.9, foreach=False)]
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0 ** 8) for _ in range(2)]
    for x, y in batches(5):
        for m, o, scaler in zip((model, ref_model), opts, scalers):
            o.zero_grad()
            scaler.scale(torch.nn.functional.cross_entropy(m(x), y)).backward()
            scaler.unscale_(o)
            torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
            scaler.step(o)
            scaler.update()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert_close(p.detach().numpy(), q.detach().numpy(), ulps=ULPS)


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"])
@pytest.mark.parametrize("maximize", [False, True])
def test_grad_scaler_leaves_the_grads_unscaled(isa, name, maximize):
    """After scaler.step the grads are unscaled, as torch's fused optimizers (and unscale_) leave
    them: written back by the update's own pass (a bfloat16 grad rounded to nearest even);
    after a skipped step they are as the backward left them, as torch's fused ones."""
    w = torch.nn.Parameter(torch.linspace(-1, 1, 1000))
    v = torch.nn.Parameter(torch.linspace(-2, 2, 300))
    opts = dict(lr=0.01) if name == "Adagrad" else dict(lr=0.01, maximize=maximize)
    opt = getattr(ft, name)([{"params": [w]}, {"params": [v], "lr": 0.02}], **opts)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    v.grad_dtype = None  # (torch refuses a grad of another dtype than the param's without this)
    x = torch.linspace(0.5, 3.0, 1000)
    for skipped in (False, True, False):
        opt.zero_grad()
        scaler.scale((w * x).sum() + (v ** 2).sum()).backward()
        v.grad = v.grad.to(torch.bfloat16)  # a low-precision grad of a float32 param
        if skipped:
            w.grad[500] = float("inf")
        scaled = [w.grad.clone(), v.grad.clone()]
        scaler.step(opt)
        scaler.update()
        if skipped:
            assert torch.equal(w.grad, scaled[0]) and torch.equal(v.grad, scaled[1])
        else:
            assert torch.equal(w.grad, x)
            assert torch.equal(v.grad, (scaled[1].float() / scaler.get_scale()).to(torch.bfloat16))


def test_a_params_step_tensor_is_the_same_for_the_whole_run():
    """torch counts a param's steps in one tensor, state["step"], for the whole run: a reference
    to it (a logger's) goes on counting, also across the steps where the optimizer re-plans (a
    param without a grad, new state)."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(5))
    opt = ft.AdamW([a, b], lr=0.1)
    a.grad, b.grad = torch.ones(3), torch.ones(5)
    opt.step()
    held = [opt.state[a]["step"], opt.state[b]["step"]]
    for t in range(6):
        b.grad = None if t == 2 else torch.ones(5)
        opt.step()
    assert opt.state[a]["step"] is held[0] and opt.state[b]["step"] is held[1]
    assert (float(held[0]), float(held[1])) == (7.0, 6.0)


def test_a_group_may_mix_grad_dtypes():
    """float32 params whose grads are bfloat16 (a low-precision backward) beside ones with float32
    grads, in one group: each stepped as alone; a grad of a higher precision than its param,
    in a later group, is refused before any group is written."""
    torch.manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(n)) for n in (700, 5, 300)]
    alone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = ft.AdamW([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], lr=0.01)
    alone_opts = [ft.AdamW([q], lr=0.01 if i < 2 else 0.02) for i, q in enumerate(alone)]
    for p in params + alone:
        p.grad_dtype = None  # (torch refuses a grad of another dtype than the param's without this)
    for _ in range(3):
        grads = [torch.randn(700).to(torch.bfloat16), torch.randn(5), torch.randn(300).to(torch.float16)]
        for p, q, g in zip(params, alone, grads):
            p.grad, q.grad = g, g.clone()
        opt.step()
        for o in alone_opts:
            o.step()
        assert all(torch.equal(p, q) for p, q in zip(params, alone))
    before = [p.detach().clone() for p in params] + [opt.state[params[0]]["exp_avg"].clone()]
    params[2].grad = torch.randn(300, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        opt.step()
    after = [p.detach() for p in params] + [opt.state[params[0]]["exp_avg"]]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert float(opt.state[params[0]]["step"]) == 3


# ---- the plan kept between steps --------------------------------------------------------------------


def test_the_plan_follows_changes_between_steps():
    """Params moved to new memory, a step count changed in place, state replaced or moved to new
    memory, a state_dict loaded, a deep copy: each step uses what the optimizer holds now, as
    torch's does."""
    data = batches(12)
    model, ref_model = make_model(), make_model()
    opt = ft.Adam(model.parameters(), lr=0.01)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=0.01, foreach=False)
    for t, (x, y) in enumerate(data):
        if t == 2:  # a param's step count changed in place (its bias correction follows)
            for m, o in ((model, opt), (ref_model, ref_opt)):
                o.state[m[0].weight]["step"].fill_(100.0)
        if t == 3:  # new memory for a param
            for m in (model, ref_model):
                m[0].weight.data = m[0].weight.data.clone()
        if t == 5:  # a state tensor replaced
            for m, o in ((model, opt), (ref_model, ref_opt)):
                o.state[m[2].weight]["exp_avg"] = o.state[m[2].weight]["exp_avg"] * 0.5
        if t == 6:  # a state tensor moved to new memory (.data =)
            for m, o in ((model, opt), (ref_model, ref_opt)):
                o.state[m[0].bias]["exp_avg_sq"].data = o.state[m[0].bias]["exp_avg_sq"] * 2.0
        if t == 7:  # a param's state reset
            for m, o in ((model, opt), (ref_model, ref_opt)):
                o.state[m[4].bias] = {}
        if t == 9:  # the whole state loaded (from torch's)
            opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))
            model.load_state_dict(ref_model.state_dict())
        if t == 10:  # a copy of the optimizer and model steps on its own memory
            model = copy.deepcopy(model)
            opt_copy = copy.deepcopy(opt)
            opt_copy.param_groups[0]["params"] = list(model.parameters())
            opt_copy.state = type(opt.state)(dict, {q: opt.state[p] for p, q in zip(opt.param_groups[0]["params"],
                                                                                     model.parameters())})
            opt = opt_copy
        train(model, opt, [(x, y)])
        train(ref_model, ref_opt, [(x, y)])
        if t in (2, 4, 6, 8):  # each change checked before the load at t == 9 makes both the same again
            assert_same_training(model, opt, ref_model, ref_opt)
    assert_same_training(model, opt, ref_model, ref_opt)


@pytest.mark.parametrize("state_dtype", ["float32", "int8"])
def test_load_state_dict_hooks_run_as_torchs(state_dtype):
    """A load pre-hook sees the whole state_dict and what it returns is loaded (converted to
    this optimizer's form after it); a post-hook runs with the state in place."""
    results = []
    for opt_class in (torch.optim.Adam, ft.Adam):
        p = torch.nn.Parameter(torch.ones(300))
        opt = opt_class([p], lr=0.1)
        p.grad = torch.ones(300)
        opt.step()
        kwargs = {} if opt_class is torch.optim.Adam else dict(state_dtype=state_dtype, min_8bit_size=0)
        loaded = opt_class([p], lr=0.1, **kwargs)
        seen = {}

        def pre(optimizer, state_dict, seen=seen):
            seen["pre"] = len(state_dict["state"])
            halved = {k: {**v, "exp_avg": v["exp_avg"] * 0.5} for k, v in state_dict["state"].items()}
            return {**state_dict, "state": halved}

        def post(optimizer, seen=seen):
            seen["post"] = len(optimizer.state)

        loaded.register_load_state_dict_pre_hook(pre)
        loaded.register_load_state_dict_post_hook(post)
        loaded.load_state_dict(opt.state_dict())
        assert seen == {"pre": 1, "post": 1}
        state = loaded.state[p]
        results.append(state["exp_avg"].float() if "exp_avg" in state else torch.from_numpy(fusedopt.QuantizedState(
            state["exp_avg_codes"].numpy(), state["exp_avg_scales"].numpy(), True).dequantize()))
    assert torch.allclose(results[0], results[1], rtol=2 ** -4)  # the 8-bit code: 2^-4 relative


# ---- refused ---------------------------------------------------------------------------------------------


def test_options_fusedopt_cannot_honour_are_refused():
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="does not support differentiable=True"):
        ft.Adam([p], differentiable=True)
    with pytest.raises(ValueError, match="does not support capturable=True"):
        ft.RMSprop([p], capturable=True)
    opt = ft.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="does not support capturable=True"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "capturable": True})
    assert len(opt.param_groups) == 1
    # set on a group since, or from a torch.optim checkpoint: refused too, nothing written
    p.grad = torch.ones(3)
    opt.param_groups[0]["differentiable"] = True
    with pytest.raises(ValueError, match="does not support differentiable=True"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3))
    sd = torch.optim.Adam([p], lr=0.1, differentiable=True).state_dict()
    opt = ft.Adam([p], lr=0.2)
    with pytest.raises(ValueError, match=r"param_groups'\]\[0\]: .*does not support differentiable=True"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.2 and not opt.param_groups[0]["differentiable"]
    # foreach / fused choose how torch computes a step; fusedopt's is fused either way
    for kwargs in (dict(foreach=True), dict(fused=True)):
        opt = ft.AdamW([p], **kwargs)
        p.grad = torch.ones(3)
        opt.step()
    with pytest.raises(ValueError, match="Invalid beta parameter"):  # torch's own checks
        ft.Adam([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        ft.SGD([p], lr=0.1, nesterov=True)


def sparse_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.ModuleDict(dict(emb=torch.nn.Embedding(50, 8, sparse=True), lin=torch.nn.Linear(8, 3)))


def sparse_train(model, opt, steps, scaler=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx, y = torch.randint(0, 50, (16, 4), generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model["lin"](model["emb"](idx).mean(1)), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")  # torch's Adagrad's own
@pytest.mark.parametrize("name,opts", [("SGD", dict(lr=0.1, momentum=0.9)), ("SGD", dict(lr=0.1)),
                                       ("Adagrad", dict(lr=0.1))])
@pytest.mark.parametrize("amp", [False, True])
def test_sparse_grads_take_torchs_own_step(name, opts, amp):
    """nn.Embedding(sparse=True): torch's SGD and Adagrad take sparse grads, the kernels are dense,
    so a group with one takes torch's own step (under GradScaler its grads unscaled first), the
    other groups the kernels'; a checkpoint with torch's sparse momentum buffers resumes."""
    models = [sparse_model(), sparse_model()]
    opts_ = [getattr(module, name)([{"params": m["emb"].parameters()},
                                    {"params": m["lin"].parameters(), "lr": opts["lr"] / 2}], **opts, **extra)
             for m, module, extra in zip(models, (ft, torch.optim), ({}, {"foreach": False}))]
    for m, o in zip(models, opts_):
        sparse_train(m, o, 6, torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if amp else None)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert_close(p.detach().numpy(), q.detach().numpy(), ulps=ULPS)
    resumed = copy.deepcopy(models[0])
    opt = getattr(ft, name)([{"params": resumed["emb"].parameters()},
                             {"params": resumed["lin"].parameters(), "lr": opts["lr"] / 2}], **opts)
    buffer = io.BytesIO()
    torch.save(opts_[0].state_dict(), buffer)
    buffer.seek(0)
    opt.load_state_dict(torch.load(buffer))
    sparse_train(models[0], opts_[0], 2, seed=2)
    sparse_train(resumed, opt, 2, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(models[0].parameters(), resumed.parameters()))


def test_sparse_grads_refused_where_torch_or_the_options_do_not_take_them():
    for make, error, match in [(lambda ps: ft.Adam(ps, lr=0.1), RuntimeError, "does not support sparse gradients"),
                               (lambda ps: ft.SGD(ps, lr=0.1, state_dtype="bfloat16"), TypeError, "dense grads only")]:
        model = sparse_model()
        opt = make([{"params": model["lin"].parameters()}, {"params": model["emb"].parameters()}])
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(error, match=match):
            sparse_train(model, opt, 1)
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_a_sparse_group_torch_refuses_leaves_the_dense_groups_unwritten():
    """torch's own step takes the sparse group before the fused calls write: when it refuses the
    group (Adagrad's weight_decay with sparse grads), as torch.optim nothing is written."""
    for module in (torch.optim, ft):
        torch.manual_seed(0)
        emb, dense = torch.nn.Embedding(10, 4, sparse=True), torch.nn.Parameter(torch.randn(8))
        opt = module.Adagrad([{"params": emb.parameters(), "weight_decay": 0.1}, {"params": [dense]}], lr=0.1)
        emb(torch.tensor([1, 2])).sum().backward()
        dense.grad = torch.ones(8)
        before = dense.detach().clone(), {k: v.clone() for k, v in opt.state[dense].items()}
        with pytest.raises(RuntimeError, match="weight_decay option is not compatible with sparse gradients"):
            opt.step()
        assert torch.equal(dense.detach(), before[0]), module.__name__
        assert all(torch.equal(v, opt.state[dense][k]) for k, v in before[1].items()), module.__name__
    # and a dense group the kernels refuse (a negative lr set later) leaves the sparse one unwritten
    emb, dense = torch.nn.Embedding(10, 4, sparse=True), torch.nn.Parameter(torch.randn(8))
    opt = ft.Adagrad([{"params": emb.parameters()}, {"params": [dense]}], lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    dense.grad = torch.ones(8)
    opt.param_groups[1]["lr"] = -1.0
    before = emb.weight.detach().clone()
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert torch.equal(emb.weight.detach(), before)


def test_a_param_shrunk_in_place_is_planned_again():
    """p.data = p.data[:k] keeps the address and the strides: the step's cached plan must notice
    the shape (as torch.optim steps it)."""
    for module in (torch.optim, ft):
        p = torch.nn.Parameter(torch.ones(10, 4))
        opt = module.SGD([p], lr=0.1)
        p.grad = torch.ones(10, 4)
        opt.step()
        p.data = p.data[:5]
        p.grad = torch.ones(5, 4)
        opt.step()
        assert torch.allclose(p.detach(), torch.full((5, 4), 0.8)), module.__name__


def test_a_param_that_is_not_dense_is_refused_in_torchs_terms():
    """A param that is a slice of a larger tensor: a torch user's message (not NumPy's hint), and
    no group written."""
    a, base = torch.nn.Parameter(torch.ones(4)), torch.randn(10, 10)
    sliced = torch.nn.Parameter(base[:, :5])
    opt = ft.Adam([{"params": [a]}, {"params": [sliced]}], lr=0.1)
    a.grad, sliced.grad = torch.ones(4), torch.ones(10, 5)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[0\] \(shape \(10, 5\), strides \(10, 1\)\) "
                                         "is not dense"):
        opt.step()
    assert torch.equal(a.detach(), torch.ones(4)) and torch.equal(sliced.detach(), base[:, :5]) and not opt.state


def test_an_error_in_a_later_group_leaves_every_group_unwritten():
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    opt = ft.Adam([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    opt.step()
    before = [a.detach().clone(), b.detach().clone(), opt.state[a]["exp_avg"].clone()]
    a.grad, b.grad = torch.ones(4), torch.ones(8)[::2]  # b's grad: not contiguous
    with pytest.raises(ValueError, match="not C-contiguous"):
        opt.step()
    assert torch.equal(a.detach(), before[0]) and torch.equal(b.detach(), before[1])
    assert torch.equal(opt.state[a]["exp_avg"], before[2]) and float(opt.state[a]["step"]) == 1
    opt.param_groups[1]["lr"] = -1.0  # a bad lr in the second group: the first is not written either
    b.grad = torch.ones(4)
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert torch.equal(a.detach(), before[0]) and float(opt.state[a]["step"]) == 1


@pytest.mark.parametrize("name,opts", [c for c in CASES if c[0] in ("SGD", "AdamW")],
                         ids=[i for c, i in zip(CASES, IDS) if c[0] in ("SGD", "AdamW")])
@pytest.mark.parametrize("groups", [1, 2])
def test_params_given_one_grad_tensor_step_as_torchs(name, opts, groups):
    """Two params given one grad tensor (or views of one buffer), in one group (one call) or two
    (calls checked together): torch.optim steps them, each reading the grad, and so does fusedopt.
    Under GradScaler the kernels write the grads back unscaled: refused, nothing written."""
    def make(module, **extra):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(6)) for _ in range(3)]
        pg = [{"params": params}] if groups == 1 else [{"params": params[:1]}, {"params": params[1:], "lr": 0.02}]
        return params, getattr(module, name)(pg, **opts, **extra)
    params, opt = make(ft)
    ref_params, ref_opt = make(torch.optim, foreach=False)
    for t in range(3):
        buffer = torch.linspace(-1.0, 1.0, 9) * (t + 1)
        for ps, o in ((params, opt), (ref_params, ref_opt)):
            ps[0].grad = ps[1].grad = buffer[:6]
            ps[2].grad = buffer[3:]
            o.step()
    for p, q in zip(params, ref_params):
        assert_close(p.detach().numpy(), q.detach().numpy(), ulps=ULPS)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale(torch.ones(()))  # (as a scaled loss would: the scaler then has its scale)
    before = [p.detach().clone() for p in params]
    pair = (r"grads\[0\] and grads\[1\]" if groups == 1 else  # one call's check, or the step's across calls
            r"the grad of param_groups\[0\]\['params'\]\[0\] and the grad of param_groups\[1\]\['params'\]\[0\]")
    with pytest.raises(ValueError, match=pair + " overlap in memory; an array that is written"):
        scaler.step(opt)
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
    # the scale the refused step was given is not left for the next plain step to unscale by
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")
    for ps, o in ((params, opt), (ref_params, ref_opt)):
        ps[1].grad = ps[1].grad.clone()
        o.step()
    for p, q in zip(params, ref_params):
        assert_close(p.detach().numpy(), q.detach().numpy(), ulps=ULPS)


def test_a_step_hook_that_raises_leaves_no_grad_scale_behind():
    """GradScaler sets grad_scale / found_inf on the optimizer and deletes them after a step that
    returns: a step that raises (here a pre-hook, torch's wrapper running the step) drops them, so
    a later plain step() does not unscale by a stale scale."""
    w = torch.nn.Parameter(torch.zeros(4))
    opt = ft.SGD([w], lr=1.0)
    handle = opt.register_step_pre_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("hook")))
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    w.grad = scaler.scale(torch.ones(4))
    with pytest.raises(RuntimeError, match="hook"):
        scaler.step(opt)
    handle.remove()
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")
    w.grad = torch.ones(4)
    opt.step()
    assert torch.equal(w.detach(), -torch.ones(4)) and torch.equal(w.grad, torch.ones(4))


def test_a_steps_errors_name_params_by_their_index_in_their_group():
    """A step of several calls (a frozen group first, a group of two dtypes: a call each, a param
    without a grad) names an array by its param's group and index there, as torch does, and by
    torch's state key (an 8-bit state's codes or scales, a master weight), not by its place in a
    call or among the params with a grad."""
    frozen = torch.nn.Parameter(torch.ones(4))
    a, c, d, idle = (torch.nn.Parameter(torch.ones(4)) for _ in range(4))
    b = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = ft.AdamW([{"params": [frozen]}, {"params": [idle, a, b, c]}, {"params": [d]}], lr=0.1)
    a.grad, b.grad, c.grad, d.grad = torch.ones(4), torch.ones(4, dtype=torch.bfloat16), torch.ones(4), torch.ones(4)
    opt.step()
    c.grad = d.data
    with pytest.raises(ValueError, match=r"^the grad of param_groups\[1\]\['params'\]\[3\] and "
                                         r"param_groups\[2\]\['params'\]\[0\] overlap"):
        opt.step()
    c.grad = torch.ones(8)[::2]
    with pytest.raises(ValueError, match=r"^the grad of param_groups\[1\]\['params'\]\[3\] is not C-contiguous"):
        opt.step()
    c.grad = torch.ones(4)
    opt.state[c]["exp_avg_sq"] = opt.state[a]["exp_avg_sq"]
    with pytest.raises(ValueError, match=r"^state\['exp_avg_sq'\] of param_groups\[1\]\['params'\]\[1\] and "
                                         r"state\['exp_avg_sq'\] of param_groups\[1\]\['params'\]\[3\] overlap"):
        opt.step()

    # 8-bit state: its codes and scales by their own keys; master weights: state['master_param']
    a8, b8 = torch.nn.Parameter(torch.ones(5000)), torch.nn.Parameter(torch.ones(5000))
    opt = ft.AdamW([{"params": [idle]}, {"params": [a8]}, {"params": [b8]}], lr=0.1, state_dtype="int8")
    a8.grad, b8.grad = torch.ones(5000), torch.ones(5000)
    opt.step()
    opt.state[b8]["exp_avg_scales"] = opt.state[a8]["exp_avg_scales"]
    with pytest.raises(ValueError, match=r"^state\['exp_avg_scales'\] of param_groups\[1\]\['params'\]\[0\] and "
                                         r"state\['exp_avg_scales'\] of param_groups\[2\]\['params'\]\[0\] "
                                         "overlap"):
        opt.step()
    idle16, *c16 = (torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16)) for _ in range(3))
    opt = ft.AdamW([{"params": [idle16, c16[0]]}, {"params": [c16[1]]}], lr=0.1, master_weights=True)
    c16[0].grad, c16[1].grad = torch.ones(4, dtype=torch.bfloat16), torch.ones(4, dtype=torch.bfloat16)
    opt.step()
    opt.state[c16[1]]["master_param"] = opt.state[c16[0]]["master_param"]
    with pytest.raises(ValueError, match=r"^state\['master_param'\] of param_groups\[0\]\['params'\]\[1\] and "
                                         r"state\['master_param'\] of param_groups\[1\]\['params'\]\[0\] overlap"):
        opt.step()


def test_importing_fusedopt_does_not_import_torch():
    code = ("import sys, fusedopt; assert 'torch' not in sys.modules; import fusedopt.torch; "
            "assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={**__import__("os").environ})


def test_fusedopt_runs_the_step(monkeypatch):
    """The step is fusedopt's kernel, one call per group: not torch's code."""
    calls = []
    real = fusedopt.functional.adam_
    monkeypatch.setattr(ft.Adam, "_update", staticmethod(lambda *a, **k: calls.append(len(a[0])) or real(*a, **k)))
    model = make_model()
    weights, biases = groups(model)
    opt = ft.Adam([{"params": weights}, {"params": biases}])
    train(model, opt, batches(2))
    assert [n for n in calls if n] == [3, 3, 3, 3]  # (the others: each call's checks, on empty lists, first)


def test_loading_a_state_dict_lets_the_old_state_go():
    """The plans hold views of the state tensors: after load_state_dict the old ones are freed."""
    import gc
    import weakref
    model = make_model()
    opt = ft.Adam(model.parameters())
    train(model, opt, batches(2))
    old = weakref.ref(opt.state[model[0].weight]["exp_avg"])
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    train(model, opt, batches(1))
    gc.collect()
    assert old() is None


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"])
def test_constructor_signature_is_torchs_plus_fusedopts_keywords(name):
    import inspect
    ours = inspect.signature(getattr(ft, name)).parameters
    torchs = list(inspect.signature(getattr(torch.optim, name).__init__).parameters.values())[1:]
    assert list(ours.values())[:len(torchs)] == torchs
    extra = ["state_dtype", "master_weights", "stochastic_rounding", "seed", "min_8bit_size"]
    extra = (["eps_inside_sqrt"] if name == "RMSprop" else []) + extra
    assert list(ours)[len(torchs):] == extra
    assert all(ours[e].kind is inspect.Parameter.KEYWORD_ONLY for e in extra)
