"""NumPy reference implementations: the test oracle, written for clarity, not speed.

Each function has the signature of its fused twin in fusedopt (one array or lists of arrays,
updated in place) and computes torch.optim's documented algorithm in the arrays' own dtype,
one NumPy operation at a time. Beside each formula is the textbook form (Goodfellow, Bengio,
Courville, Deep Learning, ch. 8: eps = learning rate, g = gradient, theta = params).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[Any]
Arrays = Array | Sequence[Array]  # one array, or one per tensor
OptionalArrays = Arrays | Sequence[Array | None] | None


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _zip(*args: OptionalArrays) -> Iterator[tuple[Any, ...]]:
    n = len(_as_list(args[0]))
    return zip(*[_as_list(a) if a is not None else [None] * n for a in args])


def _grad(grad: Array, param: Array, weight_decay: float, maximize: bool) -> Array:
    g = -grad if maximize else grad.copy()
    if weight_decay != 0:
        g = g + param.dtype.type(weight_decay) * param
    return g


def sgd_(params: Arrays, grads: Arrays, momentum_buffers: OptionalArrays = None, *, lr: float,
         momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
         maximize: bool = False, step: int | None = None) -> None:
    """SGD (Alg. 8.1), momentum (Alg. 8.2), Nesterov (Alg. 8.3), as torch.optim.SGD computes them.

    torch:     buf = mu * buf + (1 - dampening) * g   (buf = g on the first step)
               theta -= lr * (g + mu * buf if nesterov else buf)
    textbook:  v = alpha * v - eps * g;  theta += v   (lr inside the velocity; the two agree for
               constant lr with v = -lr * buf, and Nesterov's look-ahead gradient is rewritten
               at the current point)
    """
    # without momentum the buffers are not used (nor is their list's length), as in the kernel
    for p, grad, buf in _zip(params, grads, momentum_buffers if momentum != 0 else None):
        t = p.dtype.type
        g = _grad(grad, p, weight_decay, maximize)
        if momentum != 0:
            if step == 1:
                buf[...] = g
            else:
                buf[...] = t(momentum) * buf + t(1 - dampening) * g
            g = g + t(momentum) * buf if nesterov else buf
        p -= t(lr) * g


def adagrad_(params: Arrays, grads: Arrays, state_sums: Arrays, *, step: int, lr: float = 1e-2,
             lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10, maximize: bool = False) -> None:
    """AdaGrad (Alg. 8.4).

    torch:     r += g * g;  theta -= clr * g / (sqrt(r) + eps),  clr = lr / (1 + (step - 1) * lr_decay)
    textbook:  r += g * g;  theta -= eps / (delta + sqrt(r)) * g
    """
    clr = lr / (1 + (step - 1) * lr_decay)
    for p, grad, state_sum in _zip(params, grads, state_sums):
        t = p.dtype.type
        g = _grad(grad, p, weight_decay, maximize)
        state_sum += g * g
        p -= t(clr) * (g / (np.sqrt(state_sum) + t(eps)))


def rmsprop_(params: Arrays, grads: Arrays, square_avgs: Arrays, *, lr: float = 1e-2, alpha: float = 0.99,
             eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
             momentum_buffers: OptionalArrays = None, centered: bool = False, grad_avgs: OptionalArrays = None,
             maximize: bool = False, eps_inside_sqrt: bool = False) -> None:
    """RMSProp (Alg. 8.5; with momentum, close to Alg. 8.6).

    torch:     r = alpha * r + (1 - alpha) * g * g;  theta -= lr * g / (sqrt(r) + eps)
    textbook:  r = rho * r + (1 - rho) * g * g;      theta -= eps / sqrt(delta + r) * g
               (eps_inside_sqrt=True)
    centered subtracts the square of the running mean of g from r (an estimate of the variance).
    """
    for p, grad, square_avg, buf, grad_avg in _zip(params, grads, square_avgs, momentum_buffers, grad_avgs):
        t = p.dtype.type
        g = _grad(grad, p, weight_decay, maximize)
        square_avg[...] = t(alpha) * square_avg + t(1 - alpha) * (g * g)
        var = square_avg
        if centered:
            grad_avg += t(1 - alpha) * (g - grad_avg)
            var = square_avg - grad_avg * grad_avg
        avg = np.sqrt(var + t(eps)) if eps_inside_sqrt else np.sqrt(var) + t(eps)
        if momentum > 0:
            buf[...] = t(momentum) * buf + g / avg
            p -= t(lr) * buf
        else:
            p -= t(lr) * (g / avg)


def adam_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays, *, step: int, lr: float = 1e-3,
          beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
          decoupled_weight_decay: bool = False, amsgrad: bool = False, max_exp_avg_sqs: OptionalArrays = None,
          maximize: bool = False) -> None:
    """Adam (Alg. 8.7); AdamW with decoupled_weight_decay=True.

    torch:     m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g * g
               theta -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
    textbook:  s = rho1 * s + (1 - rho1) * g;    r = rho2 * r + (1 - rho2) * g * g
               s_hat = s / (1 - rho1**t);  r_hat = r / (1 - rho2**t)
               theta -= eps * s_hat / (sqrt(r_hat) + delta)
    (the same up to where delta sits relative to the bias correction: torch's form above).
    """
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    for p, grad, m, v, vmax in _zip(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs):
        t = p.dtype.type
        g = _grad(grad, p, 0.0 if decoupled_weight_decay else weight_decay, maximize)
        if decoupled_weight_decay:
            p *= t(1 - lr * weight_decay)
        m += t(1 - beta1) * (g - m)
        v[...] = t(beta2) * v + t(1 - beta2) * (g * g)
        if amsgrad:
            np.maximum(vmax, v, out=vmax)
            v = vmax
        denom = np.sqrt(v) / t(np.sqrt(bias_correction2)) + t(eps)
        p -= t(lr / bias_correction1) * (m / denom)


def adamw_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays, *, step: int, lr: float = 1e-3,
           beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-2,
           amsgrad: bool = False, max_exp_avg_sqs: OptionalArrays = None, maximize: bool = False) -> None:
    """AdamW: adam_ with decoupled weight decay (param *= 1 - lr * weight_decay first)."""
    adam_(params, grads, exp_avgs, exp_avg_sqs, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
          weight_decay=weight_decay, decoupled_weight_decay=True, amsgrad=amsgrad,
          max_exp_avg_sqs=max_exp_avg_sqs, maximize=maximize)


# ---- batch normalization ----------------------------------------------------------------------


def _channel_axis(x: Array, axis: int) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """The channel axis as a non-negative index, the axes reduced over, and the shape that
    broadcasts a per-channel vector against x."""
    c_axis = axis % x.ndim
    reduce_axes = tuple(a for a in range(x.ndim) if a != c_axis)
    bshape = [1] * x.ndim
    bshape[c_axis] = x.shape[c_axis]
    return c_axis, reduce_axes, tuple(bshape)


def batchnorm_forward(x: Array, weight: Array | None = None, bias: Array | None = None,
                      running_mean: Array | None = None, running_var: Array | None = None, *, training: bool = True,
                      momentum: float = 0.1, eps: float = 1e-5, axis: int = 1, relu: bool = False,
                      out: Array | None = None) -> tuple[Array, Array, Array]:
    """torch.nn.functional.batch_norm in float64 (Ioffe & Szegedy 2015, Alg. 1; Goodfellow
    et al., Deep Learning, 8.7.1). Returns (y, save_mean, save_invstd) in x's dtype and updates
    running_mean / running_var in place in training mode, as fusedopt.batchnorm_forward does.

        mean = sum(x) / n;  var = sum((x - mean)**2) / n                     (training)
        mean = running_mean;  var = running_var                              (eval)
        y = (x - mean) / sqrt(var + eps) * weight + bias;  y = max(0, y) if relu
        running = momentum * batch + (1 - momentum) * running                (var unbiased: * n / (n - 1))
    """
    c_axis, reduce_axes, bshape = _channel_axis(x, axis)
    C = x.shape[c_axis]
    n = x.size // C
    x64 = x.astype(np.float64)
    if training:
        mean = x64.mean(axis=reduce_axes)
        var = ((x64 - mean.reshape(bshape)) ** 2).mean(axis=reduce_axes)
        if running_mean is not None and running_var is not None:  # both or neither, as fusedopt checks
            running_mean[...] = momentum * mean + (1 - momentum) * running_mean.astype(np.float64)
            running_var[...] = momentum * var * n / (n - 1) + (1 - momentum) * running_var.astype(np.float64)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("eval mode normalizes with running_mean and running_var: both are needed")
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
    with np.errstate(divide="ignore"):  # var + eps == 0 gives inf, as torch
        invstd = 1.0 / np.sqrt(var + eps)
    w = np.ones(C) if weight is None else weight.astype(np.float64)
    b = np.zeros(C) if bias is None else bias.astype(np.float64)
    with np.errstate(invalid="ignore"):  # 0 * inf = nan, as torch
        y = (x64 - mean.reshape(bshape)) * invstd.reshape(bshape) * w.reshape(bshape) + b.reshape(bshape)
    if relu:
        y = np.where(y > 0, y, np.where(np.isnan(y), y, 0.0))  # relu(nan) = nan, as torch
    if out is not None:
        out[...] = y
        y = out
    return y.astype(x.dtype, copy=False), mean.astype(x.dtype), invstd.astype(x.dtype)


def batchnorm_backward(dy: Array, x: Array, weight: Array | None, save_mean: Array, save_invstd: Array, *,
                       axis: int = 1, training: bool = True, relu_output: Array | None = None,
                       out: Array | None = None) -> tuple[Array, Array | None, Array | None]:
    """The gradients of batchnorm_forward in float64: (dx, dweight, dbias) in x's dtype;
    dweight and dbias are None when weight is None.

        g = dy * (relu_output > 0)  (if relu_output is given);  xhat = (x - mean) * invstd
        dbias = sum(g);  dweight = sum(g * xhat)
        dx = invstd * w * (g - mean(g) - xhat * mean(g * xhat))              (training)
        dx = g * invstd * w                                                  (eval)
    """
    c_axis, reduce_axes, bshape = _channel_axis(x, axis)
    C = x.shape[c_axis]
    n = x.size // C
    g = dy.astype(np.float64)
    if relu_output is not None:
        g = np.where(relu_output > 0, g, 0.0)
    mean = save_mean.astype(np.float64).reshape(bshape)
    invstd = save_invstd.astype(np.float64).reshape(bshape)
    w = (np.ones(C) if weight is None else weight.astype(np.float64)).reshape(bshape)
    xhat = (x.astype(np.float64) - mean) * invstd
    dbias = g.sum(axis=reduce_axes)
    dweight = (g * xhat).sum(axis=reduce_axes)
    if training:
        dx = invstd * w * (g - dbias.reshape(bshape) / n - xhat * dweight.reshape(bshape) / n)
    else:
        dx = g * invstd * w
    if out is not None:
        out[...] = dx
        dx = out
    if weight is None:
        return dx.astype(x.dtype, copy=False), None, None
    return dx.astype(x.dtype, copy=False), dweight.astype(x.dtype), dbias.astype(x.dtype)
