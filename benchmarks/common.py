"""What the benchmarks share: the repository on the import path, the full-size configurations, timing with warm-up,
taking turns, the spread of repeated runs, device sync and peak memory, the machine, and results as data files.

Imports point one way: gpu_check -> bench_* -> common -> the product.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(ROOT / "tests" / "support")):
    if _path not in sys.path:
        sys.path.insert(0, _path)
RESULTS = ROOT / "benchmarks" / "results"
STARTED = datetime.datetime.now(datetime.timezone.utc)

from models import FULL_SIZE, FULL_SIZE_PRETRAIN  # noqa: E402 (the repository root is on the path from here on)

# The full-size configurations measured: the released checkpoints' models (16 frames of 160 px).
FT_FULL = dict(model=FULL_SIZE["model"], img=FULL_SIZE["input_size"], frames=FULL_SIZE["num_frames"], batch=32,
               classes=7,
               kwargs=dict(depth=FULL_SIZE["depth"], attn_type=FULL_SIZE["attn_type"],
                           lg_region_size=FULL_SIZE["lg_region_size"],
                           lg_classify_token_type=FULL_SIZE["lg_classify_token_type"], use_mean_pooling=True,
                           init_scale=0.001, drop_path_rate=0.1, all_frames=FULL_SIZE["num_frames"], tubelet_size=2))
PT_FULL = dict(model=FULL_SIZE_PRETRAIN["model"], img=FULL_SIZE_PRETRAIN["input_size"],
               frames=FULL_SIZE_PRETRAIN["num_frames"], batch=32, mask_ratio=0.9, part_win_size=(2, 5, 10),
               kwargs={k: FULL_SIZE_PRETRAIN[k] for k in ("encoder_depth", "decoder_depth", "attn_type",
                                                          "lg_region_size")})


def full_size_checkpoint(folder: Path, fusion: str = "none", sampling_rate: int = 4) -> Path:
    """FULL_SIZE with random weights, saved as our fine-tuning saves (the released DFEW scripts' flags)."""
    import checkpoint
    import run_class_finetuning as rcf

    flags = ["--model", FULL_SIZE["model"], "--depth", str(FULL_SIZE["depth"]), "--input_size",
             str(FULL_SIZE["input_size"]), "--lg_region_size", *map(str, FULL_SIZE["lg_region_size"]),
             "--lg_classify_token_type", FULL_SIZE["lg_classify_token_type"], "--nb_classes", "7", "--data_set",
             "DFEW", "--fusion", fusion, "--sampling_rate", str(sampling_rate), "--output_dir", str(folder)]
    args = rcf.get_args_parser().parse_args(flags)
    model = rcf.create_model(args)
    folder.mkdir(parents=True, exist_ok=True)
    return checkpoint.save_model(folder, sampling_rate, model=model,
                                 optimizer=torch.optim.SGD(model.parameters(), lr=0.1), args=args)


def sync(device: torch.device | str) -> None:
    """Wait for the device (timings end after its work, not after its launch)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_memory_gib(device: torch.device | str) -> float:
    """CUDA: the peak allocated memory since the last reset; CPU: the process's peak resident memory."""
    if torch.device(device).type == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def timed(work: Callable[[], object], device: torch.device | str = "cpu", repeats: int = 3,
          warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls of `work`, after `warmup` untimed calls."""
    for _ in range(warmup):
        work()
    seconds = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        work()
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def gflops(work: Callable[[], object]) -> float:
    """The GFLOPs of one call of `work`, counted by torch.utils.flop_counter.FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops() / 1e9


def take_turns(contenders: dict[str, Callable[[], object]], rounds: int, device: torch.device | str = "cpu",
               warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of one call of each contender per round, after `warmup` calls each. They take turns round after
    round, so that other load on the machine slows them alike."""
    for work in contenders.values():
        timed(work, device, repeats=0, warmup=warmup)
    seconds = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, work in contenders.items():
            seconds[name] += timed(work, device, repeats=1, warmup=0)
    return seconds


def spread(values: list[float], digits: int = 3) -> dict:
    """median, min and max of repeated measurements (shown as median [min-max])."""
    return dict(median=round(float(np.median(values)), digits), min=round(min(values), digits),
                max=round(max(values), digits), runs=len(values))


def machine() -> str:
    """The CPU model and core count, and the GPU if there is one."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = "unknown CPU"
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{model}, {os.cpu_count()} cores{gpu}"


def cell(value: object, limit: int = 200) -> str:
    """A table cell: a spread as median [min-max], anything else as JSON."""
    if isinstance(value, dict) and "median" in value:
        text = f"{value['median']} [{value['min']}-{value['max']}]"
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


def markdown_table(rows: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
            *("| " + " | ".join(cell(row.get(k)) for k in keys) + " |" for row in rows)]


def write_result(name: str, rows: list[dict], **extra: object) -> Path:
    """rows (and `extra`) as benchmarks/results/<date>-<host>-<name>.json with the command, the machine, its load and
    the date: what the docs quote. Called again during a run, it rewrites the same file."""
    path = RESULTS / f"{STARTED:%Y-%m-%d}-{platform.node() or 'machine'}-{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(["python", *sys.argv]), "machine": machine(),
              "load_average": [round(x, 2) for x in os.getloadavg()],
              "date": STARTED.isoformat(timespec="seconds"), **extra, "rows": rows}
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path


def report(name: str, rows: list[dict], **extra: object) -> Path:
    """Print the rows as a table and write them with `write_result`."""
    print("\n".join(markdown_table(rows)))
    path = write_result(name, rows, **extra)
    print(f"written: {path}")
    return path
