"""Data-parallel steps: DistributedDataParallel against a hand-written all-reduce.

    python -m bench.distributed [--workload heads|tiny] [--steps 20] [--rounds 10]
        [--batch 64] [--features 512]

Two gloo processes on the CPU, one thread each, train the same model on half of every
batch with Adam, the same seeds and batches for both paths:

- **ddp**: what the training loop runs, :func:`mist_core.distributed.batch_terms` (DDP
  averages the gradients during the backward pass; rank 0's buffers are copied after it).
- **hand**: the gradients concatenated and all-reduced in one collective after the
  backward pass, then rank 0's buffers (all of them) broadcast after ``opt.step()``.

Workloads: **heads**, the seed's 15 DoE heads (3 representations x 5 landmarks, stacked)
on random features; **tiny**, the unit test's 3-4-1 perceptron. Both paths' models live
side by side and take turns (a shared machine drifts): each of ``--rounds`` rounds times
``--steps`` steps of one path then of the other (the order alternates), on rank 0 between
barriers, after 5 warm-up steps each. Printed: steps per second per round, the median per
path and of the per-round ratio, and how far apart the two paths' weights and buffers end
(they should agree to float rounding).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from bench.machine import cpu_model
from mist_core import distributed
from mist_core.estimators import BatchTerms, MultiMIEstimator
from mist_core.experiment import instantiate_estimators

_REPRESENTATIONS = ("random_init", "pretrained", "finetuned")
_LANDMARKS = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
_WARMUP = 5


class _Tiny(nn.Module):
    """The unit test's perceptron, as an estimator with one buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
        self.register_buffer("seen", torch.zeros(()))

    def batch_terms(self, batch: dict[str, Tensor]) -> BatchTerms:
        out = self.net(batch["x"]).squeeze(-1)
        with torch.no_grad():
            self.seen += batch["x"].mean()
        return BatchTerms(loss=out.pow(2).mean(), log_ratios={"I(x;y)": out})


def _model(args: argparse.Namespace) -> nn.Module:
    torch.manual_seed(0)
    if args.workload == "tiny":
        return _Tiny()
    sizes = dict.fromkeys(_REPRESENTATIONS, args.features)
    return MultiMIEstimator(instantiate_estimators(sizes, _LANDMARKS))


def _batches(args: argparse.Namespace, rank: int) -> list[dict[str, Tensor]]:
    """This rank's half of each batch, the same for both paths."""
    g = torch.Generator().manual_seed(1)
    half = args.batch // 2
    batches = []
    for _ in range(_WARMUP + args.rounds * args.steps):
        if args.workload == "tiny":
            whole = {"x": torch.randn(args.batch, 3, generator=g)}
        else:
            whole = {k: torch.randn(args.batch, args.features, generator=g)
                     for k in _REPRESENTATIONS}  # fmt: skip
            whole.update({k: 80 + 10 * torch.randn(args.batch, 2, generator=g)
                          for k in _LANDMARKS})  # fmt: skip
        batches.append({k: v[rank * half : (rank + 1) * half] for k, v in whole.items()})
    return batches


def _all_reduce_gradients(params: list[nn.Parameter]) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def _broadcast_all_buffers(module: nn.Module) -> None:
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for buffer in module.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for dtype, buffers in by_dtype.items():
        wire = torch.uint8 if dtype == torch.bool else dtype
        flat = torch.cat([b.reshape(-1).to(wire) for b in buffers])
        dist.broadcast(flat, src=0)
        offset = 0
        for b in buffers:
            b.copy_(flat[offset : offset + b.numel()].view(b.shape))
            offset += b.numel()


class _Path:
    """One path's model, optimiser and per-batch function, trained block by block."""

    def __init__(self, path: str, args: argparse.Namespace) -> None:
        self.path = path
        self.model = _model(args)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=1e-3)
        self.terms_of: Callable = (
            distributed.batch_terms(self.model) if path == "ddp" else self.model.batch_terms
        )
        self.model.train()

    def step(self, batch: dict[str, Tensor]) -> None:
        terms = self.terms_of(batch)
        self.opt.zero_grad(set_to_none=True)
        terms.loss.backward()
        if self.path == "hand":
            _all_reduce_gradients(self.params)
        self.opt.step()
        if self.path == "hand":
            _broadcast_all_buffers(self.model)

    def block(self, batches: list[dict[str, Tensor]]) -> float:
        """Steps per second over ``batches`` (rank 0's clock, between barriers)."""
        dist.barrier()
        start = time.perf_counter()
        for batch in batches:
            self.step(batch)
        dist.barrier()
        return len(batches) / (time.perf_counter() - start)


def _worker(rank: int, port: int, args: argparse.Namespace, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        batches = _batches(args, rank)
        paths = {path: _Path(path, args) for path in ("ddp", "hand")}
        for path in paths.values():
            path.block(batches[:_WARMUP])
        rows = []
        for round_ in range(args.rounds):
            block = batches[_WARMUP + round_ * args.steps : _WARMUP + (round_ + 1) * args.steps]
            order = ("ddp", "hand") if round_ % 2 == 0 else ("hand", "ddp")
            rows.extend((round_, name, paths[name].block(block)) for name in order)
        if rank == 0:
            out["rows"] = rows
            states = [p.model.state_dict().values() for p in paths.values()]
            out["gap"] = max(
                float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
                for a, b in zip(*states, strict=True)
            )
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("heads", "tiny"), default="heads")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64, help="whole batch (both ranks)")
    parser.add_argument("--features", type=int, default=512)
    args = parser.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(port, args, out), nprocs=2, join=True)
    print(f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, gloo, "
          f"2 processes x 1 thread")  # fmt: skip
    print(f"workload {args.workload}, batch {args.batch} ({args.batch // 2} a rank), "
          f"{args.steps} Adam steps a round")  # fmt: skip
    print("| round | path | steps/s |\n|---:|---|---:|")
    for round_, path, rate in out["rows"]:
        print(f"| {round_} | {path} | {rate:.1f} |")
    rates = {path: [rate for _, p, rate in out["rows"] if p == path] for path in ("ddp", "hand")}
    for path, values in rates.items():
        print(f"{path}: median {statistics.median(values):.1f} steps/s "
              f"(min {min(values):.1f}, max {max(values):.1f})")  # fmt: skip
    ratios = [d / h for d, h in zip(rates["ddp"], rates["hand"], strict=True)]
    print(f"ddp / hand per round: median {statistics.median(ratios):.2f} "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f})")  # fmt: skip
    print(f"largest difference between the two paths' final weights and buffers: "
          f"{out['gap']:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
