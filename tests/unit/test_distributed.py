"""The data-parallel collectives: averaged gradients equal the whole-batch gradient."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mist_core import distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        model.register_buffer("stat", torch.full((2,), float(rank)))
        x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
        shard = x[rank * 4 : (rank + 1) * 4]
        model(shard).pow(2).mean().backward()
        distributed.all_reduce_gradients(model.parameters())
        distributed.broadcast_buffers(model)
        out[rank] = {
            "grads": [p.grad.clone() for p in model.parameters()],
            "stat": model.stat.clone(),
            "any": distributed.any_rank(rank == 1),
        }
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process_on_the_whole_batch():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    model(x).pow(2).mean().backward()
    for rank in (0, 1):
        for got, expected in zip(out[rank]["grads"], model.parameters(), strict=True):
            torch.testing.assert_close(got, expected.grad)
        assert torch.equal(out[rank]["stat"], torch.zeros(2)), "rank 0's buffers everywhere"
        assert out[rank]["any"] is True, "a flag raised on one rank is seen by all"


def test_single_process_calls_are_no_ops():
    assert distributed.world_size() == 1 and distributed.is_main_process()
    assert distributed.any_rank(False) is False
    model = torch.nn.Linear(2, 2)
    model(torch.randn(3, 2)).sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    distributed.all_reduce_gradients(model.parameters())
    for got, expected in zip(model.parameters(), before, strict=True):
        assert torch.equal(got.grad, expected)
