"""The process group: set-up under torchrun, this process's rank and world size, and the collectives the scripts use.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain `python` run is one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass(frozen=True)
class Process:
    """Where this process runs: its rank among `world_size` (torchrun's RANK / WORLD_SIZE) and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def find_local_rank(flag: int = -1) -> int:
    """This process's GPU on its node: LOCAL_RANK (torchrun and torch.distributed.launch set it), else the
    --local_rank / --local-rank flag (torch.distributed.launch without --use-env), else 0."""
    return int(os.environ.get("LOCAL_RANK", max(flag, 0)))


def init_distributed(device: str, timeout_minutes: float = 30.0, local_rank: int = -1) -> Process:
    """Join torchrun's process group when launched by it (NCCL on CUDA, gloo on the CPU); else one process.

    `--device cuda` means this rank's GPU: LOCAL_RANK (torchrun sets it), else `local_rank` (torch.distributed.launch's
    --local-rank); `cuda:N` is taken as given.
    """
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    target = torch.device(device)
    if target.type == "cuda":
        target = torch.device("cuda", target.index if target.index is not None else find_local_rank(local_rank))
        torch.cuda.set_device(target)
    if world_size > 1:
        torch.distributed.init_process_group(backend="nccl" if target.type == "cuda" else "gloo",
                                             timeout=timedelta(minutes=timeout_minutes),
                                             device_id=target if target.type == "cuda" else None)
        torch.distributed.barrier()
    return Process(rank, world_size, target)


def collective_device() -> torch.device:
    """Where the tensors of this process's collectives go: its current GPU when the process group's backend has no
    CPU side (NCCL), else the CPU (gloo, or a mixed cpu:gloo,cuda:nccl group)."""
    if torch.distributed.is_initialized():
        backend = str(torch.distributed.get_backend())
        if "cpu" not in backend and "gloo" not in backend and "mpi" not in backend:
            return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def get_rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def get_world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_gather_objects(obj):
    """Every rank's `obj`, in rank order (a one-element list without distributed)."""
    if not torch.distributed.is_initialized():
        return [obj]
    gathered = [None] * get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered
