"""Slurm: the process group of an `srun` job step (one process per task, no torchrun), from Slurm's variables.

`srun python run_class_finetuning.py ...` starts one process per task; `torch_environment` turns Slurm's
description of the step into the variables torch.distributed reads (as torchrun would set them): RANK from
SLURM_PROCID, WORLD_SIZE from SLURM_STEP_NUM_TASKS, LOCAL_RANK from SLURM_LOCALID, MASTER_ADDR the first host of
the step's node list, MASTER_PORT derived from the job id (a requeued job keeps its id, hence its port).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

PORTS = (20000, 20000)  # MASTER_PORT = first + job id % count: above the usual services, below the ephemeral range


def first_host(nodelist: str) -> str:
    """The first host of a Slurm host list: "gpu[07-09,12],cpu1" → "gpu07" (ranges keep their zero padding)."""
    match = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?", nodelist.strip())
    if not match or not match.group(0):
        raise ValueError(f"not a Slurm node list: {nodelist!r}")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    rest = first_host(nodelist[match.end():]) if nodelist[match.end():match.end() + 1] not in ("", ",") else ""
    return prefix + first + rest


def torch_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The torch.distributed variables of an srun task; none outside an srun step, or where torchrun's RANK /
    LOCAL_RANK are present (torchrun started this process: its variables win)."""
    env = os.environ if env is None else env
    if "RANK" in env or "LOCAL_RANK" in env or "SLURM_STEP_NUM_TASKS" not in env or "SLURM_PROCID" not in env:
        return {}
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    job_id = int(env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or 0)
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_STEP_NUM_TASKS"],
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": env.get("MASTER_ADDR") or (first_host(nodelist) if nodelist else "127.0.0.1"),
            "MASTER_PORT": env.get("MASTER_PORT") or str(PORTS[0] + job_id % PORTS[1])}


def use_slurm_environment() -> None:
    """In an srun task (without torchrun), set the torch.distributed variables from Slurm's (torch_environment)."""
    os.environ.update(torch_environment())
