"""Data-parallel training: two ranks on half a batch each step like one process on it all."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from mist_core import distributed
from mist_core.estimators import BatchTerms


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Estimator(nn.Module):
    """A tiny estimator with a buffer that differs per rank (``stat``), one that its
    forward moves with the shard it sees (``seen``, like an EMA standardiser), a trainable
    parameter no loss reaches and a frozen one."""

    def __init__(self, stat: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
        self.register_buffer("stat", torch.full((2,), stat))
        self.register_buffer("seen", torch.zeros(()))
        self.unused = nn.Parameter(torch.zeros(2))
        self.frozen = nn.Linear(3, 3).requires_grad_(False)

    def batch_terms(self, batch: dict[str, Tensor]) -> BatchTerms:
        out = self.net(self.frozen(batch["x"])).squeeze(-1)
        with torch.no_grad():
            self.seen += batch["x"].mean()
        return BatchTerms(loss=out.pow(2).mean(), log_ratios={"I(x;y)": out})


def _batches() -> list[Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, generator=generator) for _ in range(2)]


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = _Estimator(stat=float(rank))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        terms_of = distributed.batch_terms(model)
        shapes = []
        for x in _batches():
            terms = terms_of({"x": x[rank * 4 : (rank + 1) * 4]})
            shapes.append(tuple(terms.log_ratios["I(x;y)"].shape))
            opt.zero_grad()
            terms.loss.backward()
            opt.step()
        out[rank] = {
            "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            "params": [p.detach().clone() for p in model.parameters()],
            "stat": model.stat.clone(),
            "seen": model.seen.clone(),
            "shapes": shapes,
            "any": distributed.any_rank(rank == 1),
        }
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process_on_the_whole_batch():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    model = _Estimator(stat=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x in _batches():
        opt.zero_grad()
        model.batch_terms({"x": x}).loss.backward()
        opt.step()
    rank0_seen = sum(x[:4].mean() for x in _batches())
    for rank in (0, 1):
        for got, expected in zip(out[rank]["grads"], model.parameters(), strict=True):
            if expected.grad is None:  # the unused and the frozen parameters
                assert got is None
            else:
                torch.testing.assert_close(got, expected.grad)
        for got, expected in zip(out[rank]["params"], model.parameters(), strict=True):
            torch.testing.assert_close(got, expected.detach())
        assert torch.equal(out[rank]["stat"], torch.zeros(2)), "rank 0's buffers everywhere"
        torch.testing.assert_close(out[rank]["seen"], rank0_seen, msg="rank 0's statistics")
        assert out[rank]["shapes"] == [(4,), (4,)], "each rank's terms are its shard's"
        assert out[rank]["any"] is True, "a flag raised on one rank is seen by all"


def test_single_process_calls_are_no_ops():
    assert distributed.world_size() == 1 and distributed.is_main_process()
    assert distributed.any_rank(False) is False
    model, reference = _Estimator(stat=0.0), _Estimator(stat=0.0)
    terms_of = distributed.batch_terms(model)
    assert terms_of == model.batch_terms, "one process: the estimator's own terms"
    x = torch.randn(3, 3)
    terms_of({"x": x}).loss.backward()
    reference.batch_terms({"x": x}).loss.backward()
    for got, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert (got.grad is None and expected.grad is None) or torch.equal(got.grad, expected.grad)
