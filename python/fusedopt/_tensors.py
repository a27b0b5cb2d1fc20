"""The one place where arrays of other libraries become NumPy arrays for the kernels.

fusedopt's C++ functions take NumPy arrays; any other argument in an array's place is passed
to to_ndarray first (by the bindings, only for objects that are not ndarrays, so a NumPy call
pays nothing). A torch CPU tensor becomes a NumPy view of its own memory: no copy in or out,
so the kernel's in-place update is the tensor's. torch is never imported here: a tensor can
only exist if the caller has imported torch already.

dtype mapping (torch -> NumPy), written once:
    float32 -> float32, float64 -> float64, float16 -> float16,
    bfloat16 -> ml_dtypes.bfloat16 (the same 16 bits, viewed through int16)
Other dtypes map to NumPy's own (int, bool, complex views), which the kernels' checks refuse
with a message naming the argument.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np


def _bfloat16() -> np.dtype[Any]:
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes is a dependency
        raise TypeError("bfloat16 arrays need the ml_dtypes package (pip install ml_dtypes)") from None
    dtype: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return dtype


def tensor_to_ndarray(tensor: Any, name: str) -> np.ndarray:
    """A NumPy view of a torch CPU tensor's memory (same strides, same bytes), or TypeError /
    ValueError naming the argument for a tensor the kernels cannot use in place."""
    # The common case first, with as few torch calls as possible (a functional call converts
    # four tensors per param; ~0.8 us a tensor, 1.3 with the detach, instead of ~2 with the
    # checks below): Tensor.numpy() is a view of a dense CPU tensor and refuses everything else
    # the kernels must not see in place (other devices and layouts, lazily conjugated or negated
    # views, bfloat16, which NumPy lacks); complex and integer views are refused by the kernels'
    # dtype checks. detach() (a tensor sharing the memory) only where .numpy() would refuse a
    # tensor that requires grad.
    try:
        array: np.ndarray = (tensor.detach() if tensor.requires_grad else tensor).numpy()
        return array
    except (TypeError, RuntimeError):
        pass  # the checks below say why, naming the argument, or view bfloat16 through int16
    torch = sys.modules["torch"]
    if tensor.device.type != "cpu":
        raise TypeError(f"{name}: fusedopt runs on CPU tensors; got a tensor on {tensor.device}")
    if tensor.layout != torch.strided:
        raise TypeError(f"{name}: fusedopt takes dense tensors; got layout {tensor.layout}")
    if tensor.is_complex():
        raise TypeError(f"{name} has dtype {tensor.dtype}; fusedopt takes real floating-point tensors")
    if tensor.is_conj() or tensor.is_neg():
        raise ValueError(f"{name} is a lazily conjugated/negated view; call .resolve_conj()/.resolve_neg() first")
    data = tensor.detach()  # shares memory; .numpy() refuses tensors that require grad
    if data.dtype == torch.bfloat16:
        array = data.view(torch.int16).numpy().view(_bfloat16())
    else:
        array = data.numpy()
    return array


# numpy_dtype's table, made at its first call (torch is imported by then)
_torch_to_numpy: dict[Any, np.dtype[Any]] = {}


def numpy_dtype(dtype: Any) -> np.dtype[Any] | None:
    """The NumPy dtype of a torch floating dtype by the mapping above, as tensor_to_ndarray's
    views have it (None: a dtype fusedopt does not compute in)."""
    if not _torch_to_numpy:
        torch = sys.modules["torch"]
        _torch_to_numpy.update({torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64),
                                torch.float16: np.dtype(np.float16), torch.bfloat16: _bfloat16()})
    return _torch_to_numpy.get(dtype)


# torch.Tensor and torch.nn.Parameter, once torch is imported: the exact types whose objects
# to_ndarray passes to tensor_to_ndarray without looking torch up (subclasses take isinstance)
_tensor_types: tuple[type, ...] = ()


def to_ndarray(obj: Any, name: str) -> Any:
    """obj as a NumPy array when it is a torch tensor; any other object unchanged."""
    global _tensor_types
    if type(obj) in _tensor_types:
        return tensor_to_ndarray(obj, name)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        _tensor_types = (torch.Tensor, torch.nn.Parameter)
        return tensor_to_ndarray(obj, name)
    return obj


def increment_versions(tensors: list[Any]) -> None:
    """Tells autograd that a kernel wrote these torch tensors in place, as an in-place torch op
    does: a graph that saved one of them raises at backward instead of using the new values
    (the bindings call this after a write, only when tensors were given)."""
    sys.modules["torch"].autograd.graph.increment_version(tensors)
