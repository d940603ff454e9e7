"""What the benchmarks share: the repository on the import path, the model configurations, device sync and peak
memory, taking turns, the spread of repeated runs, the machine, and results written as data files.

Imports point one way: gpu_check -> bench_* -> common -> the product.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(ROOT / "tests" / "support")):
    if _path not in sys.path:
        sys.path.insert(0, _path)
RESULTS = ROOT / "benchmarks" / "results"

from models import FULL_SIZE, FULL_SIZE_PRETRAIN  # noqa: E402 (the repository root is on the path from here on)

# The configurations measured. FT_FULL / PT_FULL: the released checkpoints' models (models.FULL_SIZE and
# models.FULL_SIZE_PRETRAIN, 16 frames of 160 px).
FT_FULL = dict(model=FULL_SIZE["model"], img=FULL_SIZE["input_size"], frames=FULL_SIZE["num_frames"], batch=32,
               classes=7,
               kwargs=dict(depth=FULL_SIZE["depth"], attn_type=FULL_SIZE["attn_type"],
                           lg_region_size=FULL_SIZE["lg_region_size"],
                           lg_classify_token_type=FULL_SIZE["lg_classify_token_type"], use_mean_pooling=True,
                           init_scale=0.001, drop_path_rate=0.1, all_frames=FULL_SIZE["num_frames"], tubelet_size=2))
FT_TINY = dict(model="vit_tiny_dim128_no_depth_patch16_64", img=32, frames=16, batch=2, classes=5,
               kwargs=dict(depth=1, attn_type="local_global", lg_region_size=[2, 1, 2], img_size=32,
                           lg_classify_token_type="region", use_mean_pooling=True, init_scale=0.001,
                           drop_path_rate=0.1, all_frames=16, tubelet_size=2))
PT_FULL = dict(model=FULL_SIZE_PRETRAIN["model"], img=FULL_SIZE_PRETRAIN["input_size"],
               frames=FULL_SIZE_PRETRAIN["num_frames"], batch=32, mask_ratio=0.9, window=(5, 10),
               kwargs={k: FULL_SIZE_PRETRAIN[k] for k in ("encoder_depth", "decoder_depth", "attn_type",
                                                          "lg_region_size")})
PT_TINY = dict(model="pretrain_videomae_tiny_dim128_no_depth_patch16_64", img=32, frames=16, batch=2,
               mask_ratio=0.5, window=(1, 2),
               kwargs=dict(encoder_depth=1, decoder_depth=1, attn_type="local_global", lg_region_size=[2, 1, 2],
                           img_size=32))
# Dense bf16/fp16 tensor-core peaks (TFLOP/s, datasheet), matched in this order against the device name.
PEAK_TFLOPS = [("H200", 989), ("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("A100", 312), ("L40S", 362),
               ("L40", 181), ("L4", 121), ("A10G", 70), ("A10", 125), ("RTX 4090", 165), ("V100", 125)]


def sync(device: torch.device | str) -> None:
    """Wait for the device (timings end after its work, not after its launch)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_memory_gib(device: torch.device | str) -> float | None:
    """The device's peak allocated memory since the last reset (CUDA), else None."""
    return torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else None


class SeededStreams:
    """A contender's own numpy / random / torch random streams, swapped in while it runs (`take_turns`)."""

    def __init__(self, seed: int):
        np.random.seed(seed)
        random.seed(seed)
        torch.manual_seed(seed)
        self.states = np.random.get_state(), random.getstate(), torch.get_rng_state()

    def __enter__(self):
        np.random.set_state(self.states[0])
        random.setstate(self.states[1])
        torch.set_rng_state(self.states[2])

    def __exit__(self, *exc):
        self.states = np.random.get_state(), random.getstate(), torch.get_rng_state()


def take_turns(contenders: Sequence, indices: list[int], seed: int, chunk: int = 10) -> list[float]:
    """Items per second of each contender (`contender[i]` makes item i) over `indices`, after one warm-up item. They
    take turns every `chunk` items, so that other load on the machine affects them alike; each draws from its own
    seeded random streams."""
    import time

    streams, seconds = [SeededStreams(seed) for _ in contenders], [0.0] * len(contenders)
    for contender, rng in zip(contenders, streams):
        with rng:
            contender[indices[0]]
    for begin in range(0, len(indices), chunk):
        for k, (contender, rng) in enumerate(zip(contenders, streams)):
            with rng:
                start = time.perf_counter()
                for i in indices[begin:begin + chunk]:
                    contender[i]
                seconds[k] += time.perf_counter() - start
    return [len(indices) / s for s in seconds]


def rates(work: Callable[[], int], device: torch.device | str, repeats: int, warmup: int = 1) -> list[float]:
    """Items per second of `work()` (which returns how many items it made), after `warmup` calls, `repeats` times."""
    import time

    for _ in range(warmup):
        work()
    values = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        items = work()
        sync(device)
        values.append(items / (time.perf_counter() - start))
    return values


def spread(values: list[float], digits: int = 1) -> str:
    """median [min-max] of repeated measurements."""
    return f"{np.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def machine() -> str:
    """The CPU model and core count, and the GPU if there is one."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = "unknown CPU"
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{model}, {os.cpu_count()} cores{gpu}"


def write_result(name: str, rows: list[dict], folder: Path | None = None) -> Path:
    """rows as benchmarks/results/<name>.json, with the command, the machine, its load and the date: what the
    docs quote."""
    path = (folder or RESULTS) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(["python", *sys.argv]), "machine": machine(),
              "load_average": round(os.getloadavg()[0], 2),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path
