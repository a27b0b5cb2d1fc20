"""Timing repeated calls: the best and the median of several batches, and which disagree."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the best and the median of `repeats` batches of calls."""

    best: float
    median: float

    @property
    def spread(self) -> float:
        """median / best: 1.0 when the repeats agree."""
        return self.median / self.best if self.best > 0 else 1.0


@dataclass(frozen=True)
class Timer:
    """How long each batch of calls runs and how many batches are timed."""

    min_batch_seconds: float
    repeats: int

    def time(self, fn: Callable[[], object]) -> Timing:
        """Per-call seconds of fn over `repeats` batches, each long enough to time reliably."""
        calls = calls_per_batch(fn, self.min_batch_seconds)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - t0
        times = [elapsed / calls]
        for _ in range(self.repeats - 1):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - t0) / calls)
        return Timing(min(times), statistics.median(times))

    def time_pair(self, fn: Callable[[], tuple[float, float]], repeats: int) -> tuple[Timing, Timing]:
        """fn times two phases of one call itself (e.g. torch's forward and backward): the
        best and median of each over `repeats` calls."""
        fn()
        times = [fn() for _ in range(repeats)]
        first, second = [t[0] for t in times], [t[1] for t in times]
        return (Timing(min(first), statistics.median(first)), Timing(min(second), statistics.median(second)))


def calls_per_batch(fn: Callable[[], object], min_batch: float) -> int:
    """How many calls of fn take at least min_batch seconds (after a warm-up call: page faults, caches, lazy state)."""
    fn()
    calls = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_batch:
            return calls
        calls *= 2 if elapsed == 0 else max(2, min(16, int(min_batch / elapsed) + 1))


def time_interleaved(steps: dict[str, Callable[[], object]], min_batch: float, repeats: int) -> dict[str, list[float]]:
    """Per-call seconds of each step, one batch of each per repeat, in a rotating order."""
    calls = {name: calls_per_batch(fn, min_batch) for name, fn in steps.items()}
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, n = steps[name], calls[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n)
    return times


def put(row: dict[str, Any], key: str, timing: Timing | None) -> None:
    """Store a timing in a row as `<key>_s` (best) and `<key>_median_s`; None when not measured."""
    row[f"{key}_s"] = timing.best if timing else None
    row[f"{key}_median_s"] = timing.median if timing else None


def noisy(row: dict[str, Any], limit: float, fewer_threads: dict[str, Any] | None = None) -> list[str]:
    """The timings of a row that cannot be trusted: their median is more than `limit` times
    their best (the repeats disagree), or their best is more than `limit` times the same
    timing's best at fewer threads (more threads never cost that much here unless another
    process holds a core and a thread waits for it in every call, so every repeat is slow)."""
    keys = [k[: -len("_median_s")] for k in row if k.endswith("_median_s") and row[k] is not None]
    out = [k for k in keys if row[f"{k}_median_s"] > limit * row[f"{k}_s"]]
    if fewer_threads is not None:
        out += [k for k in keys if k not in out and fewer_threads.get(f"{k}_s") is not None
                and row[f"{k}_s"] > limit * fewer_threads[f"{k}_s"]]
    return out
