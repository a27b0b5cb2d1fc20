"""Hyperparameter search: grid search and random search (NumPy and stdlib only).

An objective is called as objective(**params) and returns the loss to minimize, either as
a number or as a dict with a "loss" key (the other keys are kept in Trial.extra, e.g. an
accuracy or the number of epochs run). Both searches return every Trial, best first.

Random search is usually the better use of a fixed budget (Bergstra & Bengio, 2012): when
only a few hyperparameters matter, a grid spends most trials repeating the same few values
of them, while random trials try a new value of every hyperparameter each time. Sample
scale parameters such as learning rates with loguniform, since what matters is their order
of magnitude.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard, cast

import numpy as np

__all__ = ["loguniform", "uniform", "choice", "Trial", "grid_search", "random_search"]


class Distribution(Protocol):
    """Anything random_search can draw a value from."""

    def sample(self, rng: np.random.Generator) -> Any: ...


# objective(**params) -> loss, or {"loss": loss, ...other outputs}
Objective = Callable[..., float | Mapping[str, Any]]


class loguniform:
    """log(x) uniform on [log(low), log(high)]: every decade is equally likely."""

    def __init__(self, low: float, high: float) -> None:
        low, high = float(low), float(high)
        if not (0.0 < low < high < math.inf):
            raise ValueError(f"loguniform needs 0 < low < high < inf, got ({low}, {high})")
        self.low, self.high = low, high

    def sample(self, rng: np.random.Generator) -> float:
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))

    def __repr__(self) -> str:
        return f"loguniform({self.low!r}, {self.high!r})"


class uniform:
    """x uniform on [low, high)."""

    def __init__(self, low: float, high: float) -> None:
        low, high = float(low), float(high)
        if not (-math.inf < low < high < math.inf and math.isfinite(high - low)):  # (the sampler needs high - low)
            raise ValueError(f"uniform needs finite low < high, with high - low finite, got ({low}, {high})")
        self.low, self.high = low, high

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def __repr__(self) -> str:
        return f"uniform({self.low!r}, {self.high!r})"


class choice:
    """One of `options`, each equally likely."""

    def __init__(self, options: Sequence[Any]) -> None:
        # a list, as grid_search's values: a set's order (of strings: by PYTHONHASHSEED) would
        # change a seed's draws
        if not _is_value_list(options):
            raise ValueError(f"choice needs a list of options, got {options!r}")
        self.options = list(options)
        if not self.options:
            raise ValueError("choice needs at least one option")

    def sample(self, rng: np.random.Generator) -> Any:
        return self.options[rng.integers(len(self.options))]

    def __repr__(self) -> str:
        return f"choice({self.options!r})"


@dataclass
class Trial:
    """One evaluation: the parameters, the loss, the objective's other outputs, and its
    position in evaluation order."""

    params: dict[str, Any]
    loss: float
    extra: dict[str, Any]
    index: int


def grid_search(objective: Objective, space: Mapping[str, Sequence[Any]]) -> list[Trial]:
    """Evaluate objective at every point of the Cartesian product of the value lists.

    space maps each parameter name to a list of values, e.g.
    {"lr": [1e-3, 1e-2, 1e-1], "momentum": [0.0, 0.9]} gives 6 trials. Trials are
    evaluated in itertools.product order over the names in `space`'s order.
    """
    _check_space(space)
    names = list(space)
    value_lists = []
    for name in names:
        values = space[name]
        if not _is_value_list(values):
            raise ValueError(
                f"grid_search needs a list of values for {name!r}, got {values!r}"
            )
        if len(values) == 0:
            raise ValueError(f"grid_search got an empty list of values for {name!r}")
        value_lists.append(list(values))

    trials = []
    for index, values in enumerate(itertools.product(*value_lists)):
        trials.append(_evaluate(objective, dict(zip(names, values)), index))
    return _best_first(trials)


def random_search(objective: Objective, space: Mapping[str, Distribution | Sequence[Any]], n_trials: int,
                  seed: int | None = 0) -> list[Trial]:
    """Evaluate objective at n_trials independent random points of `space`.

    space maps each parameter name to a distribution (anything with .sample(rng), such as
    loguniform, uniform, choice) or to a list, which means choice(list). The points are
    drawn from numpy.random.default_rng(seed), so a seed always gives the same trials.
    """
    _check_space(space)
    distributions: dict[str, Distribution] = {}
    for name, dist in space.items():
        if _is_value_list(dist):
            distributions[name] = choice(dist)  # raises ValueError for an empty list
        elif callable(getattr(dist, "sample", None)):
            distributions[name] = cast(Distribution, dist)
        else:
            raise ValueError(
                f"random_search needs a distribution or a list for {name!r}, got {dist!r}"
            )
    is_int = isinstance(n_trials, (int, np.integer)) and not isinstance(n_trials, bool)
    if not (is_int and n_trials >= 1):
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")

    rng = np.random.default_rng(seed)
    trials = []
    for index in range(n_trials):
        # All of a trial's parameters are drawn before it runs, so the points do not
        # depend on what the objective does with its own randomness.
        params = {name: dist.sample(rng) for name, dist in distributions.items()}
        trials.append(_evaluate(objective, params, index))
    return _best_first(trials)


def _check_space(space: object) -> None:
    if not isinstance(space, Mapping):
        raise ValueError(f"space must be a dict of parameter name -> values, got {space!r}")
    if not space:
        raise ValueError("space must name at least one parameter")


def _is_value_list(values: object) -> TypeGuard[Sequence[Any]]:
    return isinstance(values, (list, tuple, range, np.ndarray))


def _evaluate(objective: Objective, params: dict[str, Any], index: int) -> Trial:
    result = objective(**params)
    if isinstance(result, Mapping):
        if "loss" not in result:
            raise ValueError(
                f"objective returned a dict without a 'loss' key: {sorted(result)}"
            )
        extra = {key: value for key, value in result.items() if key != "loss"}
        return Trial(params, float(result["loss"]), extra, index)
    return Trial(params, float(result), {}, index)


def _best_first(trials: list[Trial]) -> list[Trial]:
    # NaN compares false with everything, so sort on (is_nan, loss) with NaN's loss
    # replaced; ties keep evaluation order.
    def key(trial: Trial) -> tuple[bool, float, int]:
        is_nan = math.isnan(trial.loss)
        return (is_nan, 0.0 if is_nan else trial.loss, trial.index)

    return sorted(trials, key=key)
