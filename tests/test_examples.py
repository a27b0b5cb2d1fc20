"""The training examples in examples/: train_digits.py and compare_optimizers.py.

Most tests train on Gaussian blobs made here with NumPy, so the training code runs without
scikit-learn (CI installs only .[test]); the digits tests skip when scikit-learn is absent.
"""
import importlib.util
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def import_example(name):
    """examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here; compare_optimizers imports train_digits
    spec.loader.exec_module(module)
    return module


train_digits = import_example("train_digits")
compare_optimizers = import_example("compare_optimizers")


@pytest.fixture(autouse=True)
def one_blas_thread():
    """One BLAS thread, as train_digits.py asks for (its OPENBLAS_NUM_THREADS comes too late here:
    NumPy is loaded). Only speed depends on it; threadpoolctl comes with scikit-learn."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def gaussian_blobs(seed, n_classes=4, n_features=16, n_train=320, n_test=160):
    """(x_train, y_train, x_test, y_test): a Gaussian of std 1 per class around a N(0, I) center."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, n_features))
    y = rng.integers(n_classes, size=n_train + n_test)
    x = centers[y] + rng.standard_normal((n_train + n_test, n_features))
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def train_blobs(**options):
    settings = dict(optimizer="adam", lr=1e-2, epochs=5, hidden=(32,), batch_size=32, quiet=True)
    return train_digits.train(data=gaussian_blobs(0), **{**settings, **options})


@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "no-bn"])
def test_learns_gaussian_blobs(batch_norm):
    result = train_blobs(batch_norm=batch_norm)
    history = result["history"]
    assert result["test_accuracy"] >= 0.9
    assert history["train_loss"][-1] < history["train_loss"][0] / 2
    assert all(len(values) == 5 for values in history.values())


@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "no-bn"])
@pytest.mark.parametrize("optimizer", list(train_digits.OPTIMIZERS))
def test_every_optimizer_lowers_the_loss(optimizer, batch_norm):
    result = train_blobs(optimizer=optimizer, lr=None, batch_norm=batch_norm, epochs=3, hidden=(16, 16))
    assert result["lr"] == train_digits.DEFAULT_LR[optimizer]
    losses = result["history"]["train_loss"]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[0] > losses[1] > losses[2]


def test_same_seed_same_history():
    first, again = train_blobs(seed=3), train_blobs(seed=3)
    other_seed = train_blobs(seed=4)
    for history in (first["history"], again["history"], other_seed["history"]):
        del history["epoch_ms"]
    assert first["history"] == again["history"]
    assert first["history"] != other_seed["history"]


def test_options_and_args_namespace():
    args = train_digits.make_parser().parse_args(["--optimizer", "sgd", "--hidden", "8,8", "--epochs", "1", "--quiet"])
    assert args.hidden == (8, 8) and args.lr is None and args.batch_norm
    # keyword options override the namespace
    result = train_digits.train(args, data=gaussian_blobs(0), optimizer="momentum")
    assert result["lr"] == train_digits.DEFAULT_LR["momentum"]
    with pytest.raises(TypeError, match="unknown option"):
        train_digits.train(data=gaussian_blobs(0), learning_rate=0.1)


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--batch-size", "-1"], ["--batch-size", "x"], ["--hidden", "0"]])
def test_bad_sizes_are_usage_errors(argv, capsys):
    """Counts below 1 are refused by the parser (they trained nothing, or failed deep inside)."""
    with pytest.raises(SystemExit) as info:
        train_digits.make_parser().parse_args(argv)
    assert info.value.code == 2 and "error: argument" in capsys.readouterr().err


def test_compare_on_blobs():
    rows = compare_optimizers.compare(gaussian_blobs(0), epochs=1, trials=2, seed=0, quiet=True, hidden=(16,))
    assert [(row["optimizer"], row["batch_norm"]) for row in rows] == \
        [(name, batch_norm) for batch_norm in (True, False) for name in train_digits.OPTIMIZERS]
    for row in rows:
        default = train_digits.DEFAULT_LR[row["optimizer"]]
        assert default / 10 <= row["lr"] <= default * 10
    table = compare_optimizers.markdown_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert table[2].startswith("| sgd | on | ")


@pytest.fixture
def digits():
    pytest.importorskip("sklearn")
    return train_digits.load_digits_split(0)


def test_digits_adam_short_run(digits):
    result = train_digits.train(data=digits, optimizer="adam", epochs=6, quiet=True)
    assert result["test_accuracy"] >= 0.95


def test_main_ends_with_test_accuracy_and_plots(digits, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "curves.png"
    train_digits.main(["--epochs", "2", "--hidden", "32", "--no-batch-norm", "--plot", str(plot)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 2 + 2  # the settings, an epoch per line, "wrote ...", the accuracy
    assert re.fullmatch(r"test accuracy: 0\.\d{4}", lines[-1])
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_compare_plot(tmp_path):
    pytest.importorskip("matplotlib")
    rows = compare_optimizers.compare(gaussian_blobs(0), epochs=2, trials=1, seed=0, quiet=True, hidden=(16,))
    plot = tmp_path / "compare.png"
    compare_optimizers.plot_curves(rows, plot)
    assert plot.read_bytes().startswith(b"\x89PNG")
