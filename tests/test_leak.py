"""No leak: resident memory stays flat over 100,000 calls of each kernel, errors included."""
import os

import numpy as np
import pytest

import fusedopt

CALLS = 100_000
# generous: a leak of even 100 bytes a call would add 10 MB
BOUND_BYTES = 4 << 20


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def arrays(n=33):
    rng = np.random.default_rng(0)
    return [np.abs(rng.standard_normal(n)).astype(np.float32) for _ in range(5)]


def calls():
    p, g, a, b, c = arrays()
    lists = [[x] * 1 for x in arrays()]
    bad = np.zeros(3, np.int64)
    return {
        "sgd_": lambda: fusedopt.sgd_(p, g, a, lr=1e-3, momentum=0.9, step=2),
        "adagrad_": lambda: fusedopt.adagrad_(p, g, a, step=2),
        "rmsprop_": lambda: fusedopt.rmsprop_(p, g, a, momentum=0.9, momentum_buffers=b, centered=True, grad_avgs=c),
        "adam_": lambda: fusedopt.adam_(p, g, a, b, step=2, amsgrad=True, max_exp_avg_sqs=c),
        "adam_ lists": lambda: fusedopt.adam_(*lists[:4], step=2, skip_if_nonfinite=True, grad_scale=2.0),
        "clip_grad_norm_": lambda: fusedopt.clip_grad_norm_([g, a], 1e9),
        "clip_grad_value_": lambda: fusedopt.clip_grad_value_(g, 1e9),
        "adam_ error": lambda: fusedopt.adam_(p, bad, a, b, step=2),
        "sgd_ error": lambda: fusedopt.sgd_(p, g, None, lr=1e-3, momentum=0.9),
    }


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
@pytest.mark.parametrize("name", list(calls()))
def test_rss_flat_over_many_calls(name):
    call = calls()[name]

    def run(n):
        for _ in range(n):
            try:
                call()
            except (TypeError, ValueError):
                pass

    run(1000)  # warm up: first-use allocations are not leaks
    before = rss_bytes()
    run(CALLS)
    grown = rss_bytes() - before
    print(f"{name}: RSS grew {grown / 1024:.0f} KiB over {CALLS} calls")
    assert grown < BOUND_BYTES
