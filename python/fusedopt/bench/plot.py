"""--plot: one panel per kind of row (optimizer steps on one tensor, batch norm, whole-model
steps), ns per element on a log axis. Each panel's limits come from fusedopt's and the probe's
figures; another implementation's figure far outside them is drawn at the edge as a triangle
with its value, so that one outlier does not squeeze every other line into a band."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .section import Row

# one line style and marker fill per thread count of the run, in order (the categorical panels
# draw markers only: a line between two shapes or two models would mean nothing)
STYLES = ["-", "--", ":", "-."]
FILLS = ["full", "none", "left", "bottom"]
REACH = 10.0  # other implementations' figures are drawn up to this factor past fusedopt's range


def _per_element(row: Row, *keys: str) -> float | None:
    times = [row.get(f"{k}_s") for k in keys]
    return None if None in times else sum(t for t in times if t is not None) * 1e9 / row["elements"]


class Panel:
    """A log-scaled axis whose limits are set from the figures marked as its own."""

    def __init__(self, ax: Any, title: str) -> None:
        self.ax = ax
        self.own: list[float] = []
        self.series: list[tuple[list[tuple[Any, float]], dict[str, Any]]] = []
        ax.set_title(title, fontsize=9)

    def line(self, xs: Sequence[Any], ys: Sequence[float | None], own: bool, **style: Any) -> None:
        points = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if own:
            self.own += [y for _, y in points]
        self.series.append((points, style))

    def draw(self) -> None:
        lo, hi = min(self.own) / 1.5, max(self.own) * 1.5
        top = hi * REACH
        for points, _ in self.series:
            lo = min([lo] + [y / 1.5 for _, y in points])
        clipped: dict[Any, int] = {}  # x -> values written there so far, stacked downward
        for points, style in self.series:
            inside = [(x, y) for x, y in points if y <= top]
            if inside:
                self.ax.plot([x for x, _ in inside], [y for _, y in inside], **style)
            for x, y in points:
                if y > top:  # off the scale: a triangle at the edge, with the value
                    self.ax.plot([x], [top], "^", color=style.get("color"), clip_on=False)
                    n = clipped[x] = clipped.get(x, 0) + 1
                    self.ax.annotate(f"{y:.3g}", (x, top), textcoords="offset points", xytext=(5, -8 * n), fontsize=6)
        self.ax.set_yscale("log")
        self.ax.set_ylim(lo, top * 1.2)
        self.ax.set_ylabel("ns per element")
        self.ax.grid(True, which="both", alpha=0.3)


def plot(rows: dict[str, list[Row]], thread_counts: Sequence[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    opt_rows = rows.get("optimizer", [])
    single = [r for r in opt_rows if r["tensors"] == 1]
    models = [r for r in opt_rows if r["tensors"] > 1]
    bn = rows.get("batchnorm", [])
    kinds = [k for k, rs in (("single", single), ("batchnorm", bn), ("models", models)) if rs]
    if not kinds:
        return
    fig, axes = plt.subplots(len(kinds), 1, figsize=(9, 4.2 * len(kinds)), squeeze=False)
    style = {t: STYLES[i % len(STYLES)] for i, t in enumerate(thread_counts)}
    fill = {t: FILLS[i % len(FILLS)] for i, t in enumerate(thread_counts)}
    colors = plt.get_cmap("tab10").colors
    panels = dict(zip(kinds, (Panel(ax, "") for ax in axes[:, 0])))

    if "single" in panels:
        panel = panels["single"]
        panel.ax.set_title("optimizer step on one fp32 tensor", fontsize=9)
        optimizers = list(dict.fromkeys(r["optimizer"] for r in single))
        for i, opt in enumerate(optimizers):
            for t in thread_counts:
                rs = sorted((r for r in single if r["optimizer"] == opt and r["threads"] == t),
                            key=lambda r: int(r["elements"]))
                xs = [r["elements"] for r in rs]
                label = f"fusedopt {opt}" if t == thread_counts[0] else None
                panel.line(xs, [_per_element(r, "fusedopt") for r in rs], True, marker="o", linestyle=style[t],
                           fillstyle=fill[t], color=colors[i % len(colors)], label=label)
                if opt == optimizers[0]:
                    first = t == thread_counts[0]
                    panel.line(xs, [_per_element(r, "torch") for r in rs], False, marker="s", linestyle=style[t],
                               fillstyle=fill[t], color="black", label=f"torch {opt}" if first else None)
                    panel.line(xs, [_per_element(r, "probe") for r in rs], True, linestyle=style[t], color="gray",
                               linewidth=3, alpha=0.4, label=f"probe, {opt}'s bytes" if first else None)
        panel.ax.set_xscale("log")
        panel.ax.set_xlabel("elements")

    def categories(panel: Panel, rs: Sequence[Row], series: Sequence[tuple[str, Sequence[str], bool, str]]) -> None:
        names = list(dict.fromkeys(r["case"] for r in rs))
        for label, keys, own, color in series:
            for t in thread_counts:
                by_case = {r["case"]: r for r in rs if r["threads"] == t}
                ys = [_per_element(by_case[n], *keys) if n in by_case else None for n in names]
                panel.line(range(len(names)), ys, own, marker="o", markersize=7, linestyle="none", fillstyle=fill[t],
                           color=color, label=label if t == thread_counts[0] else None)
        panel.ax.set_xticks(range(len(names)))
        panel.ax.set_xticklabels([n.removeprefix("batchnorm ") for n in names], rotation=20, fontsize=7, ha="right")

    if "batchnorm" in panels:
        panels["batchnorm"].ax.set_title("batch norm, training forward + backward, fp32", fontsize=9)
        categories(panels["batchnorm"], bn, [("fusedopt", ("fusedopt_fwd", "fusedopt_bwd"), True, colors[0]),
                                             ("torch", ("torch_fwd", "torch_bwd"), False, "black"),
                                             ("probe", ("probe_fwd", "probe_bwd"), True, "gray")])
    if "models" in panels:
        panels["models"].ax.set_title("whole-model optimizer step, fp32", fontsize=9)
        categories(panels["models"], models, [("fusedopt functional", ("fusedopt",), True, colors[0]),
                                              ("fusedopt optim.step", ("optim",), True, colors[1]),
                                              ("torch", ("torch",), False, "black"),
                                              ("probe", ("probe",), True, "gray")])

    thread_handles = [Line2D([], [], color="black", linestyle=style[t], marker="o", fillstyle=fill[t],
                             label=f"{t} thread{'s' if t > 1 else ''}") for t in thread_counts]
    for panel in panels.values():
        panel.draw()
        handles, _ = panel.ax.get_legend_handles_labels()
        panel.ax.legend(handles=handles + thread_handles, fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
