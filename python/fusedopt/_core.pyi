"""Types of fusedopt's C++ extension (csrc/bindings*.cpp). The kernels' arguments are
positional only and without defaults: fusedopt.functional and fusedopt.batchnorm hold the
keyword signatures, defaults and docstrings. An argument typed Arrays takes one array or a
list (or tuple) of arrays, one per tensor; each is checked at run time (dtype, shape,
contiguity, writability, overlap) before anything is written."""

from collections.abc import Sequence
from typing import Any

from numpy.typing import NDArray

Array = NDArray[Any]
Arrays = Array | Sequence[Array]

# ---- dispatch and threads ----
def isa() -> str: ...
def available_isas() -> list[str]: ...
def set_isa(name: str) -> None: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...

# ---- the update functions: True when the step was applied (False: skipped, a grad not finite) ----
def sgd(
    params: Arrays, grads: Arrays, momentum_buffers: Arrays | None, lr: float, momentum: float, dampening: float,
    nesterov: bool, weight_decay: float, maximize: bool, step: int | None, grad_scale: float | None,
    skip_if_nonfinite: bool, /,
) -> bool: ...
def adagrad(
    params: Arrays, grads: Arrays, state_sums: Arrays, step: int, lr: float, lr_decay: float, weight_decay: float,
    eps: float, maximize: bool, grad_scale: float | None, skip_if_nonfinite: bool, /,
) -> bool: ...
def rmsprop(
    params: Arrays, grads: Arrays, square_avgs: Arrays, lr: float, alpha: float, eps: float, weight_decay: float,
    momentum: float, momentum_buffers: Arrays | None, centered: bool, grad_avgs: Arrays | None, maximize: bool,
    eps_inside_sqrt: bool, grad_scale: float | None, skip_if_nonfinite: bool, /,
) -> bool: ...
def adam(
    params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays, step: int, lr: float, beta1: float,
    beta2: float, eps: float, weight_decay: float, decoupled_weight_decay: bool, amsgrad: bool,
    max_exp_avg_sqs: Arrays | None, maximize: bool, grad_scale: float | None, skip_if_nonfinite: bool, /,
) -> bool: ...

# ---- gradient norms and clipping ----
def all_finite(grads: Arrays, /) -> bool: ...
def grad_norm(grads: Arrays, norm_type: float, /) -> float: ...
def clip_grad_norm_(grads: Arrays, max_norm: float, norm_type: float, error_if_nonfinite: bool, /) -> float: ...
def clip_grad_value_(grads: Arrays, clip_value: float, /) -> None: ...

# ---- batch normalization ----
def batchnorm_forward(
    x: Array, weight: Array | None, bias: Array | None, running_mean: Array | None, running_var: Array | None,
    training: bool, momentum: float, eps: float, axis: int, relu: bool, out: Array | None, /,
) -> tuple[Array, Array, Array]:
    """(y, save_mean, save_invstd)"""

def batchnorm_backward(
    dy: Array, x: Array, weight: Array | None, save_mean: Array, save_invstd: Array, axis: int, training: bool,
    relu_output: Array | None, out: Array | None, /,
) -> tuple[Array, Array | None, Array | None]:
    """(dx, dweight, dbias); dweight and dbias are None when weight is None"""

# ---- helpers ----
def overlapping(arrays: list[Array], /) -> tuple[int, int] | None:
    """(i, j): the indices of two of the arrays that share memory, or None"""

def stream_probe(read_write: Sequence[Arrays], read_only: Sequence[Arrays], write_only: Sequence[Arrays] = ()) -> None:
    """The bandwidth probe: s = sum(read_only); a = a + s for each read_write array; w = s for the
    write_only one (0-4 read-write, 0-2 read-only, 0 or 1 write-only; at least one)."""
