"""The plan of a fusedopt.torch step for one param group (fusedopt.torch.optim's module docstring):
what its fusedopt calls need besides the grads, kept between steps while it still holds."""
from __future__ import annotations

import operator
from collections.abc import Callable
from itertools import chain
from typing import Any, NamedTuple

import numpy as np
import torch

from ..lowbit import QuantizedState

_data_ptr = torch.Tensor.data_ptr
_stride = torch.Tensor.stride
_shape = operator.attrgetter("shape")


class _Call(NamedTuple):
    """One fusedopt call of a plan: the param views, their positions among the plan's params
    (None: all of them), the state views by keyword, and the step argument of the plan's first step
    (a later step adds _Plan.taken)."""
    params: list[np.ndarray]
    positions: list[int] | None
    states: dict[str, list[np.ndarray | QuantizedState]]
    step: int | None


class _Plan:
    """What the step of one param group needs besides the grads, valid while the group has the
    same params with a grad, at the same addresses, of the same shapes and layouts, with the same state
    dicts and tensors on the same memory, and step counts (see holds)."""
    __slots__ = ("calls", "counted", "first_step", "group", "group_params", "new_state", "orders", "params",
                 "present", "ptrs", "shapes", "state", "state_dicts", "state_keys", "step_counts", "steps", "strides",
                 "structure", "structure_of", "structure_values", "taken", "watched_dicts", "watched_keys",
                 "watched_ptrs", "watched_tensors")

    def __init__(self) -> None:
        self.group: dict[str, Any] = {}
        self.state: Any = None                        # the optimizer's state dict at build time
        self.group_params: list[torch.Tensor] = []    # group["params"] as it was
        self.present: list[bool] = []                 # which of them had a grad
        self.structure: tuple[bool, ...] = ()         # which state tensors the group keeps
        self.structure_of: Callable[[dict[str, Any]], Any] = tuple  # the group entries that decide it
        self.structure_values: Any = ()               # their values at build time
        self.params: list[torch.Tensor] = []          # the params with a grad
        self.ptrs: list[int] = []
        self.strides: list[tuple[int, ...]] = []      # their layouts (a param's memory order is its views')
        self.shapes: list[torch.Size] = []            # (p.data = p.data[:k] keeps the address and strides)
        self.orders: list[tuple[int, ...] | None] | None = None  # their memory orders (None: all C-contiguous)
        self.state_dicts: list[dict[str, Any] | None] = []  # their state dicts (None: none yet)
        self.state_keys: list[Any] = []               # the optimizer's state dict's keys and values at build time
        self.watched_dicts: list[dict[str, Any]] = []  # (dict, key, tensor): state entries the views are of
        self.watched_keys: list[str] = []
        self.watched_tensors: list[torch.Tensor] = []
        self.watched_ptrs: list[int] = []             # their memory (.data = or .set_ swaps it)
        self.new_state: list[tuple[torch.Tensor, dict[str, Any]]] = []  # state to keep once the step is taken
        self.calls: list[_Call] = []
        self.steps: torch.Tensor | None = None        # the params' state["step"] are views into it
        self.step_counts: np.ndarray | None = None    # steps as NumPy (a view of it)
        self.first_step: int | None = None            # the steps every param had taken at build time (None: unequal)
        self.counted = b""                            # step_counts' bytes as the last step left them
        self.taken = 0                                 # steps taken with the plan: added to each call's step

    def group_indices(self) -> list[int]:
        """The indices in group["params"] of the params with a grad (of self.params)."""
        return [i for i, has_grad in enumerate(self.present) if has_grad]

    def holds(self, group: dict[str, Any], present: list[bool], state: Any) -> bool:
        """Whether the plan is still the one for this group (C-level maps: this runs every step).
        The params' state dicts are checked as the whole state dict's keys and values, in order,
        being the same objects: looking each param up would call torch's Python Tensor.__hash__
        per param (a new entry for another group's param makes this plan again, once). The state
        tensors on the memory the views are of (.data = or .set_ moves a tensor to other memory),
        and the step counters, which state["step"] are views of, as the last step left them: a
        count changed in place (state["step"].fill_(n), as torch.optim honours) plans again from
        the counts."""
        return (self.group is group and self.state is state and self.present == present
                and self.structure_of(group) == self.structure_values
                and len(group["params"]) == len(self.group_params)
                and all(map(operator.is_, group["params"], self.group_params))
                and list(map(_data_ptr, self.params)) == self.ptrs
                and list(map(_stride, self.params)) == self.strides
                and list(map(_shape, self.params)) == self.shapes
                and len(state) * 2 == len(self.state_keys)
                and all(map(operator.is_, chain(state, state.values()), self.state_keys))
                and all(map(operator.is_, map(dict.get, self.watched_dicts, self.watched_keys),
                            self.watched_tensors))
                and list(map(_data_ptr, self.watched_tensors)) == self.watched_ptrs
                and (self.step_counts is None or self.step_counts.tobytes() == self.counted))
