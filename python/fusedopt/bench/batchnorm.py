"""The batch-norm section: training forward (running stats updated) and backward of typical
shapes, against the NumPy reference, torch (F.batch_norm + autograd) and the bandwidth probe."""
from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

import fusedopt
from fusedopt import _core, reference

from . import deps
from .section import SPREAD_NOTE, Case, Keys, Measure, Row, Section, markdown, percent, ratio, spread
from .timing import Timer, Timing, put

# batch normalization, training: (shape, channel axis, layout)
CASES: list[tuple[tuple[int, ...], int, str]] = [
    ((256, 1024), 1, "NC"),
    ((32, 64, 56, 56), 1, "NCHW"),
    ((32, 56, 56, 64), -1, "NHWC"),
    ((32, 256, 14, 14), 1, "NCHW"),
    ((32, 14, 14, 256), -1, "NHWC"),
    ((8, 512, 7, 7), 1, "NCHW"),
    ((128, 64, 32, 32), 1, "NCHW"),
    ((32, 2048, 7, 7), 1, "NCHW"),  # ResNet-50's last stage at batch 32: short channel rows, 12.8 MB
]


class BatchNormProblem:
    """Training forward (running stats updated) and backward of one shape, for each implementation."""

    def __init__(self, shape: tuple[int, ...], axis: int) -> None:
        rng = np.random.default_rng(0)
        self.axis = axis
        self.x = rng.standard_normal(shape, dtype=np.float32)
        self.dy = rng.standard_normal(shape, dtype=np.float32)
        self.n = self.x.size
        C = shape[axis]
        self.weight, self.bias = np.ones(C, np.float32), np.zeros(C, np.float32)
        self.running_mean, self.running_var = np.zeros(C, np.float32), np.ones(C, np.float32)
        # out= arrays placed as fusedopt places the outputs it allocates (at x's offset within a
        # page, see fusedopt.batchnorm): np.empty_like's landed wherever the allocator put them,
        # and the kernels' time moved with that (channels-last (32, 56, 56, 64) forward 1.64 ms
        # with the output at x's page offset, 1.82 ms 1728 bytes ahead, 1 thread, same process)
        self.y, self.save_mean, self.save_invstd = fusedopt.batchnorm_forward(
            self.x, self.weight, self.bias, self.running_mean, self.running_var, axis=self.axis)
        self.dx = fusedopt.batchnorm_backward(self.dy, self.x, self.weight, self.save_mean, self.save_invstd,
                                              axis=self.axis)[0]
        _, self.ref_mean, self.ref_invstd = self.numpy_forward()
        self.torch_state = self._torch_setup() if deps.torch is not None else None

    def fused_forward(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return fusedopt.batchnorm_forward(self.x, self.weight, self.bias, self.running_mean, self.running_var,
                                          axis=self.axis, out=self.y)

    def fused_backward(self) -> None:
        fusedopt.batchnorm_backward(self.dy, self.x, self.weight, self.save_mean, self.save_invstd,
                                    axis=self.axis, out=self.dx)

    # The memory floor of each pass, moved by the bandwidth probe through the same arrays: the
    # forward reads x and writes y, the backward reads dy and x and writes dx, each once.
    def probe_forward(self) -> None:
        _core.stream_probe([], [self.x], [self.y])

    def probe_backward(self) -> None:
        _core.stream_probe([], [self.x, self.dy], [self.dx])

    # A two-pass algorithm's floor: a pass that only reads the inputs (the statistics), then the
    # probe above. A channel's statistics come before any of its outputs, so a channel whose
    # inputs do not fit in cache is read from memory twice (channels-last: every channel spans
    # the whole tensor); where they fit, the kernels' second read comes from cache (over 100%).
    def probe_forward_two_pass(self) -> None:
        _core.stream_probe([], [self.x], [])
        self.probe_forward()

    def probe_backward_two_pass(self) -> None:
        _core.stream_probe([], [self.x, self.dy], [])
        self.probe_backward()

    def numpy_forward(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return reference.batchnorm_forward(self.x, self.weight, self.bias, self.running_mean.copy(),
                                           self.running_var.copy(), axis=self.axis)

    def numpy_backward(self) -> None:
        reference.batchnorm_backward(self.dy, self.x, self.weight, self.ref_mean, self.ref_invstd, axis=self.axis)

    def _torch_setup(self) -> dict[str, Any]:
        torch = deps.torch
        x, dy = torch.from_numpy(self.x), torch.from_numpy(self.dy)
        if self.axis == -1:  # channels-last data: torch's (N, C, ...) view in channels_last memory format
            perm = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
            x, dy = x.permute(*perm), dy.permute(*perm)
        x = x.detach().requires_grad_(True)
        C = self.weight.size
        return dict(x=x, dy=dy, weight=torch.ones(C, requires_grad=True), bias=torch.zeros(C, requires_grad=True),
                    running_mean=torch.zeros(C), running_var=torch.ones(C))

    def torch_forward_backward(self) -> tuple[float, float]:
        """(forward seconds, backward seconds) of one torch training step."""
        t = self.torch_state
        assert t is not None
        t0 = time.perf_counter()
        y = deps.torch.nn.functional.batch_norm(t["x"], t["running_mean"], t["running_var"], t["weight"], t["bias"],
                                                training=True)
        t1 = time.perf_counter()
        y.backward(t["dy"])
        t2 = time.perf_counter()
        t["x"].grad = t["weight"].grad = t["bias"].grad = None
        return t1 - t0, t2 - t1


def _setup(shape: tuple[int, ...], axis: int, layout: str) -> Measure:
    problem = BatchNormProblem(shape, axis)
    numpy: tuple[Timing, Timing] | None = None

    def measure(timer: Timer, threads: int) -> Row:
        nonlocal numpy
        if numpy is None:  # NumPy runs on one thread: timed once, at the run's first thread count
            numpy = timer.time(problem.numpy_forward), timer.time(problem.numpy_backward)
        row: Row = {"shape": list(shape), "layout": layout, "elements": problem.n}
        put(row, "fusedopt_fwd", timer.time(problem.fused_forward))
        put(row, "fusedopt_bwd", timer.time(problem.fused_backward))
        put(row, "probe_fwd", timer.time(problem.probe_forward))
        put(row, "probe_bwd", timer.time(problem.probe_backward))
        put(row, "probe2_fwd", timer.time(problem.probe_forward_two_pass))
        put(row, "probe2_bwd", timer.time(problem.probe_backward_two_pass))
        put(row, "numpy_fwd", numpy[0])
        put(row, "numpy_bwd", numpy[1])
        # torch's calls are timed one at a time (forward and backward of the same step), so
        # three times as many repeats
        torch_fwd, torch_bwd = (timer.time_pair(problem.torch_forward_backward, 3 * timer.repeats)
                                if problem.torch_state is not None else (None, None))
        put(row, "torch_fwd", torch_fwd)
        put(row, "torch_bwd", torch_bwd)
        return row

    return measure


def cases(quick: bool) -> list[Case]:
    return [Case(f"batchnorm {'x'.join(map(str, shape))} {layout}", partial(_setup, shape, axis, layout))
            for shape, axis, layout in (CASES[:2] if quick else CASES)]


def table(rows: Sequence[Row]) -> str:
    def ms(r: Row, keys: Keys) -> str:
        times = [r[f"{k}_s"] for k in keys]
        return "-" if None in times else " + ".join(f"{t * 1e3:.3f}" for t in times)

    fo, to, npy, pr, pr2 = ("fusedopt_fwd", "fusedopt_bwd"), ("torch_fwd", "torch_bwd"), ("numpy_fwd", "numpy_bwd"), \
        ("probe_fwd", "probe_bwd"), ("probe2_fwd", "probe2_bwd")
    head = ["case", "threads", "fusedopt fwd + bwd ms", "torch fwd + bwd ms", "NumPy ref fwd + bwd ms",
            "fusedopt vs torch", "fusedopt vs NumPy", "probe fwd + bwd ms", "fwd % of probe speed",
            "bwd % of probe speed", "two-pass probe fwd + bwd ms", "fwd % of two-pass", "bwd % of two-pass", "spread"]
    return markdown(head, [[r["case"], str(r["threads"]), ms(r, fo), ms(r, to), ms(r, npy), ratio(r, to, fo),
                            ratio(r, npy, fo), ms(r, pr), percent(r, "probe_fwd", "fusedopt_fwd"),
                            percent(r, "probe_bwd", "fusedopt_bwd"), ms(r, pr2),
                            percent(r, "probe2_fwd", "fusedopt_fwd"), percent(r, "probe2_bwd", "fusedopt_bwd"),
                            spread(r)] for r in rows])


SECTION = Section(
    key="batchnorm",
    title="Batch normalization, fp32, training forward + backward, best of the repeats; x and dy from NumPy, "
          "fusedopt's out= arrays where it places the outputs it allocates (at x's page offset). torch: "
          "F.batch_norm + autograd (channels-last layouts on a channels_last tensor); NumPy ref on 1 thread "
          "(timed once per case); probe: the forward reads x and writes y, the backward reads x and dy and "
          "writes dx, once each (outputs of 8 MB or more streamed, as the kernels do); two-pass probe: a pass "
          "reading the inputs, then the probe (a channel's inputs larger than the cache are read twice: "
          "channels-last, every channel spans the tensor). " + SPREAD_NOTE,
    cases=cases,
    table=table,
)
