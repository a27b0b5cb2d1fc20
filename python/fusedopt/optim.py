"""Stateful optimizers over NumPy arrays, as torch.optim: SGD, Adagrad, RMSprop, Adam, AdamW.

    import numpy as np
    from fusedopt import optim
    w, b = np.zeros((10, 5), np.float32), np.zeros(5, np.float32)
    opt = optim.AdamW([{"params": [w]}, {"params": [b], "weight_decay": 0.0}], lr=1e-3)
    for step in range(1000):
        opt.param_groups[0]["lr"] = schedule(step)   # hyperparameters may change between steps
        opt.step([grad_w, grad_b])                    # w and b are updated in place
    optim.save("checkpoint.npz", opt)                 # ... later: optim.load("checkpoint.npz", opt)

Every class is the shared Optimizer plus data: torch's hyperparameters and defaults, the state
arrays it keeps per param (and how each starts), and the fusedopt update function that advances
them. A step makes one update-function call, i.e. one C++ call, per param group.

Live state follows its param, as torch's: opt.state[param] (keyed by the array itself, its
identity), so params may be appended to, inserted into or removed from a group between steps and
each keeps its state (a new param starts fresh). state_dict() and checkpoints identify params by
their index in the order of all groups' params, as torch's do:
{"state": {index: {"step": n, name: ndarray or QuantizedState}}, "param_groups": [{..., "params": [indices]}]}.

Low precision (Optimizer's docstring says what each means): bfloat16/float16 params, and the
keywords state_dtype="float32" | "bfloat16" | "int8", master_weights=True, stochastic_rounding=True
(with seed=), min_8bit_size=4096, e.g. optim.AdamW(params, lr=1e-3, state_dtype="int8").
"""
import decimal
import math
import numbers
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np

from . import _core, _states, functional
from ._checkpoint import CHECKPOINT_FORMAT as CHECKPOINT_FORMAT
from ._checkpoint import load as load
from ._checkpoint import save as save
from ._checks import _array_problem, _memory, _step_error
from ._lowprec import MASTER_PARAM as MASTER_PARAM
from ._lowprec import (
    MIN_8BIT_SIZE,
    LowPrecision,
    _checked_options,
    _checked_seed,
    _copied_into,
    _hyperparameter_problem,
    _loaded_state,
    _param_dtype_problem,
    _state_dtype_of,
)
from ._lowprec import STATE_DTYPES as STATE_DTYPES
from ._states import MASTER as _MASTER_SPEC
from ._states import StateArray as StateArray
from ._tensors import _bfloat16
from .lowbit import QuantizedState, quantize, quantized_zeros_like

# The update-function calls of a step, as Optimizer._plan makes them: (group index, update keyword
# arguments, param indices, step, {state argument: [arrays]})
_Call = tuple[int, dict[str, Any], list[int], int | None, dict[str, list[Any]]]
# Optimizer._group_hyperparameters: (checked hyperparameters, update keyword arguments, {state name: StateArray})
_CheckedGroup = tuple[dict[str, Any], dict[str, Any], dict[str, StateArray]]


def _is_number(value: object) -> bool:
    return (isinstance(value, (numbers.Real, decimal.Decimal))
            and not isinstance(value, (bool, np.bool_)))


def _plain(value: Any) -> Any:
    """A hyperparameter as a plain Python value, as accepted: NumPy scalars, Fraction and Decimal
    become float (NumPy integers int), so that a group holds what the kernels and a checkpoint's
    JSON take; a number too large for a float raises ValueError; sequences become tuples."""
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        value = int(value)
        float(value)  # OverflowError for an int beyond float's range, which no kernel takes
        return value
    if isinstance(value, (numbers.Real, decimal.Decimal)):
        return float(value)
    return value


def _plain_if_possible(value: Any) -> Any:
    """_plain(value), or value itself when it is no number a float can hold (a group's value set
    since the last step, which that step will refuse)."""
    try:
        return _plain(value)
    except (OverflowError, ValueError):
        return value


# A step number the kernels take: a C++ long long, after the step being taken is counted.
_MAX_STEP = 2**63 - 1


class ParamState(MutableMapping[np.ndarray, dict[str, Any]]):
    """opt.state: {param: {state name: value}}, keyed by the param array itself (its identity, as
    torch keys by the tensor; arrays are not hashable, so this is not a dict). A param's entry
    holds the param, so no other array can take its id while it is here."""

    def __init__(self, items: Iterable[tuple[np.ndarray, dict[str, Any]]] = ()) -> None:
        self._by_id: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}  # id(param) -> (param, its state)
        for param, state in items:
            self[param] = state

    def __getitem__(self, param: np.ndarray) -> dict[str, Any]:
        return self._by_id[id(param)][1]

    def __setitem__(self, param: np.ndarray, state: dict[str, Any]) -> None:
        self._by_id[id(param)] = (param, state)

    def __delitem__(self, param: np.ndarray) -> None:
        del self._by_id[id(param)]

    def __contains__(self, param: object) -> bool:
        return id(param) in self._by_id

    def __iter__(self) -> Iterator[np.ndarray]:
        return (param for param, _ in self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __repr__(self) -> str:
        return f"ParamState({len(self)} params)"

    def __eq__(self, other: object) -> bool:
        """The same params (by identity) with the same state objects; a dict (whose keys cannot be
        arrays) is equal only when both are empty."""
        if isinstance(other, ParamState):
            return self._by_id.keys() == other._by_id.keys() and all(
                other._by_id[key][1] is state for key, (_, state) in self._by_id.items())
        return len(self) == 0 and len(other) == 0 if isinstance(other, Mapping) else NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dict

    # ids are not kept across pickling or copying: the pairs are, and the memo keeps each param the
    # same object as in param_groups
    def __reduce__(self) -> tuple[type, tuple[list[tuple[np.ndarray, dict[str, Any]]]]]:
        return ParamState, (list(self._by_id.values()),)


_NO_STATE: dict[str, Any] = {}  # the state of a param before its first step (never written)


def _snapshot(group: dict[str, Any]) -> tuple[dict[str, Any], list[type]]:
    """A group as it is now, to tell at a later step whether its hyperparameters have changed: a
    copy (lists copied too, so that a value changed in place, betas[0] = ..., is seen) and the
    types of its values (an equal value of another type, 1 for True, is checked again)."""
    return ({key: list(value) if isinstance(value, list) else value for key, value in group.items()},
            list(map(type, group.values())))


def _unchanged(group: dict[str, Any], snapshot: tuple[dict[str, Any], list[type]]) -> bool:
    copy, types = snapshot
    copy["params"] = group.get("params")  # not a hyperparameter; the same object compares without its arrays
    return group == copy and list(map(type, group.values())) == types


class Optimizer:
    """The shared machinery: a subclass is the class attributes below.

    Optimizer(params, **hyperparameters): params is a list of float32/float64 arrays (updated in
    place) or a list of param-group dicts {"params": [arrays], hyperparameter: value, ...}; the
    keyword arguments replace default_hyperparameters, and the result (self.defaults) fills in
    what each group leaves out.

    param_groups: list of dicts {"params": [arrays], hyperparameter: value, ...}, changeable between
    steps (hyperparameters, and params added, removed or replaced: the state follows each param).
    state: {param: {"step": steps taken, state array name: ndarray}} (a ParamState, keyed by the
    param array itself), filled at a param's first step.
    skipped_steps: how many step(..., skip_if_nonfinite=True) calls found a non-finite gradient.

    Low precision (keyword-only, fixed at construction; README "Mixed precision"):
    - params may be float32, float64, bfloat16 (ml_dtypes) or float16 arrays, grads of the params'
      dtype or bfloat16/float16 for float32 params; the math is float32 (float64 for float64).
    - state_dtype: the dtype of every state array (exp_avg, exp_avg_sq, momentum_buffer, sum, ...):
      "float32" (default; float64 for float64 params), "bfloat16", or "int8": 8-bit blockwise
      fusedopt.QuantizedState, with the signed code for exp_avg, momentum_buffer and grad_avg and
      the unsigned one for exp_avg_sq, max_exp_avg_sq, sum and square_avg. With "int8", params of
      fewer than min_8bit_size elements (default 4096, as bitsandbytes) keep float32 state:
      biases and norm weights, a few KB in all, whose blocks would be partial and whose state
      gains nothing worth their quantization error; min_8bit_size=0 quantizes every tensor.
    - master_weights=True (bfloat16/float16 params): state["master_param"] is a float32 copy of
      the param, made at its first step; each step updates it and writes the param as its
      rounding to nearest even in the same pass (the update functions' param_copies=).
    - stochastic_rounding=True (bfloat16 params, updated directly): the param's stores round up
      or down with probability by distance, from random bits keyed by (seed, step, tensor
      index in the call, element index). Each group keeps its seed as group["seed"] (the
      seed= keyword + the group's index; seed=None draws one at random), so state_dict() and
      checkpoints restore the exact random stream; SGD then counts state["step"] too.
    A combination the kernels cannot run (master_weights or stochastic_rounding with float32
    params, both at once, int8 or bfloat16 state with float64 params, an unknown state_dtype) is
    a TypeError/ValueError at construction (add_param_group for later params).

    Optimizers can be pickled and copied (copy.deepcopy) at any time; the copy continues bitwise
    as the original would.
    """
    default_hyperparameters: dict[str, Any] = {}  # torch's names and defaults; each value's type is the one required
    # the fusedopt.functional update function, as a staticmethod (every subclass sets it)
    update: Callable[..., bool] = None  # type: ignore[assignment]
    state_arrays: dict[str, StateArray] = {}  # torch's state name -> StateArray
    counts_steps = True           # keep state["step"] (torch's SGD keeps none)

    def __init__(self, params: Iterable[np.ndarray] | Iterable[dict[str, Any]], *, state_dtype: str = "float32",
                 master_weights: bool = False, stochastic_rounding: bool = False, seed: int | None = None,
                 min_8bit_size: int = MIN_8BIT_SIZE, **hyperparameters: Any) -> None:
        options = _checked_options(type(self).__name__, state_dtype, master_weights, stochastic_rounding, seed,
                                   min_8bit_size)
        self.state_dtype: str = options.state_dtype
        self.master_weights: bool = options.master_weights
        self.stochastic_rounding: bool = options.stochastic_rounding
        self.min_8bit_size: int = options.min_8bit_size
        if self.stochastic_rounding:
            self.counts_steps = True  # the random bits are keyed by the step (torch's SGD counts none)
            hyperparameters["seed"] = secrets.randbits(64) if seed is None else seed
        self.param_groups: list[dict[str, Any]] = []
        self.state: ParamState = ParamState()
        self.skipped_steps: int = 0
        # group index -> (_snapshot of the group, _group_hyperparameters' result)
        self._checked_groups: dict[int, tuple[tuple[dict[str, Any], list[type]], _CheckedGroup]] = {}
        unknown = sorted(set(hyperparameters) - set(self.default_hyperparameters) - set(self._options()))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown hyperparameter(s) {unknown}; "
                            f"it takes {list(self.default_hyperparameters)}")
        self.defaults: dict[str, Any] = self._checked_hyperparameters(
            {**self.default_hyperparameters, **hyperparameters}, type(self).__name__)
        if isinstance(params, (np.ndarray, dict, str)) or not hasattr(params, "__iter__"):
            raise TypeError("params must be a list of numpy arrays or a list of param-group dicts, got " +
                            type(params).__name__)
        params_list: list[Any] = list(params)
        if not params_list:
            raise ValueError("optimizer got an empty parameter list")
        if all(isinstance(p, dict) for p in params_list):
            for group in params_list:
                self.add_param_group(group)
        elif any(isinstance(p, dict) for p in params_list):
            raise TypeError("params mixes param-group dicts with arrays; give one or the other")
        else:
            self.add_param_group({"params": params_list})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add {"params": [arrays], hyperparameter: value, ...}; the defaults fill the hyperparameters left out."""
        where = f"param_groups[{len(self.param_groups)}]"
        if not isinstance(param_group, dict):
            raise TypeError(f"{where} must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{where} has no 'params'")
        params = param_group["params"]
        params = [params] if isinstance(params, np.ndarray) else params  # torch accepts a lone tensor here
        if not isinstance(params, (list, tuple)):
            raise TypeError(f"{where}['params'] must be a list of numpy arrays, got {type(params).__name__}")
        seen = {id(p) for group in self.param_groups for p in group["params"]}
        for j, p in enumerate(params):
            name = f"{where}['params'][{j}]"
            if not isinstance(p, np.ndarray):
                raise TypeError(f"{name} must be a numpy.ndarray, got {type(p).__name__}")
            problem = self._param_dtype_problem(p.dtype)
            if problem:
                raise TypeError(f"{name} has dtype {p.dtype}; {problem}")
            if not (p.flags.c_contiguous and p.flags.aligned):
                raise ValueError(f"{name} is not C-contiguous; fusedopt updates params in place and never copies them")
            if not p.flags.writeable:
                raise ValueError(f"{name} is read-only but is updated in place")
            if id(p) in seen:
                raise ValueError(f"{name} appears in more than one place; each param may be given once")
            seen.add(id(p))
        hyperparameters = {key: value for key, value in param_group.items() if key != "params"}
        if self.stochastic_rounding and "seed" not in hyperparameters:  # each group its own random stream
            hyperparameters["seed"] = (self.defaults["seed"] + len(self.param_groups)) % 2**64
        group = self._checked_hyperparameters({**self.defaults, **hyperparameters}, where)
        self.param_groups.append({"params": list(params), **group})

    def _param_dtype_problem(self, dtype: np.dtype[Any]) -> str | None:
        """Why this optimizer cannot update params of this dtype, or None."""
        return _param_dtype_problem(dtype, self._low_precision())

    def _low_precision(self) -> LowPrecision:
        return LowPrecision(self.state_dtype, self.master_weights, self.stochastic_rounding, self.min_8bit_size)

    def _options(self) -> dict[str, type]:
        """The group entries beside the hyperparameters that this optimizer's options add: "seed"
        with stochastic_rounding (an int from 0 to 2**64 - 1)."""
        return {"seed": int} if self.stochastic_rounding else {}

    def _state_specs(self, hyperparameters: dict[str, Any]) -> dict[str, StateArray]:
        """{state name: StateArray} of the state a group with these hyperparameters keeps per param."""
        needed = {name: spec for name, spec in self.state_arrays.items() if spec.needed(hyperparameters)}
        if self.master_weights:
            needed[MASTER_PARAM] = _MASTER_SPEC
        return needed

    def _state_dtype_of(self, param: np.ndarray) -> str:
        """The dtype this optimizer keeps param's state arrays in: "float64", "float32", "bfloat16" or "int8"."""
        return _state_dtype_of(param.dtype, param.size, self._low_precision())

    def _new_state_array(self, name: str, spec: StateArray, param: np.ndarray,
                         hyperparameters: dict[str, Any]) -> np.ndarray | QuantizedState:
        """A state array before the param's first step: filled with spec.fill in the state's dtype
        (placed as fusedopt.zeros_like places state), or the param in float32 for its master."""
        if name == MASTER_PARAM:
            master = functional.zeros_like(param, dtype=np.float32)
            np.copyto(master, param)  # exact: float32 holds every bfloat16/float16 value
            return master
        kind, fill = self._state_dtype_of(param), spec.fill(hyperparameters)
        if kind == "int8":
            state = quantized_zeros_like(param, spec.signed)
            return state if fill == 0 else quantize(np.full(param.shape, fill, np.float32), spec.signed, out=state)
        dtype = _bfloat16() if kind == "bfloat16" else np.dtype(kind)
        return functional.zeros_like(param, fill, dtype)

    # ---- hyperparameters -------------------------------------------------------------------------

    def _checked_hyperparameters(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        """The hyperparameters of group (a dict; "params" ignored), checked, as plain Python values.

        Each must have the type of its default; the valid ranges are the update function's own
        checks, run here on empty lists (nothing to write) so that they live in one place.
        """
        defaults, options = self.default_hyperparameters, self._options()
        unknown = sorted(set(group) - set(defaults) - set(options) - {"params"})
        if unknown:
            raise ValueError(f"{where}: unknown hyperparameter(s) {unknown}; "
                             f"{type(self).__name__} takes {list(defaults) + list(options)}")
        missing = [key for key in [*defaults, *options] if key not in group]
        if missing:
            raise ValueError(f"{where}: missing hyperparameter(s) {missing}")
        checked: dict[str, Any] = {}
        for key, default in defaults.items():
            value = group[key]
            if isinstance(default, bool):
                ok, kind = isinstance(value, (bool, np.bool_)), "a bool"
            elif isinstance(default, tuple):
                ok = isinstance(value, (tuple, list)) and len(value) == len(default) and all(map(_is_number, value))
                kind = f"a tuple of {len(default)} numbers"
            else:
                ok, kind = _is_number(value), "a number"
            if not ok:
                raise TypeError(f"{where}: {key} must be {kind}, got {value!r}")
            try:
                checked[key] = _plain(value)
            except (OverflowError, ValueError):  # 10**400, Decimal("sNaN")
                raise ValueError(f"{where}: {key} must be a number a float can hold, got {value!r}") from None
        if "seed" in options:
            checked["seed"] = _checked_seed(group["seed"], where)
        try:
            self._call(self._update_kwargs(checked), [], [],
                       {spec.argument: [] for spec in self.state_arrays.values() if spec.needed(checked)},
                       self._step_argument({}, {}))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        problem = _hyperparameter_problem(checked, self._low_precision())
        if problem:
            raise ValueError(f"{where}: {problem}")
        return checked

    def _group_hyperparameters(self, k: int) -> _CheckedGroup:
        """(param_groups[k]'s checked hyperparameters, the update function's keyword arguments for
        them, {state name: StateArray} of the state arrays they need); checked again only when the
        group has changed since the last step (checking costs ~40 us, the whole step of a small
        model ~100 us)."""
        group = self.param_groups[k]
        cached = self._checked_groups.get(k)
        try:
            if cached is not None and _unchanged(group, cached[0]):
                return cached[1]
        except (ValueError, TypeError, ArithmeticError):  # a value that does not compare (an array, a
            # signaling Decimal NaN where a number was): recheck
            pass
        checked = self._checked_hyperparameters(group, f"param_groups[{k}]")
        kwargs = self._update_kwargs(checked)
        if self.stochastic_rounding:
            kwargs["stochastic_rounding"] = True
        self._checked_groups[k] = (_snapshot(group), (checked, kwargs, self._state_specs(checked)))
        return self._checked_groups[k][1]

    def _update_kwargs(self, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        """The update function's keyword arguments for these hyperparameters (same names by default)."""
        return dict(hyperparameters)

    def _step_argument(self, state: dict[str, Any], new_arrays: dict[str, Any] | None) -> int | None:
        """The update function's `step` for a param with this state (before the step) and these newly
        allocated state arrays; None: pass no step."""
        steps_taken: int = state.get("step", 0)
        return steps_taken + 1

    def _call(self, kwargs: dict[str, Any], params: Sequence[Any], grads: Sequence[Any],
              arrays: dict[str, list[Any]], step: int | None, **options: Any) -> bool:
        """One update-function call: kwargs from _update_kwargs, arrays {state argument: [arrays]}.
        With master weights the call updates the masters and writes params as their copies."""
        if step is not None:
            options["step"] = step
        if _MASTER_SPEC.argument in arrays:
            arrays = dict(arrays)
            params, options["param_copies"] = arrays.pop(_MASTER_SPEC.argument), params
        return self.update(params, grads, **kwargs, **arrays, **options)

    # ---- pickling, copying, printing ------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # the cache of checked groups holds the StateArray specs (lambdas); a copy rebuilds it
        return {**self.__dict__, "_checked_groups": {}}

    def __repr__(self) -> str:
        """As torch's: the class, then each group's hyperparameters (and here a summary of its params)."""
        lines = [f"{type(self).__name__} ("]
        for k, group in enumerate(self.param_groups):
            params = group.get("params", [])
            sizes = sum(getattr(p, "size", 0) for p in params)
            lines.append(f"Parameter Group {k}")
            lines.append(f"    params: {len(params)} arrays, {sizes} elements")
            lines += [f"    {key}: {group[key]!r}" for key in sorted(group) if key != "params"]
        options = [f"state_dtype={self.state_dtype!r}"]
        options += ["master_weights=True"] * self.master_weights
        options += ["stochastic_rounding=True"] * self.stochastic_rounding
        options += [f"min_8bit_size={self.min_8bit_size}"] * (self.state_dtype == "int8")
        return "\n".join(lines + [f"Options: {', '.join(options)}", ")"])

    # ---- the step --------------------------------------------------------------------------------

    def _groups_with_indices(self) -> Iterator[tuple[dict[str, Any], range]]:
        """(group, range of its params' indices) for every group."""
        start = 0
        for group in self.param_groups:
            yield group, range(start, start + len(group["params"]))
            start += len(group["params"])

    def _flat_grads(self, grads: Sequence[Any], nparams: int) -> Sequence[Any]:
        """grads (one list over all params, or one list per group) as one list of nparams."""
        usage = ("grads must be a list of numpy arrays in the order of the params, or a list of such lists, "
                 "one per param group")
        if not isinstance(grads, (list, tuple)):
            raise TypeError(f"{usage}; got {type(grads).__name__}")
        if grads and isinstance(grads[0], (list, tuple)) and all(isinstance(g, (list, tuple)) for g in grads):
            if len(grads) != len(self.param_groups):
                raise ValueError(f"got {len(grads)} lists of grads but the optimizer has "
                                 f"{len(self.param_groups)} param groups")
            for k, (group_grads, group) in enumerate(zip(grads, self.param_groups)):
                if len(group_grads) != len(group["params"]):
                    raise ValueError(f"grads[{k}] has {len(group_grads)} arrays but param_groups[{k}] has "
                                     f"{len(group['params'])} params")
            grads = [g for group_grads in grads for g in group_grads]
        if len(grads) != nparams:
            raise ValueError(f"got {len(grads)} grads but the optimizer has {nparams} params; {usage}")
        return grads

    def _param_name(self, i: int) -> str:
        """The name of the param at flat index i, by its group and its index in that group."""
        for k, (_group, indices) in enumerate(self._groups_with_indices()):
            if i in indices:
                return f"param_groups[{k}]['params'][{i - indices.start}]"
        return f"params[{i}]"

    def _state_name(self, argument: str) -> str:
        """The state name (torch's, "exp_avg") of an update function's state argument ("exp_avgs")."""
        if argument == _MASTER_SPEC.argument:
            return MASTER_PARAM
        return next(name for name, spec in self.state_arrays.items() if spec.argument == argument)

    def _state_spec(self, argument: str) -> StateArray:
        """The StateArray of an update function's state argument."""
        name = self._state_name(argument)
        return _MASTER_SPEC if name == MASTER_PARAM else self.state_arrays[name]

    def _check_step(self, params: Sequence[Any], grads: Sequence[Any], calls: list[_Call]) -> None:
        """Every check the update functions make of their arrays, over all the calls of a step,
        with errors naming a param by its group and its index there: each param, grad and state
        array a float32/float64 C-contiguous ndarray, params and state writable, grads and state
        of their param's dtype and shape, and no array the step writes sharing memory with another
        of its arrays (grads are only read). (Names are made only for an error: this runs on every
        step of a model with several param groups.)"""
        arrays: list[np.ndarray] = []
        append = arrays.append
        grad_positions: list[int] = []  # in arrays: the grads, which are only read
        roles = {spec.argument: ("signed state" if spec.signed else "unsigned state")
                 for spec in self.state_arrays.values()}
        # the options' dtype rule (add_param_group's), for params appended to a group's list since:
        # else a later call of the step would refuse one after earlier calls had written theirs
        dtype_problems: dict[np.dtype[Any], str | None] = {}
        for _, _, indices, step, state_arrays in calls:
            # a state["step"] set by hand
            if step is not None and not (isinstance(step, int) and 1 <= step <= _MAX_STEP):
                raise ValueError(f"state['step'] of {self._param_name(indices[0])} is {step - 1!r}; a step count is an "
                                 "int from 0 to 2**63 - 2")
            masters = state_arrays.get(_MASTER_SPEC.argument)
            state_lists = [(argument, arrays_, roles[argument]) for argument, arrays_ in state_arrays.items()
                           if argument != _MASTER_SPEC.argument]
            for position, i in enumerate(indices):
                p, g = params[i], grads[i]
                problem = _array_problem(p, True)
                if problem:
                    raise _step_error(problem, self._param_name(i))
                if p.dtype not in dtype_problems:
                    dtype_problems[p.dtype] = self._param_dtype_problem(p.dtype)
                if dtype_problems[p.dtype]:
                    raise TypeError(f"{self._param_name(i)} has dtype {p.dtype}; {dtype_problems[p.dtype]}")
                updated = p  # the array the kernel updates: the param, or its float32 master
                if masters is not None:
                    updated = masters[position]
                    problem = _array_problem(updated, True) or _array_problem(p, True, updated, "copy")
                    if problem:
                        raise _step_error(problem, f"{self._param_name(i)} or its state[{MASTER_PARAM!r}]")
                    append(updated)
                problem = _array_problem(g, False, updated)
                if problem:
                    raise _step_error(problem, f"grads[{i}] (the grad of {self._param_name(i)})")
                append(p)
                grad_positions.append(len(arrays))
                append(g)
                for argument, state_list, role in state_lists:
                    a = state_list[position]
                    problem = _array_problem(a, True, updated, role)
                    if problem:
                        raise _step_error(problem, f"state[{self._state_name(argument)!r}] of {self._param_name(i)}")
                    if type(a) is QuantizedState:
                        append(a.codes)
                        append(a.scales)
                    else:
                        append(a)
        written = [True] * len(arrays)  # (one list op, where a flag appended per array is a call each)
        for position in grad_positions:
            written[position] = False
        pair = _core.overlapping(arrays, written)
        if pair is not None:
            first, second = (self._array_name(k, params, grads, calls) for k in pair)
            raise ValueError(f"{first} and {second} overlap in memory; an array that is written must not share "
                             "memory with another array of the step")

    def _array_name(self, k: int, params: Sequence[Any], grads: Sequence[Any], calls: list[_Call]) -> str:
        """The name of the k-th array _check_step collected, found by walking the calls again in
        its order (only for an error: an array object may serve in two places)."""
        names: list[str] = []
        for _, _, indices, _, state_arrays in calls:
            masters = state_arrays.get(_MASTER_SPEC.argument)
            for position, i in enumerate(indices):
                param = self._param_name(i)
                if masters is not None:
                    names.append(f"state[{MASTER_PARAM!r}] of {param}")
                names += [param, f"grads[{i}] (the grad of {param})"]
                for argument, state_list in state_arrays.items():
                    if argument != _MASTER_SPEC.argument:  # (8-bit state: its codes and its scales)
                        name = f"state[{self._state_name(argument)!r}] of {param}"
                        names += [name] * len(_memory(state_list[position]))
                if len(names) > k:
                    return names[k]
        return "an array"

    def _plan(self, params: Sequence[Any],
              grads: Sequence[Any]) -> tuple[list[_Call], dict[int, dict[str, Any]]]:
        """The update-function calls of a step, checking every group's hyperparameters before any
        call is made: ([(group index, update keyword arguments, param indices, step, {state argument:
        [arrays]})], {param index: state arrays allocated for it}). New state arrays are allocated
        on the side: they are kept only if the step is taken. A param whose grad is None takes no part.

        A kernel call takes one step number and one dtype. The params of a group share both, unless
        the group mixes dtypes or a checkpoint gave them different step counts: then one call per
        (step, dtype)."""
        calls: list[_Call] = []
        new_arrays: dict[int, dict[str, Any]] = {}
        step_argument, get_state = self._step_argument, self.state._by_id.get
        for k, (_group, indices) in enumerate(self._groups_with_indices()):
            hyperparameters, kwargs, needed = self._group_hyperparameters(k)
            # (step, dtype) -> (param indices, {state argument: [arrays]}, [(state name, its list)])
            by_call: dict[tuple[int | None, np.dtype[Any]], tuple[list[int], dict[str, list[Any]],
                                                                  list[tuple[str, list[Any]]]]] = {}
            # Loops, not comprehensions: on this code's path each comprehension costs ~0.5 us.
            for i in indices:
                if grads[i] is None:
                    continue
                param = params[i]
                if not isinstance(param, np.ndarray):  # the rest is checked with the grads, below
                    raise TypeError(f"{self._param_name(i)} must be a numpy.ndarray, got {type(param).__name__}")
                new: dict[str, Any] | None
                entry, new = get_state(id(param)), None
                state = _NO_STATE if entry is None else entry[1]
                for name, spec in needed.items():
                    if name not in state:
                        if new is None:
                            new = new_arrays[i] = {}
                        new[name] = self._new_state_array(name, spec, param, hyperparameters)
                if new:
                    state = {**state, **new}
                key = (step_argument(state, new), param.dtype)
                call = by_call.get(key)
                if call is None:
                    arrays: dict[str, list[Any]] = {spec.argument: [] for spec in needed.values()}
                    call = by_call[key] = ([], arrays, [(name, arrays[spec.argument]) for name, spec in needed.items()])
                call[0].append(i)
                for name, state_list in call[2]:
                    state_list.append(state[name])
            for (step, _), (call_indices, arrays, _) in by_call.items():
                calls.append((k, kwargs, call_indices, step, arrays))
        return calls, new_arrays

    def step(self, grads: Sequence[Any], *, grad_scale: float | None = None, skip_if_nonfinite: bool = False) -> bool:
        """Update every param in place from its gradient; returns True, or False if the step was skipped.

        grads: in the order of the params, one list over all groups or one list per group. A grad
        of None leaves its param out of the step (no update, no state, no step count), as torch
        leaves out a param whose .grad is None.
        grad_scale: grads are divided by it inside the update (mixed-precision loss scaling).
        skip_if_nonfinite: if any gradient, divided by grad_scale, holds an inf or NaN, change
        nothing (params, state, step counts), count the step in self.skipped_steps and return False.

        A step that raises changes nothing: every check of every call is made before the first
        call writes.
        """
        params = [p for group in self.param_groups for p in group["params"]]
        grads = self._flat_grads(grads, len(params))
        calls, new_arrays = self._plan(params, grads)
        # A call checks its arguments, and over all grads whether to skip, before writing
        # anything. A single call over all params in order (the common case) makes its checks
        # the step's (if it refuses an array, the step's own checks then name it); otherwise the
        # step makes them across all its calls first, so that a bad argument of a later call
        # leaves the earlier ones unwritten, and the step is taken or skipped as a whole.
        single = len(calls) == 1 and len(calls[0][2]) == len(params)
        if not single:
            self._check_step(params, grads, calls)
            stepped = [g for g in grads if g is not None]
            if skip_if_nonfinite and not all(functional.all_finite([g for g in stepped if g.dtype == dtype],
                                                                   grad_scale=grad_scale)
                                             for dtype in {g.dtype for g in stepped}):
                self.skipped_steps += 1
                return False
        for k, kwargs, indices, step, arrays in calls:
            call_params, call_grads = (params, grads) if single else ([params[i] for i in indices],
                                                                      [grads[i] for i in indices])
            try:
                taken = self._call(kwargs, call_params, call_grads, arrays, step, grad_scale=grad_scale,
                                   skip_if_nonfinite=skip_if_nonfinite and single)
                refused = None
            except (TypeError, ValueError) as e:
                refused = e
            if refused is not None:  # nothing written
                if single:  # name the array by its group, if an array was refused
                    self._check_step(params, grads, calls)
                raise type(refused)(f"param_groups[{k}]: {refused}") from None
            if not taken:
                self.skipped_steps += 1  # only a single skipping call returns False, and it wrote nothing
                return False

        by_id = self.state._by_id  # (ParamState's own dict: this runs for every param of every step)
        for i, new in new_arrays.items():  # no state at all without either (torch's SGD without momentum)
            entry = by_id.get(id(params[i]))
            if entry is None:
                by_id[id(params[i])] = (params[i], new)
            else:
                entry[1].update(new)
        if self.counts_steps:
            for _, _, indices, _, _ in calls:
                for i in indices:
                    entry = by_id.get(id(params[i]))
                    if entry is None:
                        entry = by_id[id(params[i])] = (params[i], {})
                    state = entry[1]
                    state["step"] = state.get("step", 0) + 1
        return True

    # ---- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """{"state": {param index: {name: number or array copy}}, "param_groups": [{..., "params": [indices]}]}.
        8-bit state is a QuantizedState copy (its codes and scales, bitwise)."""
        groups = [{**{key: _plain_if_possible(value) for key, value in group.items() if key != "params"},
                   "params": list(indices)}
                  for group, indices in self._groups_with_indices()]
        params = [p for group in self.param_groups for p in group["params"]]
        state = {i: {name: value.copy() if isinstance(value, (np.ndarray, QuantizedState)) else value
                     for name, value in self.state[p].items()}
                 for i, p in enumerate(params) if p in self.state}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Replace the hyperparameters and state by those of state_dict (from state_dict() of an
        optimizer of this class over params of the same shapes and dtypes): state i goes to the
        param now at index i of all groups' params.

        Every key, index, shape, dtype and hyperparameter is checked before anything changes: a bad
        state_dict raises ValueError or TypeError and leaves the optimizer as it was. Arrays are
        copied, into the existing state arrays where there are some.

        State in another precision is converted to this optimizer's (see _loaded_state): float32
        <-> bfloat16 (rounded to nearest even), float32/bfloat16 -> 8-bit (fusedopt.quantize) and
        back (dequantized); float64 state converts to nothing. master_param must be float32.
        A checkpoint without group seeds loaded by a stochastic_rounding optimizer keeps its seeds
        (an SGD checkpoint without steps counts one step taken), one with seeds loaded by a
        round-to-nearest optimizer drops them (and SGD's steps), and one without master weights
        loaded by a master_weights optimizer has them made from the params at the next step
        (fusedopt.torch's classes load these too).
        """
        groups, state, converted = self._checked_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for group, hyperparameters in zip(self.param_groups, groups):
            group.update(hyperparameters)
        new_state = ParamState()
        for i, loaded in state.items():
            old = self.state.get(params[i], {})
            new = new_state[params[i]] = {}
            for name, value in loaded.items():
                if name == "step":
                    new[name] = int(value)
                else:
                    new[name] = _copied_into(old.get(name), value, (i, name) in converted)
        self.state = new_state

    def _checked_state_dict(self, state_dict: Any) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]],
                                                             set[tuple[int, str]]]:
        """(hyperparameters of each group, {param index: state}, {(param index, name) of the state
        arrays converted to this optimizer's dtype: new arrays}) from state_dict, checked against
        this optimizer."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            got = sorted(map(str, state_dict)) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"a state_dict is a dict with the keys 'state' and 'param_groups', got {got}")
        loaded_groups, loaded_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(loaded_groups, (list, tuple)) or len(loaded_groups) != len(self.param_groups):
            n = len(loaded_groups) if isinstance(loaded_groups, (list, tuple)) else type(loaded_groups).__name__
            raise ValueError(f"the state_dict has {n} param groups but this optimizer has {len(self.param_groups)}; "
                             "is it from another model?")
        groups: list[dict[str, Any]] = []
        # param index -> (param, its group's loaded hyperparameters)
        param_info: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}
        for k, ((group, indices), loaded) in enumerate(zip(self._groups_with_indices(), loaded_groups)):
            where = f"state_dict['param_groups'][{k}]"
            if not isinstance(loaded, dict):
                raise TypeError(f"{where} must be a dict, got {type(loaded).__name__}")
            if not isinstance(loaded.get("params"), (list, tuple)) or list(loaded["params"]) != list(indices):
                raise ValueError(f"{where}['params'] is {loaded.get('params')!r} but this optimizer's group {k} "
                                 f"holds params {list(indices)}; is the state_dict from another model?")
            if "seed" in self._options() and "seed" not in loaded:
                loaded = {**loaded, "seed": group["seed"]}  # a checkpoint of round-to-nearest params
            elif "seed" not in self._options() and "seed" in loaded:
                loaded = {key: value for key, value in loaded.items() if key != "seed"}  # of stochastic rounding
            groups.append(self._checked_hyperparameters(loaded, where))
            param_info.update((i, (p, groups[-1])) for i, p in zip(indices, group["params"]))

        if not isinstance(loaded_state, dict):
            raise TypeError(f"state_dict['state'] must be a dict, got {type(loaded_state).__name__}")
        known = set(self.state_arrays) | ({"step"} if self.counts_steps else set())
        known |= {MASTER_PARAM} if self.master_weights else set()
        checked: dict[int, dict[str, Any]] = {}
        converted: set[tuple[int, str]] = set()
        for i, state in loaded_state.items():
            where = f"state_dict['state'][{i!r}]"
            if not (isinstance(i, numbers.Integral) and i in param_info):
                raise ValueError(f"{where}: no param has index {i!r} (this optimizer has params 0 to "
                                 f"{len(param_info) - 1}); is the state_dict from another model?")
            if not isinstance(state, dict):
                raise TypeError(f"{where} must be a dict, got {type(state).__name__}")
            param, hyperparameters = param_info[i]  # type: ignore[index]  # an Integral key, found above
            specs = self._state_specs(hyperparameters)
            # master weights missing (a checkpoint without them) are made from the param at the
            # next step, as at a first step
            needed = set(specs) - {MASTER_PARAM} | ({"step"} if self.counts_steps else set())
            if not type(self).counts_steps:  # SGD: only stochastic rounding keeps a step
                if self.counts_steps and "step" not in state and set(state) & set(specs):
                    # a round-to-nearest checkpoint into stochastic rounding: its state means a step
                    # was taken, as fusedopt.torch.SGD loads torch.optim.SGD's
                    state = {**state, "step": 1}
                elif not self.counts_steps and "step" in state:  # a stochastic-rounding checkpoint
                    state = {key: value for key, value in state.items() if key != "step"}
            if set(state) - known or needed - set(state):
                raise ValueError(f"{where} has the keys {sorted(map(str, state))}; {type(self).__name__} with "
                                 f"these hyperparameters needs {sorted(needed)} (and allows {sorted(known)})")
            for name, value in state.items():
                if name == "step":  # the next step's number, step + 1, must fit the kernels' long long
                    if not (isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
                            and 1 <= value < _MAX_STEP):  # type: ignore[operator]  # Integral: no int comparisons in typeshed
                        raise ValueError(f"{where}['step'] must be an int from 1 to 2**63 - 2, got {value!r}")
                else:
                    kind = "float32" if name == MASTER_PARAM else self._state_dtype_of(param)
                    value = _loaded_state(value, kind, specs[name].signed, param, f"{where}[{name!r}]",
                                          convert=name != MASTER_PARAM)
                    if value is not state[name]:
                        converted.add((int(i), name))
                checked.setdefault(int(i), {})[name] = value
            checked.setdefault(int(i), {})
        return groups, checked, converted


# ---- the optimizers --------------------------------------------------------------------------------


class SGD(Optimizer):
    """torch.optim.SGD: momentum, dampening, Nesterov momentum, L2 weight decay."""
    default_hyperparameters = dict(lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False)
    update = staticmethod(functional.sgd_)
    state_arrays = _states.named(_states.SGD)
    counts_steps = False

    def _step_argument(self, state: dict[str, Any], new_arrays: dict[str, Any] | None) -> int | None:
        # a param whose momentum buffer is new takes the first-step rule, also when momentum is
        # switched on mid-training (torch: the buffer is None there too; with stochastic rounding
        # that step then reuses step 1's random bits); stochastic rounding needs the step
        if new_arrays and "momentum_buffer" in new_arrays:
            return 1
        return state.get("step", 0) + 1 if self.stochastic_rounding else None


class Adagrad(Optimizer):
    """torch.optim.Adagrad. Unlike torch, the state is allocated at the first step rather than at
    construction, and a group's own initial_accumulator_value is used (torch uses the constructor's
    for every group)."""
    default_hyperparameters = dict(lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                                   maximize=False)
    update = staticmethod(functional.adagrad_)
    state_arrays = _states.named(_states.ADAGRAD)

    def _checked_hyperparameters(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        checked = super()._checked_hyperparameters(group, where)
        value = checked["initial_accumulator_value"]
        if not 0 <= value < math.inf:
            raise ValueError(f"{where}: Invalid initial_accumulator_value value: {value!r} (must be finite and >= 0)")
        return checked

    def _update_kwargs(self, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(hyperparameters)
        del kwargs["initial_accumulator_value"]  # only starts the state (see state_arrays)
        return kwargs


class RMSprop(Optimizer):
    """torch.optim.RMSprop; eps_inside_sqrt=True divides by sqrt(square_avg + eps) instead (the textbook form)."""
    default_hyperparameters = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                                   maximize=False, eps_inside_sqrt=False)
    update = staticmethod(functional.rmsprop_)
    state_arrays = _states.named(_states.RMSPROP)

    def _step_argument(self, state: dict[str, Any], new_arrays: dict[str, Any] | None) -> int | None:
        # rmsprop_ takes no step (state["step"] is counted all the same, as torch does) unless it
        # rounds stochastically
        return state.get("step", 0) + 1 if self.stochastic_rounding else None


class Adam(Optimizer):
    """torch.optim.Adam (decoupled_weight_decay=True: AdamW's update)."""
    default_hyperparameters = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
                                   maximize=False, decoupled_weight_decay=False)
    update = staticmethod(functional.adam_)
    state_arrays = _states.named(_states.ADAM)

    def _update_kwargs(self, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(hyperparameters)
        kwargs["beta1"], kwargs["beta2"] = kwargs.pop("betas")
        return kwargs


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, default weight_decay=1e-2."""
    default_hyperparameters = {**Adam.default_hyperparameters, "weight_decay": 1e-2, "decoupled_weight_decay": True}

