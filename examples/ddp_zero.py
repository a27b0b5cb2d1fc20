"""Sharded data-parallel training on torch.distributed with fusedopt's AdamW as the local optimizer.

DistributedDataParallel averages the grads over the ranks; ZeroRedundancyOptimizer gives each
rank a shard of the params, whose optimizer state only that rank keeps and updates (with
fusedopt.torch.AdamW's kernels), then broadcasts the updated params to the other ranks.

    python examples/ddp_zero.py                        # spawns 2 processes on 127.0.0.1 and checks
                                                        # them against one process on the same batches
    torchrun --nproc-per-node 2 examples/ddp_zero.py   # the same, launched by torchrun (no check)

Each step takes one global batch of --batch samples, split evenly over the ranks, so the run
computes what one process computes on the whole batch: the same mean loss, grads and steps.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

import fusedopt
import fusedopt.torch


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)  # every rank, and the single-process run, starts from the same params
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 10))


def global_batch(step: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's whole batch, the same in every process: a toy task, labels from a fixed rule."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(batch, 32, generator=g)
    return x, (x[:, :10] * torch.arange(1, 11)).argmax(dim=1)


def optimizer_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"lr": args.lr, "weight_decay": 0.01}


def optimizer_class(args: argparse.Namespace) -> type[torch.optim.Optimizer]:
    """fusedopt.torch.AdamW, or torch.optim.AdamW (--optimizer torch) to compare with."""
    return fusedopt.torch.AdamW if args.optimizer == "fusedopt" else torch.optim.AdamW


def train_rank(rank: int, world_size: int, args: argparse.Namespace) -> None:
    """One rank: DDP over gloo, ZeroRedundancyOptimizer sharding fusedopt.torch.AdamW."""
    torch.set_num_threads(1)  # one core per process; the processes share the machine
    fusedopt.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model = DistributedDataParallel(make_model())
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=optimizer_class(args),
                                      **optimizer_options(args))
        local = args.batch // world_size
        for step in range(args.steps):
            x, y = global_batch(step, args.batch)
            x, y = x[rank * local:(rank + 1) * local], y[rank * local:(rank + 1) * local]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()  # DDP: the grads are averaged over the ranks
            opt.step()       # this rank's shard with fusedopt's kernels, then the params broadcast
        shard = sum(s["exp_avg"].numel() for s in opt.optim.state.values())
        total = sum(p.numel() for p in model.parameters())
        print(f"rank {rank}: last loss {loss.item():.4f}, optimizer state for {shard} of {total} params",
              flush=True)
        if rank == 0 and args.out:
            torch.save(model.module.state_dict(), args.out)
    finally:
        dist.destroy_process_group()


def train_single(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """The same global batches in one process, fusedopt.torch.AdamW over all params."""
    model = make_model()
    opt = optimizer_class(args)(model.parameters(), **optimizer_options(args))
    for step in range(args.steps):
        x, y = global_batch(step, args.batch)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.state_dict()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn_and_check(args: argparse.Namespace) -> float:
    """Run args.nproc ranks on the loopback address, then one process; return the largest
    difference between their final params (and print it)."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    with tempfile.TemporaryDirectory() as tmp:
        args.out = args.out or os.path.join(tmp, "ddp_params.pt")
        mp.spawn(train_rank, args=(args.nproc, args), nprocs=args.nproc, join=True)
        sharded = torch.load(args.out)
    single = train_single(args)
    diff = float(max((sharded[name] - single[name]).abs().max().item() for name in single))
    print(f"{args.nproc} ranks vs 1 process, {args.steps} steps: max param difference {diff:.3g}")
    return diff


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2, help="processes to spawn (without torchrun)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64, help="global batch, split over the ranks")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--optimizer", choices=["fusedopt", "torch"], default="fusedopt",
                        help="the local optimizer: fusedopt.torch.AdamW, or torch.optim.AdamW to compare with")
    parser.add_argument("--out", default="", help="where rank 0 saves the final params (torch.save)")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest param difference accepted between the sharded and the single run")
    args = parser.parse_args(argv)
    if min(args.nproc, args.steps) < 1 or args.batch < args.nproc:
        parser.error(f"--nproc and --steps must be >= 1 and --batch >= --nproc (a sample per rank), got "
                     f"{args.nproc}, {args.steps} and {args.batch}")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun: env:// rendezvous
        if args.batch % int(os.environ["WORLD_SIZE"]):
            parser.error("--batch must be a multiple of the number of ranks")
        train_rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
        return 0
    if args.batch % args.nproc:
        parser.error("--batch must be a multiple of --nproc")
    return 0 if spawn_and_check(args) <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
