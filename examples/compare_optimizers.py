"""Every optimizer at a tuned learning rate, with and without batch norm, on the digits.

    python examples/compare_optimizers.py --plot docs/compare_optimizers.png --table docs/compare_optimizers.md

For each optimizer of train_digits.py and batch norm on / off:

1. tune: fusedopt.tune.random_search over lr ~ loguniform(default / 10, default * 10) (a decade
   either side of train_digits.DEFAULT_LR), each trial trained on 80% of the training set and
   scored by its accuracy after the last epoch on the other 20%, the validation set. The test
   set is not looked at while tuning. The search's seed is the same for every optimizer, so each
   tries the same multiples of its default lr: no optimizer gets luckier draws than another.
2. train at the best lr on the whole training set, measuring test accuracy after every epoch.

Prints a Markdown table of the runs of step 2 and plots their test accuracy per epoch. Every
run uses the same seed, hence the same data split, initial weights and minibatch order. The
table's "ms per epoch" is the median over the epochs of the wall time of the minibatch steps
(forward, backward, optimizer step; evaluation excluded).
"""
import argparse
import os
import sys

# One BLAS thread, as in train_digits.py (see there); set before NumPy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from fusedopt import tune  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_digits  # noqa: E402

TARGET_ACCURACY = 0.95


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=train_digits.positive_int, default=30)
    parser.add_argument("--trials", type=train_digits.positive_int, default=8,
                        help="learning rates tried per optimizer and batch norm setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of the test accuracy curves")
    parser.add_argument("--table", metavar="PATH", help="write the Markdown table to this file too")
    return parser


def tune_lr(optimizer, batch_norm, validation_data, *, epochs, trials, seed, **train_options):
    """The best of `trials` learning rates by final validation accuracy, and that accuracy."""
    default = train_digits.DEFAULT_LR[optimizer]

    def validation_error(lr):
        # data's second pair is the validation set here, so "test_accuracy" is the validation accuracy
        result = train_digits.train(data=validation_data, optimizer=optimizer, batch_norm=batch_norm, lr=lr,
                                    epochs=epochs, seed=seed, quiet=True, **train_options)
        return 1 - result["test_accuracy"]

    best = tune.random_search(validation_error, {"lr": tune.loguniform(default / 10, default * 10)},
                              n_trials=trials, seed=seed)[0]
    return best.params["lr"], 1 - best.loss


def compare(data, *, epochs, trials, seed, quiet=False, **train_options):
    """One row per (optimizer, batch norm): the tuned lr, then the run at that lr on data =
    (x_train, y_train, x_test, y_test), whose training set is split again for tuning.
    train_options go to every train_digits.train call (e.g. hidden=(32,))."""
    x_train, y_train, x_test, y_test = data
    validation_data = train_digits.random_split(x_train, y_train, 0.2, seed)
    rows = []
    for batch_norm in (True, False):
        for optimizer in train_digits.OPTIMIZERS:
            lr, validation_accuracy = tune_lr(optimizer, batch_norm, validation_data,
                                              epochs=epochs, trials=trials, seed=seed, **train_options)
            result = train_digits.train(data=data, optimizer=optimizer, batch_norm=batch_norm, lr=lr,
                                        epochs=epochs, seed=seed, quiet=True, **train_options)
            test_accuracy = result["history"]["test_accuracy"]
            reached = [epoch for epoch, accuracy in enumerate(test_accuracy, 1) if accuracy >= TARGET_ACCURACY]
            rows.append({
                "optimizer": optimizer,
                "batch_norm": batch_norm,
                "lr": lr,
                "validation_accuracy": validation_accuracy,
                "best_test_accuracy": max(test_accuracy),
                "final_test_accuracy": test_accuracy[-1],
                "epoch_reaching_target": reached[0] if reached else None,
                # the median: timings on a shared machine have outliers
                "ms_per_epoch": float(np.median(result["history"]["epoch_ms"])),
                "history": result["history"],
            })
            if not quiet:
                print(f"{optimizer:9s} batch norm {'on ' if batch_norm else 'off'}: lr {lr:.3g} "
                      f"(validation accuracy {validation_accuracy:.4f}), test accuracy {test_accuracy[-1]:.4f}")
    return rows


def markdown_table(rows):
    lines = ["| optimizer | batch norm | tuned lr | best test accuracy | final test accuracy | "
             f"epoch reaching {TARGET_ACCURACY} | ms per epoch |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        epoch = "-" if row["epoch_reaching_target"] is None else str(row["epoch_reaching_target"])
        lines.append(f"| {row['optimizer']} | {'on' if row['batch_norm'] else 'off'} | {row['lr']:.3g} | "
                     f"{row['best_test_accuracy']:.4f} | {row['final_test_accuracy']:.4f} | {epoch} | "
                     f"{row['ms_per_epoch']:.1f} |")
    return "\n".join(lines) + "\n"


def plot_curves(rows, path, title=""):
    """Write a PNG of the test accuracy per epoch of every row: batch norm on (left) and off (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, batch_norm in zip(axes, (True, False)):
        for row in rows:
            if row["batch_norm"] == batch_norm:
                accuracy = row["history"]["test_accuracy"]
                ax.plot(np.arange(1, len(accuracy) + 1), accuracy, label=f"{row['optimizer']} (lr {row['lr']:.2g})")
        ax.axhline(TARGET_ACCURACY, color="gray", linestyle=":", linewidth=1)
        ax.set(title=f"batch norm {'on' if batch_norm else 'off'}", xlabel="epoch", ylim=(0.8, 1.0))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    axes[0].set_ylabel("test accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = make_parser().parse_args(argv)
    rows = compare(train_digits.load_digits_split(args.seed), epochs=args.epochs, trials=args.trials, seed=args.seed)
    table = markdown_table(rows)
    print()
    print(table, end="")
    if args.table:
        with open(args.table, "w") as f:
            f.write(table)
    if args.plot:
        plot_curves(rows, args.plot, f"digits MLP {train_digits.make_parser().get_default('hidden')}: test accuracy "
                                     f"per epoch at the lr tuned on a validation split ({args.trials} trials)")
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
