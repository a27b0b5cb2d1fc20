import math

import numpy as np
import pytest

from fusedopt.tune import Trial, choice, grid_search, loguniform, random_search, uniform


def bowl(x, lr):
    """Known minimum 0 at x = 3, lr = 1e-2 (a quadratic in x and in log10(lr))."""
    return (x - 3.0) ** 2 + (math.log10(lr) + 2.0) ** 2


def bowl_with_batch(x, lr, batch):
    return bowl(x, lr) + batch / 1000.0


def assert_best_first(trials):
    losses = [trial.loss for trial in trials]
    assert losses == sorted(losses)


def test_grid_search_finds_minimum():
    space = {"x": list(range(7)), "lr": [1e-4, 1e-3, 1e-2, 1e-1, 1.0]}
    trials = grid_search(bowl, space)

    assert len(trials) == 7 * 5
    assert all(isinstance(trial, Trial) for trial in trials)
    assert sorted(trial.index for trial in trials) == list(range(35))
    assert {(t.params["x"], t.params["lr"]) for t in trials} == {
        (x, lr) for x in space["x"] for lr in space["lr"]
    }
    assert_best_first(trials)
    best = trials[0]
    assert best.params == {"x": 3, "lr": 1e-2}
    assert best.loss == pytest.approx(0.0, abs=1e-12)
    assert best.extra == {}


def test_grid_search_evaluates_in_product_order():
    calls = []

    def objective(a, b):
        calls.append((a, b))
        return 0.0

    trials = grid_search(objective, {"a": [1, 2], "b": ("u", "v")})
    assert calls == [(1, "u"), (1, "v"), (2, "u"), (2, "v")]
    # Equal losses keep evaluation order.
    assert [trial.index for trial in trials] == [0, 1, 2, 3]
    assert [trial.params for trial in trials] == [{"a": a, "b": b} for a, b in calls]


def test_random_search_finds_minimum():
    space = {"x": uniform(0.0, 6.0), "lr": loguniform(1e-5, 1.0)}
    trials = random_search(bowl, space, n_trials=300, seed=0)

    assert len(trials) == 300
    assert sorted(trial.index for trial in trials) == list(range(300))
    assert_best_first(trials)
    best = trials[0]
    assert best.loss < 0.25
    assert best.params["x"] == pytest.approx(3.0, abs=0.5)
    assert math.log10(best.params["lr"]) == pytest.approx(-2.0, abs=0.5)
    assert best.loss == bowl(**best.params)


def test_random_search_is_reproducible_with_seed():
    space = {"x": uniform(0.0, 6.0), "lr": loguniform(1e-5, 1.0), "batch": [16, 32, 64]}
    first = random_search(bowl_with_batch, space, n_trials=20, seed=7)
    again = random_search(bowl_with_batch, space, n_trials=20, seed=7)
    other = random_search(bowl_with_batch, space, n_trials=20, seed=8)
    assert first == again
    assert [t.params for t in first] != [t.params for t in other]


def test_random_search_list_means_uniform_choice():
    trials = random_search(lambda opt, x: 0.0, {"opt": ["sgd", "adam"], "x": (1, 2, 3)}, 200)
    opts = [trial.params["opt"] for trial in trials]
    xs = [trial.params["x"] for trial in trials]
    assert set(opts) == {"sgd", "adam"}
    assert set(xs) == {1, 2, 3}
    # Each of the 2 options has probability 1/2: 100 +- 5 standard deviations (~7 each).
    assert 65 < opts.count("sgd") < 135


def test_objective_may_return_dict():
    def objective(x):
        return {"loss": (x - 1) ** 2, "accuracy": 1.0 / (1 + abs(x - 1)), "epochs": 3}

    trials = grid_search(objective, {"x": [0, 1, 2]})
    assert trials[0].params == {"x": 1}
    assert trials[0].loss == 0.0
    assert trials[0].extra == {"accuracy": 1.0, "epochs": 3}
    assert all("loss" not in trial.extra for trial in trials)


def test_objective_dict_needs_loss():
    with pytest.raises(ValueError, match="'loss'"):
        grid_search(lambda x: {"accuracy": x}, {"x": [1]})


def test_nan_losses_sort_last():
    def objective(x):
        return math.nan if x % 2 == 0 else float(x)

    trials = grid_search(objective, {"x": [4, 3, 2, 1, 0, 5]})
    assert [trial.params["x"] for trial in trials] == [1, 3, 5, 4, 2, 0]
    assert [math.isnan(trial.loss) for trial in trials] == [False] * 3 + [True] * 3

    trials = random_search(lambda x: math.nan if x < 0.5 else x, {"x": uniform(0, 1)}, 50)
    nans = [math.isnan(trial.loss) for trial in trials]
    assert nans == sorted(nans)  # all finite losses first, then all NaNs
    assert_best_first([trial for trial in trials if not math.isnan(trial.loss)])


def test_inf_sorts_before_nan():
    losses = {0: math.nan, 1: math.inf, 2: 1.0, 3: -math.inf}
    trials = grid_search(lambda k: losses[k], {"k": [0, 1, 2, 3]})
    assert [trial.params["k"] for trial in trials] == [3, 2, 1, 0]


def test_loguniform_samples_every_decade_equally():
    rng = np.random.default_rng(0)
    dist = loguniform(1e-6, 1.0)
    samples = np.array([dist.sample(rng) for _ in range(6000)])
    assert samples.min() >= 1e-6 and samples.max() <= 1.0
    per_decade = np.histogram(np.log10(samples), bins=6, range=(-6, 0))[0]
    # 1000 expected per decade; the standard deviation is about 29.
    assert np.all(np.abs(per_decade - 1000) < 150)


def test_uniform_and_choice_samples():
    rng = np.random.default_rng(0)
    samples = np.array([uniform(-2.0, 4.0).sample(rng) for _ in range(4000)])
    assert samples.min() >= -2.0 and samples.max() < 4.0
    # Mean 1, standard deviation 6 / sqrt(12) / sqrt(4000) ~ 0.027.
    assert samples.mean() == pytest.approx(1.0, abs=0.15)
    options = [0.1, "b", None]
    picks = [choice(options).sample(rng) for _ in range(300)]
    assert all(pick in options for pick in picks)
    assert len({repr(pick) for pick in picks}) == 3


@pytest.mark.parametrize(
    "make",
    [
        lambda: loguniform(0.0, 1.0),
        lambda: loguniform(-1.0, 1.0),
        lambda: loguniform(1.0, 1.0),
        lambda: loguniform(1.0, 0.1),
        lambda: loguniform(1e-3, math.inf),
        lambda: uniform(1.0, 1.0),
        lambda: uniform(2.0, 1.0),
        lambda: uniform(math.nan, 1.0),
        lambda: uniform(-math.inf, 1.0),
        lambda: uniform(-1e308, 1e308),  # high - low overflows: the sampler could not draw
        lambda: choice([]),
        lambda: choice("abc"),
        lambda: choice(3),
        lambda: choice({"relu", "tanh"}),  # a set: its order, and so a seed's draws, vary by run
    ],
)
def test_bad_distributions_raise(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize(
    "space",
    [
        {},
        [("x", [1, 2])],
        {"x": []},
        {"x": 1.0},
        {"x": "abc"},
        {"x": uniform(0, 1)},  # a grid needs explicit values
        {"x": [1, 2], "y": []},
    ],
)
def test_grid_search_rejects_bad_space(space):
    with pytest.raises(ValueError):
        grid_search(lambda **params: 0.0, space)


@pytest.mark.parametrize(
    "space",
    [
        {},
        [("x", [1, 2])],
        {"x": []},
        {"x": 1.0},
        {"x": "abc"},
        {"x": uniform(0, 1), "y": None},
    ],
)
def test_random_search_rejects_bad_space(space):
    with pytest.raises(ValueError):
        random_search(lambda **params: 0.0, space, n_trials=3)


@pytest.mark.parametrize("n_trials", [0, -1, 2.5, True, "10"])
def test_random_search_rejects_bad_n_trials(n_trials):
    with pytest.raises(ValueError, match="n_trials"):
        random_search(lambda x: x, {"x": uniform(0, 1)}, n_trials=n_trials)
