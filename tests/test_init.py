import math

import numpy as np
import pytest

from fusedopt.init import (
    calculate_gain,
    fan_in_and_fan_out,
    glorot_normal,
    glorot_uniform,
    kaiming_normal,
    kaiming_uniform,
)

INITIALIZERS = [glorot_uniform, glorot_normal, kaiming_uniform, kaiming_normal]

# (fan_in, fan_out) by torch's rule: shape (out, in, *kernel), receptive field prod(kernel).
FANS = {
    (256, 128): (128, 256),  # linear: in=128, out=256
    (64, 32, 3, 3): (32 * 9, 64 * 9),  # conv2d 3x3
    (1000, 10): (10, 1000),
}


def expected_std(init, shape, gain=None):
    """The formula of each initializer, written out independently of fusedopt.init."""
    fan_in, fan_out = FANS[shape]
    if init in (glorot_uniform, glorot_normal):
        return (1.0 if gain is None else gain) * math.sqrt(2.0 / (fan_in + fan_out))
    return (math.sqrt(2.0) if gain is None else gain) / math.sqrt(fan_in)


def assert_mean_and_std(w, std):
    # Sampling error: the mean has standard error std / sqrt(n) and the sample variance a
    # relative standard error sqrt(2 / n) for a normal (sqrt(0.8 / n) for a uniform).
    # Five standard errors keep the test seed-independent in practice.
    x = w.astype(np.float64).ravel()
    n = x.size
    assert abs(x.mean()) < 5 * std / math.sqrt(n)
    assert x.var() == pytest.approx(std**2, rel=5 * math.sqrt(2.0 / n))


@pytest.mark.parametrize("shape", list(FANS))
def test_fan_in_and_fan_out_follows_torch_rule(shape):
    assert fan_in_and_fan_out(shape) == FANS[shape]


@pytest.mark.parametrize(
    "shape, fans",
    [
        ((16, 8, 5), (40, 80)),  # conv1d, kernel 5
        ((4, 3, 2, 2, 2), (24, 32)),  # conv3d, kernel 2x2x2
        ((7, 1), (1, 7)),
        ([5, 6], (6, 5)),  # any sequence is a shape
    ],
)
def test_fan_in_and_fan_out_conv_shapes(shape, fans):
    assert fan_in_and_fan_out(shape) == fans


@pytest.mark.parametrize("shape", [(), (10,), 10])
def test_fan_in_and_fan_out_needs_two_dims(shape):
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fan_in_and_fan_out(shape)


@pytest.mark.parametrize("shape", list(FANS))
@pytest.mark.parametrize("init", INITIALIZERS, ids=lambda f: f.__name__)
def test_mean_and_variance_match_formula(init, shape):
    w = init(shape, rng=np.random.default_rng(0))
    assert w.shape == shape
    assert w.dtype == np.float32
    assert_mean_and_std(w, expected_std(init, shape))


@pytest.mark.parametrize("shape", list(FANS))
@pytest.mark.parametrize("init", [glorot_uniform, kaiming_uniform], ids=lambda f: f.__name__)
def test_uniform_bound(init, shape):
    # U(-b, b) with variance std^2 has b = sqrt(3) * std: all samples inside, some near it.
    bound = math.sqrt(3.0) * expected_std(init, shape)
    w = np.abs(init(shape, rng=1).astype(np.float64))
    assert w.max() <= bound * (1 + 1e-6)
    assert w.max() > 0.99 * bound


@pytest.mark.parametrize("init", [glorot_uniform, glorot_normal], ids=lambda f: f.__name__)
def test_glorot_gain_scales_std(init):
    shape = (256, 128)
    w = init(shape, rng=2, gain=5.0 / 3.0)
    assert_mean_and_std(w, expected_std(init, shape, gain=5.0 / 3.0))


def test_calculate_gain_is_torchs():
    """calculate_gain's defaults and names as torch.nn.init.calculate_gain's (leaky_relu's slope
    0.01 when none is given; 1 for the convolutions)."""
    assert calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2.0 / (1.0 + 0.01 ** 2)))
    for name in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        assert calculate_gain(name) == 1.0
    torch = pytest.importorskip("torch")
    for name, a in [("leaky_relu", None), ("leaky_relu", 0.2), ("relu", None), ("tanh", None), ("selu", None),
                    ("conv2d", None), ("sigmoid", None)]:
        assert calculate_gain(name, a) == pytest.approx(torch.nn.init.calculate_gain(name, a))


@pytest.mark.parametrize(
    "nonlinearity, a, gain",
    [
        ("linear", 0.0, 1.0),
        ("identity", 0.0, 1.0),
        ("sigmoid", 0.0, 1.0),
        ("tanh", 0.0, 5.0 / 3.0),
        ("relu", 0.0, math.sqrt(2.0)),
        ("leaky_relu", 0.0, math.sqrt(2.0)),
        ("leaky_relu", 0.2, math.sqrt(2.0 / 1.04)),
        ("selu", 0.0, 0.75),
    ],
)
@pytest.mark.parametrize("init", [kaiming_uniform, kaiming_normal], ids=lambda f: f.__name__)
def test_kaiming_gain(init, nonlinearity, a, gain):
    assert calculate_gain(nonlinearity, a) == pytest.approx(gain)
    shape = (256, 128)
    w = init(shape, rng=3, nonlinearity=nonlinearity, a=a)
    assert_mean_and_std(w, expected_std(init, shape, gain=gain))


@pytest.mark.parametrize("init", [kaiming_uniform, kaiming_normal], ids=lambda f: f.__name__)
def test_kaiming_fan_out(init):
    shape = (64, 32, 3, 3)
    w = init(shape, rng=4, mode="fan_out")
    assert_mean_and_std(w, math.sqrt(2.0) / math.sqrt(64 * 9))


@pytest.mark.parametrize("init", INITIALIZERS, ids=lambda f: f.__name__)
def test_reproducible_with_seed(init):
    shape = (64, 32, 3, 3)
    first = init(shape, rng=np.random.default_rng(123))
    again = init(shape, rng=np.random.default_rng(123))
    from_int_seed = init(shape, rng=123)
    other_seed = init(shape, rng=np.random.default_rng(124))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, from_int_seed)
    assert not np.array_equal(first, other_seed)


@pytest.mark.parametrize("init", INITIALIZERS, ids=lambda f: f.__name__)
def test_dtype(init):
    w64 = init((32, 16), rng=5, dtype=np.float64)
    w32 = init((32, 16), rng=5)
    assert w64.dtype == np.float64
    np.testing.assert_array_equal(w32, w64.astype(np.float32))
    with pytest.raises(ValueError, match="floating point"):
        init((32, 16), rng=5, dtype=np.int32)


def test_fresh_entropy_without_rng():
    assert not np.array_equal(kaiming_normal((64, 64)), kaiming_normal((64, 64)))


@pytest.mark.parametrize("init", INITIALIZERS, ids=lambda f: f.__name__)
def test_rejects_one_dimensional_shape(init):
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init((10,), rng=0)


@pytest.mark.parametrize("init", [glorot_uniform, glorot_normal], ids=lambda f: f.__name__)
@pytest.mark.parametrize("gain", [-1.0, math.nan, math.inf])
def test_glorot_rejects_bad_gain(init, gain):
    with pytest.raises(ValueError, match="gain"):
        init((4, 4), rng=0, gain=gain)


@pytest.mark.parametrize("init", [kaiming_uniform, kaiming_normal], ids=lambda f: f.__name__)
def test_kaiming_rejects_bad_arguments(init):
    with pytest.raises(ValueError, match="unknown nonlinearity"):
        init((4, 4), rng=0, nonlinearity="gelu")
    with pytest.raises(ValueError, match="mode"):
        init((4, 4), rng=0, mode="fan_avg")
    with pytest.raises(ValueError, match="fan_out > 0"):
        init((0, 4), rng=0, mode="fan_out")


def pre_activation_second_moments(init, n_networks=8, depth=20, width=256, batch=1000):
    """Push standard-normal inputs through bias-free ReLU MLPs; return E[x^2] of the input
    followed by E[z^2] of each layer's pre-activation z = h @ W.T, averaged over
    n_networks independently initialized networks.

    Kaiming's argument is about the expectation over the weights. One finite network's
    second moment wanders from it like a random walk in log space: ReLU outputs share a
    common positive direction, so the whole batch moves together and each layer multiplies
    it by roughly a chi-square(width) / width factor. At width 256 and depth 20 that is a
    factor of about e^(+-0.5), so a single network leaves [1/2, 2] for about 30% of seeds;
    averaging 8 networks keeps it well inside.
    """
    rng = np.random.default_rng(0)
    moments = np.zeros(depth + 1)
    for _ in range(n_networks):
        h = rng.standard_normal((batch, width), dtype=np.float32)
        moments[0] += np.mean(h**2)
        for layer in range(depth):
            z = h @ init((width, width), layer, rng).T
            moments[layer + 1] += np.mean(z**2)
            h = np.maximum(z, 0.0)
    return moments / n_networks


def test_deep_relu_network_kaiming_keeps_scale_glorot_shrinks():
    def kaiming(shape, layer, rng):
        # The first layer sees the raw input, not a ReLU output, so it needs no factor 2
        # (He et al. 2015, sec. 2.2); every later layer gets relu's gain sqrt(2).
        return kaiming_normal(shape, rng, nonlinearity="linear" if layer == 0 else "relu")

    def glorot(shape, layer, rng):
        return glorot_normal(shape, rng)

    kaiming_moments = pre_activation_second_moments(kaiming)
    input_moment = kaiming_moments[0]
    assert np.all(kaiming_moments[1:] > input_moment / 2)
    assert np.all(kaiming_moments[1:] < input_moment * 2)

    # Glorot's Var(w) = 1/width is right for linear units, but each ReLU halves E[z^2]:
    # after 19 ReLUs it is about 2^-19 of the input's.
    glorot_moments = pre_activation_second_moments(glorot)
    assert np.all(np.diff(glorot_moments[1:]) < 0)
    assert glorot_moments[-1] < glorot_moments[0] / 10
