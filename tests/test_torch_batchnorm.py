"""fusedopt.torch.batchnorm: the modules against torch.nn's batch norm, gradcheck, state_dict.

Tolerances, float32 (err = max|got - want| / max(1, max|want|); for dweight and dbias relative
to the sums of absolute values behind them, as in test_batchnorm.py):
  vs the float64 truth (torch's module in float64 on the same data): 1e-6, fusedopt's documented
      float32 bound (test_batchnorm.py); measured here <= 1.4e-7 on every ISA.
  vs torch's float32 module: 5e-6. The two differ by the sum of their errors, and torch's float32
      CPU kernel is the less accurate one: measured up to 2.3e-6 of the largest value from the
      float64 truth (running_var; 1.5e-6 for dx, 1.2e-6 for y) on these shapes, where fusedopt's
      error is <= 1.4e-7; 5e-6 is that sum with a 2x margin.
  gradcheck runs in float64 with its default tolerances (finite differences, eps=1e-6).
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")

# after the importorskip: fusedopt.torch imports torch
import fusedopt  # noqa: E402
import fusedopt.torch  # noqa: E402
import fusedopt.torch.batchnorm as fbn  # noqa: E402
from fusedopt.torch.batchnorm import (  # noqa: E402
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormReLU2d,
    batch_norm,
)

TOL_TRUTH = 1e-6
TOL_TORCH = 5e-6

OURS = {2: BatchNorm1d, 3: BatchNorm1d, 4: BatchNorm2d, 5: BatchNorm3d}
THEIRS = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}

# (shape (N, C, ...), memory layout, the kernel axis it must run with)
LAYOUTS = [
    ((5, 3), "contiguous", 1),
    ((4, 3, 5), "contiguous", 1),
    ((4, 3, 5), "channels_last", -1),  # (N, C, L) whose memory is (N, L, C)
    ((3, 2, 4, 5), "contiguous", 1),
    ((3, 2, 4, 5), "channels_last", -1),
    ((2, 3, 2, 3, 4), "contiguous", 1),
    ((2, 3, 2, 3, 4), "channels_last", -1),
]
LAYOUT_IDS = [f"{'x'.join(map(str, s))}-{layout}" for s, layout, _ in LAYOUTS]


def in_layout(t: Any, layout: str) -> Any:
    """t (N, C, ...) with its memory in the given order; channels_last keeps C innermost."""
    if layout == "contiguous":
        return t.contiguous()
    perm = (0, *range(2, t.dim()), 1)
    inverse = (0, t.dim() - 1, *range(1, t.dim() - 1))
    return t.permute(perm).contiguous().permute(inverse)


def is_channels_last(t: Any) -> bool:
    return bool(t.permute(0, *range(2, t.dim()), 1).is_contiguous())


def rel_err(got: Any, want: Any, scale: Any = None) -> float:
    scale = want if scale is None else scale
    diff = (got.detach().double() - want.detach().double()).abs().max().item()
    return float(diff / max(1.0, scale.detach().double().abs().max().item()))


@pytest.fixture(autouse=True)
def torch_single_thread() -> Any:
    """torch's own modules (the references) on one thread: on a shared, loaded machine its
    OpenMP workers spinning against fusedopt's pool made these tests 5-10x slower. fusedopt
    keeps its thread count (its results do not depend on it: test_batchnorm.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def spy(monkeypatch: Any) -> list[dict[str, Any]]:
    """Records each kernel call the modules make: which function, axis, and the data pointers of
    x and of the output the kernel wrote (NumPy views: to show that no copy of the input was made
    and that the module returns the kernel's output itself)."""
    calls: list[dict[str, Any]] = []

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def spied(*args: Any, **kwargs: Any) -> Any:
            x = args[1] if name == "backward" else args[0]
            result = fn(*args, **kwargs)
            calls.append({"fn": name, "axis": args[5 if name == "backward" else 8], "x_ptr": x.ctypes.data,
                          "out_ptr": result[0].ctypes.data})
            return result
        return spied

    monkeypatch.setattr(fbn, "_batchnorm_forward", wrap("forward", fbn._batchnorm_forward))
    monkeypatch.setattr(fbn, "_batchnorm_backward", wrap("backward", fbn._batchnorm_backward))
    return calls


# ---- gradcheck ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,layout,axis", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("relu", [False, True], ids=["", "relu"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_float64(isa: str, spy: list[dict[str, Any]], shape: tuple[int, ...], layout: str, axis: int,
                           affine: bool, relu: bool, training: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    C = shape[1]
    x = in_layout(torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5, layout).requires_grad_()
    running_mean = torch.randn(C, generator=gen, dtype=torch.float64)
    running_var = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5
    inputs = [x]
    if affine:
        inputs += [(torch.rand(C, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(),
                   torch.randn(C, generator=gen, dtype=torch.float64).requires_grad_()]

    def f(x: Any, weight: Any = None, bias: Any = None) -> Any:
        return batch_norm(x, running_mean, running_var, weight, bias, training, 0.1, 1e-3, relu=relu)

    assert torch.autograd.gradcheck(f, tuple(inputs))
    # the kernels ran, on x's own memory in its own layout
    forward = [c for c in spy if c["fn"] == "forward"]
    assert forward and all(c["axis"] == axis for c in spy)
    assert forward[0]["x_ptr"] == x.data_ptr()


# ---- against torch's modules, float32 ---------------------------------------------------------

MODULE_CASES = [
    ((64, 300), "contiguous", False),
    ((8, 5, 70), "contiguous", False),
    ((8, 5, 70), "channels_last", False),
    ((16, 8, 30, 30), "contiguous", False),
    ((16, 8, 30, 30), "channels_last", False),
    ((16, 64, 14, 14), "channels_last", False),
    ((4, 6, 5, 7, 8), "contiguous", False),
    ((4, 6, 5, 7, 8), "channels_last", False),
]


def set_affine(*modules: Any) -> None:
    for m in modules:
        C = m.num_features
        with torch.no_grad():
            m.weight.copy_(torch.linspace(0.5, 1.5, C))
            m.bias.copy_(torch.linspace(-1.0, 1.0, C))


def forward(module: Any, x: Any, relu: bool, dtype: Any) -> dict[str, Any]:
    """module(x) in dtype, with a ReLU after it when relu and module is not BatchNormReLU2d;
    z is the output before that ReLU (torch's modules only)."""
    x = x.to(dtype).detach().requires_grad_()
    module.zero_grad(set_to_none=True)
    y = z = module(x)
    if relu and not isinstance(module, BatchNormReLU2d):
        y = torch.relu(z)
    return {"x": x, "z": z, "y": y}


def backward(module: Any, out: dict[str, Any], dy: Any) -> dict[str, Any]:
    out["y"].backward(dy.to(out["y"].dtype))
    return {"y": out["y"], "dx": out["x"].grad, "dweight": module.weight.grad, "dbias": module.bias.grad}


def run_step(module: Any, x: Any, dy: Any, relu: bool, dtype: Any) -> dict[str, Any]:
    """One forward + backward (see forward)."""
    return backward(module, forward(module, x, relu, dtype), dy)


def abs_scales(x: Any, dy: Any, mask: Any = None) -> dict[str, Any]:
    """The sums of absolute values behind dweight and dbias, the scale of their rounding errors
    (float64; xhat from x's batch statistics; mask: where the ReLU passed the gradient)."""
    dims = [0, *range(2, x.dim())]
    x = x.double()
    xhat = (x - x.mean(dims, keepdim=True)) / x.var(dims, unbiased=False, keepdim=True).sqrt()
    g = dy.double() if mask is None else dy.double() * mask
    return {"dweight": (g.abs() * xhat.abs()).sum(dims), "dbias": g.abs().sum(dims)}


# BatchNormReLU2d (relu) against torch's BatchNorm2d followed by torch.relu
MODULE_CASES += [(shape, layout, True) for shape, layout, _ in MODULE_CASES if len(shape) == 4]


@pytest.mark.parametrize("shape,layout,relu", MODULE_CASES,
                         ids=[f"{'x'.join(map(str, s))}-{m}{'-relu' * r}" for s, m, r in MODULE_CASES])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum0.1", "cumulative"])
def test_module_matches_torch_float32(isa: str, shape: tuple[int, ...], layout: str, relu: bool,
                                      momentum: float | None) -> None:
    """Four training steps and an eval step: outputs, gradients, running statistics and
    num_batches_tracked against torch's module (float32) and the float64 truth. With the ReLU,
    dy is zeroed where the float64 output before the ReLU is within 1e-4 of 0: float32 rounding
    (~1e-6 here) may put such a value on either side of the kink, in torch's module as in ours,
    and the gradient there is then dy or 0 for both legitimately (seen: torch's float32 module
    flipped one of 200704 elements of one step)."""
    C, nd = shape[1], len(shape)
    ours = BatchNormReLU2d(C, momentum=momentum) if relu else OURS[nd](C, momentum=momentum)
    theirs, truth = THEIRS[nd](C, momentum=momentum), THEIRS[nd](C, momentum=momentum).double()
    set_affine(ours, theirs, truth)
    gen = torch.Generator().manual_seed(0)
    for step in range(5):
        if step == 4:
            for m in (ours, theirs, truth):
                m.eval()
        x = in_layout(torch.randn(shape, generator=gen) * (1 + step) + step, layout)
        dy = torch.randn(shape, generator=gen)
        outs = [forward(m, x, relu, dtype) for m, dtype in ((ours, torch.float32), (theirs, torch.float32),
                                                              (truth, torch.float64))]
        if relu:  # no gradient where float32 rounding may put y on either side of ReLU's kink
            dy = dy.masked_fill(outs[2]["z"].detach().abs() <= 1e-4, 0.0)
        got, ref, exact = (backward(m, out, dy) for m, out in zip((ours, theirs, truth), outs))
        scales = abs_scales(x, dy, exact["y"] > 0 if relu else None)
        # the output keeps x's layout; torch's too where it has a memory format (4d, 5d; its 3d
        # output is contiguous whatever the input's layout)
        assert got["y"].stride() == x.stride() and (nd < 4 or got["y"].stride() == ref["y"].stride())
        for name in ("y", "dx", "dweight", "dbias"):
            scale = scales.get(name)
            assert rel_err(got[name], exact[name], scale) <= TOL_TRUTH, (step, name)
            assert rel_err(got[name], ref[name], scale) <= TOL_TORCH, (step, name)
    for name in ("running_mean", "running_var"):
        assert rel_err(getattr(ours, name), getattr(truth, name)) <= TOL_TRUTH, name
        assert rel_err(getattr(ours, name), getattr(theirs, name)) <= TOL_TORCH, name
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 4


# ---- state_dict --------------------------------------------------------------------------------


@pytest.mark.parametrize("ours_cls,theirs_cls,shape", [
    (BatchNorm1d, torch.nn.BatchNorm1d, (6, 4, 3)),
    (BatchNorm2d, torch.nn.BatchNorm2d, (6, 4, 3, 5)),
    (BatchNorm3d, torch.nn.BatchNorm3d, (6, 4, 3, 2, 2)),
    (BatchNormReLU2d, torch.nn.BatchNorm2d, (6, 4, 3, 5)),
], ids=["1d", "2d", "3d", "relu2d"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum0.1", "cumulative"])
def test_state_dict_interchange(ours_cls: Any, theirs_cls: Any, shape: tuple[int, ...], momentum: float | None) -> None:
    """A torch module's state_dict (after training) loads into ours and back, through
    torch.save/torch.load; training continues with the same numbers either way."""
    relu = ours_cls is BatchNormReLU2d
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(shape, generator=gen) + i, torch.randn(shape, generator=gen)) for i in range(4)]
    for source_cls, dest_cls in ((theirs_cls, ours_cls), (ours_cls, theirs_cls)):
        source = source_cls(shape[1], momentum=momentum)
        for x, dy in batches[:2]:
            run_step(source, x, dy, relu, torch.float32)
        with torch.no_grad():
            source.weight.mul_(1.5)
        buffer = io.BytesIO()
        torch.save(source.state_dict(), buffer)
        buffer.seek(0)
        dest = dest_cls(shape[1], momentum=momentum)
        dest.load_state_dict(torch.load(buffer), strict=True)
        assert list(dest.state_dict()) == list(source.state_dict())
        for name, value in source.state_dict().items():
            assert torch.equal(dest.state_dict()[name], value), name
        for x, dy in batches[2:]:  # training continues alike
            a = run_step(source, x, dy, relu, torch.float32)
            b = run_step(dest, x, dy, relu, torch.float32)
            assert rel_err(a["y"], b["y"]) <= TOL_TORCH and rel_err(a["dx"], b["dx"]) <= TOL_TORCH
        assert source.num_batches_tracked.item() == dest.num_batches_tracked.item() == 4
        assert rel_err(source.running_var, dest.running_var) <= TOL_TORCH
        source.eval()
        dest.eval()
        x = batches[0][0]
        y_source, y_dest = source(x), dest(x)
        if relu:
            y_source, y_dest = torch.relu(y_source), torch.relu(y_dest)
        assert rel_err(y_source, y_dest) <= TOL_TORCH


def test_old_checkpoint_without_num_batches_tracked() -> None:
    """torch's version-1 state_dicts (no num_batches_tracked) load as into torch's module."""
    state = torch.nn.BatchNorm2d(3).state_dict()
    del state["num_batches_tracked"]
    state._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]
    loaded = []
    for cls in (torch.nn.BatchNorm2d, BatchNorm2d, BatchNormReLU2d):
        m = cls(3)
        m.num_batches_tracked.fill_(7)
        m.load_state_dict(state)
        loaded.append(m.num_batches_tracked.item())
    assert loaded == [loaded[0]] * 3


def test_modules_are_what_torch_code_expects() -> None:
    for cls, base in ((BatchNorm1d, torch.nn.BatchNorm1d), (BatchNorm2d, torch.nn.BatchNorm2d),
                      (BatchNorm3d, torch.nn.BatchNorm3d)):
        assert isinstance(cls(3), base)
    # BatchNormReLU2d is not a BatchNorm2d: code that folds or converts BatchNorm2d would lose the ReLU
    assert not isinstance(BatchNormReLU2d(3), torch.nn.modules.batchnorm._BatchNorm)
    m = BatchNorm2d(4, eps=1e-3, momentum=None, affine=True, track_running_stats=True, dtype=torch.float64,
                    bias=False)
    assert m.bias is None and m.weight.dtype == torch.float64 and repr(m) == repr(
        torch.nn.BatchNorm2d(4, eps=1e-3, momentum=None, dtype=torch.float64, bias=False))


# ---- modes and buffers as torch ----------------------------------------------------------------


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track_running_stats", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_train_eval_and_buffers_as_torch(spy: list[dict[str, Any]], affine: bool, track_running_stats: bool,
                                         layout: str) -> None:
    """track_running_stats=False: no buffers, batch statistics in eval too; eval with running
    statistics; all through the kernels, with torch's numbers."""
    gen = torch.Generator().manual_seed(4)
    kwargs = {"affine": affine, "track_running_stats": track_running_stats}
    ours, theirs = BatchNorm2d(3, **kwargs), torch.nn.BatchNorm2d(3, **kwargs)
    for mode in ("train", "train", "eval"):
        ours.train(mode == "train")
        theirs.train(mode == "train")
        x = in_layout(torch.randn(4, 3, 5, 6, generator=gen) * 3 + 1, layout).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        y, y_ref = ours(x), theirs(x2)
        dy = torch.randn(y.shape, generator=gen)
        y.backward(dy)
        y_ref.backward(dy)
        assert rel_err(y, y_ref) <= TOL_TORCH and rel_err(x.grad, x2.grad) <= TOL_TORCH
        if affine:
            assert rel_err(ours.weight.grad, theirs.weight.grad, abs_scales(x, dy)["dweight"]) <= TOL_TORCH
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a is None) == (b is None) == (not track_running_stats)
        if a is not None:
            assert rel_err(a, b) <= TOL_TORCH
    assert len([c for c in spy if c["fn"] == "forward"]) == 3 and len([c for c in spy if c["fn"] == "backward"]) == 3


def test_channels_last_runs_in_place_and_stays_channels_last(spy: list[dict[str, Any]]) -> None:
    for shape, fmt, cls in (((4, 3, 5, 6), torch.channels_last, BatchNorm2d),
                            ((2, 3, 4, 5, 6), torch.channels_last_3d, BatchNorm3d)):
        spy.clear()
        x = torch.randn(shape).to(memory_format=fmt).requires_grad_()
        y = cls(3)(x)
        assert y.is_contiguous(memory_format=fmt) and not y.is_contiguous()
        y.backward(torch.randn(shape).to(memory_format=fmt))
        assert x.grad is not None and x.grad.is_contiguous(memory_format=fmt)
        forward, backward = spy
        assert forward["axis"] == backward["axis"] == -1
        assert forward["x_ptr"] == backward["x_ptr"] == x.data_ptr()  # x itself, not a copy
        assert forward["out_ptr"] == y.data_ptr() and backward["out_ptr"] == x.grad.data_ptr()


@pytest.mark.parametrize("shape", [(4, 1, 5, 6), (4, 3, 1, 1), (1, 3, 2, 1)])
def test_layouts_both_contiguous_and_channels_last(shape: tuple[int, ...]) -> None:
    """Size-1 dimensions make a tensor both contiguous and channels_last: the NCHW path, torch's
    numbers and output strides."""
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(shape, generator=gen).to(memory_format=torch.channels_last).requires_grad_()
    x2 = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    y, y_ref = BatchNorm2d(shape[1])(x), torch.nn.BatchNorm2d(shape[1])(x2)
    dy = torch.randn(shape, generator=gen)
    y.backward(dy)
    y_ref.backward(dy)
    assert y.stride() == y_ref.stride()
    assert rel_err(y, y_ref) <= TOL_TORCH and rel_err(x.grad, x2.grad) <= TOL_TORCH


@pytest.mark.parametrize("dy_layout", ["contiguous", "channels_last", "expanded", "misaligned"])
def test_gradient_in_another_layout(spy: list[dict[str, Any]], dy_layout: str) -> None:
    """autograd may hand the backward a gradient in a layout other than the output's (or in
    memory not aligned to its dtype)."""
    gen = torch.Generator().manual_seed(5)
    x = in_layout(torch.randn(4, 3, 5, 6, generator=gen), "channels_last").requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    if dy_layout == "expanded":
        dy = torch.randn(1, 3, 1, 1, generator=gen).expand(4, 3, 5, 6)
    elif dy_layout == "misaligned":
        dy = misaligned(torch.randn(4, 5, 6, 3, generator=gen)).permute(0, 3, 1, 2)  # x's layout
        assert is_channels_last(dy) and dy.data_ptr() % 4 == 1
    else:
        dy = in_layout(torch.randn(4, 3, 5, 6, generator=gen), dy_layout)
    BatchNorm2d(3)(x).backward(dy)
    torch.nn.BatchNorm2d(3)(x2).backward(dy)
    assert rel_err(x.grad, x2.grad) <= TOL_TORCH
    assert [c["axis"] for c in spy] == [-1, -1]


def test_noncontiguous_input_is_copied_and_matches_torch(spy: list[dict[str, Any]]) -> None:
    x = torch.randn(4, 3, 5, 12)[..., ::2].requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y, y_ref = BatchNorm2d(3)(x), torch.nn.BatchNorm2d(3)(x2)
    dy = torch.randn(y.shape)
    y.backward(dy)
    y_ref.backward(dy)
    assert rel_err(y, y_ref) <= TOL_TORCH and rel_err(x.grad, x2.grad) <= TOL_TORCH
    assert [c["axis"] for c in spy] == [1, 1]


# ---- gradients asked for -----------------------------------------------------------------------


def test_only_the_gradients_asked_for() -> None:
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, 3, 5, 6, generator=gen)
    dy = torch.randn(4, 3, 5, 6, generator=gen)
    # frozen weight: bias and x still get theirs
    ours, theirs = BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    for m in (ours, theirs):
        m.weight.requires_grad_(False)
    a, b = run_step(ours, x, dy, False, torch.float32), run_step(theirs, x, dy, False, torch.float32)
    assert a["dweight"] is None and rel_err(a["dbias"], b["dbias"], abs_scales(x, dy)["dbias"]) <= TOL_TORCH
    assert rel_err(a["dx"], b["dx"]) <= TOL_TORCH
    # input without grad (a first layer): weight and bias get theirs, x none
    ours, theirs = BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    ours(x).backward(dy)
    theirs(x).backward(dy)
    assert x.grad is None
    scales = abs_scales(x, dy)
    assert rel_err(ours.weight.grad, theirs.weight.grad, scales["dweight"]) <= TOL_TORCH
    assert rel_err(ours.bias.grad, theirs.bias.grad, scales["dbias"]) <= TOL_TORCH
    # functional: bias without weight gets dbias = sum(dy)
    for fn in (batch_norm, torch.nn.functional.batch_norm):
        bias = torch.zeros(3, requires_grad=True)
        fn(x, None, None, None, bias, True).backward(dy)
        assert rel_err(bias.grad, dy.sum((0, 2, 3)), abs_scales(x, dy)["dbias"]) <= TOL_TORCH


def test_no_double_backward() -> None:
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    y = BatchNorm1d(3).double()(x)
    (dx,) = torch.autograd.grad((y ** 3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        dx.sum().backward()


# ---- what the kernels do not take: as torch ----------------------------------------------------


def same_behaviour(ours: Callable[[], Any], theirs: Callable[[], Any]) -> None:
    """Both raise the same exception type and message, or both return equal results."""
    try:
        want = theirs()
    except Exception as e:  # noqa: BLE001 - whatever torch raises, ours must raise alike
        with pytest.raises(type(e)) as info:
            ours()
        assert str(info.value) == str(e)
        return
    got = ours()
    assert got.dtype == want.dtype and torch.equal(got, want)


def test_one_value_per_channel_in_training_raises_as_torch() -> None:
    for shape, ours, theirs in (((1, 3), BatchNorm1d, torch.nn.BatchNorm1d),
                                ((1, 3, 1), BatchNorm1d, torch.nn.BatchNorm1d),
                                ((1, 3, 1, 1), BatchNorm2d, torch.nn.BatchNorm2d),
                                ((1, 3, 1, 1), BatchNormReLU2d, torch.nn.BatchNorm2d),
                                ((1, 3, 1, 1, 1), BatchNorm3d, torch.nn.BatchNorm3d)):
        x = torch.randn(shape)
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as info:
            ours(3)(x)
        with pytest.raises(ValueError) as info_torch:
            theirs(3)(x)
        assert str(info.value) == str(info_torch.value)
        # eval normalizes one value with the running statistics, as torch does
        a, b = ours(3).eval(), theirs(3).eval()
        a(x)  # the kernel takes it
        assert rel_err(a(x), torch.relu(b(x)) if ours is BatchNormReLU2d else b(x)) <= TOL_TORCH


def misaligned(t: Any) -> Any:
    """t's values in float32 memory one byte past an aligned address."""
    raw = torch.zeros(t.numel() * 4 + 1, dtype=torch.uint8)
    raw[1:] = t.reshape(-1).view(torch.uint8)
    out = torch.frombuffer(raw.numpy(), dtype=torch.float32, offset=1).reshape(t.shape)
    assert out.data_ptr() % 4 == 1
    return out


@pytest.mark.parametrize("case", ["dims", "eps0_train", "eps_negative_eval", "channels", "bfloat16", "float16",
                                  "mixed_dtype", "empty", "float64_weight", "negated_view", "misaligned",
                                  "misaligned_weight"])
def test_other_cases_behave_as_torch(case: str) -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, 5, 6, generator=gen)
    ours, theirs = BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    if case == "dims":
        x = x[0]
    elif case == "eps0_train":
        ours.eps = theirs.eps = 0.0
    elif case == "eps_negative_eval":
        ours.eps = theirs.eps = -1e-5
        ours.eval()
        theirs.eval()
    elif case == "channels":
        x = torch.randn(4, 5, 2, 2, generator=gen)
    elif case in ("bfloat16", "float16"):
        dtype = getattr(torch, case)
        x, ours, theirs = x.to(dtype), ours.to(dtype), theirs.to(dtype)
    elif case == "mixed_dtype":
        x = x.double()
    elif case == "empty":
        x = torch.randn(0, 3, 5, 6)
    elif case == "float64_weight":
        ours.weight.data, theirs.weight.data = ours.weight.data.double(), theirs.weight.data.double()
    elif case == "negated_view":  # memory holding -x: the kernels read raw memory, so torch computes it
        x = torch._neg_view(-x)
        assert x.is_neg()
    elif case == "misaligned":  # float32 values one byte past an aligned address
        x = misaligned(x)
    elif case == "misaligned_weight":
        ours.weight.data = misaligned(ours.weight.detach())
    same_behaviour(lambda: ours(x), lambda: theirs(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name


@pytest.mark.parametrize("transform", ["grad", "vmap", "jacrev", "forward_ad"])
def test_torch_func_transforms_and_forward_ad_as_torch(transform: str) -> None:
    """torch.func's transforms and forward-mode AD's dual tensors run torch's batch_norm (the
    kernels' autograd.Function has no vmap or jvp rule): torch's numbers."""
    gen = torch.Generator().manual_seed(4)
    x, tangent = torch.randn(4, 3, 5, 6, generator=gen), torch.randn(4, 3, 5, 6, generator=gen)
    results = []
    for module in (BatchNorm2d(3), torch.nn.BatchNorm2d(3, track_running_stats=False)):
        if isinstance(module, BatchNorm2d):
            module.track_running_stats, module.running_mean, module.running_var = False, None, None
            module.num_batches_tracked = None
        if transform == "grad":
            results.append(torch.func.grad(lambda x, m=module: m(x).square().mean())(x))
        elif transform == "vmap":
            results.append(torch.func.vmap(module)(x.unsqueeze(1)))
        elif transform == "jacrev":
            results.append(torch.func.jacrev(lambda w, m=module: m(x * w.view(1, 3, 1, 1)).square().sum(dim=(0, 2, 3)))(
                torch.ones(3)))
        else:
            import torch.autograd.forward_ad as fwad
            # (torch's forward-mode batch norm formula warns of its own use of torch.jit.script)
            with fwad.dual_level(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                results.append(fwad.unpack_dual(module(fwad.make_dual(x, tangent))).tangent)
    assert results[0] is not None and torch.allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_fx_trace_with_the_documented_tracer() -> None:
    """The module docstring's torch.fx Tracer keeps the modules as leaves (call_module nodes), and
    the traced model computes what the model does."""
    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: Any, name: str) -> bool:
            ours = (BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormReLU2d)
            return isinstance(m, ours) or bool(super().is_leaf_module(m, name))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), BatchNorm2d(4), BatchNormReLU2d(4)).eval()
    traced = torch.fx.GraphModule(model, Tracer().trace(model))
    assert [n.op for n in traced.graph.nodes].count("call_module") == 3
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(traced(x), model(x))


@pytest.mark.parametrize("training,stats", [(True, "mean_only"), (True, "var_only"), (False, "mean_only"),
                                            (False, "var_only"), (False, "neither")])
def test_functional_running_statistics_as_torch(training: bool, stats: str) -> None:
    """One running statistic without the other, or none in eval: torch's errors (or results)."""
    x = torch.randn(4, 3, 5, 6)
    def call(fn: Any) -> Any:
        running_mean = torch.zeros(3) if stats == "mean_only" else None
        running_var = torch.ones(3) if stats == "var_only" else None
        return fn(x, running_mean, running_var, None, None, training)
    same_behaviour(lambda: call(batch_norm), lambda: call(torch.nn.functional.batch_norm))


def test_inference_mode(spy: list[dict[str, Any]]) -> None:
    x = torch.randn(4, 3, 5, 6)
    ours, theirs = BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    with torch.inference_mode():
        for mode in (True, False):
            ours.train(mode)
            theirs.train(mode)
            assert rel_err(ours(x), theirs(x)) <= TOL_TORCH
    assert rel_err(ours.running_var, theirs.running_var) <= TOL_TORCH and len(spy) == 2


def test_module_in_a_model_trains_like_torch(isa: str) -> None:
    """Conv -> BN(+ReLU) -> pool -> linear, a few SGD steps: the same parameters as torch's."""
    def model(bn: Any) -> Any:
        torch.manual_seed(8)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), bn, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(8, 4))
    ours = model(BatchNormReLU2d(8)).to(memory_format=torch.channels_last)
    theirs = model(torch.nn.Sequential(torch.nn.BatchNorm2d(8), torch.nn.ReLU())).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(9)
    data = [(torch.randn(16, 3, 10, 10, generator=gen).to(memory_format=torch.channels_last),
             torch.randint(0, 4, (16,), generator=gen)) for _ in range(5)]
    for m in (ours, theirs):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        for x, target in data:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), target).backward()
            opt.step()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert rel_err(a, b) <= 1e-5, name  # 5 steps of a network: 2x the one-layer tolerance


@pytest.mark.parametrize("shape", [(256, 1024), (192, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_same_bits_for_any_thread_count_on_torchs_team(isa: str, threads: None, shape: tuple[int, int],
                                                        dtype: Any) -> None:
    """With fusedopt.torch imported, fusedopt's regions run on torch's OpenMP team, where calls
    of over 1 MB run on every thread: whole rows, (N, C), are then cut into a tile of channels
    per thread (Plan). Outputs, gradients and running statistics: the bits of one thread."""
    if not fusedopt.torch.use_torch_threads():
        pytest.skip("torch's parallel backend is not libgomp")
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=gen, dtype=dtype) * 2 + 5).requires_grad_()
    dy = torch.randn(shape, generator=gen, dtype=dtype)
    results = []
    for nthreads in (1, 2):
        fusedopt.set_num_threads(nthreads)
        m = BatchNorm1d(shape[1]).to(dtype)
        x.grad = None
        y = m(x)
        y.backward(dy)
        assert m.weight.grad is not None and m.bias.grad is not None and x.grad is not None
        results.append([t.detach().numpy().tobytes()
                        for t in (y, x.grad, m.weight.grad, m.bias.grad, m.running_mean, m.running_var)])
    assert results[0] == results[1]


# ---- outputs from fusedopt's output pool -------------------------------------------------------


POOLED = (4, 8, 32, 32)  # 128 KiB of float32: pooled outputs (64 KiB or more)


def test_pooled_output_never_handed_out_while_a_tensor_uses_it(spy: list[dict[str, Any]]) -> None:
    """y and x.grad live on pooled buffers that only the tensors (torch.from_numpy) keep: while
    they live, no later output gets their memory, and they keep their values; once they die,
    the next steps run on their buffers again."""
    gen = torch.Generator().manual_seed(11)
    bn = BatchNorm2d(8)
    x = torch.randn(POOLED, generator=gen).requires_grad_()
    dy = torch.randn(POOLED, generator=gen)
    y = bn(x)
    y.backward(dy)
    kept = [y, x.grad]  # a tensor's storage holds the array that holds the buffer
    assert x.grad is not None and spy[0]["out_ptr"] == y.data_ptr() and spy[1]["out_ptr"] == x.grad.data_ptr()
    values = [t.detach().clone() for t in kept]
    x.grad = None
    for _ in range(4):
        x2 = torch.randn(POOLED, generator=gen).requires_grad_()
        y2 = bn(x2)
        y2.backward(dy)
        assert x2.grad is not None
        assert {y2.data_ptr(), x2.grad.data_ptr()}.isdisjoint({t.data_ptr() for t in kept})
        del x2, y2
    assert all(torch.equal(t.detach(), v) for t, v in zip(kept, values))
    freed = {t.data_ptr() for t in kept}
    del kept, y
    x3 = torch.randn(POOLED, generator=gen).requires_grad_()
    y3 = bn(x3)
    y3.backward(dy)
    assert x3.grad is not None
    reused = {y3.data_ptr(), x3.grad.data_ptr()}
    # every buffer freed before went back to the pool, and these came from it
    assert reused <= {c["out_ptr"] for c in spy}
    assert freed <= {c["out_ptr"] for c in spy}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_pooled_outputs_in_the_input_layout_and_usable_in_place(layout: str) -> None:
    """The pooled output and gradient have x's layout (channels_last strides, not a copy), are not
    views (autograd refuses in-place ops on a view returned by a custom Function: an in-place
    ReLU after the module must work), and match torch's module through an in-place ReLU."""
    gen = torch.Generator().manual_seed(12)
    x = in_layout(torch.randn(POOLED, generator=gen), layout).requires_grad_()
    x2 = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    dy = in_layout(torch.randn(POOLED, generator=gen), layout)
    ours, theirs = BatchNorm2d(8), torch.nn.BatchNorm2d(8)
    y, y_ref = ours(x), theirs(x2)
    assert y._base is None and not y._is_view()
    assert y.stride() == y_ref.stride() and is_channels_last(y) == (layout == "channels_last")
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    torch.relu_(y)
    torch.relu_(y_ref)
    y.backward(dy)
    y_ref.backward(dy)
    assert x.grad is not None and x2.grad is not None
    assert x.grad.stride() == x2.grad.stride()
    assert rel_err(y, y_ref) <= TOL_TORCH and rel_err(x.grad, x2.grad) <= TOL_TORCH


def test_saved_tensors_are_version_checked() -> None:
    """The pooled output saved for the backward (BatchNormReLU2d's y) and the input are
    version-checked as torch's own saved tensors are: modified in place after the forward, the
    backward raises torch's error instead of using changed values."""
    gen = torch.Generator().manual_seed(14)
    leaf = torch.randn(POOLED, generator=gen, requires_grad=True)
    y = BatchNormReLU2d(8)(leaf)
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward(torch.ones_like(y))
    x = leaf * 1  # not a leaf: may be modified in place
    y = BatchNorm2d(8)(x)
    x.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward(torch.ones_like(y))


def test_negated_gradient_as_torch() -> None:
    """A dy autograd hands in with the negative bit set (the module's output as the imaginary
    part of a complex tensor that is conjugated): torch's gradients, not Tensor.numpy()'s error."""
    gen = torch.Generator().manual_seed(17)
    x0 = torch.randn(4, 3, 5, 6, generator=gen)
    dy = torch.randn(4, 3, 5, 6, dtype=torch.complex64, generator=gen).conj().imag
    assert dy.is_neg()
    grads = []
    for module in (BatchNorm2d(3), torch.nn.BatchNorm2d(3)):
        x = x0.clone().requires_grad_()
        module(x).backward(dy)
        grads.append(x.grad)
    assert rel_err(grads[0], grads[1]) <= TOL_TORCH


@pytest.mark.parametrize("change", ["saved_tensor_hook", "x_data_assigned"])
def test_relu_output_saved_in_another_layout_than_x(change: str) -> None:
    """BatchNormReLU2d's backward reads the saved output in the layout the backward takes x in:
    a saved-tensor hook that makes only x contiguous, or x.data assigned a contiguous copy of a
    channels-last x, leaves them in different layouts; the gradients stay torch's."""
    gen = torch.Generator().manual_seed(18)
    x0 = (torch.randn(4, 3, 5, 6, generator=gen) * 2 + 1).to(memory_format=torch.channels_last)
    dy = torch.randn(4, 3, 5, 6, generator=gen)
    grads = []
    for module, bn in ((m := BatchNormReLU2d(3), m), (t := torch.nn.Sequential(torch.nn.BatchNorm2d(3),
                                                                                torch.nn.ReLU()), t[0])):
        x = x0.clone(memory_format=torch.preserve_format).requires_grad_()
        if change == "saved_tensor_hook":
            def pack(t: Any) -> Any:
                return t.contiguous() if t.dim() == 4 and t.grad_fn is None else t
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                y = module(x)
        else:
            y = module(x)
            x.data = x.data.contiguous()
        y.backward(dy)
        grads.append((x.grad, bn.weight.grad))
    assert rel_err(grads[0][0], grads[1][0]) <= TOL_TORCH
    assert rel_err(grads[0][1], grads[1][1]) <= TOL_TORCH


def test_meta_device_and_export_as_torch() -> None:
    """Tensors with no memory to read take torch's batch_norm: the meta device (shape inference)
    and torch.export's fake tensors; the batch counter is read only where it is used (momentum=None),
    as torch's module reads it."""
    for momentum in (0.1, None):
        outcomes = []
        for cls in (BatchNorm2d, torch.nn.BatchNorm2d):
            module = cls(3, momentum=momentum, device="meta")
            try:
                outcomes.append(module(torch.empty(4, 3, 5, 6, device="meta")).shape)
            except RuntimeError as e:  # torch cannot take 1 / batches of a meta counter either
                outcomes.append(str(e))
        assert outcomes[0] == outcomes[1]
    assert outcomes[0] != torch.Size([4, 3, 5, 6])  # momentum=None: torch's own error
    x = torch.randn(2, 3, 4, 4)
    for training in (False, True):
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), BatchNorm2d(3)).train(training)
        exported = torch.export.export(model, (x,))
        assert any("batch_norm" in str(node.target) for node in exported.graph.nodes)
        assert rel_err(exported.module()(x), model.train(training)(x)) <= TOL_TORCH


@pytest.mark.parametrize("counter", ["int64", "float64", "int64_1d"])
def test_num_batches_tracked_counted_as_torch(counter: str) -> None:
    """momentum=None (the cumulative average, 1 / batches seen): torch's int64 0-d counter is
    counted through a view of its memory, any other counter torch's way (add_); both give
    torch's counts and running statistics."""
    gen = torch.Generator().manual_seed(16)
    ours, theirs = BatchNorm2d(3, momentum=None), torch.nn.BatchNorm2d(3, momentum=None)
    for m in (ours, theirs):
        if counter == "float64":
            m.num_batches_tracked = torch.tensor(0.0, dtype=torch.float64)
        elif counter == "int64_1d":
            m.num_batches_tracked = torch.zeros(1, dtype=torch.int64)
    for _ in range(3):
        x = torch.randn(4, 3, 5, 6, generator=gen)
        ours(x)
        theirs(x)
    assert ours.num_batches_tracked.dtype == theirs.num_batches_tracked.dtype
    assert torch.equal(ours.num_batches_tracked, theirs.num_batches_tracked)
    assert ours.num_batches_tracked.flatten()[0].item() == 3
    for name in ("running_mean", "running_var"):
        assert rel_err(getattr(ours, name), getattr(theirs, name)) <= TOL_TORCH, name


def test_replaced_saved_tensor_raises_before_any_view() -> None:
    """x's or weight's .data assigned between forward and backward (not version-checked) to a
    tensor the kernels do not take: a clear error, not a view of memory of another size. The
    output's .data assigned does not reach the output autograd saved: the backward runs."""
    gen = torch.Generator().manual_seed(15)
    for replace in ("x", "weight", "output"):
        x = torch.randn(4, 3, 5, 6, generator=gen, requires_grad=True)
        bn = BatchNormReLU2d(3)
        y = bn(x)
        if replace == "x":
            x.data = torch.randn(4, 3, 5, 6, generator=gen).half()
        elif replace == "weight":
            bn.weight.data = torch.ones(2)
        else:
            y.data = torch.ones(4, 3, 5, 6, dtype=torch.float16)
            y.backward(torch.ones(4, 3, 5, 6))
            assert x.grad is not None and x.grad.dtype == torch.float32
            continue
        with pytest.raises(RuntimeError, match="replaced"):
            y.backward(torch.ones(4, 3, 5, 6))


def test_tensor_view_is_the_tensors_memory() -> None:
    """_core.tensor_view (the modules' zero-copy view): the tensor's own bytes from its data_ptr
    (an offset view included), writable, in the shape asked for, keeping the tensor alive."""
    import numpy as np

    from fusedopt import _core
    base = torch.arange(24, dtype=torch.float64)
    t = base[4:16]
    view = _core.tensor_view(t, np.dtype(np.float64), (3, 4))
    assert view.shape == (3, 4) and view.ctypes.data == t.data_ptr() and view.flags.writeable
    assert np.array_equal(view, t.view(3, 4).numpy())
    view[0, 0] = -1.0
    assert base[4].item() == -1.0
    del base, t
    assert view[2, 3] == 15.0  # the base kept the memory


def test_training_loop_memory_stays_within_the_pool_bound() -> None:
    """Three conv + BN + ReLU layers trained for a few steps: every step after the first runs on
    the pool's buffers (no new memory), the pool never holds more than its high-water mark, and
    release_output_buffers gives the kept memory back."""
    import gc

    from fusedopt.batchnorm import output_buffer_stats, release_output_buffers

    torch.manual_seed(13)
    layers: list[Any] = []
    for c_in, c_out in ((3, 8), (8, 8), (8, 8)):
        layers += [torch.nn.Conv2d(c_in, c_out, 3, padding=1), BatchNorm2d(c_out), torch.nn.ReLU(inplace=True)]
    model = torch.nn.Sequential(*layers).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    gc.collect()
    release_output_buffers()
    base = output_buffer_stats()
    seen = []
    for _ in range(4):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        seen.append(output_buffer_stats())
    assert all(s == seen[0] for s in seen)  # the same buffers every step
    assert seen[0]["live_bytes"] == base["live_bytes"]  # none alive after the step
    assert seen[0]["free_bytes"] == seen[0]["high_water"] - base["live_bytes"] > 0
    assert release_output_buffers() == seen[0]["free_bytes"]


def test_bench_rows_and_table(monkeypatch: Any) -> None:
    """The bench's rows on two small shapes (NCHW and NHWC): every implementation timed, and
    the bench's kernel calls computing what the module computes."""
    import fusedopt.torch.bench_batchnorm as bench

    cases = [((4, 3, 5, 6), 1, "NCHW"), ((4, 5, 6, 3), -1, "NHWC")]
    monkeypatch.setattr(bench, "_BATCHNORM_CASES", cases)
    rows = bench.rows(True, [1])
    assert [r["case"] for r in rows] == ["batchnorm 4x3x5x6 NCHW", "batchnorm 4x5x6x3 NHWC",
                                         "network 3x (1x1 conv + BN + ReLU) 2x8x8x8 NHWC"]
    for r in rows:
        names = bench.IMPLEMENTATIONS if r["case"].startswith("batchnorm") else ("torch", "module")
        assert all(0 < r[f"{name}_best_s"] <= r[f"{name}_median_s"] for name in names)
        assert r["case"].startswith("batchnorm") or "bare_best_s" not in r
    assert bench.table(rows).count("\n") == 1 + len(rows)
    case = bench.Case((4, 5, 6, 3), -1)
    case.step("bare")()
    case.step("module")()
    x = case.x["module"]
    assert x.is_contiguous(memory_format=torch.channels_last) and x.grad is not None
    assert rel_err(case.dx, x.grad) <= TOL_TORCH
    case.step("pooled")()
    assert rel_err(torch.from_numpy(case.held_dx), x.grad.permute(0, 2, 3, 1)) <= TOL_TORCH
    # the network's two models compute the same thing
    network = bench.Network(True)
    for name in network.models:
        network.step(name)()
    grads = [[p.grad for p in m.parameters()] for m in network.models.values()]
    assert all(a is not None and b is not None and rel_err(a, b) <= TOL_TORCH for a, b in zip(*grads))
