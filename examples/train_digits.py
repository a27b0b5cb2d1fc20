"""Train an MLP with batch normalization on scikit-learn's handwritten digits, with fusedopt.

    python examples/train_digits.py                  # Adam, 30 epochs, batch norm, Kaiming init
    python examples/train_digits.py --optimizer nesterov --no-batch-norm --plot digits.png

The data: load_digits() ships inside scikit-learn (no download), 1797 8x8 images of the
digits 0-9 as 64 pixel values; a fixed 80/20 train/test split drawn with the seed, features
standardized with the training set's mean and standard deviation.

The model, for hidden sizes (H_1, ..., H_k), on a minibatch x of shape (N, 64):

    h_i = a_{i-1} @ W_i.T              W_i: (H_i, H_{i-1}), a_0 = x
    a_i = relu(batchnorm(h_i))         one fused fusedopt.batchnorm_forward(..., relu=True)
    logits = a_k @ W_out.T + b_out     W_out: (10, H_k)
    loss = mean over the minibatch of -log softmax(logits)[label]

Without batch norm, a_i = relu(h_i + b_i). Forward and backward are written out by hand:
NumPy for the matmuls and the softmax, fusedopt for batch norm; each minibatch ends with one
fusedopt.optim step over all parameters. Weights come from fusedopt.init, biases start at 0,
batch norm's scale at 1 and shift at 0. At test time batch norm uses its running statistics.

As a library (the tests and compare_optimizers.py import it):

    result = train(optimizer="adam", epochs=5, quiet=True)     # or train(argparse.Namespace)
    result["test_accuracy"], result["history"]["test_accuracy"]
    train(data=(x_train, y_train, x_test, y_test))             # any other dataset
"""
import argparse
import os
import time
from dataclasses import dataclass

# One BLAS thread (unless the caller chose): the matmuls here are small, at most (1438, 128) @
# (128, 128), and on a busy machine a second BLAS thread waiting for a core turns a 30 us matmul
# into 16 ms. Only takes effect if NumPy is not loaded yet.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import init, optim  # noqa: E402

# name -> (optimizer class, its hyperparameters other than lr)
OPTIMIZERS = {
    "sgd": (optim.SGD, {}),
    "momentum": (optim.SGD, {"momentum": 0.9}),
    "nesterov": (optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "adagrad": (optim.Adagrad, {}),
    "rmsprop": (optim.RMSprop, {}),
    "adam": (optim.Adam, {}),
    "adamw": (optim.AdamW, {}),
}
# A learning rate that works for each, with or without batch norm. With momentum 0.9 a
# steady gradient moves params lr / (1 - 0.9) = 10 lr per step, hence 10x less than plain SGD.
DEFAULT_LR = {
    "sgd": 0.1,
    "momentum": 0.01,
    "nesterov": 0.01,
    "adagrad": 0.03,
    "rmsprop": 1e-3,
    "adam": 1e-3,
    "adamw": 1e-3,
}
BN_MOMENTUM = 0.1  # running = BN_MOMENTUM * batch statistic + (1 - BN_MOMENTUM) * running
BN_EPS = 1e-5


def parse_hidden(text):
    """"128,128" -> (128, 128): the hidden layers' sizes."""
    try:
        sizes = tuple(int(size) for size in text.split(",") if size.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer sizes such as 128,128, got {text!r}") from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return sizes


def positive_int(text):
    """argparse type of a count (epochs, batch size, ...): an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adam")
    parser.add_argument("--epochs", type=positive_int, default=30)
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default per optimizer: " +
                             ", ".join(f"{name} {lr:g}" for name, lr in DEFAULT_LR.items()) + ")")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--init", choices=["glorot", "kaiming"], default="kaiming")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=parse_hidden, default=(128, 128), help="hidden layer sizes (default 128,128)")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of the loss and accuracy curves")
    parser.add_argument("--quiet", action="store_true", help="print only the final test accuracy")
    return parser


# ---- data -----------------------------------------------------------------------------------------

def random_split(x, y, fraction, seed):
    """(x_a, y_a, x_b, y_b): a random `fraction` of the rows held out as (x_b, y_b), the same for a seed."""
    # the split's own random stream, independent of the model's default_rng(seed)
    order = np.random.default_rng([seed, 1]).permutation(len(y))
    n_held_out = round(fraction * len(y))
    kept, held_out = order[n_held_out:], order[:n_held_out]
    return x[kept], y[kept], x[held_out], y[held_out]


def load_digits_split(seed, test_fraction=0.2):
    """(x_train, y_train, x_test, y_test) of scikit-learn's digits: x (N, 64) float32 pixels 0..16, y (N,) 0..9."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    return random_split(digits.data.astype(np.float32), digits.target, test_fraction, seed)


def standardize(x_train, x_test):
    """Both sets with each feature shifted and scaled to mean 0, std 1 on the training set."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1  # a feature constant over the training set (corner pixels) is just centered
    return (x_train - mean) / std, (x_test - mean) / std


# ---- the model --------------------------------------------------------------------------------------

@dataclass
class MLP:
    params: dict    # name -> float32 array, updated in place by the optimizer
    buffers: dict   # batch norm running statistics: name -> (H_i,) float32 array
    n_hidden: int
    batch_norm: bool


def init_mlp(n_inputs, hidden, n_classes, *, batch_norm, init_scheme, rng):
    """A new MLP: weights from fusedopt.init (drawn from rng), biases 0, batch norm scale 1 and shift 0."""
    sizes = [n_inputs, *hidden]
    params, buffers = {}, {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        # weights (fan_out, fan_in), torch's layout: a row per output unit
        if init_scheme == "kaiming":
            params[f"fc{i}.weight"] = init.kaiming_normal((fan_out, fan_in), rng, nonlinearity="relu")
        else:
            params[f"fc{i}.weight"] = init.glorot_uniform((fan_out, fan_in), rng)
        if batch_norm:
            # no bias before batch norm: subtracting the batch mean would cancel it
            params[f"bn{i}.weight"] = np.ones(fan_out, np.float32)
            params[f"bn{i}.bias"] = np.zeros(fan_out, np.float32)
            buffers[f"bn{i}.running_mean"] = np.zeros(fan_out, np.float32)
            buffers[f"bn{i}.running_var"] = np.ones(fan_out, np.float32)
        else:
            params[f"fc{i}.bias"] = np.zeros(fan_out, np.float32)
    # the output layer feeds the softmax, no ReLU: gain 1
    if init_scheme == "kaiming":
        params["out.weight"] = init.kaiming_normal((n_classes, sizes[-1]), rng, nonlinearity="linear")
    else:
        params["out.weight"] = init.glorot_uniform((n_classes, sizes[-1]), rng)
    params["out.bias"] = np.zeros(n_classes, np.float32)
    return MLP(params, buffers, len(hidden), batch_norm)


@dataclass
class HiddenLayerCache:
    h: np.ndarray            # (N, H) pre-activation, a_prev @ W.T (+ b)
    a: np.ndarray            # (N, H) activation, relu(batchnorm(h)) or relu(h)
    save_mean: np.ndarray    # (H,) batch norm's batch mean, None without batch norm
    save_invstd: np.ndarray  # (H,) batch norm's 1 / sqrt(var + eps), None without batch norm


def forward(model, x, *, training):
    """logits (N, classes) of x (N, D), and what backward needs. training=False: batch norm uses
    (and leaves alone) its running statistics; training=True: batch statistics, running ones updated."""
    params = model.params
    layers = []
    a = x
    for i in range(model.n_hidden):
        # h = a @ W.T: (N, H_{i-1}) @ (H_{i-1}, H_i) -> (N, H_i)
        h = a @ params[f"fc{i}.weight"].T
        if model.batch_norm:
            # a = relu((h - mean) * invstd * weight + bias), per column (axis=1 of (N, H_i))
            a, save_mean, save_invstd = fusedopt.batchnorm_forward(
                h, params[f"bn{i}.weight"], params[f"bn{i}.bias"],
                model.buffers[f"bn{i}.running_mean"], model.buffers[f"bn{i}.running_var"],
                training=training, momentum=BN_MOMENTUM, eps=BN_EPS, axis=1, relu=True)
        else:
            h += params[f"fc{i}.bias"]
            a = np.maximum(h, 0)
            save_mean = save_invstd = None
        layers.append(HiddenLayerCache(h, a, save_mean, save_invstd))
    # logits = a @ W_out.T + b_out: (N, H_k) @ (H_k, classes) -> (N, classes)
    logits = a @ params["out.weight"].T + params["out.bias"]
    return logits, (x, layers)


def cross_entropy(logits, labels):
    """The mean over the batch of -log softmax(logits)[label], and its gradient (N, classes) w.r.t. logits."""
    n = len(labels)
    rows = np.arange(n)
    # log softmax(z) = (z - max z) - log(sum(exp(z - max z))): after the shift every exp() is <= 1
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[rows, labels].mean(dtype=np.float64)
    # d loss / d logits = (softmax(z) - onehot(label)) / N
    dlogits = np.exp(log_probs)
    dlogits[rows, labels] -= 1
    dlogits /= n
    return float(loss), dlogits


def backward(model, cache, dlogits):
    """The gradient of the loss w.r.t. every param (name -> array of the param's shape), from
    dlogits = d loss / d logits (N, classes) and the cache of a forward with training=True."""
    params = model.params
    x, layers = cache
    grads = {}
    a = layers[-1].a if layers else x
    # logits = a @ W_out.T + b_out  =>  dW_out = dlogits.T @ a, db_out = sum_n dlogits, da = dlogits @ W_out
    grads["out.weight"] = dlogits.T @ a
    grads["out.bias"] = dlogits.sum(axis=0)
    da = dlogits @ params["out.weight"]
    for i in reversed(range(model.n_hidden)):
        layer = layers[i]
        if model.batch_norm:
            # through the fused relu (passing where a > 0) and batch norm in one call
            dh, grads[f"bn{i}.weight"], grads[f"bn{i}.bias"] = fusedopt.batchnorm_backward(
                da, layer.h, params[f"bn{i}.weight"], layer.save_mean, layer.save_invstd,
                axis=1, training=True, relu_output=layer.a)
        else:
            # a = max(h, 0): the gradient passes where h > 0
            dh = da * (layer.h > 0)
            grads[f"fc{i}.bias"] = dh.sum(axis=0)
        a_prev = layers[i - 1].a if i > 0 else x
        # h = a_prev @ W.T  =>  dW = dh.T @ a_prev: (H_i, N) @ (N, H_{i-1}), da_prev = dh @ W
        grads[f"fc{i}.weight"] = dh.T @ a_prev
        if i > 0:
            da = dh @ params[f"fc{i}.weight"]
    return grads


def evaluate(model, x, y):
    """(mean cross-entropy, accuracy) on (x, y), batch norm in eval mode."""
    logits, _ = forward(model, x, training=False)
    loss, _ = cross_entropy(logits, y)
    return loss, float(np.mean(logits.argmax(axis=1) == y))


def make_optimizer(name, model, lr):
    """The fusedopt.optim optimizer `name` over the model's params, and the names of its two param
    groups' params: the weight matrices, then the vectors (biases, batch norm's scale and shift),
    which get no weight decay (AdamW's)."""
    matrices = [key for key, param in model.params.items() if param.ndim == 2]
    vectors = [key for key, param in model.params.items() if param.ndim == 1]
    optimizer_class, hyperparameters = OPTIMIZERS[name]
    groups = [{"params": [model.params[n] for n in matrices]},
              {"params": [model.params[n] for n in vectors], "weight_decay": 0.0}]
    return optimizer_class(groups, lr=lr, **hyperparameters), (matrices, vectors)


# ---- training -----------------------------------------------------------------------------------------

def train(args=None, data=None, **options):
    """Train one model; returns {"history": {...}, "test_accuracy": final test accuracy, "lr": lr used}.

    args: an argparse.Namespace from make_parser() (or None); keyword options override it, e.g.
    train(optimizer="sgd", epochs=3, quiet=True); what neither gives takes make_parser()'s default.
    data: (x_train, y_train, x_test, y_test) with x of shape (N, D) and y integer labels 0..C-1,
    standardized here; None: the digits split with the seed. The "test" set is whatever data's
    second pair is (compare_optimizers.py passes a validation set there while tuning).
    history: lists with one value per epoch: train_loss (the mean minibatch loss), train_accuracy,
    test_loss, test_accuracy (eval mode, after the epoch) and epoch_ms (the time of the epoch's
    minibatch steps).
    """
    config = vars(make_parser().parse_args([]))
    unknown = set(options) - set(config)
    if unknown:
        raise TypeError(f"train() got unknown option(s) {sorted(unknown)}; it takes {sorted(config)}")
    config.update(vars(args) if args is not None else {})
    config.update(options)
    optimizer_name, epochs = config["optimizer"], config["epochs"]
    batch_size, seed = config["batch_size"], config["seed"]
    lr = DEFAULT_LR[optimizer_name] if config["lr"] is None else config["lr"]

    x_train, y_train, x_test, y_test = load_digits_split(seed) if data is None else data
    x_train, x_test = standardize(np.asarray(x_train, np.float32), np.asarray(x_test, np.float32))
    n_train, n_classes = len(y_train), int(max(y_train.max(), y_test.max())) + 1
    batch_size = min(batch_size, n_train)
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if config["batch_norm"] and batch_size < 2:
        raise ValueError("batch norm needs minibatches of at least 2 samples")

    rng = np.random.default_rng(seed)  # the weights, then each epoch's shuffle
    model = init_mlp(x_train.shape[1], config["hidden"], n_classes, batch_norm=config["batch_norm"],
                     init_scheme=config["init"], rng=rng)
    optimizer, (matrices, vectors) = make_optimizer(optimizer_name, model, lr)
    if not config["quiet"]:
        print(f"{optimizer_name} lr {lr:g}, batch norm {'on' if config['batch_norm'] else 'off'}, "
              f"{config['init']} init, hidden {config['hidden']}, batch {batch_size}, "
              f"{n_train} train / {len(y_test)} test samples")

    history = {key: [] for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch_ms")}
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(n_train)
        losses = []
        # full minibatches only: the leftover few samples would give noisy batch statistics
        for first in range(0, n_train - batch_size + 1, batch_size):
            batch = order[first:first + batch_size]
            logits, cache = forward(model, x_train[batch], training=True)
            loss, dlogits = cross_entropy(logits, y_train[batch])
            grads = backward(model, cache, dlogits)
            optimizer.step([[grads[n] for n in matrices], [grads[n] for n in vectors]])
            losses.append(loss)
        history["epoch_ms"].append(1000 * (time.perf_counter() - start))
        history["train_loss"].append(float(np.mean(losses)))
        _, train_accuracy = evaluate(model, x_train, y_train)
        test_loss, test_accuracy = evaluate(model, x_test, y_test)
        history["train_accuracy"].append(train_accuracy)
        history["test_loss"].append(test_loss)
        history["test_accuracy"].append(test_accuracy)
        if not config["quiet"]:
            print(f"epoch {epoch:3d}/{epochs}  train loss {history['train_loss'][-1]:.4f}  "
                  f"train acc {train_accuracy:.4f}  test loss {test_loss:.4f}  test acc {test_accuracy:.4f}  "
                  f"({history['epoch_ms'][-1]:.1f} ms)")
    return {"history": history, "test_accuracy": history["test_accuracy"][-1], "lr": lr}


def plot_history(history, path, title=""):
    """Write a PNG of the loss (left) and accuracy (right) per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["train_loss"]) + 1)
    fig, (ax_loss, ax_accuracy) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, history["train_loss"], label="train (mean over the epoch's minibatches)")
    ax_loss.plot(epochs, history["test_loss"], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_accuracy.plot(epochs, history["train_accuracy"], label="train")
    ax_accuracy.plot(epochs, history["test_accuracy"], label="test")
    ax_accuracy.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_accuracy):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = make_parser().parse_args(argv)
    result = train(args)
    if args.plot:
        lr = result["lr"]
        plot_history(result["history"], args.plot,
                     f"digits MLP {args.hidden}, {args.optimizer} lr {lr:g}, "
                     f"batch norm {'on' if args.batch_norm else 'off'}, {args.init} init")
        if not args.quiet:
            print(f"wrote {args.plot}")
    print(f"test accuracy: {result['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
