"""Gradient accumulation under DDP (2 CPU processes, gloo): whatever the last micro-batch of an optimizer step holds,
every process applies the same averaged gradient.

The processes are started by torch.multiprocessing and killed after TIMEOUT seconds: a hang fails the test.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import engine

TIMEOUT = float(os.environ.get("ACCUMULATION_TEST_TIMEOUT", 120))
LR = 0.1


def micro_batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two optimizer steps of two micro-batches; rank 1's last micro-batch of the first step is empty (its clips
    were unreadable), so no process makes that micro-batch's synchronised backward."""
    gen = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(4, 6, generator=gen), torch.randint(0, 3, (4,), generator=gen)) for _ in range(4)]
    if rank == 1:
        batches[1] = (torch.empty(0, 6), torch.empty(0, dtype=torch.int64))
    return batches


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = nn.Linear(6, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        engine.train_one_epoch(DistributedDataParallel(model), micro_batches(rank), optimizer, torch.device("cpu"),
                               criterion=nn.CrossEntropyLoss(), recipe=engine.StepRecipe(update_freq=2))
        torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expected_parameters() -> dict[str, torch.Tensor]:
    """DDP's rule by hand: each step, the mean over processes of the sum of their micro-batch gradients / 2 (the
    skipped micro-batch is skipped on both: the processes agree on it)."""
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    data = [micro_batches(rank) for rank in (0, 1)]
    for step in range(2):
        micro = [0] if step == 0 else [2, 3]
        grads = [torch.zeros_like(p) for p in model.parameters()]
        for rank in (0, 1):
            for i in micro:
                x, y = data[rank][i]
                loss = nn.functional.cross_entropy(model(x), y) / 2
                for g, p_grad in zip(grads, torch.autograd.grad(loss, list(model.parameters()))):
                    g += p_grad / 2
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p -= LR * g
    return model.state_dict()


@pytest.mark.slow
def test_an_empty_last_micro_batch_leaves_every_process_with_the_same_parameters(tmp_path):
    context = mp.start_processes(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"hang: the 2 processes had not finished after {TIMEOUT:.0f} s and were killed")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    expected = expected_parameters()
    for key, value in expected.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key} differs between the processes"
        torch.testing.assert_close(ranks[0][key], value, rtol=0, atol=1e-6)
