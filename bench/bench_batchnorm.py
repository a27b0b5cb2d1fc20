"""Batch normalization benchmark: fusedopt vs the NumPy reference vs torch (single thread).

    python bench/bench_batchnorm.py [--repeat 7] [--threads 1] [--dtype float32]

For each shape: the best of --repeat runs of the training forward (y, save_mean, save_invstd,
running statistics updated) and of the backward (dx, dweight, dbias), in milliseconds, for
fusedopt.batchnorm_forward/backward, fusedopt.reference (NumPy, float64 inside) and
torch.nn.functional.batch_norm + autograd backward (torch.set_num_threads(1); its columns are
skipped when torch is not importable). Channels-last shapes run torch on a
channels_last-format tensor. Ratios: torch / fusedopt and NumPy / fusedopt, forward + backward.
"""
import argparse
import os
import sys
import time

# numpy's OpenBLAS threads spin after use and would steal the second core
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import reference  # noqa: E402
from fusedopt.batchnorm import batchnorm_backward, batchnorm_forward  # noqa: E402

try:
    import torch
except ImportError:  # the torch columns are left out
    torch = None

# (shape, axis, layout name)
CASES = [
    ((256, 1024), 1, "NC"),
    ((32, 64, 56, 56), 1, "NCHW"),
    ((32, 56, 56, 64), -1, "NHWC"),
    ((32, 256, 14, 14), 1, "NCHW"),
    ((8, 512, 7, 7), 1, "NCHW"),
    ((128, 64, 32, 32), 1, "NCHW"),
]


def best_ms(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def bench_fusedopt(x, dy, axis, repeat):
    C = x.shape[axis]
    weight, bias = np.ones(C, x.dtype), np.zeros(C, x.dtype)
    running_mean, running_var = np.zeros(C, x.dtype), np.ones(C, x.dtype)
    y, dx = np.empty_like(x), np.empty_like(x)
    _, save_mean, save_invstd = batchnorm_forward(x, weight, bias, running_mean, running_var, axis=axis, out=y)
    fwd = best_ms(lambda: batchnorm_forward(x, weight, bias, running_mean, running_var, axis=axis, out=y), repeat)
    bwd = best_ms(lambda: batchnorm_backward(dy, x, weight, save_mean, save_invstd, axis=axis, out=dx), repeat)
    return fwd, bwd


def bench_numpy(x, dy, axis, repeat):
    C = x.shape[axis]
    weight, bias = np.ones(C, x.dtype), np.zeros(C, x.dtype)
    running_mean, running_var = np.zeros(C, x.dtype), np.ones(C, x.dtype)
    _, save_mean, save_invstd = reference.batchnorm_forward(x, weight, bias, running_mean, running_var, axis=axis)
    fwd = best_ms(lambda: reference.batchnorm_forward(x, weight, bias, running_mean, running_var, axis=axis), repeat)
    bwd = best_ms(lambda: reference.batchnorm_backward(dy, x, weight, save_mean, save_invstd, axis=axis), repeat)
    return fwd, bwd


def bench_torch(x, dy, axis, repeat):
    C = x.shape[axis]
    if axis == -1:  # channels-last data: torch's NCHW-shaped view in channels_last format
        perm = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
        xt = torch.from_numpy(x).permute(*perm)
        dyt = torch.from_numpy(dy).permute(*perm)
    else:
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    xt = xt.detach().requires_grad_(True)
    weight = torch.ones(C, dtype=xt.dtype, requires_grad=True)
    bias = torch.zeros(C, dtype=xt.dtype, requires_grad=True)
    running_mean, running_var = torch.zeros(C, dtype=xt.dtype), torch.ones(C, dtype=xt.dtype)
    F = torch.nn.functional
    fwd_times, bwd_times = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        y = F.batch_norm(xt, running_mean, running_var, weight, bias, training=True)
        t1 = time.perf_counter()
        y.backward(dyt)
        t2 = time.perf_counter()
        fwd_times.append(t1 - t0)
        bwd_times.append(t2 - t1)
        xt.grad = weight.grad = bias.grad = None
    return min(fwd_times) * 1e3, min(bwd_times) * 1e3


def run(args):
    fusedopt.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    header = f"{'shape':<20} {'layout':<6} {'fusedopt fwd/bwd ms':>20} {'numpy fwd/bwd ms':>18}"
    if torch is not None:
        header += f" {'torch fwd/bwd ms':>18} {'torch/fo':>9}"
    header += f" {'numpy/fo':>9}"
    print(f"batch normalization, training, {dtype.name}, threads={args.threads}, isa={fusedopt.isa()}, "
          f"best of {args.repeat}")
    print(header)
    print("-" * len(header))
    for shape, axis, layout in CASES:
        x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        fo = bench_fusedopt(x, dy, axis, args.repeat)
        npy = bench_numpy(x, dy, axis, max(2, args.repeat // 3))
        row = f"{str(shape):<20} {layout:<6} {fo[0]:>9.3f} /{fo[1]:>8.3f} {npy[0]:>8.2f} /{npy[1]:>7.2f}"
        if torch is not None:
            tt = bench_torch(x, dy, axis, args.repeat)
            row += f" {tt[0]:>8.3f} /{tt[1]:>7.3f} {sum(tt) / sum(fo):>8.2f}x"
        row += f" {sum(npy) / sum(fo):>8.1f}x"
        print(row, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7, help="runs per measurement; the best is kept")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
