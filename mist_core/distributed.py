"""Data-parallel training across processes (``torchrun``).

Each process trains a replica on its shard of every batch. The training loop gets its
per-batch terms from :func:`batch_terms`, which makes one step on the shards equal one step
on the whole batch: the gradients are averaged over the ranks during the backward pass, and
when it ends the buffers of rank 0 (EMA standardisers, BatchNorm statistics) are copied to
the others, so every rank validates, early-stops and checkpoints the same model. A stop
asked on any rank stops every rank at the same step (:func:`any_rank`). Only rank 0 writes
the run. With one process (no process group) nothing here communicates.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from mist_core.estimators.base import BatchTerms

__all__ = [
    "any_rank",
    "batch_terms",
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


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is True on at least one."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def batch_terms(estimator: nn.Module) -> Callable[[Mapping[str, Tensor]], BatchTerms]:
    """The function a training loop calls for each batch's :class:`BatchTerms`.

    ``terms = fn(batch)``, then ``terms.loss.backward()`` and ``opt.step()``: in one process
    ``fn`` is ``estimator.batch_terms``; under a process group, when the backward pass
    returns every rank holds the gradients averaged over the ranks (one step on the whole
    batch) and rank 0's buffers. Make it once per training run (it wraps the estimator in
    :class:`~torch.nn.parallel.DistributedDataParallel`, which checks and broadcasts rank
    0's parameters and buffers), on every rank at the same point.
    """
    if world_size() == 1:
        return estimator.batch_terms
    return _DataParallelTerms(estimator)


class _Terms(nn.Module):
    """The estimator's :meth:`batch_terms` as a ``forward`` (what DDP wraps), returning
    ``(loss, log_ratios)``: plain containers whose tensors DDP finds."""

    def __init__(self, estimator: nn.Module) -> None:
        super().__init__()
        self.estimator = estimator

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        terms = self.estimator.batch_terms(batch)
        return terms.loss, dict(terms.log_ratios)


class _DataParallelTerms:
    """:func:`batch_terms` under a process group.

    DDP averages the gradients, bucket by bucket while the backward pass runs. Frozen
    parameters (``requires_grad=False``) are not its business. ``static_graph``: every step
    reaches the same parameters, so DDP notes in the first step which trainable ones a
    loss does not reach (they keep ``grad=None``, as in one process, instead of stalling
    the reduction) without searching the graph again each step as
    ``find_unused_parameters`` would. The stacked heads' hand-written backward
    (``mist_core.estimators.stacked``) takes the heads' parameters as inputs, so DDP sees
    them in the graph like any other.

    DDP's own buffer sync runs at the start of ``forward``: it would leave each rank with
    the statistics of its own shard between steps, when the loop validates and decides to
    stop early, and ranks disagreeing there would hang. So the buffers are broadcast from
    rank 0 as soon as the gradients of every trainable parameter are computed: the nodes
    that read buffers have run by then (overwriting a buffer a pending node saved would
    break the backward pass), and ``opt.step()`` does not touch buffers. If the last terms
    had no backward pass, the next call broadcasts them first.
    """

    def __init__(self, estimator: nn.Module) -> None:
        self.estimator = estimator
        params = [p for p in estimator.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the estimator has no trainable parameters")
        self.ddp = DistributedDataParallel(
            _Terms(estimator), static_graph=True, forward_sync_buffers=False
        )
        self._pending = False  # this rank's buffers have moved since rank 0's were copied
        this = weakref.ref(self)  # the hook must not keep the wrapper (and DDP) alive

        def after_gradients(_grads: object) -> None:
            owner = this()
            if owner is not None and owner._pending:
                owner._sync_buffers()

        handle = torch.autograd.graph.register_multi_grad_hook(params, after_gradients)
        weakref.finalize(self, handle.remove)

    def __call__(self, batch: Mapping[str, Tensor]) -> BatchTerms:
        if self._pending:
            self._sync_buffers()
        loss, log_ratios = self.ddp(batch)
        self._pending = True
        return BatchTerms(loss=loss, log_ratios=log_ratios)

    def _sync_buffers(self) -> None:
        self._pending = False
        _broadcast_buffers(self.estimator)


@torch.no_grad()
def _broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers to every rank, one collective per dtype.

    Buffers that view a parameter's storage (the stacked heads' per-head tensors) are
    left out: the parameters are equal on every rank already.
    """
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for buffer in module.buffers():
        if buffer.numel() and buffer.untyped_storage().data_ptr() not in params:
            by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for buffers in by_dtype.values():
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.broadcast(flat, src=0)
        if rank() == 0:
            continue
        offset = 0
        for b in buffers:
            b.copy_(flat[offset : offset + b.numel()].view(b.shape))
            offset += b.numel()
