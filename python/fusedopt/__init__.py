"""fusedopt: fused SIMD CPU kernels for optimizer updates, in place on NumPy arrays.

    import numpy as np, fusedopt
    param = np.zeros(1000, np.float32); grad = np.ones_like(param)
    exp_avg, exp_avg_sq = np.zeros_like(param), np.zeros_like(param)
    fusedopt.adam_(param, grad, exp_avg, exp_avg_sq, step=1, lr=1e-3)

Every update function takes one array per argument or equal-length lists of them (one C++ call
for the whole list), checks all arguments before writing anything, and matches the numbers of
torch.optim's documented algorithms. `fusedopt.reference` holds the same functions in NumPy.
"""
import os as _os

from . import _core, init, optim, reference  # submodules: fusedopt.optim.Adam, fusedopt.init.kaiming_uniform, ...
from ._core import available_isas, get_num_threads, isa, set_isa, set_num_threads
from .batchnorm import batchnorm_backward, batchnorm_forward
from .functional import (
    adagrad_,
    adam_,
    adamw_,
    all_finite,
    clip_grad_norm_,
    clip_grad_value_,
    grad_norm,
    rmsprop_,
    sgd_,
    zeros_like,
)
from .lowbit import QuantizedState, quantize, quantized_zeros_like

__version__ = "0.1.0"

if _os.environ.get("FUSEDOPT_ISA"):
    try:
        _core.set_isa(_os.environ["FUSEDOPT_ISA"])
    except ValueError as e:
        raise ImportError(f"FUSEDOPT_ISA={_os.environ['FUSEDOPT_ISA']!r}: {e}") from None

# The thread count from the environment: digits, checked by set_num_threads itself (1 to 1024,
# see csrc/parallel.h: kMaxThreads); anything else is an error here rather than being ignored.
if _os.environ.get("FUSEDOPT_NUM_THREADS", "").strip():
    _value = _os.environ["FUSEDOPT_NUM_THREADS"]
    try:
        if not (_value.strip().isascii() and _value.strip().isdigit()):
            raise ValueError("not a whole number")
        _core.set_num_threads(int(_value))
    except ValueError as e:
        raise ImportError(f"FUSEDOPT_NUM_THREADS={_value!r} is not a thread count from 1 to 1024: {e}") from None

__all__ = [
    "adagrad_",
    "adam_",
    "adamw_",
    "all_finite",
    "clip_grad_norm_",
    "clip_grad_value_",
    "grad_norm",
    "available_isas",
    "batchnorm_backward",
    "batchnorm_forward",
    "get_num_threads",
    "isa",
    "rmsprop_",
    "set_isa",
    "set_num_threads",
    "sgd_",
    "zeros_like",
    "QuantizedState",
    "quantize",
    "quantized_zeros_like",
    "init",
    "optim",
    "reference",
]
