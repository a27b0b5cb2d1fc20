"""The low-precision benchmark (issue 15): python -m fusedopt.bench_lowbit [--quick] [--threads 1,2]

One optimizer step (AdamW; SGD with momentum 0.9) in each storage mode:
    fp32             fp32 params, grads and state (today's kernels)
    bf16             bf16 params and grads, bf16 state, stochastic rounding
    fp32 master+copy fp32 params and state, bf16 grads, a bf16 copy of the params written in the same pass
    fp32 + 8-bit     fp32 params and grads, 8-bit blockwise state (fusedopt.QuantizedState)
    bf16 + 8-bit     bf16 params and grads, 8-bit state, stochastic rounding
    bf16 + 8-bit, nearest   the same, rounded to nearest (the classes' default)
    fp32 master+copy + 8-bit   fp32 master params, bf16 grads and copy, 8-bit state
at 64K, 1M and 16M params and over ResNet-50's 161 tensors, each beside
    - its own roofline probe: fusedopt._core.stream_probe moving the bytes that mode cannot avoid
      (params and state read and written, grads read, the copy written) through float32 arrays
      of matching byte counts, in passes of up to 4 read-write + 2 read-only + 1 write-only
      arrays (the probe cannot mix dtypes; the 8-bit scales' 4 bytes per 256 params are left out);
    - its arithmetic floor: the optimizer's float32 update with every array in cache (fusedopt's
      fp32 step, per element: the time of a call whose arrays fill half the L2 less that of a
      call a quarter its size, over the params between, at 1 thread), times the params, over the
      threads (each core has its own divider).
      No mode's step can beat it: every mode runs that update, conversions aside. For Adam it is
      the divider (a square root and a division per param), and it is above the memory probe of
      the modes that move few bytes: "% of bound" is max(probe, floor) / the step's time;
    - torch's fused fp32 step and torch's fused step on bf16 params (bf16 state, as torch keeps it),
    - for AdamW, when installed (optional; never a dependency): bitsandbytes' AdamW8bit and
      torchao's AdamW8bit on the same fp32 tensors, each timed in a child process of its own
      (python -m fusedopt.bench_lowbit --foreign LIBRARY:OPTIMIZER:SIZE), so that neither shares
      a process with the torch and fusedopt steps it is compared with: bitsandbytes' CPU library
      brings a second OpenMP runtime (the system libgomp, beside torch's own, and not bound by
      torch.set_num_threads) and torchao its torch.compile'd kernels. With both in the process, an
      idle full run's torch fused fp32 AdamW column came out ~3x a standalone timing (85 vs 28-30
      ms at 16M, 0.38 vs 0.16 ms at 64K, 1 thread) while fusedopt's columns matched the main bench.
Every implementation of a case is timed in interleaved batches (one batch of each in turn, then
again), best and median of the repeats; the table shows ratios of best times from one run.
A mode whose call raises TypeError (a keyword or dtype this build does not take yet) is listed
as "not available" with the message.

Also the codec alone (fusedopt.quantize / QuantizedState.dequantize over 16M floats) against the
probe of its bytes (quantize reads 4 and writes ~1.016 bytes per element).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import numpy as np

import fusedopt

from . import _core
from .bench.cli import thread_counts, writable
from .bench.timing import time_interleaved
from .functional import _placed_empty
from .lowbit import QUANT_BLOCK, quantized_zeros_like

try:  # the bench package (python/fusedopt/bench/) or the older single module
    from .bench.optimizers import resnet50_shapes  # type: ignore[import-not-found, unused-ignore]
except ImportError:
    from .bench import resnet50_shapes  # type: ignore[attr-defined, no-redef, unused-ignore]

Row = dict[str, Any]
Fn = Callable[[], object]

SIZES = {"64K": 1 << 16, "1M": 1 << 20, "16M": 1 << 24}
LR, WEIGHT_DECAY, MOMENTUM, STEP, SEED = 1e-3, 1e-2, 0.9, 10, 0


def _bfloat16() -> np.dtype[Any]:
    ml_dtypes: Any = importlib.import_module("ml_dtypes")
    bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return bfloat16


@dataclass(frozen=True)
class Mode:
    name: str
    param: str  # "float32" | "bfloat16"
    grad: str
    state: str  # "float32" | "bfloat16" | "int8"
    copy: bool = False  # fp32 master params + a bf16 copy written in the same pass
    stochastic: bool = False  # bf16 params rounded stochastically

    def dtype(self, name: str) -> np.dtype[Any]:
        return _bfloat16() if name == "bfloat16" else np.dtype(name)

    def state_bytes(self) -> float:
        """Bytes per param of one state tensor (8-bit: one code + a float32 scale per block)."""
        return {"float32": 4.0, "bfloat16": 2.0, "int8": 1.0 + 4.0 / QUANT_BLOCK}[self.state]

    def traffic(self, nstate: int) -> tuple[int, int, int]:
        """Whole bytes per param (read-write, read-only, write-only) one step cannot avoid."""
        p, g = self.dtype(self.param).itemsize, self.dtype(self.grad).itemsize
        s = int(self.state_bytes())
        return p + nstate * s, g, 2 if self.copy else 0


MODES = [
    Mode("fp32", "float32", "float32", "float32"),
    Mode("bf16", "bfloat16", "bfloat16", "bfloat16", stochastic=True),
    Mode("fp32 master+bf16 copy", "float32", "bfloat16", "float32", copy=True),
    Mode("fp32 + 8-bit state", "float32", "float32", "int8"),
    Mode("bf16 + 8-bit state", "bfloat16", "bfloat16", "int8", stochastic=True),
    Mode("bf16 + 8-bit state, nearest", "bfloat16", "bfloat16", "int8"),
    Mode("fp32 master+bf16 copy + 8-bit state", "float32", "bfloat16", "int8", copy=True),
]

# name -> (fusedopt function, state arguments (signed?), hyperparameters)
OPTIMIZERS: dict[str, tuple[str, dict[str, bool], dict[str, Any]]] = {
    "adamw": ("adamw_", {"exp_avgs": True, "exp_avg_sqs": False},
              {"lr": LR, "weight_decay": WEIGHT_DECAY, "step": STEP}),
    "sgd_momentum": ("sgd_", {"momentum_buffers": True}, {"lr": LR, "momentum": MOMENTUM, "step": STEP}),
}


def _shapes(size: str) -> list[tuple[int, ...]]:
    return resnet50_shapes() if size == "resnet50" else [(SIZES[size],)]


class ModeProblem:
    """One optimizer step over `shapes` in one mode, and the probe of its bytes."""

    def __init__(self, optimizer: str, mode: Mode, shapes: Sequence[tuple[int, ...]]) -> None:
        fn_name, states, self.hyper = OPTIMIZERS[optimizer]
        rng = np.random.default_rng(0)
        self.n = sum(math.prod(s) for s in shapes)
        self.fn = getattr(fusedopt, fn_name)
        self.params = [rng.standard_normal(s, np.float32).astype(mode.dtype(mode.param)) for s in shapes]
        self.grads = [(rng.standard_normal(s, np.float32) * 1e-2).astype(mode.dtype(mode.grad)) for s in shapes]
        self.state: dict[str, list[Any]] = {}
        for name, signed in states.items():
            if mode.state == "int8":
                self.state[name] = [quantized_zeros_like(p, signed=signed) for p in self.params]
            else:
                self.state[name] = [fusedopt.zeros_like(p, dtype=mode.dtype(mode.state)) for p in self.params]
        self.extra: dict[str, Any] = {}
        if mode.copy:
            self.extra["param_copies"] = [np.zeros(s, _bfloat16()) for s in shapes]
        if mode.stochastic:
            self.extra.update(stochastic_rounding=True, seed=SEED)
        self.state_bytes = len(states) * mode.state_bytes()
        rw, ro, wo = mode.traffic(len(states))
        self.bytes_per_param = 2 * rw + ro + wo  # read-write bytes move twice
        self.probe_passes = _probe_passes(self.n, rw, ro, wo)

    def step(self) -> None:
        self.fn(self.params, self.grads, **self.state, **self.hyper, **self.extra)

    def probe(self) -> None:
        _run_probe(self.probe_passes)


@cache
def _arithmetic_floor(optimizer: str, quick: bool) -> float:
    """Seconds per param of `optimizer`'s fp32 step with its arrays in cache, 1 thread (see the
    module's docstring); the difference of two sizes leaves the per-call overhead out. The
    larger call's arrays (4 float32 per param at most) fill half of this machine's L2."""
    n = max(1 << 12, _core.l2_cache_bytes() // 32)
    big, small = (ModeProblem(optimizer, MODES[0], [(size,)]) for size in (n, n // 4))
    _set_threads(1)
    timed = _interleaved({"big": big.step, "small": small.step}, 0.02 if quick else 0.1, 3 if quick else 7)
    return max(0.0, timed["big"][0] - timed["small"][0]) / (big.n - small.n)


def _on_cache_lines(m: int, fill: float) -> np.ndarray:
    """m float32 values equal to fill, starting on a 64-byte cache line: the probe is the floor,
    and NumPy's 16-byte alignment would have its vectors straddle lines."""
    out = _placed_empty((m,), np.dtype(np.float32))
    out.fill(fill)
    return out


def _probe_passes(n: int, rw: int, ro: int, wo: int) -> list[tuple[list[Any], list[Any], list[Any]]]:
    """float32 arrays of n / 4 elements (one byte per param each): rw + ro + wo of them, in
    passes of at most 4 read-write, 2 read-only and 1 write-only (every pass writes something,
    so no pass is a loop whose loads the compiler may drop)."""
    m = max(1, n // 4)
    passes = []
    while rw or ro or wo:
        take_rw, take_ro, take_wo = min(4, rw), min(2, ro), min(1, wo)
        if take_rw == 0 and take_wo == 0:  # read-only bytes left: pair them with a write-only array
            take_wo = 1
        passes.append(([_on_cache_lines(m, 0.0) for _ in range(take_rw)],
                       [_on_cache_lines(m, 1.0) for _ in range(take_ro)],
                       [_on_cache_lines(m, 0.0) for _ in range(take_wo)]))
        rw, ro, wo = rw - take_rw, ro - take_ro, max(0, wo - take_wo)
    return passes


def _run_probe(passes: Sequence[tuple[list[Any], list[Any], list[Any]]]) -> None:
    for rw, ro, wo in passes:
        _core.stream_probe(rw, ro, wo)


# ---- the others: torch, bitsandbytes, torchao (all optional) ------------------------------------

def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_step(optimizer: str, shapes: Sequence[tuple[int, ...]], dtype: str, library: str = "torch") -> Fn | None:
    """A step of torch's fused optimizer (or bitsandbytes' / torchao's 8-bit AdamW) on tensors of
    `shapes`, or None when the library is absent or refuses."""
    torch = _torch()
    if torch is None:
        return None
    rng = np.random.default_rng(0)
    tdtype = getattr(torch, dtype)
    params = [torch.nn.Parameter(torch.from_numpy(rng.standard_normal(s, np.float32)).to(tdtype)) for s in shapes]
    for p in params:
        p.grad = (torch.from_numpy(rng.standard_normal(p.shape, np.float32)) * 1e-2).to(tdtype)
    try:
        opt: Any
        if library == "bitsandbytes":
            opt = importlib.import_module("bitsandbytes.optim").AdamW8bit(params, lr=LR, weight_decay=WEIGHT_DECAY)
        elif library == "torchao":
            opt = importlib.import_module("torchao.optim").AdamW8bit(params, lr=LR, weight_decay=WEIGHT_DECAY)
        elif optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
        else:
            opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, fused=True)
        opt.step()  # allocate the state
    except Exception as e:  # noqa: BLE001  (an optional library's own failure: leave its column empty)
        print(f"  {library} {optimizer} {dtype}: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    return opt.step  # type: ignore[no-any-return]


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ---- timing -------------------------------------------------------------------------------------

def _interleaved(fns: dict[str, Fn], min_batch_seconds: float, repeats: int) -> dict[str, tuple[float, float]]:
    """name -> (best, median) seconds per call of batches interleaved across the functions, so
    that a slow spell of the shared machine hits all of them alike."""
    times = time_interleaved(fns, min_batch_seconds, repeats)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def _set_threads(n: int) -> None:
    fusedopt.set_num_threads(n)
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(n)


# ---- rows ---------------------------------------------------------------------------------------

def _step_rows(optimizer: str, size: str, threads: Sequence[int], quick: bool) -> list[Row]:
    shapes = _shapes(size)
    problems: dict[str, ModeProblem | str] = {}
    for mode in MODES:
        try:
            problem = ModeProblem(optimizer, mode, shapes)
            problem.step()
        except TypeError as e:  # a keyword, dtype or state object this build does not take yet
            problems[mode.name] = f"not available: {e}"
            continue
        except ImportError as e:
            problems[mode.name] = f"not available: {e}"
            continue
        problems[mode.name] = problem
    others: dict[str, Fn | None] = {"torch fp32": _torch_step(optimizer, shapes, "float32"),
                                    "torch bf16": _torch_step(optimizer, shapes, "bfloat16")}
    foreign: dict[str, dict[int, tuple[float, float]]] = {}
    if optimizer == "adamw":
        for library in FOREIGN:
            if _have(library):
                foreign[library] = _foreign_times(library, optimizer, size, threads, quick)
    floor_per_param = _arithmetic_floor(optimizer, quick)
    rows = []
    for t in threads:
        _set_threads(t)
        fns: dict[str, Fn] = {name: fn for name, fn in others.items() if fn is not None}
        for name, p in problems.items():
            if isinstance(p, ModeProblem):
                fns[name] = p.step
                fns[name + " probe"] = p.probe
        timed = _interleaved(fns, 0.02 if quick else 0.15, 3 if quick else 5)
        for mode in MODES:
            p = problems[mode.name]
            row: Row = {"kind": "step", "optimizer": optimizer, "size": size, "threads": t, "mode": mode.name,
                        "params": sum(math.prod(s) for s in shapes), "state_bytes_per_param":
                        len(OPTIMIZERS[optimizer][1]) * mode.state_bytes()}
            if isinstance(p, str):
                row["unavailable"] = p
            else:
                row["bytes_per_param"] = p.bytes_per_param
                row["fusedopt_s"], row["fusedopt_median_s"] = timed[mode.name]
                row["probe_s"], row["probe_median_s"] = timed[mode.name + " probe"]
                row["floor_s"] = floor_per_param * p.n / t
            for name in others:
                row[f"{name}_s"], row[f"{name}_median_s"] = timed.get(name, (None, None))
            for library, times in foreign.items():
                row[f"{library}_s"], row[f"{library}_median_s"] = times.get(t, (None, None))
            rows.append(row)
    return rows


FOREIGN = ("bitsandbytes", "torchao")  # the optional 8-bit AdamWs, each timed in a child process


def _foreign_times(library: str, optimizer: str, size: str, threads: Sequence[int],
                   quick: bool) -> dict[int, tuple[float, float]]:
    """threads -> (best, median) seconds of `library`'s step, timed by a child process of this
    module (see the module's docstring for why); {} when the library refuses or the child fails."""
    cmd = [sys.executable, "-m", "fusedopt.bench_lowbit", "--foreign", f"{library}:{optimizer}:{size}",
           "--threads", ",".join(map(str, threads))] + (["--quick"] if quick else [])
    # the child imports this fusedopt, wherever the parent found it
    path = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(fusedopt.__file__))),
                            os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}, check=False)
    if done.returncode != 0:
        print(f"  {library} {optimizer} {size}: child failed: {done.stderr.strip()[-500:]}", file=sys.stderr)
        return {}
    times: dict[str, list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return {int(t): (best, median) for t, (best, median) in times.items()}


def _foreign_child(spec: str, threads: Sequence[int], quick: bool) -> None:
    """The child of _foreign_times: prints {threads: [best, median]} as one JSON line."""
    library, optimizer, size = spec.split(":")
    step = _torch_step(optimizer, _shapes(size), "float32", library)
    out: dict[int, tuple[float, float]] = {}
    if step is not None:
        for t in threads:
            _set_threads(t)
            out[t] = _interleaved({library: step}, 0.02 if quick else 0.15, 3 if quick else 5)[library]
    print(json.dumps(out))


def _codec_rows(threads: Sequence[int], quick: bool) -> list[Row]:
    """The kernels alone (_core.quantize_blockwise / dequantize_blockwise: fusedopt.quantize adds
    a NumPy pass checking unsigned state for negatives)."""
    n = 1 << (20 if quick else 24)
    x = np.random.default_rng(0).standard_normal(n, np.float32)
    rows = []
    for signed in (True, False):
        values = x if signed else x * x
        q = quantized_zeros_like(values, signed)
        out = fusedopt.zeros_like(values)
        # quantize reads 4 bytes and writes 1; dequantize reads 1 and writes 4
        probes = {"quantize": _probe_passes(n, 0, 4, 1), "dequantize": _probe_passes(n, 0, 1, 4)}
        fns: dict[str, Fn] = {
            "quantize": partial(_core.quantize_blockwise, values, q.codes, q.scales, signed),
            "dequantize": partial(_core.dequantize_blockwise, q.codes, q.scales, out, signed),
        }
        for op, passes in probes.items():
            fns[op + " probe"] = partial(_run_probe, passes)
        for t in threads:
            _set_threads(t)
            timed = _interleaved(fns, 0.02 if quick else 0.15, 3 if quick else 5)
            for op in ("quantize", "dequantize"):
                rows.append({"kind": "codec", "op": op, "signed": signed, "threads": t, "elements": n,
                             "bytes": n * 5 + 4 * q.scales.size,
                             f"{op}_s": timed[op][0], f"{op}_median_s": timed[op][1],
                             "probe_s": timed[op + " probe"][0], "probe_median_s": timed[op + " probe"][1]})
    return rows


def rows(quick: bool, threads: list[int], sizes: Sequence[str] | None = None,
         optimizers: Sequence[str] | None = None, codec: bool = True) -> list[Row]:
    """Every row of the section: the codec alone, then each (optimizer, size, threads, mode);
    sizes and optimizers (default: all, or 64K only when quick) and codec select a part."""
    if not threads or any(t < 1 for t in threads):
        raise ValueError(f"threads must be a non-empty list of counts >= 1, got {threads}")
    if sizes is None:
        sizes = ["64K"] if quick else [*SIZES, "resnet50"]
    unknown = [s for s in sizes if s not in SIZES and s != "resnet50"]
    unknown += [o for o in optimizers or () if o not in OPTIMIZERS]
    if unknown:
        raise ValueError(f"unknown sizes or optimizers: {unknown}")
    before = fusedopt.get_num_threads()
    out: list[Row] = []
    try:
        if codec:
            out += _codec_rows(threads, quick)
        for optimizer in optimizers or OPTIMIZERS:
            for size in sizes:
                print(f"  {optimizer} {size}", file=sys.stderr)
                out += _step_rows(optimizer, size, threads, quick)
    finally:
        _set_threads(before)
    return out


# ---- table --------------------------------------------------------------------------------------

def _ratio(row: Row, slow: str, fast: str) -> str:
    s, f = row.get(f"{slow}_s"), row.get(f"{fast}_s")
    return "-" if s is None or f is None else f"{s / f:.2f}x"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def table(rows: Sequence[Row]) -> str:
    """Markdown tables: the codec's GB/s against its probe, then the step of each mode."""
    lines = ["Codec alone (8-bit blockwise, block 256): GB/s of the bytes it moves (4 + 1.016 per element)",
             "", "| op | code | threads | elements | GB/s | probe GB/s | % of probe | spread |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] != "codec":
            continue
        t, p = r[f"{r['op']}_s"], r["probe_s"]
        spread = r[f"{r['op']}_median_s"] / t
        lines.append(f"| {r['op']} | {'signed' if r['signed'] else 'unsigned'} | {r['threads']} | {r['elements']:,} | "
                     f"{r['bytes'] / t / 1e9:.1f} | {r['bytes'] / p / 1e9:.1f} | {100 * p / t:.0f}% | {spread:.2f} |")
    lines += ["", ("One optimizer step per mode: ms (best of interleaved repeats); % of probe = the probe's time / "
                   "the step's; floor = the fp32 update's arithmetic in cache; % of bound = max(probe, floor) / "
                   "the step's; vs X = X's time / fusedopt's (higher is faster)"), "",
              ("| optimizer | size | thr | mode | state B/param | bytes/param | fusedopt ms | % of probe | "
               "floor ms | % of bound | vs torch fp32 | vs torch bf16 | vs bnb 8-bit | vs torchao 8-bit | spread |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] != "step":
            continue
        head = f"| {r['optimizer']} | {r['size']} | {r['threads']} | {r['mode']} | {r['state_bytes_per_param']:.2f} |"
        if "unavailable" in r:
            lines.append(head + f" - | {r['unavailable'][:80]} | - | - | - | - | - | - | - | - |")
            continue
        medians = [r[k] / r[k[: -len("median_s")] + "s"] for k in r if k.endswith("_median_s") and r[k] is not None]
        lines.append(head + f" {r['bytes_per_param']} | {_ms(r['fusedopt_s'])} | "
                     f"{100 * r['probe_s'] / r['fusedopt_s']:.0f}% | {_ms(r['floor_s'])} | "
                     f"{100 * max(r['probe_s'], r['floor_s']) / r['fusedopt_s']:.0f}% | "
                     f"{_ratio(r, 'torch fp32', 'fusedopt')} | {_ratio(r, 'torch bf16', 'fusedopt')} | "
                     f"{_ratio(r, 'bitsandbytes', 'fusedopt')} | {_ratio(r, 'torchao', 'fusedopt')} | "
                     f"{max(medians):.2f} |")
    lines += ["", ("bytes/param: what the probe moves (read-write bytes count twice; the 8-bit scales are left out). "
                   "spread: the largest median / best of the row's timings.")]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fusedopt.bench_lowbit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64K only, fewer repeats")
    parser.add_argument("--threads", type=thread_counts, default=None,
                        help="comma-separated thread counts (default: 1 and all)")
    parser.add_argument("--json", type=writable, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes of 64K,1M,16M,resnet50 (default: all)")
    parser.add_argument("--optimizers", default=None, help="comma-separated of " + ",".join(OPTIMIZERS))
    parser.add_argument("--no-codec", action="store_true", help="skip the codec rows")
    parser.add_argument("--foreign", default=None, help=argparse.SUPPRESS)  # LIBRARY:OPTIMIZER:SIZE, see _foreign_times
    args = parser.parse_args(argv)
    threads = sorted({1, fusedopt.get_num_threads()}) if args.threads is None else args.threads
    if args.foreign:
        _foreign_child(args.foreign, threads, args.quick)
        return
    print(f"fusedopt {fusedopt.__version__}, ISA {fusedopt.isa()}, threads {threads}", file=sys.stderr)
    try:
        result = rows(args.quick, threads, args.sizes.split(",") if args.sizes else None,
                      args.optimizers.split(",") if args.optimizers else None, not args.no_codec)
    except ValueError as e:
        parser.error(str(e))
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"lowbit_rows": result}, f, indent=1)


if __name__ == "__main__":
    main()
