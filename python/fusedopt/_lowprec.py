"""The low-precision options of the optimizers (fusedopt.optim's and fusedopt.torch's classes take
the same; fusedopt.optim.Optimizer's docstring says what each means) and the conversions of a
checkpoint's state arrays into the precision an optimizer keeps them in."""
import numbers
from typing import Any, NamedTuple

import numpy as np

from . import _core
from ._checks import _F16, _F64, _FLOAT_DTYPES, _is_bfloat16
from ._tensors import _bfloat16
from .lowbit import QuantizedState, quantize

STATE_DTYPES = ("float32", "bfloat16", "int8")  # the state_dtype= an optimizer takes
# state_dtype="int8": tensors of fewer elements keep float32 state (bitsandbytes' min_8bit_size)
MIN_8BIT_SIZE = 4096
# master_weights=True: state["master_param"], the float32 master copy of a 16-bit param; the step
# updates it in the param's place and writes the param as its rounded copy (param_copies=)
MASTER_PARAM = "master_param"


class LowPrecision(NamedTuple):
    """An optimizer's low-precision options (see Optimizer; fusedopt.torch's classes take the same)."""
    state_dtype: str = "float32"
    master_weights: bool = False
    stochastic_rounding: bool = False
    min_8bit_size: int = MIN_8BIT_SIZE

    @property
    def is_torchs(self) -> bool:
        """Whether these are torch.optim's own ways: float32 state, no master weights, rounding
        to nearest (min_8bit_size then decides nothing)."""
        return self.state_dtype == "float32" and not self.master_weights and not self.stochastic_rounding


def _checked_options(name: str, state_dtype: object, master_weights: object, stochastic_rounding: object,
                     seed: object, min_8bit_size: object) -> LowPrecision:
    """The low-precision keywords of optimizer class `name`, checked (seed too, when given)."""
    if not isinstance(state_dtype, str):
        raise TypeError(f"{name}: state_dtype must be one of {list(STATE_DTYPES)}, got {state_dtype!r}")
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"{name}: state_dtype must be one of {list(STATE_DTYPES)}, got {state_dtype!r}")
    for option, value in (("master_weights", master_weights), ("stochastic_rounding", stochastic_rounding)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name}: {option} must be a bool, got {value!r}")
    if master_weights and stochastic_rounding:
        raise ValueError(f"{name}: master_weights=True and stochastic_rounding=True exclude each other: master "
                         "weights keep the update in float32 (the copy rounds to nearest); stochastic rounding "
                         "is for bfloat16 params updated directly")
    if not (isinstance(min_8bit_size, numbers.Integral) and not isinstance(min_8bit_size, (bool, np.bool_))):
        raise TypeError(f"{name}: min_8bit_size must be an int, got {min_8bit_size!r}")
    if int(min_8bit_size) < 0:
        raise ValueError(f"{name}: min_8bit_size must be >= 0, got {min_8bit_size!r}")
    if seed is not None:
        if not stochastic_rounding:
            raise ValueError(f"{name}: seed= is the seed of stochastic rounding; it needs stochastic_rounding=True")
        _checked_seed(seed, name)
    return LowPrecision(state_dtype, bool(master_weights), bool(stochastic_rounding), int(min_8bit_size))


def _checked_seed(seed: object, where: str) -> int:
    """A stochastic-rounding seed: an int from 0 to 2**64 - 1 (the kernels' unsigned 64 bits)."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"{where}: seed must be an int, got {seed!r}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"{where}: seed must be an int from 0 to 2**64 - 1, got {seed!r}")
    return int(seed)


def _param_dtype_problem(dtype: np.dtype[Any], options: LowPrecision) -> str | None:
    """Why an optimizer with these options cannot update params of this dtype, or None."""
    if dtype not in _FLOAT_DTYPES and dtype != _F16 and not _is_bfloat16(dtype):
        return "fusedopt updates float32, float64, bfloat16 (ml_dtypes) or float16 arrays"
    sixteen = dtype == _F16 or _is_bfloat16(dtype)
    if options.master_weights and not sixteen:
        return ("master_weights=True keeps float32 master weights of bfloat16/float16 params; "
                "a float32/float64 param is its own master (give it to an optimizer without master_weights)")
    if options.stochastic_rounding and not _is_bfloat16(dtype):
        return "stochastic_rounding=True rounds bfloat16 params (updated directly); this param is not one"
    if dtype == _F64 and options.state_dtype != "float32":
        return f"the state of float64 params is float64, never state_dtype={options.state_dtype!r}"
    return None


def _hyperparameter_problem(hyperparameters: dict[str, Any], options: LowPrecision) -> str | None:
    """Why a param group with these hyperparameters cannot keep its state as these options say,
    or None: RMSprop's centered=True with 8-bit state (rmsprop_ refuses the 8-bit arrays too)."""
    if hyperparameters.get("centered") and options.state_dtype == "int8":
        return _core.CENTERED_8BIT_REASON
    return None


def _state_dtype_of(dtype: np.dtype[Any], size: int, options: LowPrecision) -> str:
    """The dtype an optimizer with these options keeps the state of a param of this dtype and
    size in: "float64", "float32", "bfloat16" or "int8"."""
    if dtype == _F64:
        return "float64"
    if options.state_dtype == "int8" and size < options.min_8bit_size:
        return "float32"
    return options.state_dtype


def _state_kind(value: Any) -> str | None:
    """"int8", "float64", "float32", "bfloat16", "float16" for a state value, None for anything else."""
    if isinstance(value, QuantizedState):
        return "int8"
    if isinstance(value, np.ndarray) and (value.dtype in _FLOAT_DTYPES or value.dtype == _F16):
        return str(value.dtype)
    if isinstance(value, np.ndarray) and _is_bfloat16(value.dtype):
        return "bfloat16"
    return None


def _loaded_state(value: Any, kind: str, signed: bool, param: np.ndarray, where: str,
                  convert: bool = True) -> np.ndarray | QuantizedState:
    """A checkpoint's state array as this optimizer keeps it (kind: "float64", "float32",
    "bfloat16" or "int8"): value itself when it is so already, else a new converted array (with
    convert; float64 and float16 state convert to nothing); TypeError/ValueError naming `where`."""
    source = _state_kind(value)
    if source is None:
        got = f"an array of dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
        raise TypeError(f"{where} must be a numpy.ndarray (float32, float64 or bfloat16) or a fusedopt.QuantizedState, "
                        f"got {got}")
    if source == "int8":
        try:  # its parts as the constructor checks them (they may have been replaced or reshaped since)
            QuantizedState(value.codes, value.scales, value.signed)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}: {e}") from None
    if value.shape != param.shape:
        raise ValueError(f"{where} has shape {value.shape} but its param has shape {param.shape}")
    if source == "int8" and value.signed != signed:
        raise ValueError(f"{where} is a{' signed' if value.signed else 'n unsigned'} QuantizedState but this state "
                         f"is {'signed' if signed else 'non-negative'} (signed={signed})")
    if source == kind:
        return value  # type: ignore[no-any-return]
    if not convert or "float64" in (source, kind) or source == "float16":
        raise ValueError(f"{where} has dtype {source} but this optimizer keeps it in {kind} for its param of dtype "
                         f"{param.dtype}; only float32, bfloat16 and int8 state convert into each other")
    # C order, whatever the source's (NumPy's conversions keep it): the kernels update state in place
    # (np.asarray keeps a 0-d array 0-d, where ascontiguousarray made it 1-d); a new array: the
    # source is of another kind
    floats = np.asarray(value.dequantize() if source == "int8" else value, np.float32, order="C")
    if kind == "float32":
        return floats
    if kind == "bfloat16":
        return floats.astype(_bfloat16())  # ml_dtypes rounds to nearest even, as the kernels
    try:
        return quantize(floats, signed)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _copied_into(old: Any, value: Any, fresh: bool) -> Any:
    """value (checked, converted) as the state to keep: copied into old, the array this param has
    now, when it has the same type, dtype and shape; else value itself if fresh (a conversion's
    new array), else a copy of it."""
    if isinstance(value, QuantizedState):
        if isinstance(old, QuantizedState) and old.signed == value.signed and old.shape == value.shape:
            np.copyto(old.codes, value.codes)
            np.copyto(old.scales, value.scales)
            return old
        return value if fresh else value.copy()
    if isinstance(old, np.ndarray) and old.dtype == value.dtype and old.shape == value.shape:
        np.copyto(old, value)
        return old
    return value if fresh else np.array(value, order="C", copy=True)
