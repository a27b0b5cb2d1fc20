"""torch.optim optimizers whose step() is fusedopt's kernels: SGD, Adagrad, RMSprop, Adam, AdamW.

Each class subclasses torch's own (fusedopt.torch.AdamW is a torch.optim.AdamW) and overrides
step() only, so the constructor, its defaults and argument checks, param groups,
add_param_group, zero_grad, hooks, state_dict()/load_state_dict() and the state's names and
layout are torch's. state["step"] is a 0-d float tensor as torch keeps it, so checkpoints load
both ways.

A step makes one fusedopt call per param group (one per dtype and step count when a group
mixes them) on NumPy views of the tensors' own memory. What a call needs besides the grads
(the views of params and state, the calls' layout, the step counters) is worked out once and
kept in a plan per group; a later step checks the plan still holds (the same params with a
grad, at the same addresses and in the same layouts, with the same state tensors on the same
memory, and step counts) and only converts the new grads.
The step counters of a plan's params are 0-d views into one tensor, so one write (through
NumPy) counts the step for all of them.

Sparse grads (nn.Embedding(sparse=True)): torch's SGD and Adagrad take them and the kernels are
dense, so a param group with one takes torch's own step (after the fused calls of the others),
with torch's numbers and state (a sparse momentum buffer); the other classes refuse them, as
torch's do, and so do the low-precision options.

Memory layouts: a param need only be dense. One that is not C-contiguous (channels_last conv
weights, a transposed weight) is stepped in its own memory order, its grad and state viewed in
that order too; the state is made in the param's layout (as torch makes it), so an 8-bit
state's blocks are runs of 256 elements of that memory. A grad in another layout than its
param's is refused (ValueError); a checkpoint's state in another layout is converted on load,
and so is a param's state when the param's layout changes between steps
(model.to(memory_format=...)).

Low precision: every class takes fusedopt.optim's keyword-only options, with the same meaning
(see fusedopt.optim.Optimizer): state_dtype="float32" | "bfloat16" | "int8", master_weights,
stochastic_rounding with seed, min_8bit_size. They are the optimizer's (kept in self.defaults,
so that pickling and copy.deepcopy keep them; a param group may not set them), except the seed:
each group keeps its own as group["seed"] (seed + the group's index; seed=None draws one from
torch's default generator, so torch.manual_seed makes a run reproducible), in state_dict()'s
param_groups. The state tensors, as state_dict() holds them:
- "float32": float32 tensors (also for bfloat16/float16 params: torch.optim keeps their state
  in the param's dtype), float64 for float64 params;
- "bfloat16": bfloat16 tensors;
- "int8": state[name + "_codes"] is a uint8 tensor of codes, the param's shape, and state[name +
  "_scales"] a float32 tensor of one scale per block of 256 elements (fusedopt.QuantizedState's
  codes and scales: exp_avg_codes / exp_avg_scales, exp_avg_sq_codes / exp_avg_sq_scales, ...),
  and there is no state[name]: torch.optim, which casts a checkpoint's state tensors to the
  param's dtype, would take codes under torch's name for values (0 .. 255) and step on with
  them; under these names the step of torch's Adam, AdamW, Adagrad and RMSprop fails
  (KeyError), and torch's SGD, which takes a missing momentum_buffer for none yet, starts its
  momentum afresh. Params of fewer than min_8bit_size elements keep float32 tensors;
- master_weights: state["master_param"], the float32 master of a bfloat16/float16 param.
load_state_dict() converts a checkpoint's state to these forms (float32 <-> bfloat16 <-> int8,
as fusedopt.optim's load: fusedopt.quantize, dequantize, rounding to nearest even), so that a
torch.optim checkpoint (float32, or a bfloat16 model's bfloat16 state) loads into any of them;
anything else (float64 <-> other, a master_param that is not float32, codes without scales) is
a TypeError/ValueError, raised before anything changes. (Codes under state[name] itself,
as earlier versions saved them, load too.) To hand an 8-bit checkpoint back to
torch.optim, load it into a fusedopt.torch optimizer with state_dtype="float32" and save that.
"""
from __future__ import annotations

import inspect
import operator
from collections import OrderedDict
from collections.abc import Callable, Iterable
from itertools import repeat
from typing import Any, ClassVar, overload

import numpy as np
import torch
from torch.optim.optimizer import _get_scalar_dtype, _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from .. import _core, functional
from .. import _states as state_specs
from .._checks import _array_problem, _memory, _step_error
from .._lowprec import (
    MASTER_PARAM,
    MIN_8BIT_SIZE,
    LowPrecision,
    _checked_options,
    _checked_seed,
    _hyperparameter_problem,
    _loaded_state,
    _param_dtype_problem,
    _state_dtype_of,
)
from .._states import StateArray
from .._tensors import numpy_dtype as _numpy_dtype
from .._tensors import tensor_to_ndarray
from ..lowbit import QUANT_BLOCK, QuantizedState, quantize
from ._plan import _Call, _Plan

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "RMSprop"]

_get_grad = operator.attrgetter("grad")
_stride = torch.Tensor.stride
_as_ndarray = torch.Tensor.numpy
_profiler_enabled = torch.autograd._profiler_enabled


def _no_entries(group: dict[str, Any]) -> tuple[()]:
    """The group entries that decide the state of a class whose state is always the same: none."""
    return ()


_MASTER = (state_specs.MASTER,)
_OPTIONS = ("state_dtype", "master_weights", "stochastic_rounding", "min_8bit_size")  # optimizer-wide
_CODES, _SCALES = "_codes", "_scales"  # 8-bit state `name`: state[name + _CODES], state[name + _SCALES]
_NO_ROUNDING: dict[str, Any] = {}


def _memory_order(t: torch.Tensor) -> tuple[int, ...] | None:
    """The dims of a dense tensor that is not C-contiguous (a channels_last conv weight, a
    transposed one) from the slowest to the fastest in memory: t.permute(order) is a C-contiguous
    view of the same memory (see the module docstring's memory layouts). None for a C-contiguous
    tensor, and for one that is not dense (which the kernels' checks refuse)."""
    if t.is_contiguous():
        return None
    order = tuple(sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.size(d))))
    return order if t.permute(order).is_contiguous() else None


def _tensor_dtype_problem(p: torch.Tensor, options: LowPrecision) -> str | None:
    """Why an optimizer with these options cannot update this param for its dtype, or None (a
    dtype fusedopt does not map is left to the kernels' checks, which name it)."""
    dtype = _numpy_dtype(p.dtype)
    return None if dtype is None else _param_dtype_problem(dtype, options)


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors of one shape have their elements in the same memory order: the same
    strides but on dims of size 1 (whose strides torch leaves arbitrary), or no elements."""
    return a.numel() == 0 or all(x == y for x, y, n in zip(a.stride(), b.stride(), a.shape) if n > 1)


def _in_order(t: torch.Tensor, order: tuple[int, ...] | None) -> torch.Tensor:
    """t viewed in its param's memory order (_memory_order); as it is if it has other dims (whose
    shape the kernels' checks refuse)."""
    return t if order is None or t.dim() != len(order) else t.permute(order)


def _from_order(t: torch.Tensor, order: tuple[int, ...] | None) -> torch.Tensor:
    """A tensor in a memory order (_in_order's) viewed back in its param's shape."""
    return t if order is None else t.permute(tuple(sorted(range(len(order)), key=order.__getitem__)))


def _as_tensors(name: str, value: np.ndarray | QuantizedState, order: tuple[int, ...] | None = None
                ) -> dict[str, torch.Tensor]:
    """A state array (fusedopt.optim's form, in its param's memory order) as state tensors of the
    param's shape, sharing its memory."""
    if isinstance(value, QuantizedState):
        return {name + _CODES: _from_order(torch.from_numpy(value.codes), order),
                name + _SCALES: torch.from_numpy(value.scales)}
    if value.dtype.itemsize == 2 and value.dtype.name == "bfloat16":
        return {name: _from_order(torch.from_numpy(value.view(np.int16)).view(torch.bfloat16), order)}
    return {name: _from_order(torch.from_numpy(value), order)}


def _holds(state: dict[Any, Any], name: str) -> bool:
    """Whether a param's state holds state array `name`, in any form (float, or 8-bit codes)."""
    return state.get(name) is not None or state.get(name + _CODES) is not None


def _param_name(k: int, index: int) -> str:
    """A param by torch's name for it: its group's index and its index in the group's list."""
    return f"param_groups[{k}]['params'][{index}]"


def _view(tensor: torch.Tensor, name: str) -> np.ndarray:
    """A NumPy view of a param's or state tensor's memory (fusedopt's one dtype mapping and checks)."""
    return tensor_to_ndarray(tensor, name)


class _FusedStep(torch.optim.Optimizer):
    """step() for the classes below: the class attributes say which fusedopt function runs, with
    which state, and how its hyperparameters are read from a param group."""
    _step_supports_amp_scaling = True  # torch.amp.GradScaler passes grad_scale/found_inf (see step)

    _update: ClassVar[Callable[..., bool]]
    _states: ClassVar[tuple[StateArray, ...]]
    _counts_steps: ClassVar[bool] = True  # keeps state["step"] (torch's SGD keeps none)
    _unsupported = ("capturable", "differentiable")
    # torch's class whose own step takes the param groups with a sparse grad (nn.Embedding(
    # sparse=True)), which the dense kernels do not: SGD's and Adagrad's (torch's others refuse them)
    _sparse_step_class: ClassVar[type[torch.optim.Optimizer] | None] = None

    def _unsupported_problem(self, group: dict[str, Any]) -> str | None:
        """Why this optimizer cannot step a group that sets an option of _unsupported, or None
        (checked as a group is added, loaded, and at each step: a group may set it later)."""
        for option in self._unsupported:
            if group.get(option):
                return (f"fusedopt.torch.{type(self).__name__} does not support {option}=True (its step writes the "
                        "tensors' memory outside autograd and CUDA graphs); use "
                        f"torch.optim.{type(self).__name__} for it")
        return None

    # ---- per class ----------------------------------------------------------------------------

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        """The fusedopt function's keyword arguments for this group's hyperparameters."""
        raise NotImplementedError

    def _step_argument(self, steps_taken: int, new_state: bool) -> int | None:
        """The function's `step` for a param that has taken steps_taken steps (new_state: its
        state is being created); None: pass none."""
        return steps_taken + 1

    def _new_state_tensor(self, name: str, param: torch.Tensor) -> torch.Tensor:
        """A state tensor before the param's first step (torch: zeros of the param's layout)."""
        return torch.zeros_like(param, memory_format=torch.preserve_format)

    # ---- low precision (the module docstring) --------------------------------------------------

    def __init__(self, params: Any, *args: Any, state_dtype: str = "float32", master_weights: bool = False,
                 stochastic_rounding: bool = False, seed: int | None = None, min_8bit_size: int = MIN_8BIT_SIZE,
                 **kwargs: Any) -> None:
        name = f"fusedopt.torch.{type(self).__name__}"
        options = _checked_options(name, state_dtype, master_weights, stochastic_rounding, seed, min_8bit_size)
        if seed is not None:
            seed = _checked_seed(seed, name)  # a NumPy integer as a Python int (seed + k would overflow)
        if options.stochastic_rounding and seed is None:  # torch's generator: torch.manual_seed reproduces it
            seed = int(torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64)) % 2**64
        self.__dict__["_fusedopt_options"] = (options, seed)  # for add_param_group while torch's __init__ runs
        super().__init__(params, *args, **kwargs)
        del self.__dict__["_fusedopt_options"]
        self.defaults.update(options._asdict())  # kept by pickling, as torch keeps defaults
        if options.stochastic_rounding:
            self.defaults["seed"] = seed
        # state made by torch's __init__ (Adagrad's sums): made again in this optimizer's form (a
        # float32 sum of a bfloat16 param holds 0.1, not its bfloat16 rounding)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state:
                    made = [spec for spec in self._states if _holds(state, spec.name)]
                    for spec in made:  # (8-bit state is kept under other names)
                        del state[spec.name]
                    state.update(self._new_state(made, {}, p, _memory_order(p)))

    def _low_precision(self) -> tuple[LowPrecision, int | None]:
        """(the optimizer's low-precision options, its seed: None without stochastic rounding)."""
        defaults = self.defaults
        if "state_dtype" not in defaults:  # torch's __init__ is running
            options: tuple[LowPrecision, int | None] = self.__dict__["_fusedopt_options"]
            return options
        return LowPrecision(*(defaults[key] for key in LowPrecision._fields)), defaults.get("seed")

    def _rounding(self, group: dict[str, Any]) -> dict[str, Any]:
        """The fusedopt function's stochastic-rounding keywords for this group."""
        if self.defaults.get("stochastic_rounding"):  # a seed set by hand checked before any call writes
            return {"stochastic_rounding": True, "seed": _checked_seed(group.get("seed"), "a param group")}
        return _NO_ROUNDING

    def _specs(self) -> tuple[StateArray, ...]:
        """The per-param state specs: the class's, and the master param's with master_weights."""
        return self._states + _MASTER if self.defaults.get("master_weights") else self._states

    def _new_state(self, specs: list[StateArray], state: dict[str, Any], param: torch.Tensor,
                   order: tuple[int, ...] | None) -> dict[str, Any]:
        """The state tensors a param lacks before a step, in this optimizer's form."""
        new: dict[str, Any] = {}
        options, _ = self._low_precision()
        dtype = _numpy_dtype(param.dtype)
        for spec in specs:
            if _holds(state, spec.name):
                continue
            if spec.name == MASTER_PARAM:
                new[spec.name] = torch.empty_like(param, dtype=torch.float32,
                                                  memory_format=torch.preserve_format).copy_(param.detach())
                continue
            kind = "float32" if dtype is None else _state_dtype_of(dtype, param.numel(), options)
            if kind == "int8":
                codes = torch.zeros_like(param, dtype=torch.uint8, memory_format=torch.preserve_format)
                scales = torch.zeros(-(-param.numel() // QUANT_BLOCK), dtype=torch.float32)
                fill = spec.fill(self.defaults)
                if fill:
                    in_order = _in_order(codes, order)
                    quantize(np.full(tuple(in_order.shape), fill, np.float32), spec.signed,
                             out=QuantizedState(in_order.numpy(), scales.numpy(), spec.signed))
                new[spec.name + _CODES], new[spec.name + _SCALES] = codes, scales
                continue
            target = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}[kind]
            if param.dtype == target or dtype is None:
                new[spec.name] = self._new_state_tensor(spec.name, param)
            else:
                new[spec.name] = torch.full_like(param, spec.fill(self.defaults), dtype=target,
                                                 memory_format=torch.preserve_format)
        return new

    def _state_view(self, spec: StateArray, tensors: dict[str, Any], param: str,
                    order: tuple[int, ...] | None) -> np.ndarray | QuantizedState:
        """The array a fusedopt call takes for state `spec` of the param named `param` (a
        QuantizedState for 8-bit state), in the param's memory order."""
        codes = tensors.get(spec.name + _CODES)
        if codes is not None:
            return QuantizedState(_view(_in_order(codes, order), f"state[{spec.name + _CODES!r}] of {param}"),
                                  _view(tensors[spec.name + _SCALES], f"state[{spec.name + _SCALES!r}] of {param}"),
                                  spec.signed)
        return _view(_in_order(tensors[spec.name], order), f"state[{spec.name!r}] of {param}")

    def _role(self, argument: str) -> str:
        """fusedopt._checks._array_problem's role for a call's array argument."""
        if argument == "param_copies":
            return "copy"
        signed = next(spec.signed for spec in self._states if spec.argument == argument)
        return "signed state" if signed else "unsigned state"

    def _loaded_param_state(self, param: torch.Tensor, saved: dict[Any, Any], where: str) -> dict[Any, Any]:
        """A param's state (a checkpoint's, or its own after the param's layout changed) in this
        optimizer's form and the param's layout: each state tensor converted by fusedopt.optim's
        rules (_lowprec._loaded_state), else copied; other entries ("step", ...) as they are
        (tensors cloned). TypeError/ValueError naming `where` for state that does not convert."""
        options, _ = self._low_precision()
        specs = {spec.name: spec for spec in self._specs()}
        dtype = _numpy_dtype(param.dtype)
        order = _memory_order(param)
        out: dict[Any, Any] = {}

        def state_name(key: Any, suffix: str) -> str | None:
            """The state array whose entry `key` is, with this suffix (_CODES, _SCALES), or None."""
            stem = key[:-len(suffix)] if isinstance(key, str) and key.endswith(suffix) else None
            return stem if stem in specs else None

        for key, value in saved.items():
            name = f"{where}[{key!r}]"
            if torch.is_tensor(value) and value.layout != torch.strided:  # torch's own step's (_sparse_step)
                out[key] = value.clone()
            elif (key in specs or (codes_of := state_name(key, _CODES)) is not None) and dtype is not None:
                codes_key = key not in specs
                if codes_key:
                    key = codes_of  # the state array's name
                spec = specs[key]
                if not torch.is_tensor(value):
                    raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
                if codes_key and value.dtype != torch.uint8:
                    raise TypeError(f"{name} must be a uint8 tensor of 8-bit codes, got {value.dtype}")
                if saved.get(key) is not None and saved.get(key + _CODES) is not None:
                    raise ValueError(f"{where} holds both {key!r} and {key + _CODES!r}: which is the state?")
                array: np.ndarray | QuantizedState
                if value.dtype == torch.uint8:  # codes (under key itself in earlier versions' checkpoints)
                    scales = saved.get(key + _SCALES)
                    if not torch.is_tensor(scales):
                        raise ValueError(f"{name} is a uint8 tensor (8-bit codes) without its {key + _SCALES!r} tensor")
                    # the codes' blocks are runs of their own memory: in another layout than the
                    # param's (a checkpoint of the model in another memory format), decoded there
                    codes_order = _memory_order(value)
                    try:
                        array = QuantizedState(_view(_in_order(value, codes_order), name),
                                               _view(scales, f"{where}[{key + _SCALES!r}]"), spec.signed)
                    except (TypeError, ValueError) as e:
                        raise type(e)(f"{name}: {e}") from None
                    if value.shape == param.shape and not _same_layout(value, param):
                        decoded = _from_order(torch.from_numpy(array.dequantize()), codes_order)
                        array = _view(_in_order(decoded, order).contiguous(), name)
                else:
                    array = _view(_in_order(value, order), name)
                kind = "float32" if key == MASTER_PARAM else _state_dtype_of(dtype, param.numel(), options)
                converted = _loaded_state(array, kind, spec.signed, _view(_in_order(param, order), "its param"), name,
                                          convert=key != MASTER_PARAM)
                if converted is array:
                    converted = array.copy() if isinstance(array, QuantizedState) else np.array(array, order="C")
                out.update(_as_tensors(key, converted, order))
            elif (stem := state_name(key, _SCALES)) is not None:  # read with their codes; else stale: dropped
                if not _holds(saved, stem):
                    raise ValueError(f"{name} holds 8-bit scales but {where} has no {stem + _CODES!r} codes")
            elif key == MASTER_PARAM:
                raise ValueError(f"{name}: the checkpoint has master weights but this optimizer has "
                                 "master_weights=False")
            else:
                out[key] = value.clone() if torch.is_tensor(value) else value
        return out

    # ---- torch.optim.Optimizer -----------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        name = f"fusedopt.torch.{type(self).__name__}"
        options, seed = self._low_precision()
        where = f"{name}: param_groups[{len(self.param_groups)}]"
        if isinstance(param_group, dict):  # else torch's own error
            given = [key for key in _OPTIONS if key in param_group]
            if given:
                raise ValueError(f"{where} sets {given}: they are the optimizer's options (constructor keywords)")
            if options.stochastic_rounding:  # each group its own random stream
                assert seed is not None
                param_group["seed"] = _checked_seed(param_group.get("seed", (seed + len(self.param_groups)) % 2**64),
                                                    where)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for key in _OPTIONS:
            group.pop(key, None)  # copied from self.defaults by torch: the optimizer's, not the group's
        problem = self._unsupported_problem(group)
        if problem:
            self.param_groups.pop()
            raise ValueError(problem)
        problem = _hyperparameter_problem(group, options)
        if problem:
            self.param_groups.pop()
            raise ValueError(f"{where}: {problem}")
        for j, p in enumerate(group["params"]):
            problem = _tensor_dtype_problem(p, options)
            if problem:
                self.param_groups.pop()
                raise TypeError(f"{where}['params'][{j}] has dtype {p.dtype}; {problem}")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict, with the state converted to this optimizer's form first (the
        module docstring) instead of cast to each param's dtype as torch does (which would turn
        8-bit codes, scales and float32 master weights into the param's dtype). The options stay
        this optimizer's; a checkpoint without group seeds keeps this optimizer's seeds. Load
        hooks run as torch runs them: the pre-hooks on the whole state_dict first (what one
        returns is loaded), the post-hooks once the state is in place."""
        if isinstance(state_dict, dict):
            state_dict = state_dict.copy()  # shallow, as torch's
        attributes: dict[str, Any] = self.__dict__  # torch's hook dicts (kept there by its __init__ and __setstate__)
        pre_hooks = attributes["_optimizer_load_state_dict_pre_hooks"]
        post_hooks = attributes["_optimizer_load_state_dict_post_hooks"]
        for pre_hook in list(pre_hooks.values()):
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        # torch's load below runs without the hooks: the state it is handed is only part of it
        attributes["_optimizer_load_state_dict_pre_hooks"] = OrderedDict()
        attributes["_optimizer_load_state_dict_post_hooks"] = OrderedDict()
        try:
            self._load_converted_state_dict(state_dict)
        finally:
            attributes["_optimizer_load_state_dict_pre_hooks"] = pre_hooks
            attributes["_optimizer_load_state_dict_post_hooks"] = post_hooks
        for post_hook in list(post_hooks.values()):
            post_hook(self)

    def _load_converted_state_dict(self, state_dict: dict[str, Any]) -> None:
        """load_state_dict's work, its hooks aside."""
        saved_groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        saved_state = state_dict.get("state") if isinstance(state_dict, dict) else None
        if (not isinstance(saved_groups, list) or not isinstance(saved_state, dict)
                or len(saved_groups) != len(self.param_groups)
                or any(not isinstance(saved, dict) or len(saved.get("params", ())) != len(group["params"])
                       for saved, group in zip(saved_groups, self.param_groups))):
            super().load_state_dict(state_dict)  # torch's own error
            return
        options, _ = self._low_precision()
        for k, saved in enumerate(saved_groups):  # the groups' hyperparameters replace ours: add_param_group's check
            problem = self._unsupported_problem(saved) or _hyperparameter_problem(saved, options)
            if problem:
                raise ValueError(f"fusedopt.torch.{type(self).__name__}: state_dict['param_groups'][{k}]: {problem}")
        saved_ids = [i for saved in saved_groups for i in saved["params"]]
        id_map = dict(zip(saved_ids, [p for group in self.param_groups for p in group["params"]]))
        converted: dict[torch.Tensor, dict[Any, Any]] = {}
        rest = {}  # state of no param: torch keeps it as it is
        for key, value in saved_state.items():
            param = id_map.get(key)
            if param is None or not isinstance(value, dict):
                rest[key] = value
            else:
                converted[param] = state = self._loaded_param_state(param, value, f"state_dict['state'][{key!r}]")
                stepped = any(_holds(state, spec.name) for spec in self._states)
                if self._counts_steps and "step" not in state and stepped:
                    # torch.optim.SGD keeps no step; its state means a step was taken (a step of 1 would
                    # start a momentum buffer afresh)
                    state["step"] = torch.tensor(1.0, dtype=_get_scalar_dtype())
        if options.stochastic_rounding:
            for k, saved in enumerate(saved_groups):
                if "seed" in saved:
                    _checked_seed(saved["seed"], f"state_dict['param_groups'][{k}]")
        seeds = [group.get("seed") for group in self.param_groups]
        super().load_state_dict({**state_dict, "state": rest})
        for group, seed in zip(self.param_groups, seeds):
            for key in _OPTIONS:
                group.pop(key, None)
            if options.stochastic_rounding and "seed" not in group:
                group["seed"] = seed
        for param, state in converted.items():
            self.state[param] = state

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Update every param whose .grad is not None, in place: one fusedopt call per param group.

        Under torch.amp.GradScaler the scaler sets self.grad_scale and self.found_inf (as for
        torch's fused optimizers): the grads are unscaled inside the kernel, which also writes
        them back unscaled in the same pass (torch's fused optimizers leave them so, as unscale_
        does), and a step whose grads held an inf or NaN changes nothing (params, state, step
        counts, grads).
        """
        # torch wraps an optimizer class's step in Optimizer.profile_hook_step (the step pre/post
        # hooks and a profiler range) unless the step is marked hooked, as this one is (below the
        # class): the wrapper's record_function is two dispatcher calls, ~100 us right after a
        # step's kernel has evicted the caches, a fifth of a small model's step. So torch's own
        # wrapper runs only when it has something to do: hooks, or a profiler listening.
        try:
            if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks or _global_optimizer_pre_hooks
                    or _global_optimizer_post_hooks or _profiler_enabled()):
                loss: float | None = _hooked_step(self, closure)
                return loss
            return self._fused_step(closure)
        except BaseException:
            # GradScaler deletes the grad_scale and found_inf it set only after a step that
            # returns: left after a refused one (or a hook that raised), a later plain step()
            # would unscale by them
            for key in ("grad_scale", "found_inf"):
                self.__dict__.pop(key, None)
            raise

    def _fused_step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        plans = self.__dict__.setdefault("_fusedopt_plans", {})
        steps = []  # (group index, plan, grad views of its params, hyperparameters)
        sparse_groups: list[dict[str, Any]] = []  # stepped by torch's own code (_sparse_step)
        calls = 0
        # C-level maps and no method calls per group but the hyperparameters': right after a
        # step's kernel has evicted the caches (the MLP's 4 MB of params, grads and state pass
        # through a 2 MB L2), each Python frame and each kind of torch call runs cold: the first
        # Tensor.numpy() costs ~38 us then (0.6 warm), each further one ~2.5; the first
        # data_ptr() or .grad ~8-13 us (median of 300, 2-core Sapphire Rapids)
        for k, group in enumerate(self.param_groups):
            if any(map(group.get, self._unsupported)):  # set since the group was added (_unsupported_problem's test)
                raise ValueError(self._unsupported_problem(group))
            grads = list(map(_get_grad, group["params"]))
            present = list(map(operator.is_not, grads, repeat(None)))
            plan = plans.get(id(group))
            if plan is None or not plan.holds(group, present, self.state):
                if self._sparse_step_class is not None and any(g is not None and g.layout != torch.strided
                                                               for g in grads):
                    self._check_sparse_group()
                    sparse_groups.append(group)
                    continue
                plan = plans[id(group)] = self._plan(group, present, k)
            if not plan.params:
                continue
            if len(plan.params) != len(grads):
                grads = [g for g in grads if g is not None]
            if plan.orders is not None and list(map(_stride, grads)) != plan.strides:
                self._check_grad_layouts(grads, plan, k)
            try:  # Tensor.numpy: ~0.6 us a grad; fusedopt's conversion names a grad it refuses
                views = list(map(_as_ndarray, grads))
            except (TypeError, RuntimeError):
                views = self._grad_views(grads, plan, k)
            if plan.orders is not None:  # params not C-contiguous: grads in their params' memory order
                for i, order in enumerate(plan.orders):
                    if order is not None:
                        views[i] = views[i].transpose(order)
            steps.append((k, plan, views, self._hyperparameters(group)))
            calls += len(plan.calls)
        if len(plans) > len(self.param_groups):  # groups replaced (load_state_dict): drop their plans and views
            current = {id(group) for group in self.param_groups}
            for key in [key for key in plans if key not in current]:
                del plans[key]
        if found_inf is not None and float(found_inf) != 0:
            return loss
        scale = None if grad_scale is None else float(grad_scale)
        unscale = {} if scale is None else {"grad_scale": scale, "unscale_grads": True}
        if calls > 1 or (calls and sparse_groups):  # (one call checks itself, but torch's sparse step comes first)
            self._check_calls(steps, scale is not None)
        if sparse_groups:  # before the fused calls write anything: torch's step may refuse its groups
            self._sparse_step(sparse_groups, scale)
        update = type(self)._update
        for _, plan, views, hyperparameters in steps:
            for call in plan.calls:
                call_grads = views if call.positions is None else [views[i] for i in call.positions]
                if call.step is None:
                    update(call.params, call_grads, **call.states, **hyperparameters, **unscale)
                else:
                    update(call.params, call_grads, **call.states, **hyperparameters, step=call.step + plan.taken,
                           **unscale)
        # the step is taken: count it (through NumPy: right after the kernel has evicted the
        # caches, torch's add_ on the tiny counter tensor costs 60-80 us, the dispatcher's code and
        # data; NumPy's fill 9-12), and tell autograd the params changed
        for _, plan, _, _ in steps:
            plan.taken += 1
            if plan.step_counts is not None:
                if plan.first_step is not None:
                    plan.step_counts.fill(plan.first_step + plan.taken)
                else:
                    np.add(plan.step_counts, 1, out=plan.step_counts)
                plan.counted = plan.step_counts.tobytes()
            torch._C._increment_version(plan.params)  # torch.autograd.graph.increment_version, less its isinstance
            if plan.new_state:
                for p, new in plan.new_state:
                    self.state[p].update(new)
                del plans[id(plan.group)]  # the next step plans with the kept state
        return loss

    # ---- param groups with a sparse grad: torch's own step ---------------------------------------

    def _check_sparse_group(self) -> None:
        """TypeError, before anything is written, where a group with a sparse grad cannot take
        torch's own step: this optimizer's low-precision options are not torch's."""
        options, _ = self._low_precision()
        if not options.is_torchs:
            raise TypeError(f"fusedopt.torch.{type(self).__name__}: a param group with a sparse grad (nn.Embedding("
                            "sparse=True)) takes torch's own step, with float32 state; state_dtype, master_weights "
                            "and stochastic_rounding take dense grads only")

    def _sparse_step(self, groups: list[dict[str, Any]], scale: float | None) -> None:
        """torch's own step (self._sparse_step_class's) over the param groups that have a sparse
        grad, before the fused calls: torch's numbers and state (a sparse momentum buffer) for them.
        Under GradScaler their grads are unscaled first, as its unscale_ would have (the scaler
        left that to this optimizer), and torch's step sees no grad_scale: its non-fused code
        takes none."""
        if scale is not None:
            inv_scale = torch.tensor(scale, dtype=torch.float64).reciprocal().float()  # as GradScaler's
            for group in groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.mul_(inv_scale)
        assert self._sparse_step_class is not None
        step = self._sparse_step_class.step
        if getattr(step, "hooked", False):  # torch's hook and profiler wrapper: this step's ran
            step = step.__wrapped__
        attributes = self.__dict__
        param_groups: list[dict[str, Any]] = attributes["param_groups"]
        amp: dict[str, Any] = {key: attributes.pop(key) for key in ("grad_scale", "found_inf") if key in attributes}
        try:
            attributes["param_groups"] = groups
            step(self)
        finally:
            attributes["param_groups"] = param_groups
            attributes.update(amp)

    # ---- the plan -------------------------------------------------------------------------------

    def _structure(self, group: dict[str, Any]) -> tuple[bool, ...]:
        return tuple([spec.needed(group) for spec in self._specs()])

    def _structure_values(self) -> Callable[[dict[str, Any]], Any]:
        """A C-level function of a group giving the entries its structure depends on: a plan
        holds while they are unchanged, checked without calling each spec's `needed`."""
        keys = sorted({spec.key for spec in self._specs() if spec.key is not None})
        return operator.itemgetter(*keys) if keys else _no_entries

    def _plan(self, group: dict[str, Any], present: list[bool], k: int) -> _Plan:
        """A new plan for this group: views of its params with a grad and of their state
        (creating the state a param lacks, kept only once the step is taken; converting in place
        the state of a param whose layout changed), its calls grouped by dtype and step argument,
        and the params' step counters as views into one tensor."""
        plan = _Plan()
        plan.group, plan.state, plan.present = group, self.state, present
        plan.group_params = list(group["params"])
        plan.structure = self._structure(group)
        plan.structure_of = self._structure_values()
        plan.structure_values = plan.structure_of(group)
        specs = [spec for spec, needed in zip(self._specs(), plan.structure) if needed]
        by_call: dict[tuple[torch.dtype, int | None], list[int]] = {}
        param_views, state_views, steps_taken, orders = [], [], [], []
        step_dtype = _get_scalar_dtype()  # torch.optim's step dtype
        options = self._low_precision()[0]
        for j, (p, has_grad) in enumerate(zip(plan.group_params, present)):
            if not has_grad:
                continue
            i, where = len(plan.params), _param_name(k, j)
            problem = _tensor_dtype_problem(p, options)  # add_param_group's, for a param appended since
            if problem:
                raise TypeError(f"fusedopt.torch.{type(self).__name__}: {where} has dtype {p.dtype}; {problem}")
            state: dict[str, Any] = self.state.get(p) or {}
            if any(torch.is_tensor(v) and v.shape == p.shape and not _same_layout(v, p) for v in state.values()):
                # the param's layout changed (model.to(memory_format=...)): its state converted
                # into the new one as a checkpoint's is (in the same dict)
                converted = self._loaded_param_state(p, state, f"the state of {where}")
                state.clear()
                state.update(converted)
            plan.state_dicts.append(self.state.get(p))
            orders.append(_memory_order(p))
            if orders[-1] is None and not p.is_contiguous():  # else the NumPy check's hint, for arrays
                raise ValueError(f"fusedopt.torch.{type(self).__name__}: {where} (shape "
                                 f"{tuple(p.shape)}, strides {p.stride()}) is not dense, e.g. a slice of a larger "
                                 "tensor: fusedopt updates a param's memory in place, in one pass; make the "
                                 "param a tensor of its own (contiguous, channels_last or transposed)")
            new = self._new_state(specs, state, p, orders[-1])
            plan.params.append(p)
            plan.ptrs.append(p.data_ptr())
            plan.strides.append(p.stride())
            plan.shapes.append(p.shape)
            for spec in specs:
                if spec.name not in new:
                    for entry in (spec.name, spec.name + _CODES, spec.name + _SCALES):  # float or 8-bit
                        if entry in state:
                            plan.watched_dicts.append(state)
                            plan.watched_keys.append(entry)
                            plan.watched_tensors.append(state[entry])
            tensors = {**{name: state[name] for name in state}, **new}
            param_views.append(_view(_in_order(p, orders[-1]), where))
            state_views.append({spec.argument: self._state_view(spec, tensors, where, orders[-1]) for spec in specs})
            if _MASTER[0].argument in state_views[-1]:  # the call updates the master; the param is its copy
                state_views[-1]["param_copies"] = param_views[-1]
                master = state_views[-1].pop(_MASTER[0].argument)
                assert isinstance(master, np.ndarray)  # float32: never 8-bit
                param_views[-1] = master
            step: Any = state.get("step")  # an int, a tensor (torch's), or None
            if self._counts_steps:
                steps_taken.append(0 if step is None else int(step))
                if torch.is_tensor(step):
                    step_dtype = step.dtype
            if new or (self._counts_steps and step is None):
                plan.new_state.append((p, new))
            key = (p.dtype, self._step_argument(steps_taken[-1] if self._counts_steps else 0,
                                                bool(new.keys() - {MASTER_PARAM})))
            by_call.setdefault(key, []).append(i)
        for (_, step_argument), positions in by_call.items():
            plan.calls.append(_Call(params=[param_views[i] for i in positions],
                                    positions=None if len(by_call) == 1 else positions,
                                    states={argument: [state_views[i][argument] for i in positions]
                                            for argument in state_views[positions[0]]},
                                    step=step_argument))
        if self._counts_steps and plan.params:
            # one tensor of counters, torch's dtype: a step counts for all params with one write
            plan.steps = torch.tensor(steps_taken, dtype=step_dtype)
            plan.step_counts = plan.steps.numpy()
            plan.counted = plan.step_counts.tobytes()
            if steps_taken.count(steps_taken[0]) == len(steps_taken):
                plan.first_step = steps_taken[0]
            new_state = {id(p): new for p, new in plan.new_state}
            storage = plan.steps.untyped_storage()
            for i, (p, existing) in enumerate(zip(plan.params, plan.state_dicts)):
                # a param's step tensor, kept (torch counts in one tensor for the whole run, and a
                # reference to it, a logger's, must go on counting) but moved onto slot i of the
                # plan's counters; a new one where it is not a 0-d tensor of their dtype
                old: Any = existing.get("step") if existing is not None else None
                keep = torch.is_tensor(old) and old.dtype == step_dtype and old.dim() == 0 and not old.requires_grad
                counter = (old if keep else torch.empty((), dtype=step_dtype)).set_(storage, i, (), ())
                if id(p) in new_state:
                    new_state[id(p)]["step"] = counter
                elif existing is not None:  # always: a param with no state to make has a step
                    existing["step"] = counter
                    plan.watched_dicts.append(existing)
                    plan.watched_keys.append("step")
                    plan.watched_tensors.append(counter)
        plan.watched_ptrs = list(map(torch.Tensor.data_ptr, plan.watched_tensors))
        plan.state_keys = [*self.state, *self.state.values()]
        plan.orders = orders if any(order is not None for order in orders) else None
        return plan

    def _check_grad_layouts(self, grads: list[torch.Tensor], plan: _Plan, k: int) -> None:
        """ValueError for a grad in another memory order than its param's, where that param is
        not C-contiguous (the step views both in the param's order); a C-contiguous param's grad
        the kernels' checks take or refuse."""
        assert plan.orders is not None
        for i, (g, p, order) in enumerate(zip(grads, plan.params, plan.orders)):
            if order is not None and g.layout == torch.strided and g.shape == p.shape and not _same_layout(g, p):
                raise ValueError(f"fusedopt.torch.{type(self).__name__}: the grad of "
                                 f"{_param_name(k, plan.group_indices()[i])} has "
                                 f"strides {g.stride()}, not in its param's memory order (strides {p.stride()}): "
                                 "a param that is not C-contiguous is stepped in its memory order, with its grad "
                                 "in its layout (as autograd gives it)")

    def _grad_views(self, grads: list[torch.Tensor], plan: _Plan, k: int) -> list[np.ndarray]:
        """NumPy views of grads of which Tensor.numpy (the step's fast path) refused one: each goes
        through fusedopt's one conversion, for its view (a bfloat16 grad) or its error. (Grad views
        are not kept between steps: they would keep grads that zero_grad() let go alive.)"""
        for i, g in enumerate(grads):
            if g.layout != torch.strided:
                raise RuntimeError(f"fusedopt.torch.{type(self).__name__} does not support sparse gradients "
                                   f"(the grad of {_param_name(k, plan.group_indices()[i])} is {g.layout})")
        return [_view(g, f"the grad of {_param_name(k, j)}") for g, j in zip(grads, plan.group_indices())]

    def _check_calls(self, steps: list[tuple[int, _Plan, list[np.ndarray], dict[str, Any]]], unscale: bool) -> None:
        """A step of several calls: every call's hyperparameters (each call's own checks, on empty
        lists) and, across all calls, the checks each call makes of its arrays (fusedopt._checks'
        _array_problem; grads written with unscale) and of their memory (no array the step writes
        sharing a byte with another of its arrays), before the first call writes anything. (Names
        are made only for an error.)"""
        update = type(self)._update
        arrays: list[np.ndarray] = []
        written_flags: list[bool] = []
        places: list[tuple[int, _Plan, int, str, int]] = []  # of each array: group, plan, position, argument, part
        for k, plan, plan_grads, hyperparameters in steps:
            for call in plan.calls:
                step = {} if call.step is None else {"step": call.step + plan.taken}
                # (stochastic rounding is checked against the params, below, not on empty lists)
                update([], [], **{argument: [] for argument in call.states}, **step,
                       **{key: value for key, value in hyperparameters.items() if key != "stochastic_rounding"})
                positions = range(len(plan_grads)) if call.positions is None else call.positions
                for j, (p, position) in enumerate(zip(call.params, positions)):
                    checks: list[tuple[Any, bool, np.ndarray | None, str, str]] = [
                              (p, True, None, "params", "grad"), (plan_grads[position], unscale, p, "grads", "grad")]
                    checks += [(states[j], True, p, argument, self._role(argument))
                               for argument, states in call.states.items()]
                    for array, written, param, argument, role in checks:
                        problem = _array_problem(array, written, param, role)
                        if problem:
                            raise _step_error(problem, self._place_name(k, plan, position, argument, -1))
                        for part, memory in enumerate(_memory(array)):
                            arrays.append(memory)
                            written_flags.append(written)
                            places.append((k, plan, position, argument, part if type(array) is QuantizedState else -1))
                if "stochastic_rounding" in hyperparameters and call.params and call.params[0].dtype.name != "bfloat16":
                    raise TypeError(f"param_groups[{k}]: stochastic_rounding=True rounds bfloat16 params, not "
                                    f"{call.params[0].dtype}")
        pair = _core.overlapping(arrays, written_flags)
        if pair is not None:
            first, second = (self._place_name(*places[i]) for i in pair)
            raise ValueError(f"{first} and {second} overlap in memory; an array that is written must not share "
                             "memory with another array of the step")

    def _place_name(self, k: int, plan: _Plan, position: int, argument: str, part: int) -> str:
        """An array of a step by the torch names of its param (by its index in its group) and
        its role: the param, its grad, or its state entry (an fp32 master's param_copies being the
        param itself, and the master its state; part 0 / 1: an 8-bit state's codes / scales, -1:
        the whole entry)."""
        param = _param_name(k, plan.group_indices()[position])
        if argument == "param_copies" or (argument == "params" and not self.defaults.get("master_weights")):
            return param
        if argument == "grads":
            return f"the grad of {param}"
        name = _MASTER[0].name if argument == "params" else next(
            spec.name for spec in self._states if spec.argument == argument)
        return f"state[{name + ('', _CODES, _SCALES)[part + 1]!r}] of {param}"


# ---- the optimizers ---------------------------------------------------------------------------------


# torch's wrapper of a step (see _FusedStep.step): called by step when it has something to do,
# and kept off _FusedStep.step itself by the mark torch looks for
_hooked_step = torch.optim.Optimizer.profile_hook_step(_FusedStep._fused_step)
_FusedStep.step.hooked = True  # type: ignore[attr-defined]


class SGD(_FusedStep, torch.optim.SGD):
    """torch.optim.SGD (momentum, dampening, nesterov, weight_decay, maximize) on fusedopt.sgd_."""
    _update = staticmethod(functional.sgd_)
    _sparse_step_class = torch.optim.SGD
    _states = state_specs.SGD

    @property
    def _counts_steps(self) -> bool:  # type: ignore[override]
        # torch's SGD keeps no step; stochastic rounding needs it (its random bits are keyed by it)
        return bool(self.defaults.get("stochastic_rounding"))

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        # nesterov with a momentum a scheduler has set to 0 (OneCycleLR's base_momentum=0): torch
        # steps plain SGD there, whose numbers nesterov=False gives (its constructor alone refuses it)
        momentum = float(group["momentum"])
        return dict(lr=float(group["lr"]), momentum=momentum, dampening=float(group["dampening"]),
                    nesterov=bool(group["nesterov"]) and momentum != 0.0, weight_decay=float(group["weight_decay"]),
                    maximize=bool(group["maximize"]), **self._rounding(group))

    def _step_argument(self, steps_taken: int, new_state: bool) -> int | None:
        # torch starts a momentum buffer as the first grad: sgd_'s step=1 rule
        if new_state:
            return 1
        return steps_taken + 1 if self._counts_steps else None

    def _new_state_tensor(self, name: str, param: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(param, memory_format=torch.preserve_format)  # step=1 writes all of it


class Adagrad(_FusedStep, torch.optim.Adagrad):
    """torch.optim.Adagrad (lr_decay, weight_decay, initial_accumulator_value, eps, maximize) on
    fusedopt.adagrad_. As torch, state is made for every param at construction, and a sum made
    later starts at the constructor's initial_accumulator_value."""
    _update = staticmethod(functional.adagrad_)
    _sparse_step_class = torch.optim.Adagrad
    _states = state_specs.ADAGRAD

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        return dict(lr=float(group["lr"]), lr_decay=float(group["lr_decay"]), weight_decay=float(group["weight_decay"]),
                    eps=float(group["eps"]), maximize=bool(group["maximize"]), **self._rounding(group))

    def _new_state_tensor(self, name: str, param: torch.Tensor) -> torch.Tensor:
        return torch.full_like(param, self.defaults["initial_accumulator_value"], memory_format=torch.preserve_format)


class RMSprop(_FusedStep, torch.optim.RMSprop):
    """torch.optim.RMSprop (alpha, eps, weight_decay, momentum, centered, maximize) on
    fusedopt.rmsprop_; eps_inside_sqrt=True divides by sqrt(square_avg + eps), the textbook form,
    instead of torch's sqrt(square_avg) + eps."""
    _update = staticmethod(functional.rmsprop_)
    _states = state_specs.RMSPROP

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0, centered: bool = False,
                 capturable: bool = False, foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, *, eps_inside_sqrt: bool = False, **low_precision: Any) -> None:
        self._eps_inside_sqrt = bool(eps_inside_sqrt)  # read by add_param_group while torch's __init__ runs
        super().__init__(params, lr, alpha, eps, weight_decay, momentum, centered, capturable, foreach, maximize,
                         differentiable, **low_precision)
        self.defaults["eps_inside_sqrt"] = self._eps_inside_sqrt

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group.setdefault("eps_inside_sqrt", self.defaults.get("eps_inside_sqrt", self._eps_inside_sqrt))
        super().add_param_group(param_group)

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        centered = bool(group["centered"])
        if centered:  # set on a group after construction: refused before any call writes
            problem = _hyperparameter_problem(group, self._low_precision()[0])
            if problem:
                raise ValueError(f"fusedopt.torch.RMSprop: a param group: {problem}")
        return dict(lr=float(group["lr"]), alpha=float(group["alpha"]), eps=float(group["eps"]),
                    weight_decay=float(group["weight_decay"]), momentum=float(group["momentum"]),
                    centered=centered, maximize=bool(group["maximize"]),
                    eps_inside_sqrt=bool(group.get("eps_inside_sqrt", self.defaults.get("eps_inside_sqrt", False))),
                    **self._rounding(group))

    def _step_argument(self, steps_taken: int, new_state: bool) -> int | None:
        # rmsprop_ takes no step (state["step"] is counted all the same, as torch does) unless it
        # rounds stochastically
        return steps_taken + 1 if self.defaults.get("stochastic_rounding") else None


class Adam(_FusedStep, torch.optim.Adam):
    """torch.optim.Adam (betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay) on
    fusedopt.adam_."""
    _update = staticmethod(functional.adam_)
    _states = state_specs.ADAM

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2), eps=float(group["eps"]),
                    weight_decay=float(group["weight_decay"]), amsgrad=bool(group["amsgrad"]),
                    maximize=bool(group["maximize"]),
                    decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)), **self._rounding(group))


class AdamW(Adam, torch.optim.AdamW):
    """torch.optim.AdamW (Adam with decoupled weight decay, default weight_decay=1e-2) on fusedopt.adam_."""


def _constructor_signature(cls: type[_FusedStep]) -> inspect.Signature:
    """torch's constructor signature with fusedopt's keywords after it: what help() and inspect
    show (the constructors pass torch's arguments on through *args/**kwargs)."""
    torch_class = next(base for base in cls.__mro__ if base.__module__.startswith("torch.optim"))
    parameters = {p.name: p for p in list(inspect.signature(torch_class).parameters.values())}
    for constructor in (cls, _FusedStep):  # RMSprop's own keywords first, then the low-precision ones
        for p in inspect.signature(constructor.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY:
                parameters.setdefault(p.name, p)
    return inspect.Signature(list(parameters.values()), return_annotation=None)


for _cls in (SGD, Adagrad, RMSprop, Adam, AdamW):
    _cls.__signature__ = _constructor_signature(_cls)
