"""Every collective the scripts issue must work under NCCL: checked on the CPU by running them in a
gloo group while tests/support/collective_guard.py pretends the backend is NCCL (a CPU tensor in a tensor collective is
what NCCL refuses with "No backend type associated with device type cpu")."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from support.collective_guard import CollectiveDeviceError, guard_collectives, supported_devices
from support.demo_runs import (
    assert_no_collective_refused_by_nccl,
    demo_clips,
    demo_videos,
    finetune_flags,
    pretrain_flags,
)
from support.fault_injection import free_port, launch

TIMEOUT = float(os.environ.get("FAULT_TEST_TIMEOUT", 240))
# NCCL pretended on the CPU: `--device cpu` stands for the rank's GPU (distributed.collective_device is checked apart).
PRETEND_NCCL = ["--pretend_backend", "nccl", "--stand_in_device", "cpu"]


@pytest.fixture
def one_rank_group():
    """A 1-process gloo group in this process, destroyed afterwards (other tests must not see it)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_backend_strings_name_their_devices():
    assert supported_devices("nccl") == {"cuda"}
    assert supported_devices("gloo") == {"cpu", "cuda"}
    assert supported_devices("cpu:gloo,cuda:nccl") == {"cpu", "cuda"}


@pytest.mark.parametrize("name", ["all_reduce", "broadcast", "reduce", "all_gather"])
def test_a_cpu_tensor_collective_is_refused_under_nccl_naming_the_call(one_rank_group, name):
    tensor = torch.zeros(2, dtype=torch.float64)
    args = {"all_reduce": (tensor,), "broadcast": (tensor, 0), "reduce": (tensor, 0),
            "all_gather": ([torch.zeros_like(tensor)], tensor)}[name]
    with guard_collectives("nccl") as guard, pytest.raises(
            CollectiveDeviceError, match=rf"{name} of a cpu float64 tensor \[2\] at test_collective_devices.py:\d+"):
        getattr(dist, name)(*args)
    assert len(guard.violations) == 1


@pytest.mark.parametrize("backend", ["gloo", "cpu:gloo,cuda:nccl"])
def test_cpu_tensors_are_fine_where_the_backend_has_a_cpu_side(one_rank_group, backend):
    totals = torch.ones(3, dtype=torch.float64)
    with guard_collectives(backend) as guard:
        dist.all_reduce(totals)
        gathered = [None]
        dist.all_gather_object(gathered, {"rng": torch.get_rng_state()})
        dist.barrier()
    assert totals.tolist() == [1, 1, 1] and torch.equal(gathered[0]["rng"], torch.get_rng_state())
    assert not guard.violations and [c.name for c in guard.calls] == ["all_reduce", "all_gather_object", "barrier"]


def test_object_collectives_under_nccl_need_the_rank_gpu_set(one_rank_group):
    """Under NCCL the pickled payload is staged on cuda:current_device(): without CUDA that is noted, not checkable."""
    with guard_collectives("nccl") as guard:
        gathered = [None]
        dist.all_gather_object(gathered, [1, 2])
    assert gathered == [[1, 2]] and not guard.violations
    if not torch.cuda.is_available():
        assert any("torch.cuda.set_device(LOCAL_RANK)" in note for note in guard.notes)


def test_an_object_collective_must_not_carry_device_tensors(one_rank_group):
    """A pickled non-CPU tensor is unpickled onto that device on every rank (a GPU another rank may not have)."""
    with guard_collectives("gloo"), pytest.raises(CollectiveDeviceError, match="pickles a meta tensor"):
        dist.all_gather_object([None], {"x": torch.empty(1, device="meta")})


def test_the_guard_puts_torch_distributed_back():
    original = dist.all_reduce
    with guard_collectives("nccl"):
        assert dist.all_reduce is not original
    assert dist.all_reduce is original


# --- the scripts' own collectives, end to end (2 processes, gloo, NCCL pretended) -----------------------------------

@pytest.mark.slow
def test_fine_tuning_collectives_work_under_nccl(tmp_path):
    """Training with validation (gathered predictions), checkpoints (gathered RNG states and unreadable-clip logs) and
    the final multi-view test (gathered views)."""
    flags = finetune_flags(demo_clips(tmp_path / "data"), tmp_path / "out", "--batch_size", "2")
    assert_no_collective_refused_by_nccl(launch("run_class_finetuning.py", flags, tmp_path, timeout=TIMEOUT,
                                                wrapper=PRETEND_NCCL))


@pytest.mark.slow
def test_pretraining_collectives_work_under_nccl(tmp_path):
    """An epoch with its epoch-end meter reduction, then the checkpoint (gathered RNG states and unreadable-video
    logs)."""
    flags = pretrain_flags(demo_videos(tmp_path / "videos"), tmp_path / "out", "--batch_size", "2")
    assert_no_collective_refused_by_nccl(launch("run_mae_pretraining.py", flags, tmp_path, timeout=TIMEOUT,
                                                wrapper=PRETEND_NCCL))


@pytest.mark.parametrize(("backend", "expected"), [("nccl", "cuda:3"), ("gloo", "cpu"), ("cpu:gloo,cuda:nccl", "cpu"),
                                                   ("mpi", "cpu")])
def test_the_scripts_collective_tensors_go_where_the_backend_serves(one_rank_group, monkeypatch, backend, expected):
    """The one rule the engines' tensor collectives follow (distributed.collective_device): under NCCL, the GPU."""
    import distributed

    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed.collective_device() == torch.device(expected)
