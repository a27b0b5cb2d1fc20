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
