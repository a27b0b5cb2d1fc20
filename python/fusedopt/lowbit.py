"""8-bit blockwise optimizer state (issue 15): QuantizedState, quantized_zeros_like, quantize.

A QuantizedState holds one optimizer state tensor in 8 bits per element plus one float32 scale
(the block's absmax) per block of 256 elements: ~1.016 bytes per element instead of 4. It goes
wherever a state array goes in the update functions, which decode each block into L1, update
it in float32 and encode it back in the same pass over memory.

The code (csrc/kernels/quantize.h; NumPy twin: fusedopt.reference.quantize_blockwise) is
float-like: 3 mantissa bits and an exponent, the largest code exactly 1.0 * scale, decoded and
encoded with a few integer ops on the float's bits (no table lookup):
- signed (exp_avg, momentum_buffer, grad_avg): sign + 127 magnitudes in [1.25 * 2^-16, 1] * scale;
- unsigned (exp_avg_sq, max_exp_avg_sq, state_sum, square_avg): 255 values in
  [1.25 * 2^-32, 1] * scale; a positive value never encodes to 0 (Adam's denominator never
  collapses to eps).
Relative error within the range <= 2^-4 (nearest of 8 steps per binade); below it, signed rounds
to 0 or the smallest code, unsigned to the smallest code. encode(decode(c)) == c for all 256 codes.
A block holding an inf or NaN decodes to NaN everywhere (scale NaN); a block whose absmax is
below float32's smallest normal (2^-126) is stored as zeros (scale 0).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core
from .functional import zeros_like

QUANT_BLOCK = 256  # elements per block, one float32 scale per block


def _num_blocks(size: int) -> int:
    return -(-size // QUANT_BLOCK)


def _as_float32(array: Any, name: str) -> npt.NDArray[np.float32]:
    if not isinstance(array, np.ndarray):
        from ._tensors import to_ndarray

        array = to_ndarray(array, name)
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray or a torch CPU tensor, got {type(array).__name__}")
    if array.dtype.kind not in "f" and array.dtype.name != "bfloat16":
        raise TypeError(f"{name} has dtype {array.dtype}; quantize takes floating-point arrays")
    return np.asarray(array, dtype=np.float32, order="C")


class QuantizedState:
    """One optimizer state tensor in 8-bit blockwise code.

    codes:  uint8, C-contiguous, the param's shape (one byte per element)
    scales: float32, shape (ceil(size / 256),): each block's absmax (block b holds the
            flattened elements [256 * b, 256 * b + 256))
    signed: True for signed state (exp_avg, momentum_buffer, grad_avg), False for non-negative
            state (exp_avg_sq, max_exp_avg_sq, state_sum, square_avg)

    The update functions write codes and scales in place. Two states are equal (==) when their
    bits are: same signedness, shape, codes and scale bits (a NaN scale equals itself).
    """

    __slots__ = ("codes", "scales", "signed")
    codes: npt.NDArray[np.uint8]
    scales: npt.NDArray[np.float32]
    signed: bool

    def __init__(self, codes: npt.NDArray[np.uint8], scales: npt.NDArray[np.float32], signed: bool) -> None:
        if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8:
            raise TypeError(f"codes must be a uint8 numpy.ndarray, got {_describe(codes)}")
        if not isinstance(scales, np.ndarray) or scales.dtype != np.float32:
            raise TypeError(f"scales must be a float32 numpy.ndarray, got {_describe(scales)}")
        if not isinstance(signed, (bool, np.bool_)):
            raise TypeError(f"signed must be a bool, got {type(signed).__name__}")
        if not codes.flags.c_contiguous or not scales.flags.c_contiguous:
            raise ValueError("codes and scales must be C-contiguous (the kernels update them in place)")
        if scales.shape != (_num_blocks(codes.size),):
            raise ValueError(f"scales has shape {scales.shape} but codes of {codes.size} elements need "
                             f"({_num_blocks(codes.size)},): one scale per block of {QUANT_BLOCK}")
        self.codes = codes
        self.scales = scales
        self.signed = bool(signed)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @property
    def size(self) -> int:
        return int(self.codes.size)

    @property
    def nbytes(self) -> int:
        """Bytes of codes and scales: size + 4 * ceil(size / 256)."""
        return int(self.codes.nbytes + self.scales.nbytes)

    def dequantize(self, out: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
        """The state as float32 of its shape (into `out`, a C-contiguous float32 array of its
        size, when given)."""
        if out is None:
            out = np.empty(self.codes.shape, np.float32)
        _core.dequantize_blockwise(self.codes, self.scales, out, self.signed)
        return out

    def copy(self) -> QuantizedState:
        return QuantizedState(self.codes.copy(), self.scales.copy(), self.signed)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantizedState):
            return NotImplemented
        return (self.signed == other.signed and self.codes.shape == other.codes.shape
                and bool(np.array_equal(self.codes, other.codes))
                and bool(np.array_equal(self.scales.view(np.uint32), other.scales.view(np.uint32))))

    __hash__ = None  # type: ignore[assignment]  # mutable, as ndarrays are

    def __repr__(self) -> str:
        kind = "signed" if self.signed else "unsigned"
        return (f"QuantizedState(shape={self.shape}, {kind}, {self.scales.size} blocks of {QUANT_BLOCK}, "
                f"{self.nbytes} bytes)")

    def __reduce__(self) -> tuple[type[QuantizedState], tuple[Any, ...]]:
        return (QuantizedState, (self.codes, self.scales, self.signed))


def _describe(x: object) -> str:
    return f"an array of dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__


def quantized_zeros_like(param: Any, signed: bool) -> QuantizedState:
    """8-bit zero state for `param` (any array with .shape and .size: the param's dtype does not
    matter); large codes arrays are placed as fusedopt.zeros_like places state."""
    if not isinstance(signed, (bool, np.bool_)):
        raise TypeError(f"signed must be a bool, got {type(signed).__name__}")
    shape = tuple(int(d) for d in param.shape)
    codes = zeros_like(np.broadcast_to(np.float32(0), shape), dtype=np.uint8)  # (on a cache line)
    return QuantizedState(codes, np.zeros(_num_blocks(codes.size), np.float32), bool(signed))


def quantize(array: Any, signed: bool, *, out: QuantizedState | None = None) -> QuantizedState:
    """float state (an fp32 checkpoint's exp_avg, ...) -> QuantizedState of the same shape, or
    into `out` (same shape and signedness). Unsigned state must be non-negative (ValueError)."""
    if not isinstance(signed, (bool, np.bool_)):
        raise TypeError(f"signed must be a bool, got {type(signed).__name__}")
    values = _as_float32(array, "array")
    if not signed and bool((values < 0).any()):
        raise ValueError("signed=False holds non-negative state (exp_avg_sq, state_sum, ...); "
                         "array has negative values")
    if out is None:
        out = quantized_zeros_like(values, bool(signed))
    elif not isinstance(out, QuantizedState):
        raise TypeError(f"out must be a QuantizedState, got {type(out).__name__}")
    elif out.shape != values.shape or out.signed != bool(signed):
        raise ValueError(f"out is {out!r} but array has shape {values.shape} and signed={bool(signed)}")
    _core.quantize_blockwise(values, out.codes, out.scales, bool(signed))
    return out
