"""Weight initializers (plain NumPy).

Shapes follow torch's convention: a linear weight is (out_features, in_features) and a
convolution weight is (out_channels, in_channels, *kernel_size). Every initializer takes
`rng`, which may be a numpy.random.Generator, an int seed, or None for fresh OS entropy;
the same seed always gives the same weights.

Why the scale matters: a unit computes z = sum_i w_i * x_i over fan_in inputs, so with
independent zero-mean weights Var(z) = fan_in * Var(w) * E[x^2]. Unless fan_in * Var(w)
undoes what the nonlinearity does to E[x^2], the signal grows or shrinks geometrically
with depth (Goodfellow et al., Deep Learning, sec. 8.4).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

# a shape as NumPy takes one: an int or a sequence of ints
ShapeLike = int | Sequence[int]
# a Generator, an int seed, or None for fresh OS entropy
RngLike = np.random.Generator | int | None

__all__ = [
    "fan_in_and_fan_out",
    "calculate_gain",
    "glorot_uniform",
    "glorot_normal",
    "kaiming_uniform",
    "kaiming_normal",
]


def fan_in_and_fan_out(shape: ShapeLike) -> tuple[int, int]:
    """Return (fan_in, fan_out) of a weight of this shape, by torch's rule.

    For shape (out, in, *kernel): receptive_field = prod(kernel) (1 for a linear layer),
    fan_in = in * receptive_field and fan_out = out * receptive_field, i.e. how many
    inputs feed one output unit and how many outputs one input unit feeds.
    """
    shape = _as_shape(shape)
    if len(shape) < 2:
        raise ValueError(
            f"fan in and fan out need a weight with at least 2 dimensions, got shape {shape}"
        )
    receptive_field = math.prod(shape[2:])
    return shape[1] * receptive_field, shape[0] * receptive_field


_LINEAR = ("linear", "identity", "sigmoid", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d")


def calculate_gain(nonlinearity: str, a: float | None = None) -> float:
    """Return the gain of torch.nn.init.calculate_gain for a nonlinearity.

    The gain g is chosen so that a layer with Var(w) = g^2 / fan keeps the second moment
    of its input: 1 for linear/identity/sigmoid and the convolutions, 5/3 for tanh, sqrt(2)
    for relu (relu zeroes half of a symmetric input, halving E[x^2]), sqrt(2 / (1 + a^2)) for
    leaky_relu with negative slope a (torch's default 0.01 when a is None), and 3/4 for selu.
    """
    if nonlinearity in _LINEAR:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        a = 0.01 if a is None else a
        if not math.isfinite(a):
            raise ValueError(f"leaky_relu negative slope must be finite, got {a}")
        return math.sqrt(2.0 / (1.0 + a * a))
    if nonlinearity == "selu":
        return 0.75
    raise ValueError(
        f"unknown nonlinearity {nonlinearity!r}; expected one of {', '.join(map(repr, _LINEAR))}, "
        "'tanh', 'relu', 'leaky_relu', 'selu'"
    )


def glorot_uniform(shape: ShapeLike, rng: RngLike = None, gain: float = 1.0,
                   dtype: DTypeLike = np.float32) -> NDArray[Any]:
    """Glorot/Xavier uniform: w ~ U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)).

    Glorot & Bengio (2010) want Var(w) = 1/fan_in to keep forward activations and
    Var(w) = 1/fan_out to keep backward gradients the same size for linear (or tanh near
    zero) units; Var(w) = 2 / (fan_in + fan_out) compromises between the two, and
    U(-a, a) has variance a^2 / 3.
    """
    fan_in, fan_out = fan_in_and_fan_out(shape)
    std = _glorot_std(fan_in, fan_out, gain)
    bound = math.sqrt(3.0) * std
    return _sample(lambda g, s: g.uniform(-bound, bound, size=s), shape, rng, dtype)


def glorot_normal(shape: ShapeLike, rng: RngLike = None, gain: float = 1.0,
                  dtype: DTypeLike = np.float32) -> NDArray[Any]:
    """Glorot/Xavier normal: w ~ N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out)).

    Same variance as glorot_uniform (see there for why), drawn from a normal.
    """
    fan_in, fan_out = fan_in_and_fan_out(shape)
    std = _glorot_std(fan_in, fan_out, gain)
    return _sample(lambda g, s: g.normal(0.0, std, size=s), shape, rng, dtype)


def kaiming_uniform(
    shape: ShapeLike, rng: RngLike = None, nonlinearity: str = "relu", a: float = 0.0, mode: str = "fan_in",
    dtype: DTypeLike = np.float32,
) -> NDArray[Any]:
    """Kaiming/He uniform: w ~ U(-b, b), b = gain * sqrt(3 / fan).

    Same variance as kaiming_normal (see there for why); U(-b, b) has variance b^2 / 3.
    """
    std = _kaiming_std(shape, nonlinearity, a, mode)
    bound = math.sqrt(3.0) * std
    return _sample(lambda g, s: g.uniform(-bound, bound, size=s), shape, rng, dtype)


def kaiming_normal(
    shape: ShapeLike, rng: RngLike = None, nonlinearity: str = "relu", a: float = 0.0, mode: str = "fan_in",
    dtype: DTypeLike = np.float32,
) -> NDArray[Any]:
    """Kaiming/He normal: w ~ N(0, std^2), std = gain / sqrt(fan).

    He et al. (2015): a ReLU zeroes half of its symmetric input, so E[relu(z)^2] =
    Var(z) / 2 and Glorot's Var(w) = 1/fan loses half the signal per layer. Doubling the
    variance (gain sqrt(2), see calculate_gain) keeps it constant at any depth.
    mode="fan_in" preserves the forward activations, mode="fan_out" the backward
    gradients; `a` is the negative slope for nonlinearity="leaky_relu".
    """
    std = _kaiming_std(shape, nonlinearity, a, mode)
    return _sample(lambda g, s: g.normal(0.0, std, size=s), shape, rng, dtype)


def _as_shape(shape: ShapeLike) -> tuple[int, ...]:
    # Accept an int like NumPy does, so a 1-D shape gets the "at least 2 dimensions" error;
    # operator.index rejects non-integer dimensions such as 3.5 instead of truncating them.
    dims = tuple(map(operator.index, shape)) if np.iterable(shape) else (operator.index(shape),)
    if any(d < 0 for d in dims):
        raise ValueError(f"shape must not have negative dimensions, got {dims}")
    return dims


def _check_gain(gain: float) -> None:
    if not (math.isfinite(gain) and gain >= 0.0):
        raise ValueError(f"gain must be a finite number >= 0, got {gain}")


def _glorot_std(fan_in: int, fan_out: int, gain: float) -> float:
    _check_gain(gain)
    if fan_in + fan_out == 0:
        raise ValueError("glorot initialization needs fan_in + fan_out > 0")
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


def _kaiming_std(shape: ShapeLike, nonlinearity: str, a: float, mode: str) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    gain = calculate_gain(nonlinearity, a)
    fan_in, fan_out = fan_in_and_fan_out(shape)
    fan = fan_in if mode == "fan_in" else fan_out
    if fan == 0:
        raise ValueError(f"kaiming initialization needs {mode} > 0")
    return gain / math.sqrt(fan)


def _sample(draw: Callable[[np.random.Generator, tuple[int, ...]], NDArray[np.float64]], shape: ShapeLike,
            rng: RngLike, dtype: DTypeLike) -> NDArray[Any]:
    # Draw in float64 and cast, so a seed gives the same weights (up to rounding) in any dtype.
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"dtype must be a floating point type, got {dtype}")
    generator = np.random.default_rng(rng)  # a Generator passes through unchanged
    return draw(generator, _as_shape(shape)).astype(dtype, copy=False)
