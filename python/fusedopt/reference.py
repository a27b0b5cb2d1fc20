"""NumPy reference implementations: the test oracle, written for clarity, not speed.

Each function has the signature of its fused twin in fusedopt (one array or lists of arrays,
updated in place) and computes torch.optim's documented algorithm in the arrays' own dtype,
one NumPy operation at a time. Beside each formula is the textbook form (Goodfellow, Bengio,
Courville, Deep Learning, ch. 8: eps = learning rate, g = gradient, theta = params).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

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


# ---- the 8-bit blockwise code of optimizer state (csrc/kernels/quantize.h) -----------------------

QUANT_BLOCK = 256  # elements per block, one float32 scale (the block's absmax) per block


def _quant_offset(signed: bool) -> int:
    # k + offset is the float32's bits >> 20; the largest k (127 signed, 255 unsigned) is 1.0
    return 1016 - (127 if signed else 255)


def quantize_blockwise(values: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """float32 values -> (codes: uint8 of values' shape, scales: float32 (ceil(size / 256),)).

    Per block of 256 (the last may be partial) scale = absmax, and each element's code is
        signed:   sign bit | k,  k in 0..127;   unsigned: k in 0..255 (the magnitude)
    where k is |x| / scale rounded to the nearest value of the code (ties to the larger k):
        value(0) = 0,  value(k) = float32 with bits (k + offset) << 20   (3 mantissa bits)
    so that the largest k is exactly 1.0. Computed as the kernel does: y = |x| * float32(1 / scale),
    then the float's bits rounded at bit 20 (ties up). Below the smallest code, signed rounds to the nearer of
    0 and the smallest code, unsigned never rounds x != 0 to 0. Blocks with an inf or NaN: scale NaN,
    codes 0 (signed: the sign bits); blocks whose absmax < FLT_MIN: scale 0, codes 0 (and signs).
    """
    x = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    nblocks = -(-x.size // QUANT_BLOCK)
    padded = np.zeros(nblocks * QUANT_BLOCK, np.float32)
    padded[: x.size] = x
    bits = padded.view(np.uint32).reshape(nblocks, QUANT_BLOCK)
    magnitude = bits & np.uint32(0x7FFFFFFF)
    absmax_bits = magnitude.max(axis=1, initial=0)
    nonfinite = absmax_bits >= np.uint32(0x7F800000)
    absmax = absmax_bits.view(np.float32)
    usable = ~nonfinite & (absmax >= np.finfo(np.float32).tiny)
    inv = np.zeros(nblocks, np.float32)
    np.divide(np.float32(1), absmax, out=inv, where=usable)
    y = np.where(usable[:, None], magnitude, np.uint32(0)).view(np.float32) * inv[:, None]
    b = y.view(np.uint32)
    k = ((b + np.uint32(0x80000)) >> np.uint32(20)).astype(np.int32)
    k -= _quant_offset(signed)
    # signed: 0 or the smallest code, the nearer; unsigned: any x != 0 gets at least the smallest
    # (y itself may underflow to 0)
    if signed:
        smallest = y > np.uint32((_quant_offset(True) + 1) << 20).view(np.float32) * np.float32(0.5)
    else:
        smallest = (magnitude != 0) & usable[:, None]
    codes = np.maximum(k, smallest.astype(np.int32)).astype(np.uint32)
    if signed:
        codes |= (bits >> np.uint32(24)) & np.uint32(0x80)
    codes = np.where(nonfinite[:, None], codes & np.uint32(0x80), codes)  # 0 (signed: the sign)
    scales = np.where(nonfinite, np.float32(np.nan), np.where(usable, absmax, np.float32(0))).astype(np.float32)
    out: np.ndarray = codes.astype(np.uint8).reshape(-1)[: x.size].reshape(np.shape(values))
    return out, scales


def dequantize_blockwise(codes: np.ndarray, scales: np.ndarray, signed: bool) -> np.ndarray:
    """(codes, scales) -> float32 of codes' shape: value(k) * scale with value() as in
    quantize_blockwise (sign bit applied for signed codes)."""
    c = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1).astype(np.uint32)
    k = c & np.uint32(0x7F) if signed else c
    sign = (c & np.uint32(0x80)) << np.uint32(24) if signed else np.uint32(0)
    magnitude = np.where(k != 0, (k + np.uint32(_quant_offset(signed))) << np.uint32(20), np.uint32(0))
    per_element = np.repeat(np.asarray(scales, np.float32), QUANT_BLOCK)[: c.size]
    out: np.ndarray = (magnitude | sign).astype(np.uint32).view(np.float32) * per_element
    return out.reshape(np.shape(codes))


# ---- mixed precision: 16-bit storage, stochastic rounding, master weights --------------------

def _bfloat16_dtype() -> np.dtype:
    from ._tensors import _bfloat16

    return _bfloat16()


def to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 rounded to nearest even, by the kernels' integer rule: add
    0x7FFF + (bit 16) to the float's bits and keep the high half. inf stays inf; a NaN stays a
    NaN of the same sign and top payload bits, made quiet (bit 6 of the result set)."""
    return _bfloat16_round(x, None)


def stochastic_round_bfloat16(x: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 rounded up or down at random: add the low 16 bits of `bits` (uint32,
    one per element, as random_bits gives them: < 65536) to the float's bits and keep the high half, so
    x rounds away from the value truncated with probability (distance / ulp). inf and NaN as in
    to_bfloat16."""
    return _bfloat16_round(x, bits)


def _bfloat16_round(x: np.ndarray, bits: np.ndarray | None) -> np.ndarray:
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    if bits is None:
        add = np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))
    else:
        add = np.asarray(bits, dtype=np.uint32).reshape(b.shape) & np.uint32(0xFFFF)
    magnitude = b & np.uint32(0x7FFFFFFF)
    finite = magnitude <= np.uint32(0x7F7FFFFF)
    kept = (b >> np.uint32(16)) | np.where(magnitude > np.uint32(0x7F800000), np.uint32(0x40), np.uint32(0))
    out = np.where(finite, (b + np.where(finite, add, np.uint32(0))) >> np.uint32(16), kept)
    rounded: np.ndarray = out.astype(np.uint16).view(_bfloat16_dtype())
    return rounded


_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _lowbias32(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    mixed: np.ndarray = x ^ (x >> np.uint32(16))
    return mixed


def random_bits(seed: int, step: int, tensor: int, offset: int, n: int) -> np.ndarray:
    """The generator of stochastic rounding in NumPy (fusedopt._core.random_bits is the
    kernels'): 16 bits per element, half of one 32-bit hash, so that one hash serves two
    elements. Element i of tensor t at a step, with lo = i's low 32 bits, hashes the counter
    c = (lo >> 5) * 16 + (lo & 15) (the elements of each group of 32 pair up 16 apart) and
    gets half h = (lo >> 4) & 1 of lowbias32((c ^ a) + b), where (a, b) are the two halves of
    splitmix64 chained over seed, step, t and i >> 32. Returns the bits of elements
    offset .. offset + n - 1 as uint32 (< 65536)."""
    index = np.arange(offset, offset + n, dtype=np.uint64)
    out = np.empty(n, np.uint32)
    for hi in np.unique(index >> np.uint64(32)):
        k = _splitmix64(seed)
        for word in (step, tensor, int(hi)):
            k = _splitmix64(k ^ word)
        sel = (index >> np.uint64(32)) == hi
        lo = (index[sel] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        counter = (lo >> np.uint32(5)) * np.uint32(16) + (lo & np.uint32(15))
        hashed = _lowbias32((counter ^ np.uint32(k & 0xFFFFFFFF)) + np.uint32(k >> 32))
        out[sel] = (hashed >> (np.uint32(16) * ((lo >> np.uint32(4)) & np.uint32(1)))) & np.uint32(0xFFFF)
    return out


def _store(dst: np.ndarray, x: np.ndarray, bits: np.ndarray | None = None) -> None:
    """Write float32 x into dst in dst's dtype: bfloat16 by to_bfloat16 (or the stochastic rule
    when bits are given), float16 by NumPy's round to nearest even, float32 as it is."""
    if dst.dtype == np.float32:
        dst[...] = x
    elif dst.dtype == np.float16:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is the rounding's result
            dst[...] = x.astype(np.float16)
    else:
        dst.view(np.uint16)[...] = _bfloat16_round(x, bits).view(np.uint16)


def _widen(a: Any) -> np.ndarray:
    """An array, or 8-bit state (fusedopt.QuantizedState: .codes, .scales, .signed), as float32."""
    if hasattr(a, "codes"):
        return dequantize_blockwise(a.codes, a.scales, a.signed)
    wide: np.ndarray = a.astype(np.float32)
    return wide


def _store_state(dst: Any, x: np.ndarray) -> None:
    if hasattr(dst, "codes"):
        dst.codes[...], dst.scales[...] = quantize_blockwise(x, dst.signed)
    else:
        _store(dst, x)


def mixed_(update: Callable[..., Any], params: Any, grads: Any, *state: Any, param_copies: Any = None,
           stochastic_rounding: bool = False, seed: int | None = None, **kwargs: Any) -> None:
    """Any of this module's updates over 16-bit storage or 8-bit state, as the kernels run them:
    every array widened to float32 (8-bit state decoded by dequantize_blockwise), the float32
    update, the written arrays rounded back (8-bit state re-encoded by quantize_blockwise; params
    stochastically with stochastic_rounding, from random_bits(seed, step, tensor index,
    element index); everything else to nearest even), and param_copies (of float32 params)
    set to the updated params rounded to nearest even. State given by keyword (momentum_buffers,
    max_exp_avg_sqs, ...) is handled as state given by position. `step` (in kwargs) is also the
    rounding's step; rmsprop_ takes none, so it is removed before calling it."""
    step = kwargs.get("step")
    if update is rmsprop_:
        kwargs = {k: v for k, v in kwargs.items() if k != "step"}
    lists = [_as_list(params), _as_list(grads)] + [_as_list(s) for s in state]
    keyed = {k: _as_list(v) for k, v in kwargs.items()
             if isinstance(v, (np.ndarray, list, tuple)) or hasattr(v, "codes")}
    wide = [[_widen(a) for a in arrays] for arrays in lists]
    wide_keyed = {k: [_widen(a) for a in v] for k, v in keyed.items()}
    single = not isinstance(params, (list, tuple))
    pick: Callable[[list[np.ndarray]], Any] = (lambda v: v[0]) if single else (lambda v: v)
    update(*[pick(w) for w in wide], **{**kwargs, **{k: pick(v) for k, v in wide_keyed.items()}})
    for t, (dst, x) in enumerate(zip(lists[0], wide[0])):
        # stochastic_rounding needs seed and step (None fails in random_bits, as in the kernels' check)
        bits = random_bits(cast(int, seed), cast(int, step), t, 0, x.size) if stochastic_rounding else None
        _store(dst, x, bits)
    for arrays, new in list(zip(lists[2:], wide[2:])) + [(keyed[k], wide_keyed[k]) for k in keyed]:
        for dst, x in zip(arrays, new):
            _store_state(dst, x)
    if param_copies is not None:
        for dst, x in zip(_as_list(param_copies), wide[0]):
            _store(dst, x)
