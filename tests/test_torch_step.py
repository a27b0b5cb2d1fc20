"""fusedopt.torch's step runs torch's step wrapper (Optimizer.profile_hook_step) only when it has
something to do: these check that hooks and the profiler still see every step."""
import pytest

torch = pytest.importorskip("torch")
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook  # noqa: E402

import fusedopt.torch  # noqa: E402


def _optimizer() -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
    p = torch.nn.Parameter(torch.ones(10))
    p.grad = torch.full((10,), 0.5)
    return p, fusedopt.torch.AdamW([p], lr=0.1)


def test_profiler_sees_the_step():
    _, opt = _optimizer()
    opt.step()
    with torch.profiler.profile() as prof:
        opt.step()
    assert [e.name for e in prof.events() if e.name.startswith("Optimizer.step")] == ["Optimizer.step#AdamW.step"]


def test_hooks_run_and_may_replace_the_arguments():
    p, opt = _optimizer()
    reference = torch.optim.AdamW([torch.nn.Parameter(torch.ones(10))], lr=0.1)
    reference.param_groups[0]["params"][0].grad = torch.full((10,), 0.5)
    calls = []
    handles = [register_optimizer_step_pre_hook(lambda o, args, kwargs: calls.append("global pre")),
               register_optimizer_step_post_hook(lambda o, args, kwargs: calls.append("global post")),
               opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre")),
               opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))]
    try:
        loss = opt.step(lambda: 3.0)
        assert loss == 3.0 and calls == ["global pre", "pre", "post", "global post"]
    finally:
        for handle in handles:
            handle.remove()
    # a pre hook's (args, kwargs) replace the step's: here a closure
    handle = opt.register_step_pre_hook(lambda o, args, kwargs: ((o,), {"closure": lambda: 5.0}))
    assert opt.step() == 5.0
    handle.remove()
    calls.clear()
    opt.step()  # without hooks: the direct path, counted as the others
    assert calls == []
    for _ in range(3):  # the three steps above
        reference.step()
    torch.testing.assert_close(p.detach(), reference.param_groups[0]["params"][0].detach())
    assert float(opt.state[p]["step"]) == 3.0


def test_the_step_tells_autograd_the_params_changed():
    """A graph that saved a param before the step cannot be backpropagated after it (torch's
    in-place check), as with torch.optim: the step counts the params' versions."""
    p, opt = _optimizer()
    loss = (p * p).sum()  # saves p for backward
    version = p._version
    opt.step()
    assert p._version == version + 1
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_a_group_entry_that_decides_the_state_is_followed_between_steps():
    """SGD's momentum set from 0 to 0.9 after some steps (a momentum buffer starts from the next
    grad, as in torch) and back: the step's plan notices the entries that decide which state a
    group keeps."""
    torch.manual_seed(0)
    start = torch.randn(5)
    ps = [torch.nn.Parameter(start.clone()) for _ in range(2)]
    opt = fusedopt.torch.SGD([ps[0]], lr=0.1)
    ref = torch.optim.SGD([ps[1]], lr=0.1, foreach=False)
    for momentum in (0.0, 0.0, 0.9, 0.9, 0.9, 0.0, 0.5):
        grad = torch.randn(5)
        for p, o in ((ps[0], opt), (ps[1], ref)):
            o.param_groups[0]["momentum"] = momentum
            p.grad = grad.clone()
            o.step()
        torch.testing.assert_close(ps[0].detach(), ps[1].detach(), rtol=1e-6, atol=1e-6)
    assert "momentum_buffer" in opt.state[ps[0]]
