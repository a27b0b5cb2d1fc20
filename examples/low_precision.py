"""Low-precision optimizer state and params, shown on the digits data (issue 15's quality checks).

    python examples/low_precision.py digits    # 8-bit and bf16 state vs fp32 state on the digits MLP
                                               #   -> docs/low_precision_digits.png
    python examples/low_precision.py rounding  # bf16 params: stochastic rounding vs nearest vs fp32
                                               #   -> docs/low_precision.png

digits: examples/train_digits.py's MLP (128, 128, batch norm, 30 epochs) trained with Adam, AdamW
and SGD with momentum, each three times from the same seed: state in float32, in bfloat16, and in
fusedopt's 8-bit blockwise code (fusedopt.QuantizedState, every tensor, even the 10-element biases;
bitsandbytes keeps tensors under 4096 elements in fp32). Each step either passes the
QuantizedState to the update function (the fused kernel: decode a block into L1, update,
encode, one pass) or, in a build without that kernel, does the same three steps one after the
other (dequantize, fp32 update, quantize): the same arithmetic, so the same numbers. The run
says which. Reported: the final test accuracy of both over several seeds, and the loss curves
of seed 0 overlaid.

rounding: softmax regression on the digits features with bfloat16 weights, Adam at a learning
rate whose updates (~lr per step) are below half a bf16 ulp of most weights. Rounded to nearest,
those updates are lost and the loss stalls; rounded stochastically (up with probability
proportional to the distance: unbiased), they accumulate in expectation and the loss follows the
float32 run. Needs a build whose update functions take bfloat16 params and
stochastic_rounding= (issue 15); otherwise it says so and exits.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matmuls: see train_digits.py

import numpy as np

import fusedopt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_digits

DOCS = Path(__file__).resolve().parents[1] / "docs"


# ---- 8-bit state on the digits MLP ---------------------------------------------------------------

STATE_DTYPES = {"float32": "fp32 state", "bfloat16": "bf16 state", "int8": "8-bit state"}
# name -> (fusedopt function, state arguments: signed code?, hyperparameters)
STATEFUL: dict[str, tuple[Any, dict[str, bool], dict[str, Any]]] = {
    "adam": (fusedopt.adam_, {"exp_avgs": True, "exp_avg_sqs": False}, {}),
    "adamw": (fusedopt.adamw_, {"exp_avgs": True, "exp_avg_sqs": False}, {"weight_decay": 1e-2}),
    "momentum": (fusedopt.sgd_, {"momentum_buffers": True}, {"momentum": 0.9}),
}


class StateDtypeOptimizer:
    """An optimizer with train_digits.py's interface (param groups; step(grads per group)) whose
    state is float32 arrays or 8-bit QuantizedStates."""

    def __init__(self, groups: list[dict[str, Any]], lr: float, *, kind: str, state_dtype: str) -> None:
        self.fn, self.state_args, defaults = STATEFUL[kind]
        self.lr, self.state_dtype, self.t = lr, state_dtype, 0
        self.fused: bool | None = None  # does the update function take QuantizedState? (found at the first step)
        self.groups = []
        for group in groups:
            hyper = {**defaults, **{k: v for k, v in group.items() if k != "params"}}
            state = {name: [self._zeros(p, signed) for p in group["params"]]
                     for name, signed in self.state_args.items()}
            self.groups.append((group["params"], hyper, state))

    def _zeros(self, param: np.ndarray, signed: bool) -> Any:
        if self.state_dtype == "int8":
            return fusedopt.quantized_zeros_like(param, signed)
        return fusedopt.zeros_like(param.astype(_bfloat16() if self.state_dtype == "bfloat16" else np.float32))

    def step(self, grads: list[list[np.ndarray]]) -> None:
        self.t += 1
        for (params, hyper, state), group_grads in zip(self.groups, grads):
            kwargs = {**hyper, "lr": self.lr, "step": self.t}
            if self.state_dtype != "int8" or self.fused is not False:
                try:
                    self.fn(params, group_grads, **state, **kwargs)
                    self.fused = self.state_dtype == "int8"
                    continue
                except TypeError:  # this build's kernels take no QuantizedState: nothing was written
                    if self.state_dtype != "int8":
                        raise
                    self.fused = False
            # decode, update in float32, encode: what the fused kernel does per block
            floats = {name: [q.dequantize() for q in qs] for name, qs in state.items()}
            self.fn(params, group_grads, **floats, **kwargs)
            for name, qs in state.items():
                for q, f in zip(qs, floats[name]):
                    fusedopt.quantize(f, q.signed, out=q)


def register(kind: str, state_dtype: str) -> str:
    """Make train_digits.train(optimizer=<name>) use StateDtypeOptimizer; returns the name."""
    name = f"{kind}/{state_dtype}"
    train_digits.OPTIMIZERS[name] = (
        lambda groups, lr: StateDtypeOptimizer(groups, lr, kind=kind, state_dtype=state_dtype), {})
    train_digits.DEFAULT_LR[name] = train_digits.DEFAULT_LR[kind]
    return name


def digits(seeds: int, epochs: int, plot: Path | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for kind in STATEFUL:
        for state_dtype in STATE_DTYPES:
            name = register(kind, state_dtype)
            runs = [train_digits.train(optimizer=name, seed=seed, epochs=epochs, quiet=True) for seed in range(seeds)]
            accuracy = [100 * r["test_accuracy"] for r in runs]
            results[name] = {"accuracy": accuracy, "history": runs[0]["history"]}
            print(f"{name:18s} test accuracy over {seeds} seeds: mean {np.mean(accuracy):.2f}%  "
                  f"(runs {', '.join(f'{a:.2f}' for a in accuracy)})", flush=True)
        fp32 = np.mean(results[f"{kind}/float32"]["accuracy"])
        for state_dtype in list(STATE_DTYPES)[1:]:
            diff = np.mean(results[f"{kind}/{state_dtype}"]["accuracy"]) - fp32
            print(f"{kind:18s} {STATE_DTYPES[state_dtype]} - fp32 state: {diff:+.2f} points", flush=True)
    probe = StateDtypeOptimizer([{"params": [np.zeros(4, np.float32)]}], 1e-3, kind="adam", state_dtype="int8")
    probe.step([[np.ones(4, np.float32)]])
    path = ("fused kernel" if probe.fused
            else "dequantize -> fp32 update -> quantize (no fused 8-bit kernel in this build)")
    print(f"8-bit state path: {path}")
    if plot is not None:
        plot_digits(results, seeds, path, plot)
    return results


def plot_digits(results: dict[str, Any], seeds: int, path: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"adam": "Adam lr 1e-3", "adamw": "AdamW lr 1e-3, wd 1e-2", "momentum": "SGD momentum 0.9, lr 1e-2"}
    fig, axes = plt.subplots(1, len(STATEFUL), figsize=(14, 4))
    for ax, kind in zip(axes, STATEFUL):
        for state_dtype, style in zip(STATE_DTYPES, ("-", ":", "--")):
            r = results[f"{kind}/{state_dtype}"]
            h = r["history"]
            epochs = np.arange(1, len(h["train_loss"]) + 1)
            label = STATE_DTYPES[state_dtype]
            acc = f"test acc {np.mean(r['accuracy']):.2f}% (mean of {seeds})"
            ax.plot(epochs, h["train_loss"], style, label=f"{label}: train loss; {acc}")
            ax.plot(epochs, h["test_loss"], style, label=f"{label}: test loss", alpha=0.7)
        ax.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title=titles[kind])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("digits MLP (128, 128), batch norm: optimizer state in fp32, bf16 and fusedopt's 8-bit "
                 "blockwise code "
                 f"(curves: seed 0; 8-bit path: {path})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


# ---- bf16 params: stochastic rounding vs round to nearest ------------------------------------------

def _bfloat16() -> Any:
    import ml_dtypes

    return ml_dtypes.bfloat16


def rounding(steps: int, lr: float, plot: Path | None) -> dict[str, list[float]] | None:
    """Full-batch softmax regression on the standardized digits features (W: (10, 64), b: (10,)),
    Adam with float32 state; params in float32, bf16 rounded to nearest, bf16 rounded stochastically."""
    x_train, y_train, _, _ = train_digits.load_digits_split(0)
    x, _ = train_digits.standardize(x_train, x_train)
    y = y_train
    rng = np.random.default_rng(0)
    w0 = (rng.standard_normal((10, 64)) * 0.3).astype(np.float32)
    curves: dict[str, list[float]] = {}
    for name, dtype, stochastic in (("float32", np.float32, False), ("bf16, round to nearest", _bfloat16(), False),
                                    ("bf16, stochastic rounding", _bfloat16(), True)):
        w, b = w0.astype(dtype), np.zeros(10, dtype)
        state = [fusedopt.zeros_like(np.zeros(a.shape, np.float32)) for a in (w, b, w, b)]
        losses = []
        for t in range(1, steps + 1):
            logits = x @ w.astype(np.float32).T + b.astype(np.float32)
            loss, dlogits = train_digits.cross_entropy(logits, y)
            losses.append(loss)
            grads = [(dlogits.T @ x).astype(dtype), dlogits.sum(axis=0).astype(dtype)]
            extra = {"stochastic_rounding": True, "seed": 0} if stochastic else {}
            try:
                fusedopt.adam_([w, b], grads, state[:2], state[2:], step=t, lr=lr, **extra)
            except TypeError as e:
                print(f"{name}: this build cannot run it ({e}); issue 15's bf16 kernels are needed")
                return None
        curves[name] = losses
        print(f"{name:28s} loss: step 1 {losses[0]:.4f}, step {steps} {losses[-1]:.4f}", flush=True)
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, losses in curves.items():
            ax.plot(np.arange(1, steps + 1), losses, label=name)
        ax.set(xlabel="step", ylabel="training cross-entropy", yscale="log",
               title=f"digits softmax regression (10 x 64 weights), Adam lr {lr:g}, full batch:\n"
                     "bf16 weights rounded to nearest lose the updates; stochastic rounding keeps them")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot, dpi=110)
        plt.close(fig)
        print(f"wrote {plot}")
    return curves


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="demo", required=True)
    d = sub.add_parser("digits", help="8-bit vs fp32 optimizer state on the digits MLP")
    d.add_argument("--seeds", type=int, default=5)
    d.add_argument("--epochs", type=int, default=30)
    d.add_argument("--plot", type=Path, default=DOCS / "low_precision_digits.png")
    r = sub.add_parser("rounding", help="bf16 params: stochastic rounding vs nearest vs fp32")
    r.add_argument("--steps", type=int, default=3000)
    r.add_argument("--lr", type=float, default=1e-4)
    r.add_argument("--plot", type=Path, default=DOCS / "low_precision.png")
    args = parser.parse_args(argv)
    if args.demo == "digits":
        digits(args.seeds, args.epochs, args.plot)
    elif rounding(args.steps, args.lr, args.plot) is None:
        sys.exit(1)


if __name__ == "__main__":
    main()
