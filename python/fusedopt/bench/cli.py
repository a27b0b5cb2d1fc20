"""python -m fusedopt.bench: arguments (all checked before anything runs), the run, the output."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import sys
from collections.abc import Sequence
from typing import IO, Any

import numpy as np

import fusedopt

from . import batchnorm, deps, optimizers
from .section import Case, Row, Section
from .timing import Timer, noisy

# The tables, in the order they run and print. A new section is a module with a SECTION
# (see section.py), added here.
SECTIONS: list[Section] = [optimizers.SECTION, batchnorm.SECTION]

# Suites that time their implementations interleaved in their own loop (rows(quick, threads) ->
# rows, table(rows) -> markdown), run after the sections with --more: key -> (module, needs torch).
MORE = {
    "torch": ("fusedopt.torch.bench", True),  # fusedopt.torch optimizers vs torch.optim fused, as a torch user steps
    "torch_batchnorm": ("fusedopt.torch.bench_batchnorm", True),  # fusedopt.torch batch-norm modules vs torch.nn
    "lowbit": ("fusedopt.bench_lowbit", False),  # bf16 / master-copy / 8-bit state modes vs their probes and peers
}
# ... of which a full run (no --quick, no --filter) runs these whenever torch is installed: the
# figures of a README come from one full run, and they add a minute or two to its several
FULL_RUN_MORE = ("torch", "torch_batchnorm")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": fusedopt.isa(),
        "fusedopt": fusedopt.__version__,
        "numpy": np.__version__,
        "torch": deps.torch.__version__ if deps.torch is not None else None,
        "python": platform.python_version(),
    }


def set_threads(n: int) -> None:
    fusedopt.set_num_threads(n)
    if deps.torch is not None:
        deps.torch.set_num_threads(n)


class Progress:
    """A bar redrawn in place on a terminal; elsewhere (a log, CI) one line per step."""

    def __init__(self, total: int, stream: IO[str]) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.tty = stream.isatty()

    def step(self, label: str) -> None:
        if self.tty:
            width = 30
            filled = width * self.done // self.total
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label:<40}")
        else:
            self.stream.write(f"[{self.done + 1}/{self.total}] {label}\n")
        self.stream.flush()
        self.done += 1

    def close(self) -> None:
        if self.tty:
            self.stream.write(f"\r{' ' * 80}\r")
            self.stream.flush()


def run(selected: Sequence[tuple[Section, list[Case]]], thread_counts: Sequence[int], timer: Timer,
        noisy_factor: float, progress: Progress) -> dict[str, list[Row]]:
    """Every selected case at every thread count: the rows of each section, by its key."""
    out: dict[str, list[Row]] = {}
    try:
        for section, cases in selected:
            rows = out.setdefault(section.key, [])
            for case in cases:
                measure = case.setup()
                first: Row | None = None
                for threads in thread_counts:
                    progress.step(f"{case.name}, {threads} thread{'s' if threads > 1 else ''}")
                    set_threads(threads)
                    row: Row = {"case": case.name, "threads": threads, **measure(timer, threads)}
                    row["noisy"] = noisy(row, noisy_factor, first)
                    rows.append(row)
                    first = first or row
                del measure  # free the case's arrays before the next is allocated
    finally:
        progress.close()
        set_threads(thread_counts[-1])
    return out


# ---- arguments ---------------------------------------------------------------------------------


# argparse types of the bench CLIs (this one, bench_lowbit's and fusedopt.torch's): every
# argument checked before anything runs
MAX_THREADS = 1024  # set_num_threads' limit (csrc/parallel.h: kMaxThreads)


def thread_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2, got {text!r}") from None
    if any(not 1 <= n <= MAX_THREADS for n in counts):
        raise argparse.ArgumentTypeError(f"thread counts must be from 1 to {MAX_THREADS}, got {text!r}")
    return sorted(set(counts))


def _regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"not a regular expression: {text!r} ({e})") from None


def _positive(kind: type[int] | type[float], minimum: float) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    return parse


def writable(path: str) -> str:
    """An output file's path: in a folder that exists and may be written, not a folder itself
    nor a file that may not be written (found out after a run of minutes otherwise)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not path:
        raise argparse.ArgumentTypeError("an empty path")
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path!r} is a folder, not a file's path")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"{path}: folder {folder} does not exist")
    if not os.access(path if os.path.exists(path) else folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"{path}: not writable")
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fusedopt.bench",
        description="Times fusedopt's kernels against the NumPy reference, torch (when installed) and a "
                    "bandwidth probe, and prints one markdown table per section.")
    p.add_argument("--quick", action="store_true", help="a subset with short timings (about a minute)")
    p.add_argument("--filter", type=_regex, metavar="RE",
                   help="only the cases whose name matches this regular expression (--list shows the names)")
    p.add_argument("--list", action="store_true", help="print the names of the selected cases and exit")
    p.add_argument("--threads", type=thread_counts, metavar="N[,M...]",
                   help="comma-separated thread counts (default: 1 and all usable CPUs)")
    p.add_argument("--repeats", type=_positive(int, 1), metavar="N",
                   help="timed batches per figure; the tables show the best (default: 5, --quick 3)")
    p.add_argument("--noisy", type=_positive(float, 1.0), default=1.5, metavar="FACTOR",
                   help="flag a timing whose median is more than FACTOR times its best, or whose best is more "
                        "than FACTOR times its best at the first thread count, and print 'noisy' instead of "
                        "the ratios it enters (default: 1.5)")
    p.add_argument("--more", choices=[*MORE, "all"], action="append", default=[],
                   help="also run these suites after the tables (repeatable): torch (fusedopt.torch optimizers), "
                        "torch_batchnorm (fusedopt.torch modules), lowbit (mixed precision and 8-bit state); "
                        "--filter does not apply to them; a full run (no --quick, no --filter) runs the two "
                        "torch suites whenever torch is installed")
    p.add_argument("--json", type=writable, metavar="PATH",
                   help="also write the rows (best and median of every timing) and the machine to this file")
    p.add_argument("--plot", type=writable, metavar="PATH",
                   help='draw the run to this PNG (needs matplotlib: pip install ".[bench]")')
    return p


def header(info: dict[str, Any], thread_counts: Sequence[int], timer: Timer) -> str:
    torch = info["torch"] or f'not installed ({deps.BENCH_EXTRA} adds the torch columns)'
    threads = ", ".join(map(str, thread_counts))
    return (f"# fusedopt {info['fusedopt']} bench: {info['cpu']} ({info['cpus']} usable CPUs), ISA {info['isa']}, "
            f"threads {threads}; numpy {info['numpy']}, torch {torch}, Python {info['python']}; "
            f"best and median of {timer.repeats} repeats")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    more = list(MORE) if "all" in args.more else list(dict.fromkeys(args.more))
    if not args.quick and args.filter is None and deps.torch is not None:
        more = list(dict.fromkeys([*FULL_RUN_MORE, *more]))
    if deps.torch is None and any(MORE[key][1] for key in more):
        p.error(f"--more {' '.join(k for k in more if MORE[k][1])} needs torch: {deps.BENCH_EXTRA}")
    if args.plot and not deps.have_matplotlib():
        p.error(f'--plot needs matplotlib, which is not installed: {deps.BENCH_EXTRA} (or pip install matplotlib)')
    selected = [(s, [c for c in s.cases(args.quick) if args.filter is None or args.filter.search(c.name)])
                for s in SECTIONS]
    selected = [(s, cases) for s, cases in selected if cases]
    if not selected:
        p.error(f"--filter {args.filter.pattern!r} selects no case; --list{' --quick' if args.quick else ''} "
                "shows the names")
    if args.list:
        for _, cases in selected:
            print("\n".join(c.name for c in cases))
        return 0

    thread_counts = args.threads or sorted({1, fusedopt.get_num_threads()})
    timer = Timer(0.02, args.repeats or 3) if args.quick else Timer(0.1, args.repeats or 5)
    info = machine_info()
    print(header(info, thread_counts, timer), flush=True)
    total = len(thread_counts) * sum(len(cases) for _, cases in selected)
    rows = run(selected, thread_counts, timer, args.noisy, Progress(total, sys.stderr))
    for section, _ in selected:
        print(f"\n{section.title}\n")
        print(section.table(rows[section.key]))
    more_rows: dict[str, list[Row]] = {}
    for key in more:
        suite = importlib.import_module(MORE[key][0])
        print(f"\n{MORE[key][0]}\n", flush=True)
        more_rows[key] = suite.rows(args.quick, list(thread_counts))
        print(suite.table(more_rows[key]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "threads": thread_counts, "repeats": timer.repeats, "noisy_factor": args.noisy,
                       **{f"{s.key}_rows": rows.get(s.key, []) for s in SECTIONS},
                       **{f"{key}_rows": r for key, r in more_rows.items()}}, f, indent=1, default=str)
    if args.plot:
        from .plot import plot

        plot(rows, thread_counts, args.plot)
    return 0
