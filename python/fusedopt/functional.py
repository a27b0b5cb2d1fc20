"""The in-place update functions: keyword-only signatures over fusedopt._core's kernels.

Every function takes one ndarray per argument, or equal-length lists of them (the whole list
is one C++ call), and updates params and state in place. All arguments are
checked before anything is written: a call that raises leaves every array byte-identical.
Arrays must be C-contiguous and writable where updated, and an array that is written must not
share memory with another (grads, only read but with unscale_grads=True, may: params given one
grad array); they are never copied.

dtypes (P is the params'):
- params: float32, float64, bfloat16 (ml_dtypes.bfloat16) or float16, one for all. Math is
  float32 (float64 for float64 params) whatever is stored.
- grads: P, or bfloat16/float16 for float32 params (a low-precision backward); any mix (a
  model's weights with bfloat16 grads beside its biases' float32 ones).
- state: float32 or bfloat16 (any mix) for float32/bfloat16/float16 params; float64 for float64.
- param_copies=: bfloat16/float16 arrays beside float32 params (the master weights), written in
  the same pass with the updated params rounded to nearest even (as DeepSpeed's CPU Adam).
- 16-bit results round to nearest even; stochastic_rounding=True (bfloat16 params, with seed=
  and step) rounds the params up or down with probability by distance instead, with random bits
  from (seed, step, tensor index in the list, element index): the same bits on every ISA and
  thread count (_core.random_bits returns them).
A bad combination is a TypeError/ValueError naming the argument, before anything is written.

The formulas are torch.optim's (see each docstring and docs/algorithms.md); `step` is the
1-based number of the step being taken. fusedopt.reference holds the same functions in NumPy.

Mixed precision and overflow, for every update function:
- grad_scale: the grads were computed from a loss multiplied by grad_scale; the kernel
  multiplies them by 1 / grad_scale as it reads them (torch's GradScaler.unscale_, fused).
- unscale_grads=True (with grad_scale): the kernel also writes them back so multiplied (not
  negated by maximize) in the same pass, as torch's fused optimizers leave the grads after a
  GradScaler step; grads must then be writable, and share memory with no other array. Not when
  the step is skipped.
- skip_if_nonfinite: one read-only pass over the grads first; if any is inf or NaN once
  multiplied by 1 / grad_scale (as the update would use it), nothing is written and the
  function returns False (torch's GradScaler skipping optimizer.step()).

A wrongly typed or out-of-range scalar argument (step=1.5, lr="0.001", lr=10**400, step=2**63)
is a TypeError / ValueError naming it.
The update functions return True when the step was applied.
"""
from __future__ import annotations

import ast
import functools
import inspect
import itertools
import math
import operator
import re
import textwrap
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _core
from ._tensors import to_ndarray

Array = NDArray[Any]
Arrays = Array | Sequence[Array]  # one array, or a list (tuple) of them, one per tensor
if TYPE_CHECKING:
    from .lowbit import QuantizedState

    # optimizer state: arrays, or QuantizedState (8-bit blockwise) where the kernel takes it
    StateArrays: TypeAlias = Arrays | QuantizedState | Sequence[Array | QuantizedState]

# ---- errors that name the argument ----------------------------------------------------------------
#
# The _core functions take their scalars as C++ double / long long / bool (checks.h's Flag, which
# refuses the None that pybind11's own bool takes as False), and pybind11 refuses a value it
# cannot convert (1.5 for an int, "0.001" or 10**400 for a float, None for a bool) with
# a TypeError that lists the argument types but names no argument. Each public function catches
# that TypeError, and only then (the normal call pays nothing for a try block) this works out
# which of its arguments pybind11 refused, from the types in pybind11's message and the names
# the function passes at each position of its _core call.

_INT64_MAX = 2**63 - 1
_UNSIGNED = frozenset({"seed"})  # the integer arguments taken as unsigned 64-bit (the others: signed)


def _refusal(kind: str, value: Any, unsigned: bool = False) -> str | None:
    """Why pybind11 refuses value for a parameter of type `kind` (as its message spells it), or None."""
    optional = kind.endswith("| None")
    kind = kind.removesuffix("| None").strip()
    if kind not in ("bool",) and "Supports" not in kind or value is None and optional:
        return None  # object (arrays, lists, ...): the C++ checks name it; or an accepted None
    accepts = {"bool": "a bool", "int": "an int", "float": "a real number (int or float)"}[
        "bool" if kind == "bool" else "float" if "SupportsFloat" in kind else "int"]
    accepts += " or None" if optional else ""
    if value is None:
        return f"must be {accepts}"
    if kind == "bool":
        return None if hasattr(type(value), "__bool__") else f"must be {accepts}"
    if isinstance(value, (str, bytes)) or not any(hasattr(type(value), m)
                                                   for m in ("__float__", "__index__", "__int__")):
        return f"must be {accepts}"
    if "SupportsFloat" in kind:
        try:
            float(value)
        except OverflowError:
            return "is too large for a float (at most ~1.8e308)"
        except (TypeError, ValueError):
            return f"must be {accepts}"
        return None
    # integers as operator.index takes them (the bindings' Step/Seed): not a bool, not a float,
    # nor a Decimal or Fraction that int() would truncate
    if isinstance(value, (bool, np.bool_)) or not hasattr(type(value), "__index__"):
        return f"must be {accepts}"
    if unsigned and not 0 <= operator.index(value) < 2**64:
        return "is out of range (must be in [0, 2**64))"
    if not unsigned and not -_INT64_MAX - 1 <= operator.index(value) <= _INT64_MAX:
        return "is out of range (must be less than 2**63)"
    return None


@functools.cache
def _call_argument_names(function: Callable[..., Any]) -> tuple[str | None, ...]:
    """The names function passes at each position of its _core call (None for a constant), read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "_core"):
            return tuple(arg.id if isinstance(arg, ast.Name) else None for arg in node.args)
    raise LookupError(f"no _core call in {function.__name__}")


def _argument_error(error: TypeError, function: Callable[..., Any], arguments: dict[str, Any]) -> Exception:
    """error (pybind11's TypeError) as a TypeError / ValueError naming the argument of `function`
    (called with `arguments`, its locals) that pybind11 refused, and saying what is accepted; the
    original error when it is not pybind11's refusal or no argument is found to blame."""
    message = str(error)
    if "incompatible function arguments" not in message:
        return error
    try:
        names = _call_argument_names(function)
    except (OSError, TypeError, LookupError, SyntaxError):  # no source: keep pybind11's message
        return error
    kinds = re.findall(r"arg(\d+): (.*?)(?=, arg\d+: |\) -> )", message.split("\n")[1])
    for position, kind in kinds:
        name = names[int(position)] if int(position) < len(names) else None
        if name is None or name not in arguments:
            continue
        value = arguments[name]
        reason = _refusal(kind, value, name in _UNSIGNED)
        if reason is not None:
            exception = ValueError if "out of range" in reason or "too large" in reason else TypeError
            shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
            return exception(f"{function.__name__}: {name} {reason}, got {shown} ({type(value).__name__})")
    return error


def sgd_(params: Arrays, grads: Arrays, momentum_buffers: StateArrays | None = None, *, lr: float,
         momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
         maximize: bool = False, step: int | None = None, grad_scale: float | None = None,
         unscale_grads: bool = False, skip_if_nonfinite: bool = False, param_copies: Arrays | None = None,
         stochastic_rounding: bool = False, seed: int | None = None) -> bool:
    """SGD with optional momentum / Nesterov momentum (torch.optim.SGD).

        g = -grad if maximize else grad;  g += weight_decay * param
        buf = g                                  on the first step (step == 1)
        buf = momentum * buf + (1 - dampening) * g   afterwards (step None or > 1)
        g = g + momentum * buf if nesterov else buf
        param -= lr * g

    momentum_buffers is required when momentum > 0; with step=1 their contents are ignored
    and overwritten with g, as torch initializes its buffers. stochastic_rounding needs step.
    """
    try:
        return _core.sgd(params, grads, momentum_buffers, lr, momentum, dampening, nesterov, weight_decay, maximize,
                         step, grad_scale, unscale_grads, skip_if_nonfinite, param_copies, stochastic_rounding, seed)
    except TypeError as e:
        raise _argument_error(e, sgd_, locals()) from None


def adagrad_(params: Arrays, grads: Arrays, state_sums: StateArrays, *, step: int, lr: float = 1e-2,
             lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10, maximize: bool = False,
             grad_scale: float | None = None, unscale_grads: bool = False, skip_if_nonfinite: bool = False,
             param_copies: Arrays | None = None, stochastic_rounding: bool = False,
             seed: int | None = None) -> bool:
    """AdaGrad (torch.optim.Adagrad).

        g = -grad if maximize else grad;  g += weight_decay * param
        clr = lr / (1 + (step - 1) * lr_decay)
        state_sum += g * g
        param -= clr * g / (sqrt(state_sum) + eps)
    """
    try:
        return _core.adagrad(params, grads, state_sums, step, lr, lr_decay, weight_decay, eps, maximize, grad_scale,
                             unscale_grads, skip_if_nonfinite, param_copies, stochastic_rounding, seed)
    except TypeError as e:
        raise _argument_error(e, adagrad_, locals()) from None


def rmsprop_(params: Arrays, grads: Arrays, square_avgs: StateArrays, *, lr: float = 1e-2, alpha: float = 0.99,
             eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
             momentum_buffers: StateArrays | None = None, centered: bool = False,
             grad_avgs: StateArrays | None = None, maximize: bool = False, eps_inside_sqrt: bool = False,
             grad_scale: float | None = None, unscale_grads: bool = False, skip_if_nonfinite: bool = False,
             param_copies: Arrays | None = None, stochastic_rounding: bool = False, seed: int | None = None,
             step: int | None = None) -> bool:
    """RMSProp (torch.optim.RMSprop), optionally centered and with momentum.

        g = -grad if maximize else grad;  g += weight_decay * param
        square_avg = alpha * square_avg + (1 - alpha) * g * g
        grad_avg = alpha * grad_avg + (1 - alpha) * g              centered
        var = square_avg - grad_avg**2 if centered else square_avg
        avg = sqrt(var) + eps        (eps_inside_sqrt: sqrt(var + eps), the textbook form)
        buf = momentum * buf + g / avg;  param -= lr * buf         momentum > 0
        param -= lr * g / avg                                       otherwise

    momentum_buffers (zeros at the start) are required when momentum > 0, grad_avgs (zeros at
    the start) when centered. step (1-based) is used only by stochastic_rounding, which needs it.
    """
    try:
        return _core.rmsprop(params, grads, square_avgs, lr, alpha, eps, weight_decay, momentum, momentum_buffers,
                             centered, grad_avgs, maximize, eps_inside_sqrt, grad_scale, unscale_grads,
                             skip_if_nonfinite, param_copies, stochastic_rounding, seed, step)
    except TypeError as e:
        raise _argument_error(e, rmsprop_, locals()) from None


def adam_(params: Arrays, grads: Arrays, exp_avgs: StateArrays, exp_avg_sqs: StateArrays, *, step: int,
          lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
          decoupled_weight_decay: bool = False, amsgrad: bool = False, max_exp_avg_sqs: StateArrays | None = None,
          maximize: bool = False, grad_scale: float | None = None, unscale_grads: bool = False,
          skip_if_nonfinite: bool = False, param_copies: Arrays | None = None, stochastic_rounding: bool = False,
          seed: int | None = None) -> bool:
    """Adam (torch.optim.Adam; with decoupled_weight_decay=True, torch.optim.AdamW).

        g = -grad if maximize else grad
        g += weight_decay * param                   (L2, decoupled_weight_decay=False)
        param *= 1 - lr * weight_decay              (decoupled_weight_decay=True)
        exp_avg = beta1 * exp_avg + (1 - beta1) * g
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
        max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq); use it below     amsgrad
        denom = sqrt(exp_avg_sq) / sqrt(1 - beta2**step) + eps
        param -= lr / (1 - beta1**step) * exp_avg / denom

    max_exp_avg_sqs (zeros at the start) are required when amsgrad=True.
    """
    try:
        return _core.adam(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay,
                          decoupled_weight_decay, amsgrad, max_exp_avg_sqs, maximize, grad_scale, unscale_grads,
                          skip_if_nonfinite, param_copies, stochastic_rounding, seed)
    except TypeError as e:
        raise _argument_error(e, adam_, locals()) from None


def adamw_(params: Arrays, grads: Arrays, exp_avgs: StateArrays, exp_avg_sqs: StateArrays, *, step: int,
           lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-2,
           amsgrad: bool = False, max_exp_avg_sqs: StateArrays | None = None, maximize: bool = False,
           grad_scale: float | None = None, unscale_grads: bool = False, skip_if_nonfinite: bool = False,
           param_copies: Arrays | None = None, stochastic_rounding: bool = False,
           seed: int | None = None) -> bool:
    """AdamW (torch.optim.AdamW): adam_ with decoupled weight decay, default weight_decay=1e-2."""
    try:
        return _core.adam(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay, True,
                          amsgrad, max_exp_avg_sqs, maximize, grad_scale, unscale_grads, skip_if_nonfinite,
                          param_copies, stochastic_rounding, seed)
    except TypeError as e:
        raise _argument_error(e, adamw_, locals()) from None


def all_finite(grads: Arrays, grad_scale: float | None = None) -> bool:
    """True when no element of grads (an array or a list of them, float32, float64, bfloat16 or
    float16, one dtype for all) is inf or NaN: one SIMD pass.

    With grad_scale, the elements checked are grad * (1 / grad_scale) in the grads' dtype (in
    float32 for 16-bit grads), the gradients an update with that grad_scale uses (a finite float32
    3e38 is inf once divided by 0.5).
    """
    try:
        return _core.all_finite(grads, grad_scale)
    except TypeError as e:
        raise _argument_error(e, all_finite, locals()) from None


def grad_norm(grads: Arrays, norm_type: float = 2.0) -> float:
    """The norm of all grads taken together, (sum |g|**p)**(1/p) or max |g| for inf, summed in float64.
    Grads: float32, float64, bfloat16 or float16 (one dtype for all)."""
    try:
        return _core.grad_norm(grads, norm_type)
    except TypeError as e:
        raise _argument_error(e, grad_norm, locals()) from None


def clip_grad_norm_(grads: Arrays, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """torch.nn.utils.clip_grad_norm_ over NumPy grads: scale them in place so their total norm is
    at most max_norm, and return the total norm before clipping.

        total_norm = grad_norm(grads, norm_type)        (one pass; float64 sums)
        grads *= min(1, max_norm / (total_norm + 1e-6))  (skipped when that is 1)

    max_norm=inf only computes the norm (nothing is clipped), as in torch. A non-finite total
    norm raises RuntimeError with error_if_nonfinite=True (grads unchanged); otherwise grads are
    scaled by the resulting NaN/0 factor, as torch does. bfloat16/float16 grads are scaled in
    float32 and rounded back to nearest even.
    """
    try:
        return _core.clip_grad_norm_(grads, max_norm, norm_type, error_if_nonfinite)
    except TypeError as e:
        raise _argument_error(e, clip_grad_norm_, locals()) from None


def clip_grad_value_(grads: Arrays, clip_value: float) -> None:
    """torch.nn.utils.clip_grad_value_: clamp every gradient element to [-clip_value, clip_value]
    (for bfloat16/float16 grads, the bounds rounded to nearest even; clip_value=inf: no change)."""
    try:
        _core.clip_grad_value_(grads, clip_value)
    except TypeError as e:
        raise _argument_error(e, clip_grad_value_, locals()) from None


# Where state arrays go. Each starts at its param's offset within a 64-byte cache line: the
# update kernels do the elements before the param's first line one at a time and run their
# vectors from there (optim_loops.h, Plain::head), so a vector load or store never straddles two
# lines of the param or of its state. (NumPy arrays start 16 bytes into a line, and np.full_like
# state anywhere in one.) Measured, a NumPy user's optim step before and after (state placed by
# np.full_like, vectors from element 0), both builds in one process, best of 15 interleaved, 1
# thread, AVX-512 (AMD EPYC Zen 5): AdamW 64K elements 19.8 -> 16.3 us, 256K 71.6 -> 54.1, 1M
# 438 -> 307, the digits MLP 95.9 -> 55.0; SGD momentum 1M 223 -> 144; 16M 0.98-1.01x.
# Big arrays also keep apart: NumPy gives consecutive large arrays addresses 4 KiB apart modulo
# the 2 MiB huge page, and an Adam step over 16M floats laid out like that measured 1.70 ns per
# element against 0.95 with the state arrays tens of KiB apart (2-core Zen 3; most likely DRAM
# bank conflicts between the 4 streams). Each big array from zeros_like starts at its own
# offset within a huge page, spread by the golden ratio; this costs at most 2 MiB + 4 KiB per
# array.
_CACHE_LINE = 64
_HUGE_PAGE = 1 << 21
_SPREAD_MIN_BYTES = 8 << 20
_spread_index = itertools.count(1)


def zeros_like(param: ArrayLike, fill: float = 0.0, dtype: DTypeLike | None = None) -> Array:
    """A C-contiguous ndarray shaped like param, of param's dtype (or `dtype`), filled with `fill`:
    state for the update functions. An array of param's dtype starts at param's offset within a
    64-byte cache line (others on a line), and arrays of 8 MiB and more are placed to keep an
    optimizer step's streams apart in memory (see above). It is a view of a slightly larger
    buffer (a plain ndarray whatever param's class; a torch tensor's state too, of its dtype)."""
    param = np.asarray(to_ndarray(param, "param"))
    dtype = param.dtype if dtype is None else np.dtype(dtype)
    itemsize = dtype.itemsize
    if itemsize == 0:  # (elements of no bytes: nothing to place)
        return np.full(param.shape, fill, dtype)
    in_line = param.ctypes.data % _CACHE_LINE if dtype == param.dtype else 0
    if in_line % itemsize:  # (a param not aligned to its own elements)
        in_line = 0
    nbytes = param.size * itemsize
    if nbytes < _SPREAD_MIN_BYTES:
        boundary, offset = _CACHE_LINE, in_line
    else:
        boundary = 4096
        spread = int((next(_spread_index) * 0.6180339887498949) % 1.0 * _HUGE_PAGE) // _CACHE_LINE * _CACHE_LINE
        offset = spread + in_line
    out = _placed_empty(param.shape, dtype, offset, boundary)
    out.fill(fill)
    return out


def _placed_empty(shape: tuple[int, ...], dtype: np.dtype[Any], offset: int = 0, boundary: int = _CACHE_LINE) -> Array:
    """An uninitialized C-contiguous array that starts `offset` bytes past a multiple of `boundary`
    (offset a multiple of the itemsize): a view of a buffer up to boundary + offset bytes larger."""
    size = math.prod(shape)
    buffer = np.empty(size + (boundary + offset) // dtype.itemsize, dtype)
    start = ((-buffer.ctypes.data) % boundary + offset) // dtype.itemsize
    return buffer[start:start + size].reshape(shape)
