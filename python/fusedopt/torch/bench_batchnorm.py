"""Batch-norm modules, forward + backward: python -m fusedopt.torch.bench_batchnorm [--quick]

One training step of a module, y = module(x); y.backward(dy) (the autograd round trip of
loss.backward() with dL/dy = dy, without timing the loss's own ops), on the BN shapes of
fusedopt.bench.batchnorm (CASES), x requiring grad, weight and bias trained, running statistics
updated:
  torch    torch.nn.BatchNorm2d (BatchNorm1d for (N, C) shapes)
  module   fusedopt.torch.batchnorm.BatchNorm2d / BatchNorm1d on the same data
  bare     fusedopt.batchnorm_forward + batchnorm_backward on the module's own tensors, writing
           into outputs allocated once: the kernels' time through the tensor API
  pooled   bare without out=: y and dx are the kernels' own outputs (fusedopt's output pool, as
           the module's are), y alive until the backward, dx kept until the next call (x.grad)
module / bare is the module's whole overhead (outputs, autograd, Python); module / pooled the
part that is not the outputs' memory. channels-last cases (NHWC) run on torch.channels_last
tensors.

A last row per thread count times a small network instead of one layer: three 1x1 conv +
batch norm + ReLU layers (NETWORK, channels_last), forward + backward of a loss, torch.nn.BatchNorm2d against
fusedopt's BatchNorm2d (torch and module columns only): every layer's activations are alive at
once between the forward and the backward, as in training.

Each implementation is timed in batches of calls long enough to time (min_batch seconds), the
implementations interleaved in each repeat (in a rotating order), and each one's best and median
per-call time over the repeats reported: the machine may be shared, so compare ratios in a run.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import fusedopt

from ..bench.batchnorm import CASES as _BATCHNORM_CASES
from ..bench.cli import machine_info, set_threads, thread_counts, writable
from ..bench.timing import time_interleaved
from .batchnorm import BatchNorm1d, BatchNorm2d

IMPLEMENTATIONS = ("torch", "module", "bare", "pooled")
# the network row: (N, C, H, W) of its input and of each layer, layers
NETWORK = ((8, 64, 56, 56), 3)


class Case:
    """One BN shape set up for every implementation, all on the same data."""

    def __init__(self, shape: tuple[int, ...], axis: int) -> None:
        rng = np.random.default_rng(0)
        x, dy = (torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)) for _ in range(2))
        self.perm: tuple[int, ...] | None = None
        if axis == -1:  # channels-last data: torch's (N, C, ...) view of it, in channels_last memory format
            inverse = (0, x.dim() - 1, *range(1, x.dim() - 1))
            x, dy = x.permute(inverse), dy.permute(inverse)
            self.perm = (0, *range(2, x.dim()), 1)
        self.axis, self.n = axis, x.numel()
        C = x.shape[1]
        self.modules = {"torch": (torch.nn.BatchNorm1d if x.dim() == 2 else torch.nn.BatchNorm2d)(C),
                        "module": (BatchNorm1d if x.dim() == 2 else BatchNorm2d)(C)}
        self.x = {name: x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
                  for name in self.modules}
        self.dy = dy
        self.y, self.dx = torch.empty_like(x), torch.empty_like(x)
        self.held_dx: Any = None
        self.kernel_x = self._view(self.x["module"])
        self.kernel_dy = self._view(dy)
        _, self.save_mean, self.save_invstd = self._forward(self.y)

    def _view(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.perm is None else t.permute(self.perm)

    def _forward(self, y: torch.Tensor | None) -> Any:
        m = self.modules["module"]
        return fusedopt.batchnorm_forward(self.kernel_x, m.weight, m.bias, m.running_mean, m.running_var,
                                          momentum=0.1, eps=m.eps, axis=self.axis,
                                          out=None if y is None else self._view(y))

    def _backward(self, dx: torch.Tensor | None, save_mean: Any = None, save_invstd: Any = None) -> Any:
        return fusedopt.batchnorm_backward(self.kernel_dy, self.kernel_x, self.modules["module"].weight,
                                           self.save_mean if save_mean is None else save_mean,
                                           self.save_invstd if save_invstd is None else save_invstd,
                                           axis=self.axis, out=None if dx is None else self._view(dx))

    def step(self, name: str) -> Callable[[], None]:
        """One training step of implementation `name`."""
        if name in self.modules:
            module, x, dy = self.modules[name], self.x[name], self.dy

            def module_step() -> None:
                x.grad = None
                module.zero_grad(set_to_none=True)
                module(x).backward(dy)
            return module_step
        if name == "bare":
            def bare() -> None:
                self._forward(self.y)
                self._backward(self.dx)
            return bare

        def pooled() -> None:  # the module's outputs and their lifetimes
            self.held_dx = None  # the previous step's dx, freed as the module step's x.grad = None
            y, save_mean, save_invstd = self._forward(None)
            self.held_dx = self._backward(None, save_mean, save_invstd)[0]  # kept as x.grad is
            del y  # alive until here, as the module's output is through its backward
        return pooled


class Network:
    """NETWORK's layers, with torch's BatchNorm2d ("torch") or fusedopt's ("module")."""

    def __init__(self, quick: bool) -> None:
        shape, layers = NETWORK
        if quick:
            shape = (2, 8, 8, 8)
        torch.manual_seed(0)
        C = shape[1]
        self.x = torch.randn(shape).to(memory_format=torch.channels_last)  # oneDNN's convolutions' layout
        self.models = {}
        for name, bn in (("torch", torch.nn.BatchNorm2d), ("module", BatchNorm2d)):
            torch.manual_seed(1)  # the same convolutions in both
            self.models[name] = torch.nn.Sequential(*(m for _ in range(layers) for m in (
                torch.nn.Conv2d(C, C, 1, bias=False), bn(C), torch.nn.ReLU(inplace=True)))).to(
                memory_format=torch.channels_last)

    def step(self, name: str) -> Callable[[], None]:
        model, x = self.models[name], self.x

        def network_step() -> None:
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
        return network_step


def _row(label: str, elements: int, threads: int, steps: dict[str, Callable[[], object]], min_batch: float,
         repeats: int) -> dict[str, Any]:
    """One row: `steps` timed interleaved on `threads` threads, each one's best and median."""
    set_threads(threads)
    times = time_interleaved(steps, min_batch, repeats)
    row: dict[str, Any] = {"case": label, "elements": elements, "threads": threads, "repeats": repeats}
    for name, t in times.items():
        row[f"{name}_best_s"], row[f"{name}_median_s"] = min(t), statistics.median(t)
    return row


def rows(quick: bool, threads: list[int]) -> list[dict[str, Any]]:
    """One row per BN shape and thread count: best and median seconds per step of each
    implementation (keys f"{name}_best_s", f"{name}_median_s"); then the network's rows (torch
    and module only; --quick: a tiny input)."""
    # short batches, many repeats: on a shared machine the best of many short batches is the
    # likeliest to have run without being preempted
    min_batch, repeats = (0.01, 5) if quick else (0.02, 21)
    before = (fusedopt.get_num_threads(), torch.get_num_threads())
    out = []
    try:
        for shape, axis, layout in _BATCHNORM_CASES[:2] if quick else _BATCHNORM_CASES:
            label = f"batchnorm {'x'.join(map(str, shape))} {layout}"
            case = Case(shape, axis)
            for n in threads:
                out.append(_row(label, case.n, n, {name: case.step(name) for name in IMPLEMENTATIONS}, min_batch,
                                repeats))
        network = Network(quick)
        label = f"network {NETWORK[1]}x (1x1 conv + BN + ReLU) {'x'.join(map(str, network.x.shape))} NHWC"
        for n in threads:
            out.append(_row(label, network.x.numel(), n, {name: network.step(name) for name in network.models},
                            min_batch, repeats))
    finally:
        fusedopt.set_num_threads(before[0])
        torch.set_num_threads(before[1])
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: ms per step (best / median); torch / module as the ratio of the best
    times and of the medians (> 1: the module is faster); the overheads from the best times."""
    head = ["case", "thr", "torch.nn", "fusedopt module", "torch / module", "bare kernels", "bare, pooled outputs",
            "module / bare", "module / pooled"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ms(r: dict[str, Any], name: str) -> str:
        if name + "_best_s" not in r:  # the network row
            return "-"
        return f"{r[name + '_best_s'] * 1e3:.3f} / {r[name + '_median_s'] * 1e3:.3f}"

    def ratio(r: dict[str, Any], a: str, b: str) -> str:
        return "-" if b + "_best_s" not in r else f"{r[a + '_best_s'] / r[b + '_best_s']:.3f}"

    for r in rows:
        cells = [r["case"], str(r["threads"]), ms(r, "torch"), ms(r, "module"),
                 f"{r['torch_best_s'] / r['module_best_s']:.2f} / {r['torch_median_s'] / r['module_median_s']:.2f}",
                 ms(r, "bare"), ms(r, "pooled"), ratio(r, "module", "bare"), ratio(r, "module", "pooled")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fusedopt.torch.bench_batchnorm",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two shapes, short timings")
    parser.add_argument("--threads", type=thread_counts, default=[1, 2], metavar="N[,M...]",
                        help="comma-separated thread counts (default: 1,2)")
    parser.add_argument("--json", type=writable, help="also write the rows and the machine description to this file")
    args = parser.parse_args(argv)
    info = machine_info()
    print(f"# fusedopt.torch batch norm, forward + backward (ms per step, best / median): {info['cpu']} "
          f"({info['cpus']} CPUs), ISA {info['isa']}, torch {info['torch']}")
    result = rows(args.quick, args.threads)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": result}, f, indent=1)


if __name__ == "__main__":
    main()
