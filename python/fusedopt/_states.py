"""Each optimizer's per-param state, described once for fusedopt.optim and fusedopt.torch."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ._lowprec import MASTER_PARAM


class StateArray(NamedTuple):
    """One per-param state array: torch's name ("exp_avg"), the update function's keyword for the
    list of them ("exp_avgs"), its 8-bit code (signed, or unsigned for non-negative state), the
    hyperparameter that decides whether a group keeps it (None: always kept) with the test of its
    value, and the hyperparameter whose value it holds before the param's first step (None: 0).
    fusedopt.torch's plans hold while those entries are unchanged, so each is named once, here."""
    name: str
    argument: str
    signed: bool
    key: str | None = None
    kept_if: Callable[[Any], bool] = bool
    fill_key: str | None = None

    def needed(self, hyperparameters: dict[str, Any]) -> bool:
        return self.key is None or self.kept_if(hyperparameters[self.key])

    def fill(self, hyperparameters: dict[str, Any]) -> float:
        return 0.0 if self.fill_key is None else float(hyperparameters[self.fill_key])


def named(states: tuple[StateArray, ...]) -> dict[str, StateArray]:
    """{torch's name: StateArray}."""
    return {state.name: state for state in states}


# with master_weights: the fp32 param the update function updates, the model's param its copy
MASTER = StateArray(MASTER_PARAM, "master_params", False)

# its contents do not matter: the first step's call (step=1) sets a new buffer to the gradient, as torch does
SGD = (StateArray("momentum_buffer", "momentum_buffers", True, "momentum", lambda momentum: momentum != 0),)
ADAGRAD = (StateArray("sum", "state_sums", False, fill_key="initial_accumulator_value"),)
RMSPROP = (StateArray("square_avg", "square_avgs", False),
           StateArray("momentum_buffer", "momentum_buffers", True, "momentum", lambda momentum: momentum > 0),
           StateArray("grad_avg", "grad_avgs", True, "centered"))
ADAM = (StateArray("exp_avg", "exp_avgs", True),
        StateArray("exp_avg_sq", "exp_avg_sqs", False),
        StateArray("max_exp_avg_sq", "max_exp_avg_sqs", False, "amsgrad"))
