"""The PyTorch optimizer bench: python -m fusedopt.torch.bench [--quick] [--threads 1,2]

ResNet-50's and an MLP's parameter shapes (fusedopt.bench's) as nn.Parameters with .grad set,
and one set of AdamW state tensors (exp_avg, exp_avg_sq) that every implementation updates:
  fusedopt.torch   fusedopt.torch.AdamW(params).step()
  torch fused      torch.optim.AdamW(params, fused=True).step()
  functional       fusedopt.adamw_(params, grads, exp_avgs, exp_avg_sqs, step=...) on the tensors
  kernel           the same call on NumPy views made once (the kernel alone, no conversions)
The two optimizers' state dicts hold those very tensors (each optimizer its own step counter):
every implementation reads and writes the same memory, so none gains from where its own state
happens to lie (pages, cache sets) or from running right after a step over the same arrays.
Each is timed in interleaved rounds in a rotating order (fusedopt.bench.timing), at each thread
count (fusedopt's and torch's): best and median of the rounds, ms.

Then the two optimizers' steps right after a real backward pass (a small conv net's, which runs
torch's OpenMP pool), against the same step after the same backward with torch's idle OpenMP
workers put to sleep first, untimed (fusedopt.torch._omp; a 50 ms sleep where that is not
available): the same caches, no worker spinning. (after backward) / (workers asleep) is what
torch's spinning workers cost the step, (workers asleep) / (back to back) what the caches that
backward evicted cost it. At 1 thread torch has no workers to put to sleep: both columns time
the same step after the same backward, and their ratio is the run's noise. The machine may be
shared: compare ratios from one run (on a loaded machine the 2-thread rows mostly time the
scheduler; thread CPU time, interleaved, is steadier for the 1-thread step's overhead).
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import fusedopt
from fusedopt.bench.cli import machine_info, thread_counts
from fusedopt.bench.optimizers import mlp_shapes, resnet50_shapes
from fusedopt.bench.timing import time_interleaved

from . import _omp
from .optim import AdamW

MODELS: dict[str, Callable[[], list[tuple[int, ...]]]] = {"resnet50": resnet50_shapes, "mlp": mlp_shapes}
IMPLEMENTATIONS = ("fusedopt.torch", "torch fused", "functional", "kernel")
OPTIMIZERS = ("fusedopt.torch", "torch fused")  # timed after backward too
LR = 1e-4


class Setup:
    """One model's params with grads and one set of AdamW state, and a step of each
    implementation on them (each counting its own steps)."""

    def __init__(self, shapes: list[tuple[int, ...]]) -> None:
        g = torch.Generator().manual_seed(0)
        self.params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in shapes]
        self.grads = [torch.randn(s, generator=g) * 1e-3 for s in shapes]
        for p, grad in zip(self.params, self.grads):
            p.grad = grad
        self.n = sum(p.numel() for p in self.params)
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params]
        self.opt = AdamW(self.params, lr=LR)
        self.torch_opt = torch.optim.AdamW(self.params, lr=LR, fused=True)
        for opt in (self.opt, self.torch_opt):
            for p, exp_avg, exp_avg_sq in zip(self.params, self.exp_avgs, self.exp_avg_sqs):
                opt.state[p].update(step=torch.tensor(0.0), exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
        self.views = [[t.detach().numpy() for t in ts] for ts in (self.params, self.grads, self.exp_avgs,
                                                                  self.exp_avg_sqs)]
        self.taken = {"functional": 0, "kernel": 0}

    def fusedopt_torch(self) -> None:
        self.opt.step()

    def torch_fused(self) -> None:
        self.torch_opt.step()

    def functional(self) -> None:
        self.taken["functional"] += 1
        fusedopt.adamw_(self.params, self.grads, self.exp_avgs, self.exp_avg_sqs, step=self.taken["functional"],
                        lr=LR)

    def kernel(self) -> None:
        self.taken["kernel"] += 1
        fusedopt.adamw_(*self.views, step=self.taken["kernel"], lr=LR)

    def steps(self) -> dict[str, Callable[[], object]]:
        return dict(zip(IMPLEMENTATIONS, (self.fusedopt_torch, self.torch_fused, self.functional, self.kernel)))


def conv_backward() -> Callable[[], None]:
    """A real backward pass that runs torch's OpenMP pool (~10-30 ms on 2 cores)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x = torch.randn(16, 3, 64, 64)

    def backward() -> None:
        net.zero_grad()
        net(x).square().mean().backward()
    return backward


def workers_asleep() -> Callable[[], None]:
    """Puts torch's idle OpenMP workers to sleep now (a 50 ms sleep where fusedopt.torch._omp
    cannot): the reference state for a step after backward without spinning workers."""
    runtime = _omp.find()
    if runtime is None:
        return lambda: time.sleep(0.05)
    return runtime.park_workers


def summary(times: list[float]) -> dict[str, float]:
    return {"best_ms": min(times) * 1e3, "median_ms": statistics.median(times) * 1e3}


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rows(quick: bool, threads: list[int]) -> list[dict[str, Any]]:
    """One row per (model, thread count, measurement): "alone" rows time each implementation in
    interleaved rounds; "after backward" rows time the two optimizers' steps right after a conv
    net's backward, and after the same backward with torch's workers put to sleep first."""
    rounds = 5 if quick else 21
    batch_seconds = 0.02 if quick else 0.05
    out: list[dict[str, Any]] = []
    before = fusedopt.get_num_threads(), torch.get_num_threads()
    backward, asleep = conv_backward(), workers_asleep()
    try:
        for model, shapes in MODELS.items():
            setup = Setup(shapes())
            head = {"model": model, "params": len(setup.params), "elements": setup.n}
            for n in threads:
                fusedopt.set_num_threads(n)
                torch.set_num_threads(n)
                steps = setup.steps()
                alone = time_interleaved(steps, batch_seconds, rounds)
                out.append({**head, "threads": n, "measure": "alone",
                            **{name: summary(t) for name, t in alone.items()}})

                after: dict[str, list[float]] = {name: [] for name in OPTIMIZERS}
                parked: dict[str, list[float]] = {name: [] for name in OPTIMIZERS}
                for r in range(rounds):
                    for name in OPTIMIZERS[r % 2:] + OPTIMIZERS[:r % 2]:
                        backward()
                        after[name].append(timed(steps[name]))
                        backward()
                        asleep()
                        parked[name].append(timed(steps[name]))
                out.append({**head, "threads": n, "measure": "after backward",
                            **{name: summary(t) for name, t in after.items()},
                            **{f"{name} workers asleep": summary(t) for name, t in parked.items()},
                            **{f"{name} back to back": summary(alone[name]) for name in OPTIMIZERS}})
    finally:
        fusedopt.set_num_threads(before[0])
        torch.set_num_threads(before[1])
    return out


def _ratios(row: dict[str, Any], a: str, b: str) -> str:
    """a / b: of the best times (of the medians in brackets)."""
    return f"{row[a]['best_ms'] / row[b]['best_ms']:.3g}x [{row[a]['median_ms'] / row[b]['median_ms']:.3g}x]"


def table(result_rows: list[dict[str, Any]]) -> str:
    """Markdown tables: the steps alone (ms, best [median]; ratios of the bests [of the medians]),
    then the steps right after a backward pass, after it with torch's workers asleep and back to
    back (medians, ms)."""
    lines = [("| model | threads | fusedopt.torch | torch fused | functional (tensors) | kernel (views) | "
              "fusedopt.torch / functional | fusedopt.torch / kernel | torch fused / fusedopt.torch |"),
             "|---" * 9 + "|"]
    for row in result_rows:
        if row["measure"] != "alone":
            continue
        cells = [f"{row[name]['best_ms']:.3g} [{row[name]['median_ms']:.3g}]" for name in IMPLEMENTATIONS]
        lines.append(f"| {row['model']} ({row['params']} tensors) | {row['threads']} | " + " | ".join(cells) +
                     f" | {_ratios(row, 'fusedopt.torch', 'functional')} | {_ratios(row, 'fusedopt.torch', 'kernel')}"
                     f" | {_ratios(row, 'torch fused', 'fusedopt.torch')} |")
    lines += ["", ("| model | threads | fusedopt.torch after backward | workers asleep | back to back | "
                   "after / asleep | asleep / back to back | torch fused after backward | workers asleep | "
                   "back to back | after / asleep | asleep / back to back |"), "|---" * 12 + "|"]
    for row in result_rows:
        if row["measure"] != "after backward":
            continue
        cells = []
        for name in OPTIMIZERS:
            after, asleep = row[name]["median_ms"], row[f"{name} workers asleep"]["median_ms"]
            alone = row[f"{name} back to back"]["median_ms"]
            cells += [f"{after:.3g}", f"{asleep:.3g}", f"{alone:.3g}", f"{after / asleep:.3g}x",
                      f"{asleep / alone:.3g}x"]
        lines.append(f"| {row['model']} | {row['threads']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fusedopt.torch.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter batches")
    parser.add_argument("--threads", type=thread_counts, default=[1, 2], metavar="N[,M...]",
                        help="comma-separated thread counts (default: 1,2)")
    args = parser.parse_args(argv)
    info = machine_info()
    print(f"# fusedopt.torch AdamW step: {info['cpu']}, {info['cpus']} CPUs, isa {info['isa']}, "
          f"torch {torch.__version__}")
    print(table(rows(args.quick, args.threads)))


if __name__ == "__main__":
    main()
