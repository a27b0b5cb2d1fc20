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
grad, at the same addresses, with the same state tensors) and only converts the new grads.
The step counters of a plan's params are 0-d views into one tensor, so one add_ counts the
step for all of them.
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, NamedTuple, overload

import numpy as np
import torch
from torch.optim.optimizer import _get_scalar_dtype, _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from .. import _core, functional
from .. import get_num_threads as _fusedopt_threads
from .._tensors import tensor_to_ndarray
from ..optim import _array_problem, _step_error
from . import _omp

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "RMSprop"]

# A step of at least this many elements on 2+ threads first puts torch's idle OpenMP workers to
# sleep (fusedopt.torch._omp): 120-140 us right after a backward (best of 41, 2-core VM; it waits
# for torch's workers to join, so on a loaded machine it can take a scheduler slice), against
# the milliseconds by which a spinning worker slows a large step right after backward. A step
# under 2 * 131072 elements runs on one thread anyway (csrc/parallel.h, kMinElementsPerThread),
# and torch's spinning worker then holds the other core, not the step's. Between that and this
# threshold, whether parking pays could not be measured apart from the machine's noise.
PARK_TORCH_WORKERS_MIN_ELEMENTS = 1 << 22
_torch_openmp: list[_omp.TorchOpenMP | None] = []  # found at the first step that parks

_get_grad = operator.attrgetter("grad")
_data_ptr = torch.Tensor.data_ptr
_as_ndarray = torch.Tensor.numpy


class _StateSpec(NamedTuple):
    """One per-param state tensor: torch's name, the fusedopt keyword for the list of them, and
    whether a group with these hyperparameters keeps it."""
    name: str
    argument: str
    needed: Callable[[dict[str, Any]], bool]


def _always(group: dict[str, Any]) -> bool:
    return True


class _Call(NamedTuple):
    """One fusedopt call of a plan: the param views, their positions among the plan's params
    (None: all of them), the state views by keyword, and the step argument of the plan's first step
    (a later step adds _Plan.taken)."""
    params: list[np.ndarray]
    positions: list[int] | None
    states: dict[str, list[np.ndarray]]
    step: int | None


class _Plan:
    """What the step of one param group needs besides the grads, valid while the group has the
    same params with a grad, at the same addresses, with the same state dicts and tensors."""
    __slots__ = ("calls", "elements", "group", "group_params", "new_state", "params", "present", "ptrs", "state",
                 "state_dicts", "step_counts", "steps", "structure", "taken", "watched_dicts", "watched_keys",
                 "watched_tensors")

    def __init__(self) -> None:
        self.group: dict[str, Any] = {}
        self.state: Any = None                        # the optimizer's state dict at build time
        self.group_params: list[torch.Tensor] = []    # group["params"] as it was
        self.present: list[bool] = []                 # which of them had a grad
        self.structure: tuple[bool, ...] = ()         # which state tensors the group keeps
        self.params: list[torch.Tensor] = []          # the params with a grad
        self.ptrs: list[int] = []
        self.state_dicts: list[dict[str, Any] | None] = []  # their state dicts (None: none yet)
        self.watched_dicts: list[dict[str, Any]] = []  # (dict, key, tensor): state entries the views are of
        self.watched_keys: list[str] = []
        self.watched_tensors: list[torch.Tensor] = []
        self.new_state: list[tuple[torch.Tensor, dict[str, Any]]] = []  # state to keep once the step is taken
        self.calls: list[_Call] = []
        self.steps: torch.Tensor | None = None        # the params' state["step"] are views into it
        self.elements = 0                              # in the params with a grad
        self.step_counts: np.ndarray | None = None    # steps as NumPy, made by the first step taken
        self.taken = 0                                 # steps taken with the plan: added to each call's step

    def holds(self, group: dict[str, Any], present: list[bool], state: Any) -> bool:
        """Whether the plan is still the one for this group (C-level maps: this runs every step)."""
        return (self.group is group and self.state is state and self.present == present
                and len(group["params"]) == len(self.group_params)
                and all(map(operator.is_, group["params"], self.group_params))
                and list(map(_data_ptr, self.params)) == self.ptrs
                and all(map(operator.is_, map(state.get, self.params), self.state_dicts))
                and all(map(operator.is_, map(dict.get, self.watched_dicts, self.watched_keys),
                            self.watched_tensors)))


def _view(tensor: torch.Tensor, name: str) -> np.ndarray:
    """A NumPy view of a param's or state tensor's memory (fusedopt's one dtype mapping and checks)."""
    return tensor_to_ndarray(tensor, name)


class _FusedStep(torch.optim.Optimizer):
    """step() for the classes below: the class attributes say which fusedopt function runs, with
    which state, and how its hyperparameters are read from a param group."""
    _step_supports_amp_scaling = True  # torch.amp.GradScaler passes grad_scale/found_inf (see step)

    _update: ClassVar[Callable[..., bool]]
    _states: ClassVar[tuple[_StateSpec, ...]]
    _counts_steps: ClassVar[bool] = True  # keeps state["step"] (torch's SGD keeps none)
    _unsupported = ("capturable", "differentiable")

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

    # ---- torch.optim.Optimizer -----------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for option in self._unsupported:
            if group.get(option):
                self.param_groups.pop()
                raise ValueError(f"fusedopt.torch.{type(self).__name__} does not support {option}=True "
                                 "(its step writes the tensors' memory outside autograd and CUDA graphs); "
                                 f"use torch.optim.{type(self).__name__} for it")

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Update every param whose .grad is not None, in place: one fusedopt call per param group.

        Under torch.amp.GradScaler the scaler sets self.grad_scale and self.found_inf (as for
        torch's fused optimizers): the grads are unscaled inside the kernel, and a step whose
        grads held an inf or NaN changes nothing (params, state, step counts).
        """
        # torch wraps an optimizer class's step in Optimizer.profile_hook_step (the step pre/post
        # hooks and a profiler range) unless the step is marked hooked, as this one is (below the
        # class): the wrapper's record_function is two dispatcher calls, ~100 us right after a
        # step's kernel has evicted the caches, a fifth of a small model's step. So torch's own
        # wrapper runs only when it has something to do: hooks, or a profiler listening.
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks or _global_optimizer_pre_hooks
                or _global_optimizer_post_hooks or torch.autograd._profiler_enabled()):
            loss: float | None = _hooked_step(self, closure)
            return loss
        return self._fused_step(closure)

    def _fused_step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        plans = self.__dict__.setdefault("_fusedopt_plans", {})
        steps = []  # (plan, grad views of its params, hyperparameters)
        for group in self.param_groups:
            grads = list(map(_get_grad, group["params"]))
            present = [g is not None for g in grads]
            plan = plans.get(id(group))
            if plan is None or not plan.holds(group, present, self.state) or plan.structure != self._structure(group):
                plan = plans[id(group)] = self._plan(group, present)
            if not plan.params:
                continue
            if len(plan.params) != len(grads):
                grads = [g for g in grads if g is not None]
            steps.append((plan, self._grad_views(grads), self._hyperparameters(group)))
        if len(plans) > len(self.param_groups):  # groups replaced (load_state_dict): drop their plans and views
            current = {id(group) for group in self.param_groups}
            for key in [key for key in plans if key not in current]:
                del plans[key]
        if found_inf is not None and float(found_inf) != 0:
            return loss
        scale = None if grad_scale is None else float(grad_scale)
        if sum(len(plan.calls) for plan, _, _ in steps) > 1:
            self._check_calls(steps)
        if sum(plan.elements for plan, _, _ in steps) >= PARK_TORCH_WORKERS_MIN_ELEMENTS and _fusedopt_threads() > 1:
            if not _torch_openmp:
                _torch_openmp.append(_omp.find())
            if _torch_openmp[0] is not None:
                _torch_openmp[0].park_workers()
        for plan, grads, hyperparameters in steps:
            for call in plan.calls:
                call_grads = grads if call.positions is None else [grads[i] for i in call.positions]
                step = {} if call.step is None else {"step": call.step + plan.taken}
                type(self)._update(call.params, call_grads, **call.states, **hyperparameters, **step,
                                   grad_scale=scale)
        for plan, _, _ in steps:
            self._taken(plan)
        return loss

    # ---- the plan -------------------------------------------------------------------------------

    def _structure(self, group: dict[str, Any]) -> tuple[bool, ...]:
        return tuple(spec.needed(group) for spec in self._states)

    def _plan(self, group: dict[str, Any], present: list[bool]) -> _Plan:
        """A new plan for this group: views of its params with a grad and of their state
        (creating the state a param lacks, kept only once the step is taken), its calls grouped by
        dtype and step argument, and the params' step counters as views into one tensor."""
        plan = _Plan()
        plan.group, plan.state, plan.present = group, self.state, present
        plan.group_params = list(group["params"])
        plan.structure = self._structure(group)
        specs = [spec for spec, needed in zip(self._states, plan.structure) if needed]
        by_call: dict[tuple[torch.dtype, int | None], list[int]] = {}
        param_views, state_views, steps_taken = [], [], []
        step_dtype = _get_scalar_dtype()  # torch.optim's step dtype
        for p, has_grad in zip(plan.group_params, present):
            if not has_grad:
                continue
            i = len(plan.params)
            plan.state_dicts.append(self.state.get(p))
            state: dict[str, Any] = self.state.get(p) or {}
            new = {spec.name: self._new_state_tensor(spec.name, p) for spec in specs if state.get(spec.name) is None}
            plan.params.append(p)
            plan.elements += p.numel()
            plan.ptrs.append(p.data_ptr())
            for spec in specs:
                if spec.name not in new:
                    plan.watched_dicts.append(state)
                    plan.watched_keys.append(spec.name)
                    plan.watched_tensors.append(state[spec.name])
            tensors = {**{name: state[name] for name in state}, **new}
            param_views.append(_view(p, f"param {i} of its group"))
            state_views.append({spec.argument: _view(tensors[spec.name], f"state[{spec.name!r}] of param {i}")
                                for spec in specs})
            step: Any = state.get("step")  # an int, a tensor (torch's), or None
            if self._counts_steps:
                steps_taken.append(0 if step is None else int(step))
                if torch.is_tensor(step):
                    step_dtype = step.dtype
            if new or (self._counts_steps and step is None):
                plan.new_state.append((p, new))
            key = (p.dtype, self._step_argument(steps_taken[-1] if self._counts_steps else 0, bool(new)))
            by_call.setdefault(key, []).append(i)
        for (_, step_argument), positions in by_call.items():
            plan.calls.append(_Call(params=[param_views[i] for i in positions],
                                    positions=None if len(by_call) == 1 else positions,
                                    states={spec.argument: [state_views[i][spec.argument] for i in positions]
                                            for spec in specs},
                                    step=step_argument))
        if self._counts_steps and plan.params:
            # one tensor of counters, torch's dtype: a step counts for all params with one add_
            plan.steps = torch.tensor(steps_taken, dtype=step_dtype)
            new_state = {id(p): new for p, new in plan.new_state}
            for i, (p, existing) in enumerate(zip(plan.params, plan.state_dicts)):
                counter = plan.steps[i]
                if id(p) in new_state:
                    new_state[id(p)]["step"] = counter
                elif existing is not None:  # always: a param with no state to make has a step
                    existing["step"] = counter
                    plan.watched_dicts.append(existing)
                    plan.watched_keys.append("step")
                    plan.watched_tensors.append(counter)
        return plan

    def _grad_views(self, grads: list[torch.Tensor]) -> list[np.ndarray]:
        """NumPy views of the grads. Tensor.numpy is the fast path (~0.6 us a grad); a grad it
        refuses (or a bfloat16 one) goes through fusedopt's one conversion, for its view or its
        error. (Not kept between steps: the views would keep grads that zero_grad() let go alive.)"""
        try:
            return list(map(_as_ndarray, grads))
        except (TypeError, RuntimeError):
            for i, g in enumerate(grads):
                if g.layout != torch.strided:
                    raise RuntimeError(f"fusedopt.torch.{type(self).__name__} does not support sparse gradients "
                                       f"(grad {i} of a param group is {g.layout})") from None
            return [_view(g, f"grad {i}") for i, g in enumerate(grads)]

    def _check_calls(self, steps: list[tuple[_Plan, list[np.ndarray], dict[str, Any]]]) -> None:
        """A step of several calls: every call's hyperparameters (each call's own checks, on empty
        lists) and, across all calls, the checks each call makes of its arrays (fusedopt.optim's
        _array_problem) and of their memory (no two arrays of the step sharing a byte), before the
        first call writes anything."""
        update = type(self)._update
        arrays: list[np.ndarray] = []
        names: list[str] = []
        for k, (plan, plan_grads, hyperparameters) in enumerate(steps):
            for call in plan.calls:
                step = {} if call.step is None else {"step": call.step + plan.taken}
                update([], [], **{argument: [] for argument in call.states}, **hyperparameters, **step)
                positions = range(len(plan_grads)) if call.positions is None else call.positions
                for j, (p, position) in enumerate(zip(call.params, positions)):
                    where = f"param {j} of a call for param group {k}"
                    checks = [(p, True, None, where), (plan_grads[position], False, p, f"the grad of {where}")]
                    checks += [(states[j], True, p, f"{argument}[{j}] of {where}")
                               for argument, states in call.states.items()]
                    for array, written, param, name in checks:
                        problem = _array_problem(array, written, param)
                        if problem:
                            raise _step_error(problem, name)
                        arrays.append(array)
                        names.append(name)
        pair = _core.overlapping(arrays)
        if pair is not None:
            raise ValueError(f"{names[pair[0]]} and {names[pair[1]]} overlap in memory; every array of a step "
                             "must be distinct")

    def _taken(self, plan: _Plan) -> None:
        """After a plan's calls: count the step, keep new state, tell autograd the params changed."""
        if plan.steps is not None:
            # through NumPy: torch's add_ on this tiny tensor costs ~90 us right after the kernel
            # has evicted the caches (the dispatcher's code and data), NumPy's add ~25
            if plan.step_counts is None:
                plan.step_counts = plan.steps.numpy()
            np.add(plan.step_counts, 1, out=plan.step_counts)
            plan.taken += 1
        torch._C._increment_version(plan.params)  # torch.autograd.graph.increment_version, less its isinstance
        if plan.new_state:
            for p, new in plan.new_state:
                self.state[p].update(new)
            self.__dict__["_fusedopt_plans"].pop(id(plan.group), None)  # the next step plans with the kept state


# ---- the optimizers ---------------------------------------------------------------------------------


# torch's wrapper of a step (see _FusedStep.step): called by step when it has something to do,
# and kept off _FusedStep.step itself by the mark torch looks for
_hooked_step = torch.optim.Optimizer.profile_hook_step(_FusedStep._fused_step)
_FusedStep.step.hooked = True  # type: ignore[attr-defined]


class SGD(_FusedStep, torch.optim.SGD):
    """torch.optim.SGD (momentum, dampening, nesterov, weight_decay, maximize) on fusedopt.sgd_."""
    _update = staticmethod(functional.sgd_)
    _states = (_StateSpec("momentum_buffer", "momentum_buffers", lambda group: group["momentum"] != 0),)
    _counts_steps = False

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        return dict(lr=float(group["lr"]), momentum=float(group["momentum"]), dampening=float(group["dampening"]),
                    nesterov=bool(group["nesterov"]), weight_decay=float(group["weight_decay"]),
                    maximize=bool(group["maximize"]))

    def _step_argument(self, steps_taken: int, new_state: bool) -> int | None:
        # torch starts a momentum buffer as the first grad: sgd_'s step=1 rule
        return 1 if new_state else None

    def _new_state_tensor(self, name: str, param: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(param, memory_format=torch.preserve_format)  # step=1 writes all of it


class Adagrad(_FusedStep, torch.optim.Adagrad):
    """torch.optim.Adagrad (lr_decay, weight_decay, initial_accumulator_value, eps, maximize) on
    fusedopt.adagrad_. As torch, state is made for every param at construction, and a sum made
    later starts at the constructor's initial_accumulator_value."""
    _update = staticmethod(functional.adagrad_)
    _states = (_StateSpec("sum", "state_sums", _always),)

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        return dict(lr=float(group["lr"]), lr_decay=float(group["lr_decay"]), weight_decay=float(group["weight_decay"]),
                    eps=float(group["eps"]), maximize=bool(group["maximize"]))

    def _new_state_tensor(self, name: str, param: torch.Tensor) -> torch.Tensor:
        return torch.full_like(param, self.defaults["initial_accumulator_value"], memory_format=torch.preserve_format)


class RMSprop(_FusedStep, torch.optim.RMSprop):
    """torch.optim.RMSprop (alpha, eps, weight_decay, momentum, centered, maximize) on
    fusedopt.rmsprop_; eps_inside_sqrt=True divides by sqrt(square_avg + eps), the textbook form,
    instead of torch's sqrt(square_avg) + eps."""
    _update = staticmethod(functional.rmsprop_)
    _states = (_StateSpec("square_avg", "square_avgs", _always),
               _StateSpec("momentum_buffer", "momentum_buffers", lambda group: group["momentum"] > 0),
               _StateSpec("grad_avg", "grad_avgs", lambda group: bool(group["centered"])))

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0, centered: bool = False,
                 capturable: bool = False, foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, *, eps_inside_sqrt: bool = False) -> None:
        self._eps_inside_sqrt = bool(eps_inside_sqrt)  # read by add_param_group while torch's __init__ runs
        super().__init__(params, lr, alpha, eps, weight_decay, momentum, centered, capturable, foreach, maximize,
                         differentiable)
        self.defaults["eps_inside_sqrt"] = self._eps_inside_sqrt

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group.setdefault("eps_inside_sqrt", self.defaults.get("eps_inside_sqrt", self._eps_inside_sqrt))
        super().add_param_group(param_group)

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        return dict(lr=float(group["lr"]), alpha=float(group["alpha"]), eps=float(group["eps"]),
                    weight_decay=float(group["weight_decay"]), momentum=float(group["momentum"]),
                    centered=bool(group["centered"]), maximize=bool(group["maximize"]),
                    eps_inside_sqrt=bool(group.get("eps_inside_sqrt", self.defaults.get("eps_inside_sqrt", False))))

    def _step_argument(self, steps_taken: int, new_state: bool) -> int | None:
        return None  # rmsprop_ takes no step; state["step"] is counted all the same, as torch does


class Adam(_FusedStep, torch.optim.Adam):
    """torch.optim.Adam (betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay) on
    fusedopt.adam_."""
    _update = staticmethod(functional.adam_)
    _states = (_StateSpec("exp_avg", "exp_avgs", _always),
               _StateSpec("exp_avg_sq", "exp_avg_sqs", _always),
               _StateSpec("max_exp_avg_sq", "max_exp_avg_sqs", lambda group: bool(group["amsgrad"])))

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2), eps=float(group["eps"]),
                    weight_decay=float(group["weight_decay"]), amsgrad=bool(group["amsgrad"]),
                    maximize=bool(group["maximize"]),
                    decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)))


class AdamW(Adam, torch.optim.AdamW):
    """torch.optim.AdamW (Adam with decoupled weight decay, default weight_decay=1e-2) on fusedopt.adam_."""
