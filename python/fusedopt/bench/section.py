"""What a bench section is, and the cell formatting its table uses.

A section is a list of named cases and a function that prints their rows as a table. A case
sets its problem up once (allocates the arrays) and returns a measure function, which the
runner calls once per thread count with that thread count set; it returns one row: a dict of
JSON values, timings stored with timing.put (`<key>_s` best, `<key>_median_s` median). The
runner adds "case", "threads" and "noisy" (the timings whose repeats disagree) to each row,
matches --filter against the case names, draws the progress, and writes every section's rows
to the JSON file under "<key>_rows".
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .timing import Timer

Row = dict[str, Any]

# said under every table
SPREAD_NOTE = ("spread: the largest median / best of the row's timings. noisy: a timing whose median is over "
               "--noisy (default 1.5) times its best, or whose best is over --noisy times its best at the first thread "
               "count; the ratios it enters are not printed.")
Measure = Callable[[Timer, int], Row]  # (timer, thread count) -> the row's own columns


@dataclass(frozen=True)
class Case:
    name: str  # what --filter matches, e.g. "adam 4K"
    setup: Callable[[], Measure]


@dataclass(frozen=True)
class Section:
    key: str  # the JSON file's "<key>_rows"
    title: str  # printed above the table
    cases: Callable[[bool], list[Case]]  # quick -> the cases, in the order they run
    table: Callable[[Sequence[Row]], str]


def markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    assert len(set(head)) == len(head), f"column names repeat: {head}"
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


Keys = str | Sequence[str]  # one timing, or several whose best times add up (forward + backward)


def _best(row: Row, keys: Keys) -> float | None:
    """The sum of the best times of `keys`; None if one is missing; nan if one is noisy."""
    keys = [keys] if isinstance(keys, str) else keys
    if any(row.get(f"{k}_s") is None for k in keys):
        return None
    if any(k in row["noisy"] for k in keys):
        return float("nan")
    return float(sum(row[f"{k}_s"] for k in keys))


def ratio(row: Row, slow: Keys, fast: Keys) -> str:
    """How many times faster `fast` ran than `slow` (best times); "noisy" when the repeats of
    either disagree, since the ratio of two such timings says little."""
    s, f = _best(row, slow), _best(row, fast)
    if s is None or f is None:
        return "-"
    return "noisy" if s != s or f != f else f"{s / f:.2f}x"


def percent(row: Row, part: Keys, whole: Keys) -> str:
    """100 * part's time / whole's time: e.g. the probe's time as a % of the kernel's."""
    p, w = _best(row, part), _best(row, whole)
    if p is None or w is None:
        return "-"
    return "noisy" if p != p or w != w else f"{100 * p / w:.0f}%"


def ns_per_element(row: Row, key: str) -> str:
    seconds = row.get(f"{key}_s")
    return "-" if seconds is None else f"{seconds * 1e9 / row['elements']:.3f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3f} ms" if seconds >= 1e-4 else f"{seconds * 1e6:.1f} us"


def spread(row: Row) -> str:
    """The largest median / best among the row's timings, naming those past the limit."""
    keys = [k[: -len("_median_s")] for k in row if k.endswith("_median_s") and row[k] is not None]
    worst = max((row[f"{k}_median_s"] / row[f"{k}_s"] for k in keys if row[f"{k}_s"]), default=1.0)
    return f"{worst:.2f}" + (f" (noisy: {', '.join(row['noisy'])})" if row["noisy"] else "")
