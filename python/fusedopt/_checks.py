"""The checks of an update function's array arguments, made ahead of its calls by the optimizer
layers (fusedopt.optim and fusedopt.torch), so that a step of several calls refuses a bad array
before the first call writes, and names it."""
from typing import Any

import numpy as np

from .lowbit import QuantizedState

_F32, _F64, _F16 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)
_FLOAT_DTYPES = (_F32, _F64)  # native byte order only, as the kernels


def _is_bfloat16(dtype: np.dtype[Any]) -> bool:
    return dtype.itemsize == 2 and dtype.name == "bfloat16"  # ml_dtypes': the kernels' own test


def _array_problem(a: object, written: bool, param: np.ndarray | None = None,
                   role: str = "grad") -> tuple[type[Exception], str] | None:
    """(exception class, message) for what an update function would refuse about one of its
    arrays (against its param, for a grad, a state array or a param copy), or None. On every
    step of a model with several param groups: the common case is the first test of each kind.

    The dtype rules are the update functions' (P: the param's dtype): params float32, float64,
    bfloat16 or float16; role "grad": P, or bfloat16/float16 for float32 params; "state": float64
    for float64 params, else float32, bfloat16 or a QuantizedState ("signed state", "unsigned
    state": of that code); "copy" (param_copies): bfloat16/float16 beside float32 params."""
    if not isinstance(a, np.ndarray):
        if isinstance(a, QuantizedState) and role.endswith("state"):
            return _quantized_problem(a, param, role)
        return TypeError, f"must be a numpy.ndarray, got {type(a).__name__}"
    dtype = a.dtype
    if dtype not in _FLOAT_DTYPES and dtype != _F16 and not _is_bfloat16(dtype):
        return TypeError, f"has dtype {dtype}; fusedopt updates float32, float64, bfloat16 or float16 arrays"
    flags = a.flags
    if not (flags.carray if written else flags.c_contiguous and flags.aligned):  # carray: also writable
        if not (flags.c_contiguous and flags.aligned):
            return ValueError, "is not C-contiguous; fusedopt updates arrays in place and never copies them"
        return ValueError, "is read-only but is updated in place"
    if param is not None:
        p = param.dtype
        # the common case first: the param's dtype, which every role but float16 state and copies takes
        if dtype is not p or role != "grad" and (role == "copy" or p == _F16):
            if role == "grad":
                ok = dtype == p or p == _F32 and (dtype == _F16 or _is_bfloat16(dtype))
                rule = "grads are of the params' dtype, or bfloat16/float16 for float32 params"
            elif role == "copy":
                ok = p == _F32 and (dtype == _F16 or _is_bfloat16(dtype))
                rule = "param copies are the bfloat16/float16 copies of float32 (master) params"
            else:
                ok = dtype == _F64 if p == _F64 else dtype == _F32 or _is_bfloat16(dtype)
                rule = "the state of float64 params is float64" if p == _F64 else "state is float32 or bfloat16"
            if not ok:
                return TypeError, f"has dtype {dtype} but its param has dtype {p}; {rule}"
        if a.shape != param.shape:
            return ValueError, f"has shape {a.shape} but its param has shape {param.shape}"
    return None


def _quantized_problem(a: QuantizedState, param: np.ndarray | None, role: str) -> tuple[type[Exception], str] | None:
    """_array_problem for 8-bit state."""
    if role != "state" and a.signed != (role == "signed state"):
        return ValueError, (f"is a{' signed' if a.signed else 'n unsigned'} QuantizedState but this state is "
                            f"{'signed' if role == 'signed state' else 'non-negative'}")
    if param is not None and param.dtype == _F64:
        return TypeError, "is 8-bit (a QuantizedState) but its param has dtype float64, whose state is float64"
    if param is not None and a.shape != param.shape:
        return ValueError, f"has shape {a.shape} but its param has shape {param.shape}"
    for part in (a.codes, a.scales):
        if not part.flags.carray:
            return ValueError, "has codes or scales that are not C-contiguous and writable"
    return None


def _memory(a: Any) -> list[np.ndarray]:
    """The arrays an update function writes or reads for one of its array arguments."""
    return [a.codes, a.scales] if isinstance(a, QuantizedState) else [a]


def _step_error(problem: tuple[type[Exception], str], name: str) -> Exception:
    exception, message = problem
    return exception(f"{name} {message}")
