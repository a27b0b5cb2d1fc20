"""The benchmark suite: python -m fusedopt.bench [--quick] [--filter RE] [--json PATH] [--plot PATH]

Times each fused kernel, and each optimizer step also through fusedopt.optim's class (opt.step,
as a torch.optim user calls it), against the NumPy reference and, when torch is importable,
against torch.optim (fused=True; foreach for RMSprop, which has no fused CPU kernel), in one run,
and shows large sizes as a percentage of an in-run bandwidth probe: the simplest loop that moves
the same bytes (fusedopt._core.stream_probe). Params and grads are plain NumPy arrays for
everyone; each implementation allocates its own state (fusedopt.zeros_like, np.full_like,
torch). Each figure is the best of several repeats: the machine may be shared, so compare
ratios from one run rather than absolutes across runs.
"""
import argparse
import json
import os
import platform
import re
import sys
import time

import numpy as np

import fusedopt
from fusedopt import _core, optim, reference

try:
    import torch
except ImportError:  # torch is optional ([bench] extra)
    torch = None

SIZES = {"4K": 4096, "64K": 65536, "1M": 1 << 20, "16M": 1 << 24}

# name -> (fusedopt function, state arrays, hyperparameters, class (fusedopt.optim's and torch.optim's),
#          torch kwargs, arrays read-write / read-only by one step, for the bandwidth probe)
OPTIMIZERS = {
    "adam": ("adam_", ["exp_avgs", "exp_avg_sqs"], dict(lr=1e-3), "Adam", dict(fused=True), 3, 1),
    "adamw": ("adamw_", ["exp_avgs", "exp_avg_sqs"], dict(lr=1e-3), "AdamW", dict(fused=True), 3, 1),
    "sgd_momentum": ("sgd_", ["momentum_buffers"], dict(lr=1e-3, momentum=0.9), "SGD", dict(fused=True), 2, 1),
    "rmsprop": ("rmsprop_", ["square_avgs"], dict(lr=1e-3), "RMSprop", dict(foreach=True), 2, 1),
    "adagrad": ("adagrad_", ["state_sums"], dict(lr=1e-3), "Adagrad", dict(fused=True), 2, 1),
}
TAKES_STEP = {"adam_", "adamw_", "adagrad_", "sgd_"}


def resnet50_shapes():
    """Parameter shapes of torchvision's ResNet-50, in model order (161 tensors, 25,557,032)."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for b in range(blocks):
            out_ch = 4 * width
            shapes += [(width, in_ch, 1, 1), (width,), (width,), (width, width, 3, 3), (width,), (width,),
                       (out_ch, width, 1, 1), (out_ch,), (out_ch,)]
            if b == 0:
                shapes += [(out_ch, in_ch, 1, 1), (out_ch,), (out_ch,)]
            in_ch = out_ch
    shapes += [(1000, 2048), (1000,)]
    return shapes


def mlp_shapes():
    """An MLP 784-256-256-10: weights (out, in) and biases."""
    return [(256, 784), (256,), (256, 256), (256,), (10, 256), (10,)]


MODELS = {"resnet50": resnet50_shapes, "mlp": mlp_shapes}


def best_time(fn, min_batch_seconds, repeats):
    """Best per-call seconds over `repeats` batches, each long enough to time reliably."""
    fn()  # warm up: page faults, caches, lazy state
    calls, elapsed = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_batch_seconds:
            break
        calls *= 2 if elapsed == 0 else max(2, min(16, int(min_batch_seconds / elapsed) + 1))
    best = elapsed / calls
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


class Problem:
    """One optimizer over a list of fp32 tensors, set up for every implementation."""

    def __init__(self, optimizer, shapes):
        self.fn_name, self.state_names, self.hyper, self.class_name, self.torch_kwargs, rw, ro = OPTIMIZERS[optimizer]
        rng = np.random.default_rng(0)
        self.shapes = shapes
        self.n = sum(int(np.prod(s)) for s in shapes)

        def tensors(scale=1.0):  # as a user's params and grads: plain NumPy arrays
            return [(rng.standard_normal(s) * scale).astype(np.float32) for s in shapes]

        def state(fill, allocate):  # as each implementation allocates its state
            return [allocate(p, fill) for p in self.params]

        self.params, self.grads = tensors(), tensors(1e-2)
        fills = {k: 1e-6 if k in ("exp_avg_sqs", "square_avgs", "state_sums") else 0.0 for k in self.state_names}
        self.state = {k: state(fill, fusedopt.zeros_like) for k, fill in fills.items()}
        self.ref_params = [p.copy() for p in self.params]
        self.ref_state = {k: state(fill, np.full_like) for k, fill in fills.items()}
        # the probe moves the same bytes through arrays allocated the same way
        self.probe_rw = [tensors()] + [state(1.0, fusedopt.zeros_like) for _ in range(rw - 1)]
        self.probe_ro = [tensors() for _ in range(ro)]
        self.bytes_per_element = 4 * (2 * rw + ro)
        self.step = 10  # any step > 1: bias corrections are per-call scalars
        self.extra = {"step": self.step} if self.fn_name in TAKES_STEP else {}
        self.optim = getattr(optim, self.class_name)([p.copy() for p in self.params], **self.hyper)
        self.optim.step(self.grads)  # allocate state
        self.torch_opt = None
        if torch is not None:
            tparams = [torch.from_numpy(p.copy()) for p in self.params]
            for tp, g in zip(tparams, self.grads):
                tp.grad = torch.from_numpy(g.copy())
            self.torch_opt = getattr(torch.optim, self.class_name)(tparams, **self.hyper, **self.torch_kwargs)
            self.torch_opt.step()  # allocate state

    def fused(self):
        getattr(fusedopt, self.fn_name)(self.params, self.grads, **self.state, **self.hyper, **self.extra)

    def optim_step(self):
        self.optim.step(self.grads)

    def numpy(self):
        getattr(reference, self.fn_name)(self.ref_params, self.grads, **self.ref_state, **self.hyper, **self.extra)

    def torch_step(self):
        self.torch_opt.step()

    def probe(self):
        _core.stream_probe(self.probe_rw, self.probe_ro)


def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": fusedopt.isa(),
        "fusedopt": fusedopt.__version__,
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "python": platform.python_version(),
    }


def optimizer_cases(quick):
    sizes = ["4K", "1M"] if quick else list(SIZES)
    optimizers = ["adam", "sgd_momentum"] if quick else list(OPTIMIZERS)
    for opt in optimizers:
        for size in sizes:
            yield f"{opt} {size}", opt, lambda opt=opt, size=size: Problem(opt, [(SIZES[size],)])
    for model in (["mlp"] if quick else list(MODELS)):
        for opt in (["adam"] if quick else optimizers):
            yield f"{opt} {model}", opt, lambda opt=opt, model=model: Problem(opt, MODELS[model]())


# batch normalization, training: (shape, channel axis, layout)
BATCHNORM_CASES = [
    ((256, 1024), 1, "NC"),
    ((32, 64, 56, 56), 1, "NCHW"),
    ((32, 56, 56, 64), -1, "NHWC"),
    ((32, 256, 14, 14), 1, "NCHW"),
    ((32, 14, 14, 256), -1, "NHWC"),
    ((8, 512, 7, 7), 1, "NCHW"),
    ((128, 64, 32, 32), 1, "NCHW"),
]


class BatchNormProblem:
    """Training forward (running stats updated) and backward of one shape, for each implementation."""

    def __init__(self, shape, axis):
        rng = np.random.default_rng(0)
        self.axis = axis
        self.x = rng.standard_normal(shape, dtype=np.float32)
        self.dy = rng.standard_normal(shape, dtype=np.float32)
        self.n = self.x.size
        C = shape[axis]
        self.weight, self.bias = np.ones(C, np.float32), np.zeros(C, np.float32)
        self.running_mean, self.running_var = np.zeros(C, np.float32), np.ones(C, np.float32)
        self.y, self.dx = np.empty_like(self.x), np.empty_like(self.x)
        _, self.save_mean, self.save_invstd = self.fused_forward()
        _, self.ref_mean, self.ref_invstd = self.numpy_forward()
        self.torch_state = self._torch_setup() if torch is not None else None

    def fused_forward(self):
        return fusedopt.batchnorm_forward(self.x, self.weight, self.bias, self.running_mean, self.running_var,
                                          axis=self.axis, out=self.y)

    def fused_backward(self):
        fusedopt.batchnorm_backward(self.dy, self.x, self.weight, self.save_mean, self.save_invstd,
                                    axis=self.axis, out=self.dx)

    # The memory floor of each pass, moved by the bandwidth probe through the same arrays: the
    # forward reads x and writes y, the backward reads dy and x and writes dx, each once.
    def probe_forward(self):
        _core.stream_probe([], [self.x], [self.y])

    def probe_backward(self):
        _core.stream_probe([], [self.x, self.dy], [self.dx])

    def numpy_forward(self):
        return reference.batchnorm_forward(self.x, self.weight, self.bias, self.running_mean.copy(),
                                           self.running_var.copy(), axis=self.axis)

    def numpy_backward(self):
        reference.batchnorm_backward(self.dy, self.x, self.weight, self.ref_mean, self.ref_invstd, axis=self.axis)

    def _torch_setup(self):
        x, dy = torch.from_numpy(self.x), torch.from_numpy(self.dy)
        if self.axis == -1:  # channels-last data: torch's (N, C, ...) view in channels_last memory format
            perm = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
            x, dy = x.permute(*perm), dy.permute(*perm)
        x = x.detach().requires_grad_(True)
        C = self.weight.size
        return dict(x=x, dy=dy, weight=torch.ones(C, requires_grad=True), bias=torch.zeros(C, requires_grad=True),
                    running_mean=torch.zeros(C), running_var=torch.ones(C))

    def torch_forward_backward(self):
        """(forward seconds, backward seconds) of one torch training step."""
        t = self.torch_state
        t0 = time.perf_counter()
        y = torch.nn.functional.batch_norm(t["x"], t["running_mean"], t["running_var"], t["weight"], t["bias"],
                                           training=True)
        t1 = time.perf_counter()
        y.backward(t["dy"])
        t2 = time.perf_counter()
        t["x"].grad = t["weight"].grad = t["bias"].grad = None
        return t1 - t0, t2 - t1


def batchnorm_cases(quick):
    cases = BATCHNORM_CASES[:2] if quick else BATCHNORM_CASES
    for shape, axis, layout in cases:
        yield f"batchnorm {'x'.join(map(str, shape))} {layout}", shape, axis


def best_pair(fn, repeats):
    """Best forward and best backward seconds over repeats of fn() -> (forward, backward)."""
    fn()
    times = [fn() for _ in range(repeats)]
    return min(t[0] for t in times), min(t[1] for t in times)


def set_threads(n):
    fusedopt.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def progress(i, total, label):
    width = 30
    done = int(width * i / total)
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{total} {label:<32}")
    sys.stderr.flush()


def run(args):
    thread_counts = sorted({1, fusedopt.get_num_threads()}) if args.threads is None else args.threads
    cases = [c for c in optimizer_cases(args.quick) if re.search(args.filter or "", c[0])]
    bn_cases = [c for c in batchnorm_cases(args.quick) if re.search(args.filter or "", c[0])]
    min_batch, repeats = (0.02, 3) if args.quick else (0.1, 5)
    rows, bn_rows = [], []
    total = (len(cases) + len(bn_cases)) * len(thread_counts)
    for i, (name, opt, make) in enumerate(cases):
        problem = make()
        for j, threads in enumerate(thread_counts):
            progress(i * len(thread_counts) + j, total, f"{name} x{threads}")
            set_threads(threads)
            row = {"case": name, "optimizer": opt, "tensors": len(problem.shapes), "elements": problem.n,
                   "threads": threads, "bytes_per_element": problem.bytes_per_element}
            row["fusedopt_s"] = best_time(problem.fused, min_batch, repeats)
            row["optim_s"] = best_time(problem.optim_step, min_batch, repeats)
            row["numpy_s"] = best_time(problem.numpy, min_batch, repeats) if threads == 1 or not args.quick else None
            row["torch_s"] = best_time(problem.torch_step, min_batch, repeats) if problem.torch_opt else None
            row["probe_s"] = best_time(problem.probe, min_batch, repeats)
            rows.append(row)
        del problem
    done = len(cases) * len(thread_counts)
    for i, (name, shape, axis) in enumerate(bn_cases):
        problem = BatchNormProblem(shape, axis)
        for j, threads in enumerate(thread_counts):
            progress(done + i * len(thread_counts) + j, total, f"{name} x{threads}")
            set_threads(threads)
            row = {"case": name, "elements": problem.n, "threads": threads}
            row["fusedopt_fwd_s"] = best_time(problem.fused_forward, min_batch, repeats)
            row["fusedopt_bwd_s"] = best_time(problem.fused_backward, min_batch, repeats)
            row["probe_fwd_s"] = best_time(problem.probe_forward, min_batch, repeats)
            row["probe_bwd_s"] = best_time(problem.probe_backward, min_batch, repeats)
            if threads == thread_counts[0]:  # NumPy is single-threaded: once is enough
                row["numpy_fwd_s"] = best_time(problem.numpy_forward, min_batch, 2)
                row["numpy_bwd_s"] = best_time(problem.numpy_backward, min_batch, 2)
            else:
                row["numpy_fwd_s"], row["numpy_bwd_s"] = bn_rows[-1]["numpy_fwd_s"], bn_rows[-1]["numpy_bwd_s"]
            fwd_bwd = best_pair(problem.torch_forward_backward, 3 * repeats) if problem.torch_state else (None, None)
            row["torch_fwd_s"], row["torch_bwd_s"] = fwd_bwd
            bn_rows.append(row)
        del problem
    progress(total, total, "done")
    sys.stderr.write("\n")
    set_threads(thread_counts[-1])
    return rows, bn_rows


def fmt_time(seconds, n):
    ns = seconds * 1e9 / n
    total = f"{seconds * 1e3:.3f} ms" if seconds >= 1e-4 else f"{seconds * 1e6:.1f} us"
    return f"{ns:.3f} ns/el ({total})"


def ratio(a, b):
    return f"{b / a:.2f}x" if a and b else "-"


def table(rows):
    head = ["case", "thr", "fusedopt", "NumPy ref", "torch", "vs NumPy", "vs torch", "optim.step", "vs torch",
            "probe", "% roofline"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        n = r["elements"]
        cells = [r["case"], str(r["threads"]), fmt_time(r["fusedopt_s"], n),
                 fmt_time(r["numpy_s"], n) if r["numpy_s"] else "-",
                 fmt_time(r["torch_s"], n) if r["torch_s"] else "-",
                 ratio(r["fusedopt_s"], r["numpy_s"]), ratio(r["fusedopt_s"], r["torch_s"]),
                 fmt_time(r["optim_s"], n), ratio(r["optim_s"], r["torch_s"]),
                 f"{r['probe_s'] * 1e9 / n:.3f} ns/el", f"{100 * r['probe_s'] / r['fusedopt_s']:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def batchnorm_table(rows):
    head = ["case", "thr", "fusedopt fwd + bwd", "NumPy ref", "torch", "vs NumPy", "vs torch", "probe fwd + bwd",
            "% roofline"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ms(fwd, bwd):
        return f"{fwd * 1e3:.3f} + {bwd * 1e3:.3f} ms" if fwd is not None else "-"

    for r in rows:
        fo = r["fusedopt_fwd_s"] + r["fusedopt_bwd_s"]
        npy = r["numpy_fwd_s"] + r["numpy_bwd_s"]
        tt = r["torch_fwd_s"] + r["torch_bwd_s"] if r["torch_fwd_s"] is not None else None
        cells = [r["case"], str(r["threads"]), ms(r["fusedopt_fwd_s"], r["fusedopt_bwd_s"]),
                 ms(r["numpy_fwd_s"], r["numpy_bwd_s"]), ms(r["torch_fwd_s"], r["torch_bwd_s"]),
                 ratio(fo, npy), ratio(fo, tt), ms(r["probe_fwd_s"], r["probe_bwd_s"]),
                 f"{100 * (r['probe_fwd_s'] + r['probe_bwd_s']) / fo:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    single = [r for r in rows if r["tensors"] == 1]
    colors = dict(zip(OPTIMIZERS, plt.get_cmap("tab10").colors))
    styles = {1: "-", 2: "--"}
    for opt in [o for o in OPTIMIZERS if any(r["optimizer"] == o for r in single)]:
        for threads in sorted({r["threads"] for r in single}):
            rs = sorted((r for r in single if r["optimizer"] == opt and r["threads"] == threads), key=lambda r: r["elements"])
            x = [r["elements"] for r in rs]
            style = styles.get(threads, ":")
            ax.plot(x, [r["fusedopt_s"] * 1e9 / r["elements"] for r in rs], "o" + style, color=colors[opt],
                    label=f"fusedopt {opt} x{threads}")
            if opt == "adam" and rs[0]["torch_s"]:
                ax.plot(x, [r["torch_s"] * 1e9 / r["elements"] for r in rs], "s" + style, color="black",
                        label=f"torch fused adam x{threads}")
            if opt == "adam":
                ax.plot(x, [r["probe_s"] * 1e9 / r["elements"] for r in rs], style, color="gray", linewidth=3,
                        alpha=0.4, label=f"roofline probe, adam's bytes x{threads}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("elements per tensor (fp32)")
    ax.set_ylabel("ns per element")
    ax.set_title("optimizer step on one fp32 tensor (solid: 1 thread, dashed: 2)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fusedopt.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset with short timings (under a minute)")
    parser.add_argument("--filter", help="only cases whose name matches this regular expression")
    parser.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")],
                        help="comma-separated thread counts (default: 1 and all usable CPUs)")
    parser.add_argument("--json", help="also write the rows and the machine description to this file")
    parser.add_argument("--plot", help="write a log-log PNG of ns/element against size (needs matplotlib)")
    args = parser.parse_args(argv)

    info = machine_info()
    print(f"# fusedopt {info['fusedopt']} bench: {info['cpu']} ({info['cpus']} CPUs), ISA {info['isa']}, "
          f"numpy {info['numpy']}, torch {info['torch'] or 'not installed'}, Python {info['python']}")
    rows, bn_rows = run(args)
    if rows:
        print(table(rows))
    if bn_rows:
        print()
        print(batchnorm_table(bn_rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "optimizer_rows": rows, "batchnorm_rows": bn_rows}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
