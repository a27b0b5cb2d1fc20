"""The optimizer section: one step of each optimizer on one fp32 tensor of several sizes and on
whole models' parameter lists, through fusedopt's functional call and fusedopt.optim's class,
against the NumPy reference, torch.optim and the bandwidth probe."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

import fusedopt
from fusedopt import _core, optim, reference

from . import deps
from .section import (
    SPREAD_NOTE,
    Case,
    Measure,
    Row,
    Section,
    duration,
    markdown,
    ns_per_element,
    percent,
    ratio,
    spread,
)
from .timing import Timer, Timing, put

Shape = tuple[int, ...]

SIZES = {"4K": 4096, "64K": 65536, "1M": 1 << 20, "16M": 1 << 24}

# name -> (fusedopt function, state arrays, hyperparameters, class (fusedopt.optim's and torch.optim's),
#          torch kwargs, arrays read-write / read-only by one step, for the bandwidth probe)
OPTIMIZERS: dict[str, tuple[str, list[str], dict[str, float], str, dict[str, bool], int, int]] = {
    "adam": ("adam_", ["exp_avgs", "exp_avg_sqs"], dict(lr=1e-3), "Adam", dict(fused=True), 3, 1),
    "adamw": ("adamw_", ["exp_avgs", "exp_avg_sqs"], dict(lr=1e-3), "AdamW", dict(fused=True), 3, 1),
    "sgd_momentum": ("sgd_", ["momentum_buffers"], dict(lr=1e-3, momentum=0.9), "SGD", dict(fused=True), 2, 1),
    "rmsprop": ("rmsprop_", ["square_avgs"], dict(lr=1e-3), "RMSprop", dict(foreach=True), 2, 1),
    "adagrad": ("adagrad_", ["state_sums"], dict(lr=1e-3), "Adagrad", dict(fused=True), 2, 1),
}
TAKES_STEP = {"adam_", "adamw_", "adagrad_", "sgd_"}


def resnet50_shapes() -> list[Shape]:
    """Parameter shapes of torchvision's ResNet-50, in model order (161 tensors, 25,557,032)."""
    shapes: list[Shape] = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for b in range(blocks):
            out_ch = 4 * width
            shapes += [(width, in_ch, 1, 1), (width,), (width,), (width, width, 3, 3), (width,), (width,),
                       (out_ch, width, 1, 1), (out_ch,), (out_ch,)]
            if b == 0:
                shapes += [(out_ch, in_ch, 1, 1), (out_ch,), (out_ch,)]
            in_ch = out_ch
    shapes += [(1000, 2048), (1000,)]
    return shapes


def mlp_shapes() -> list[Shape]:
    """An MLP 784-256-256-10: weights (out, in) and biases."""
    return [(256, 784), (256,), (256, 256), (256,), (10, 256), (10,)]


MODELS: dict[str, Callable[[], list[Shape]]] = {"resnet50": resnet50_shapes, "mlp": mlp_shapes}


class Problem:
    """One optimizer over a list of fp32 tensors, set up for every implementation."""

    def __init__(self, optimizer: str, shapes: Sequence[Shape]) -> None:
        self.fn_name, self.state_names, self.hyper, self.class_name, self.torch_kwargs, rw, ro = OPTIMIZERS[optimizer]
        rng = np.random.default_rng(0)
        self.shapes = list(shapes)
        self.n = sum(int(np.prod(s)) for s in shapes)

        def tensors(scale: float = 1.0) -> list[np.ndarray]:  # as a user's params and grads: plain NumPy arrays
            return [(rng.standard_normal(s) * scale).astype(np.float32) for s in shapes]

        def state(fill: float, allocate: Callable[[np.ndarray, float], np.ndarray]) -> list[np.ndarray]:
            return [allocate(p, fill) for p in self.params]  # as each implementation allocates its state

        self.params, self.grads = tensors(), tensors(1e-2)
        fills = {k: 1e-6 if k in ("exp_avg_sqs", "square_avgs", "state_sums") else 0.0 for k in self.state_names}
        self.state = {k: state(fill, fusedopt.zeros_like) for k, fill in fills.items()}
        self.ref_params = [p.copy() for p in self.params]
        self.ref_state = {k: state(fill, np.full_like) for k, fill in fills.items()}
        # the probe moves the same bytes through arrays allocated the same way
        probe_params = tensors()
        self.probe_rw = [probe_params] + [[fusedopt.zeros_like(p, 1.0) for p in probe_params] for _ in range(rw - 1)]
        self.probe_ro = [tensors() for _ in range(ro)]
        self.bytes_per_element = 4 * (2 * rw + ro)
        self.step = 10  # any step > 1: bias corrections are per-call scalars
        self.extra = {"step": self.step} if self.fn_name in TAKES_STEP else {}
        self.optim = getattr(optim, self.class_name)([p.copy() for p in self.params], **self.hyper)
        self.optim.step(self.grads)  # allocate state
        self.torch_opt: Any = None
        torch = deps.torch
        if torch is not None:
            tparams = [torch.from_numpy(p.copy()) for p in self.params]
            for tp, g in zip(tparams, self.grads):
                tp.grad = torch.from_numpy(g.copy())
            self.torch_opt = getattr(torch.optim, self.class_name)(tparams, **self.hyper, **self.torch_kwargs)
            self.torch_opt.step()  # allocate state

    def fused(self) -> None:
        getattr(fusedopt, self.fn_name)(self.params, self.grads, **self.state, **self.hyper, **self.extra)

    def optim_step(self) -> None:
        self.optim.step(self.grads)

    def numpy(self) -> None:
        getattr(reference, self.fn_name)(self.ref_params, self.grads, **self.ref_state, **self.hyper, **self.extra)

    def torch_step(self) -> None:
        self.torch_opt.step()

    def probe(self) -> None:
        _core.stream_probe(self.probe_rw, self.probe_ro)


def _setup(optimizer: str, shapes: Sequence[Shape]) -> Measure:
    problem = Problem(optimizer, shapes)
    numpy: Timing | None = None

    def measure(timer: Timer, threads: int) -> Row:
        nonlocal numpy
        if numpy is None:  # NumPy runs on one thread: timed once, at the run's first thread count
            numpy = timer.time(problem.numpy)
        row: Row = {"optimizer": optimizer, "tensors": len(problem.shapes), "elements": problem.n,
                    "bytes_per_element": problem.bytes_per_element}
        put(row, "fusedopt", timer.time(problem.fused))
        put(row, "optim", timer.time(problem.optim_step))
        put(row, "numpy", numpy)
        put(row, "torch", timer.time(problem.torch_step) if problem.torch_opt is not None else None)
        put(row, "probe", timer.time(problem.probe))
        return row

    return measure


def cases(quick: bool) -> list[Case]:
    sizes = ["4K", "1M"] if quick else list(SIZES)
    optimizers = ["adam", "sgd_momentum"] if quick else list(OPTIMIZERS)
    out = [Case(f"{opt} {size}", partial(_setup, opt, [(SIZES[size],)])) for opt in optimizers for size in sizes]
    for model in ["mlp"] if quick else list(MODELS):
        out += [Case(f"{opt} {model}", partial(_setup, opt, MODELS[model]()))
                for opt in (["adam"] if quick else optimizers)]
    return out


def table(rows: Sequence[Row]) -> str:
    head = ["case", "threads", "fusedopt ns/el", "fusedopt per call", "optim.step ns/el", "NumPy ref ns/el",
            "torch ns/el", "fusedopt vs NumPy", "fusedopt vs torch", "optim.step vs torch", "probe ns/el",
            "% of probe speed", "spread"]
    return markdown(head, [[r["case"], str(r["threads"]), ns_per_element(r, "fusedopt"), duration(r["fusedopt_s"]),
                            ns_per_element(r, "optim"), ns_per_element(r, "numpy"), ns_per_element(r, "torch"),
                            ratio(r, "numpy", "fusedopt"), ratio(r, "torch", "fusedopt"), ratio(r, "torch", "optim"),
                            ns_per_element(r, "probe"), percent(r, "probe", "fusedopt"), spread(r)] for r in rows])


SECTION = Section(
    key="optimizer",
    title="Optimizer steps, fp32: ns per element, best of the repeats. optim.step: fusedopt.optim's class; "
          "NumPy ref: fusedopt.reference, on 1 thread (timed once per case); torch: torch.optim, fused=True "
          "(RMSprop: foreach=True); probe: the simplest loop moving the same bytes. "
          + SPREAD_NOTE,
    cases=cases,
    table=table,
)
