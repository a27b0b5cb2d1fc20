"""Batch normalization forward and backward: keyword signatures over fusedopt._core's kernels.

The numbers are those of torch.nn.functional.batch_norm and its autograd backward.
fusedopt.reference holds the same two functions in plain NumPy (float64 inside).

x is a C-contiguous float32 or float64 array of rank >= 2. `axis` is the channel axis: 1 for
(N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W); -1 for channels-last (N, H, W, C) and the
like. Statistics reduce over every other axis. Per-channel arrays (weight, bias, running
statistics, save_mean, save_invstd) have shape (C,) and x's dtype. All arguments are checked
before anything is written: a call that raises leaves every array byte-identical. Arrays that
are written (out, running statistics) are never copied and must not overlap any other argument.
Without out, outputs of 64 KiB or more come from an output pool: the buffer of an earlier output
of the same size, taken back when its last reference (array, view, torch.from_numpy tensor) died,
else a new one. Fresh memory costs a page fault and zeroing per 4 KiB page at the first write
(~1 us a page on the KVM guest this was measured on), as much as the pass itself on large
outputs. The pool holds at most the largest total of its outputs that were alive at once
(output_buffer_stats()["high_water"]), dropping the oldest freed buffers first when a new size
needs room; release_output_buffers() frees what it keeps. A pool output starts at x's offset
within a 4 KiB page (the kernels' vectors then sit on cache lines of both).

Precision: per block of rows, deviations from a shift near the channel's mean are summed in
x's dtype over runs of at most 16 terms per vector lane, and those sums accumulate in float64;
blocks merge with Chan's formula. Never E[x^2] - E[x]^2: a block whose shift is more than ~0.7
standard deviations from its mean is summed again about its own mean (it is still in cache).
"""
import operator

import numpy as np

from . import _core
from .functional import Array, _argument_error


def _axis(axis: int, function: str) -> int:
    """axis as an int, as the update functions take step: pybind11 alone would truncate any number
    with __int__ (Fraction(7, 2) -> 3), and operator.index alone takes True for 1."""
    try:
        if isinstance(axis, (bool, np.bool_)):
            raise TypeError
        return operator.index(axis)
    except TypeError:
        raise TypeError(f"{function}: axis must be an int, got {axis!r} ({type(axis).__name__})") from None


def batchnorm_forward(x: Array, weight: Array | None = None, bias: Array | None = None,
                      running_mean: Array | None = None, running_var: Array | None = None, *, training: bool = True,
                      momentum: float = 0.1, eps: float = 1e-5, axis: int = 1, relu: bool = False,
                      out: Array | None = None) -> tuple[Array, Array, Array]:
    """Normalize each channel of x, then scale and shift it (torch.nn.functional.batch_norm).

    With n = the number of values per channel (x.size // C), per channel:

        training=True:   mean = sum(x) / n
                         var  = sum((x - mean)**2) / n                      (biased)
                         running_mean = momentum * mean + (1 - momentum) * running_mean
                         running_var  = momentum * var * n / (n - 1) + (1 - momentum) * running_var
                                                                            (unbiased; if given)
        training=False:  mean = running_mean,  var = running_var           (required)
        invstd = 1 / sqrt(var + eps)
        y = (x - mean) * (invstd * weight) + bias                           (weight 1, bias 0 if None)
        y = max(0, y)                                                       relu=True

    Returns (y, save_mean, save_invstd): save_mean = mean and save_invstd = invstd, in x's
    dtype, what batchnorm_backward needs in both modes. y is written to `out` when given
    (x's shape and dtype, C-contiguous, writable, not overlapping x) and returned.

    Training needs more than one value per channel. A channel with var + eps == 0 (constant,
    eps=0) gets invstd = inf and y = nan (as torch's eval mode computes it; torch's training
    kernel special-cases it to invstd = 0, y = bias, and F.batch_norm refuses eps <= 0 in
    training). momentum=None (torch's
    cumulative average) is not supported: pass 1 / (number of batches seen) yourself.
    """
    axis = _axis(axis, "batchnorm_forward")
    try:
        return _core.batchnorm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, axis,
                                       relu, out)
    except TypeError as e:
        raise _argument_error(e, batchnorm_forward, locals()) from None


def batchnorm_backward(dy: Array, x: Array, weight: Array | None, save_mean: Array, save_invstd: Array, *,
                       axis: int = 1, training: bool = True, relu_output: Array | None = None,
                       out: Array | None = None) -> tuple[Array, Array | None, Array | None]:
    """Gradients of batchnorm_forward (torch autograd of batch_norm), given dy = dL/dy.

    With g = dy, or dy where relu_output > 0 and 0 elsewhere (relu_output: the forward's y with
    relu=True, or a boolean mask), xhat = (x - save_mean) * save_invstd, w = weight (1 if None),
    and n values per channel, per channel:

        dbias   = sum(g)
        dweight = sum(g * xhat)
        training=True:   dx = save_invstd * w * (g - mean(g) - xhat * mean(g * xhat))
        training=False:  dx = g * save_invstd * w        (mean and invstd were constants)

    Returns (dx, dweight, dbias); dweight and dbias are None when weight is None (torch's
    affine=False). dx is written to `out` when given (x's shape and dtype, C-contiguous,
    writable, overlapping none of the inputs) and returned. dy and relu_output have x's shape;
    save_mean and save_invstd are the ones batchnorm_forward returned.
    """
    axis = _axis(axis, "batchnorm_backward")
    try:
        return _core.batchnorm_backward(dy, x, weight, save_mean, save_invstd, axis, training, relu_output, out)
    except TypeError as e:
        raise _argument_error(e, batchnorm_backward, locals()) from None


def release_output_buffers() -> int:
    """Frees the buffers that batchnorm_forward / batchnorm_backward keep for outputs made without
    out= (and so the fusedopt.torch batch-norm modules' outputs and input gradients); returns the
    bytes freed. Outputs still alive are not touched and return to the pool when they die; the
    pool's bound (high_water) starts again from them. Call it after training, or between phases
    whose shapes differ, to give the memory back."""
    return int(_core.output_pool_release())


def output_buffer_stats() -> dict[str, int]:
    """The output pool: live_bytes (outputs alive now: each output's bytes and a 4 KiB page, which
    places it at its input's page offset), free_bytes and free_buffers (kept for reuse), high_water
    (the largest live_bytes since the start or the last release: live_bytes + free_bytes never
    exceeds it)."""
    return {k: int(v) for k, v in _core.output_pool_stats().items()}
