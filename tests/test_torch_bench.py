"""fusedopt.torch.bench: every implementation it times is one AdamW step on the one set of
tensors (params, grads and state shared by all), and its rows and tables come out."""
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import fusedopt.torch.bench as bench  # noqa: E402

SHAPES = [(3, 4), (5,), (2, 3, 2)]


@pytest.mark.parametrize("name", bench.IMPLEMENTATIONS)
def test_each_implementation_is_an_adamw_step_on_the_shared_tensors(name: str) -> None:
    setup = bench.Setup(SHAPES)
    for opt in (setup.opt, setup.torch_opt):  # the optimizers' state is the bench's one set
        for p, exp_avg, exp_avg_sq in zip(setup.params, setup.exp_avgs, setup.exp_avg_sqs):
            assert opt.state[p]["exp_avg"] is exp_avg and opt.state[p]["exp_avg_sq"] is exp_avg_sq
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in setup.params]
    for q, g in zip(ref_params, setup.grads):
        q.grad = g.clone()
    ref = torch.optim.AdamW(ref_params, lr=bench.LR, foreach=False)
    ref.step()
    for _ in range(2):  # a second step of the same implementation also sees its own step count
        setup.steps()[name]()
    ref.step()
    for p, q, exp_avg, exp_avg_sq in zip(setup.params, ref_params, setup.exp_avgs, setup.exp_avg_sqs):
        torch.testing.assert_close(p.detach(), q.detach())
        torch.testing.assert_close(exp_avg, ref.state[q]["exp_avg"])
        torch.testing.assert_close(exp_avg_sq, ref.state[q]["exp_avg_sq"])


def test_rows_and_tables(monkeypatch: Any) -> None:
    monkeypatch.setattr(bench, "MODELS", {"tiny": lambda: SHAPES})
    rows = bench.rows(True, [1])
    assert [r["measure"] for r in rows] == ["alone", "after backward"]
    for name in bench.IMPLEMENTATIONS:
        assert 0 < rows[0][name]["best_ms"] <= rows[0][name]["median_ms"]
    for name in bench.OPTIMIZERS:
        for key in (name, f"{name} workers asleep", f"{name} back to back"):
            assert 0 < rows[1][key]["best_ms"] <= rows[1][key]["median_ms"]
    lines = bench.table(rows).splitlines()
    assert len(lines) == 2 + 1 + 1 + 2 + 1 and lines[3] == ""
