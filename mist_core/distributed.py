"""Data-parallel training across processes (``torchrun``): the few collectives it needs.

Each process trains a replica on its shard of every batch. After each backward pass the
gradients are averaged (so the step equals one step on the whole batch), the buffers of
rank 0 (EMA standardisers, BatchNorm statistics) are copied to the others, and a stop asked
on any rank stops every rank at the same step. Only rank 0 writes the run. With one process
(no process group) every function here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "all_reduce_gradients",
    "any_rank",
    "broadcast_buffers",
    "init_from_env",
    "is_main_process",
    "rank",
    "world_size",
]


def world_size() -> int:
    """Processes in the group (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def is_main_process() -> bool:
    return rank() == 0


def init_from_env() -> torch.device | None:
    """Join the process group that ``torchrun`` describes in the environment.

    Returns this process's device (``cuda:LOCAL_RANK`` with NCCL when CUDA is present, else
    the CPU with gloo), or ``None`` when not started by torchrun with more than one process.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return device


def all_reduce_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average gradients over the ranks (one flat all-reduce)."""
    n = world_size()
    if n == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= n
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (running statistics) to every rank."""
    if world_size() == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in module.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for dtype, buffers in by_dtype.items():  # one collective per dtype, not per buffer
        if dtype == torch.bool:
            flat = torch.cat([b.reshape(-1).to(torch.uint8) for b in buffers])
        else:
            flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.broadcast(flat, src=0)
        offset = 0
        for b in buffers:
            b.copy_(flat[offset : offset + b.numel()].view(b.shape).to(b.dtype))
            offset += b.numel()


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is True on at least one."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
