"""The PyTorch optimizer bench: python -m fusedopt.torch.bench [--quick] [--threads 1 2]

ResNet-50's and an MLP's parameter shapes (fusedopt.bench's) as nn.Parameters with .grad set;
on the same tensors, each with its own state, one AdamW step of:
  fusedopt.torch   fusedopt.torch.AdamW(params).step()
  torch fused      torch.optim.AdamW(params, fused=True).step()
  functional       fusedopt.adamw_(params, grads, exp_avgs, exp_avg_sqs, step=...) on the tensors
  kernel           the same call on NumPy views made once (the kernel alone, no conversions)
at each thread count (fusedopt's and torch's), timed in interleaved rounds (best and median of
the rounds, ms). Then the fusedopt.torch and torch fused steps timed right after a real
backward pass (a small conv net's, which runs torch's OpenMP pool) against the same steps timed
back to back, and right after a single-threaded NumPy pass over 64 MB: that pass evicts the
step's data and code from the caches as backward does, but leaves no torch OpenMP worker
running, so (after backward) / (after the pass) is what torch's threads cost the step and
(after the pass) / (back to back) what cold caches cost it. The machine may be shared: compare
ratios from one run.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import fusedopt
from fusedopt.bench.cli import machine_info
from fusedopt.bench.optimizers import mlp_shapes, resnet50_shapes

from .optim import AdamW

MODELS: dict[str, Callable[[], list[tuple[int, ...]]]] = {"resnet50": resnet50_shapes, "mlp": mlp_shapes}


class Setup:
    """One model's params with grads, and an AdamW step of each implementation on them."""

    def __init__(self, shapes: list[tuple[int, ...]]) -> None:
        g = torch.Generator().manual_seed(0)
        self.params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in shapes]
        self.grads = [torch.randn(s, generator=g) * 1e-3 for s in shapes]
        for p, grad in zip(self.params, self.grads):
            p.grad = grad
        self.n = sum(p.numel() for p in self.params)
        self.opt = AdamW(self.params, lr=1e-4)
        self.torch_opt = torch.optim.AdamW(self.params, lr=1e-4, fused=True)
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params]
        self.views = [[t.detach().numpy() for t in ts] for ts in (self.params, self.grads, self.exp_avgs,
                                                                  self.exp_avg_sqs)]
        self.t = 0
        for step in self.steps().values():
            step()  # state allocated, pages touched

    def fusedopt_torch(self) -> None:
        self.opt.step()

    def torch_fused(self) -> None:
        self.torch_opt.step()

    def functional(self) -> None:
        self.t += 1
        fusedopt.adamw_(self.params, self.grads, self.exp_avgs, self.exp_avg_sqs, step=self.t, lr=1e-4)

    def kernel(self) -> None:
        self.t += 1
        fusedopt.adamw_(*self.views, step=self.t, lr=1e-4)

    def steps(self) -> dict[str, Callable[[], None]]:
        return {"fusedopt.torch": self.fusedopt_torch, "torch fused": self.torch_fused,
                "functional": self.functional, "kernel": self.kernel}


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


def cache_flush() -> Callable[[], None]:
    """A single-threaded pass over 64 MB (NumPy): evicts the caches without torch's threads."""
    buffer = np.zeros(16 << 20, np.float32)

    def flush() -> None:
        np.add(buffer, 1, out=buffer)
    return flush


def timed(fn: Callable[[], None], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def calls_for(fn: Callable[[], None], seconds: float) -> int:
    """How many calls make a batch of about `seconds`."""
    return max(1, int(seconds / max(timed(fn, 1), 1e-7)))


def summary(times: list[float]) -> dict[str, float]:
    return {"best_ms": min(times) * 1e3, "median_ms": statistics.median(times) * 1e3}


def rows(quick: bool, threads: list[int]) -> list[dict[str, Any]]:
    """One row per (model, thread count, measurement): "alone" rows time each implementation in
    interleaved rounds; "after backward" rows time the two optimizers' steps right after a conv
    net's backward, each against its back-to-back time measured in the same rounds."""
    rounds = 5 if quick else 15
    batch_seconds = 0.02 if quick else 0.05
    out: list[dict[str, Any]] = []
    before = fusedopt.get_num_threads(), torch.get_num_threads()
    backward, flush = conv_backward(), cache_flush()
    try:
        for model, shapes in MODELS.items():
            setup = Setup(shapes())
            for n in threads:
                fusedopt.set_num_threads(n)
                torch.set_num_threads(n)
                steps = setup.steps()
                calls = {name: calls_for(fn, batch_seconds) for name, fn in steps.items()}
                alone: dict[str, list[float]] = {name: [] for name in steps}
                for _ in range(rounds):
                    for name, fn in steps.items():
                        alone[name].append(timed(fn, calls[name]))
                out.append({"model": model, "params": len(setup.params), "elements": setup.n, "threads": n,
                            "measure": "alone", **{name: summary(t) for name, t in alone.items()}})

                after: dict[str, list[float]] = {"fusedopt.torch": [], "torch fused": []}
                after_flush: dict[str, list[float]] = {name: [] for name in after}
                back_to_back: dict[str, list[float]] = {name: [] for name in after}
                for _ in range(rounds):
                    for name, samples in after.items():
                        backward()
                        samples.append(timed(steps[name], 1))
                        flush()
                        after_flush[name].append(timed(steps[name], 1))
                        back_to_back[name].append(timed(steps[name], calls[name]))
                out.append({"model": model, "params": len(setup.params), "elements": setup.n, "threads": n,
                            "measure": "after backward",
                            **{name: summary(t) for name, t in after.items()},
                            **{f"{name} after flush": summary(t) for name, t in after_flush.items()},
                            **{f"{name} back to back": summary(t) for name, t in back_to_back.items()}})
    finally:
        fusedopt.set_num_threads(before[0])
        torch.set_num_threads(before[1])
    return out


def _ratio(row: dict[str, Any], a: str, b: str, key: str = "best_ms") -> str:
    return f"{row[a][key] / row[b][key]:.3g}x"


def table(result_rows: list[dict[str, Any]]) -> str:
    """Markdown tables: the steps alone (best ms, median in brackets, and ratios of the bests),
    then the steps right after a backward pass and after a cache flush against back to back
    (medians, ms)."""
    lines = [("| model | threads | fusedopt.torch | torch fused | functional (tensors) | kernel (views) | "
              "fusedopt.torch / functional | fusedopt.torch / kernel | torch fused / fusedopt.torch |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result_rows:
        if row["measure"] != "alone":
            continue
        cells = [f"{row[name]['best_ms']:.3g} [{row[name]['median_ms']:.3g}]"
                 for name in ("fusedopt.torch", "torch fused", "functional", "kernel")]
        lines.append(f"| {row['model']} ({row['params']} tensors) | {row['threads']} | " + " | ".join(cells) +
                     f" | {_ratio(row, 'fusedopt.torch', 'functional')} | {_ratio(row, 'fusedopt.torch', 'kernel')}"
                     f" | {_ratio(row, 'torch fused', 'fusedopt.torch')} |")
    lines += ["", ("| model | threads | fusedopt.torch after backward | after flush | back to back | "
                   "backward / flush | flush / back to back | torch fused after backward | after flush | "
                   "back to back | backward / flush | flush / back to back |"), "|---" * 12 + "|"]
    for row in result_rows:
        if row["measure"] != "after backward":
            continue
        cells = []
        for name in ("fusedopt.torch", "torch fused"):
            after, flushed = row[name]["median_ms"], row[f"{name} after flush"]["median_ms"]
            alone = row[f"{name} back to back"]["median_ms"]
            cells += [f"{after:.3g}", f"{flushed:.3g}", f"{alone:.3g}", f"{after / flushed:.3g}x",
                      f"{flushed / alone:.3g}x"]
        lines.append(f"| {row['model']} | {row['threads']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter batches")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    info = machine_info()
    print(f"# fusedopt.torch AdamW step: {info['cpu']}, {info['cpus']} CPUs, isa {info['isa']}, "
          f"torch {torch.__version__}")
    print(table(rows(args.quick, args.threads)))


if __name__ == "__main__":
    main()
