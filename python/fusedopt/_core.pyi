"""Types of fusedopt's C++ extension (csrc/bindings*.cpp). The kernels' arguments are
positional only and without defaults: fusedopt.functional and fusedopt.batchnorm hold the
keyword signatures, defaults and docstrings. An argument typed _Arrays takes one array or a
list (or tuple) of arrays, one per tensor; each is checked at run time (dtype, shape,
contiguity, writability, overlap) before anything is written."""

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .lowbit import QuantizedState

_Array = NDArray[Any]
_Arrays = _Array | Sequence[_Array]
# optimizer state: arrays, or fusedopt.QuantizedState (8-bit blockwise) where the kernel takes it
_StateArrays = _Arrays | QuantizedState | Sequence[_Array | QuantizedState]

# ---- dispatch and threads ----
CENTERED_8BIT_REASON: str  # why centered RMSprop refuses 8-bit state (rmsprop_ and the classes)

def isa() -> str: ...
def available_isas() -> list[str]: ...
def cpu_features() -> list[str]: ...
def set_isa(name: str) -> None: ...
def l2_cache_bytes() -> int: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def _set_openmp_parallel(address: int) -> None: ...
def _openmp_parallel() -> int: ...

# ---- the update functions: True when the step was applied (False: skipped, a grad not finite) ----
# param_copies: bfloat16/float16 copies of float32 (master) params, written with the update, or None;
# stochastic_rounding rounds 16-bit params' stores with random_bits(seed, step, tensor, ...)
def sgd(
    params: _Arrays, grads: _Arrays, momentum_buffers: _StateArrays | None, lr: float, momentum: float,
    dampening: float, nesterov: bool, weight_decay: float, maximize: bool, step: int | None,
    grad_scale: float | None, unscale_grads: bool, skip_if_nonfinite: bool, param_copies: _Arrays | None,
    stochastic_rounding: bool, seed: int | None, /,
) -> bool: ...
def adagrad(
    params: _Arrays, grads: _Arrays, state_sums: _StateArrays, step: int, lr: float, lr_decay: float,
    weight_decay: float, eps: float, maximize: bool, grad_scale: float | None, unscale_grads: bool,
    skip_if_nonfinite: bool, param_copies: _Arrays | None, stochastic_rounding: bool, seed: int | None, /,
) -> bool: ...
def rmsprop(
    params: _Arrays, grads: _Arrays, square_avgs: _StateArrays, lr: float, alpha: float, eps: float,
    weight_decay: float, momentum: float, momentum_buffers: _StateArrays | None, centered: bool,
    grad_avgs: _StateArrays | None, maximize: bool, eps_inside_sqrt: bool, grad_scale: float | None,
    unscale_grads: bool, skip_if_nonfinite: bool, param_copies: _Arrays | None, stochastic_rounding: bool,
    seed: int | None, step: int | None, /,
) -> bool: ...
def adam(
    params: _Arrays, grads: _Arrays, exp_avgs: _StateArrays, exp_avg_sqs: _StateArrays, step: int, lr: float,
    beta1: float, beta2: float, eps: float, weight_decay: float, decoupled_weight_decay: bool, amsgrad: bool,
    max_exp_avg_sqs: _StateArrays | None, maximize: bool, grad_scale: float | None, unscale_grads: bool,
    skip_if_nonfinite: bool, param_copies: _Arrays | None, stochastic_rounding: bool, seed: int | None, /,
) -> bool: ...

# ---- gradient norms and clipping ----
def all_finite(grads: _Arrays, grad_scale: float | None, /) -> bool: ...
def grad_norm(grads: _Arrays, norm_type: float, /) -> float: ...
def clip_grad_norm_(grads: _Arrays, max_norm: float, norm_type: float, error_if_nonfinite: bool, /) -> float: ...
def clip_grad_value_(grads: _Arrays, clip_value: float, /) -> None: ...

# ---- batch normalization ----
def batchnorm_forward(
    x: _Array, weight: _Array | None, bias: _Array | None, running_mean: _Array | None, running_var: _Array | None,
    training: bool, momentum: float, eps: float, axis: int, relu: bool, out: _Array | None, /,
) -> tuple[_Array, _Array, _Array]:
    """(y, save_mean, save_invstd)"""

def batchnorm_backward(
    dy: _Array, x: _Array, weight: _Array | None, save_mean: _Array, save_invstd: _Array, axis: int, training: bool,
    relu_output: _Array | None, out: _Array | None, /,
) -> tuple[_Array, _Array | None, _Array | None]:
    """(dx, dweight, dbias); dweight and dbias are None when weight is None"""

def tensor_view(tensor: object, dtype: np.dtype[Any], shape: tuple[int, ...], /) -> _Array: ...
def output_pool_release() -> int: ...
def output_pool_stats() -> dict[str, int]: ...

# ---- 8-bit blockwise codec (fusedopt.lowbit): one float32 absmax scale per block of codes ----
def quantize_blockwise(values: _Array, codes: _Array, scales: _Array, signed: bool, /) -> None: ...
def dequantize_blockwise(codes: _Array, scales: _Array, out: _Array, signed: bool, /) -> None: ...

# ---- stochastic rounding's counter-based random stream (fusedopt.reference.random_bits is its oracle) ----
def random_bits(seed: int, step: int, tensor: int, offset: int, n: int) -> NDArray[np.uint32]: ...

# ---- helpers ----
def overlapping(arrays: list[_Array], written: list[bool], /) -> tuple[int, int] | None:
    """(i, j): the indices of two of the arrays that share memory, one of them written, or None"""

def stream_probe(
    read_write: Sequence[_Arrays], read_only: Sequence[_Arrays], write_only: Sequence[_Arrays] = (),
) -> None:
    """The bandwidth probe: s = sum(read_only); a = a + s for each read_write array; w = s for the
    write_only one (0-4 read-write, 0-2 read-only, 0 or 1 write-only; at least one)."""
