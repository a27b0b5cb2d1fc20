"""Low-precision optimizer state and params, shown on the digits data (issue 15's quality checks).

    python examples/low_precision.py digits    # 8-bit and bf16 state vs fp32 state on the digits MLP
                                               #   -> docs/low_precision_digits.png
    python examples/low_precision.py rounding  # bf16 params: stochastic rounding vs nearest vs fp32
                                               #   -> docs/low_precision.png

digits: examples/train_digits.py's MLP (128, 128, batch norm, 30 epochs) trained with Adam, AdamW
and SGD with momentum, each three times from the same seed: fusedopt.optim's classes with
state_dtype="float32", "bfloat16" and "int8" (fusedopt's 8-bit blockwise code, fused into the
update: decode a block into L1, update, encode, one pass), every tensor quantized
(min_8bit_size=0, even the 10-element biases; the default keeps tensors under 4096 elements in
fp32, as bitsandbytes does). Reported: the final test accuracy over several seeds, and the loss
curves of seed 0 overlaid.

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
STATEFUL = ["adam", "adamw", "momentum"]  # train_digits.py's optimizers that keep state


def register(kind: str, state_dtype: str) -> str:
    """Make train_digits.train(optimizer=<name>) use train_digits' optimizer `kind` with its state
    in state_dtype (every tensor: min_8bit_size=0); returns the name."""
    name = f"{kind}/{state_dtype}"
    optimizer_class, hyperparameters = train_digits.OPTIMIZERS[kind]
    train_digits.OPTIMIZERS[name] = (optimizer_class, {**hyperparameters, "state_dtype": state_dtype,
                                                       "min_8bit_size": 0})
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
    if plot is not None:
        plot_digits(results, seeds, plot)
    return results


def plot_digits(results: dict[str, Any], seeds: int, out: Path) -> None:
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
                 "blockwise code (curves: seed 0; 8-bit path: fused kernel)", fontsize=9)
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
        state = [fusedopt.zeros_like(a, dtype=np.float32) for a in (w, b, w, b)]
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
    d.add_argument("--seeds", type=train_digits.positive_int, default=5)
    d.add_argument("--epochs", type=train_digits.positive_int, default=30)
    d.add_argument("--plot", type=Path, default=DOCS / "low_precision_digits.png")
    r = sub.add_parser("rounding", help="bf16 params: stochastic rounding vs nearest vs fp32")
    r.add_argument("--steps", type=train_digits.positive_int, default=3000)
    r.add_argument("--lr", type=float, default=1e-4)
    r.add_argument("--plot", type=Path, default=DOCS / "low_precision.png")
    args = parser.parse_args(argv)
    if args.demo == "digits":
        digits(args.seeds, args.epochs, args.plot)
    elif rounding(args.steps, args.lr, args.plot) is None:
        sys.exit(1)


if __name__ == "__main__":
    main()
