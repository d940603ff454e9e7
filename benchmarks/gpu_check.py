"""The GPU check's measurements: at most 5 minutes of parts on one GPU (16 cores), one report.

    bash benchmarks/gpu_check.sh OUT_DIR             # on the GPU machine: carried wheels, `gpu` tests, this script
    python benchmarks/gpu_check.py --cpu --out DIR   # every part on the CPU at tiny size (auto without CUDA)

Writes only OUT_DIR/gpu_check.md and gpu_check.json, rewritten after every part (a killed run leaves what it had).
Each part has a time budget; an error or a timeout is recorded and the next part runs:
1. env: versions, the device, bf16, NCCL, /dev/shm;
2. finetune_steps: the full-size fine-tune model (fusion none and add), batch 32, train steps in bf16, fp16 +
   GradScaler, bf16 compiled and bf16 channels-last: clips/s, MFU (FLOPs of a step from FlopCounterMode, peak from
   PEAK_TFLOPS) and host syncs per step (CUDA's sync debug mode, by call site);
3. data_path: bench_data's loader rows (16 workers), decoding, augmentation and resize on the GPU; data_bound sets
   the loader's clips/s against the fastest train step's;
4. eval_compile: bench_compile's variants, and the graphs each compiles;
5. pretrain_step: bench_pretrain's train step of the full-size pretraining model in bf16, as 2.
The correctness checks that need a GPU are the tests marked `gpu` (tests/test_gpu.py), run by gpu_check.sh first.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import bench_compile
import bench_data
import bench_pretrain
import torch
import torch.nn.functional as F
from bench_model import to_channels_last
from common import FT_FULL, PT_FULL, cell, gflops, markdown_table, peak_memory_gib, sync

# Seconds per part on one GPU: 175 in all (with the `gpu` tests' 120 s before them, 5 minutes).
BUDGETS = dict(env=5, finetune_steps=70, data_path=30, eval_compile=45, pretrain_step=25)
MIN_PART_SECONDS = 10
MIN_VARIANT_SECONDS = 12  # a row starts only with this much of its part's budget left
# The tiny configurations of --cpu / --tiny, in common's format.
FT_TINY = dict(model="vit_tiny_dim128_no_depth_patch16_64", img=32, frames=16, batch=2, classes=5,
               kwargs=dict(depth=1, attn_type="local_global", lg_region_size=[2, 1, 2], img_size=32,
                           lg_classify_token_type="region", use_mean_pooling=True, init_scale=0.001,
                           drop_path_rate=0.1, all_frames=16, tubelet_size=2))
PT_TINY = dict(model="pretrain_videomae_tiny_dim128_no_depth_patch16_64", img=32, frames=16, batch=2,
               mask_ratio=0.5, part_win_size=(2, 1, 2),
               kwargs=dict(encoder_depth=1, decoder_depth=1, attn_type="local_global", lg_region_size=[2, 1, 2],
                           img_size=32))
# Dense bf16/fp16 tensor-core peaks (TFLOP/s, datasheet), matched in this order against the device name.
PEAK_TFLOPS = [("H200", 989), ("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("A100", 312), ("L40S", 362),
               ("L40", 181), ("L4", 121), ("A10G", 70), ("A10", 125), ("RTX 4090", 165), ("V100", 125)]


class PartTimeout(BaseException):
    """A part ran past its budget. A BaseException: torch.compile wraps the Exceptions raised inside it (as a
    Dynamo or Inductor error), which would turn the part's timeout into one row's error."""


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise PartTimeout in this (main) thread after `seconds` (between Python bytecodes: a hung kernel is not
    interrupted)."""
    def ring(signum, frame):
        raise PartTimeout(f"over its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Part:
    """One section: its budget, its work folder, and the results it fills in as it goes (kept on a timeout)."""

    name: str
    budget: float
    work: Path
    cpu: bool
    tiny: bool
    result: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu" if self.cpu else "cuda")

    def left(self) -> float:
        return self.budget - (time.time() - self.started)


@contextlib.contextmanager
def recording_error(row: dict):
    """An exception inside becomes the row's "error" (the part goes on); a part's timeout is recorded and raised on."""
    try:
        yield
    except PartTimeout:
        row["error"] = "part budget reached"
        raise
    except Exception as err:
        row["error"] = f"{type(err).__name__}: {str(err)[:300]}"


def peak_tflops() -> tuple[str | None, float | None]:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return next(((key, float(tflops)) for key, tflops in PEAK_TFLOPS if key in name), (None, None))


def count_syncs(step, device: torch.device) -> dict:
    """Host syncs of one call of `step`: CUDA's sync debug mode warns at each; counted by the warning's location."""
    if device.type != "cuda":
        return {"syncs_per_step": None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                    if "synchronizing CUDA operation" in str(w.message))
    return {"syncs_per_step": sum(sites.values()), "sync_sites": dict(sites.most_common(8))}


def time_steps(step, device: torch.device, part: Part, batch: int, gflops_per_step: float) -> dict:
    """First call (compilation included), warm-up, then timed steps (fewer near the part's budget): step time,
    clips/s, peak memory, MFU and host syncs."""
    start = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - start
    for _ in range(1 if part.tiny else 2):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    done, start = 0, time.perf_counter()
    while done < (3 if part.tiny else 10) and (done < 2 or part.left() > 15):
        step()
        done += 1
    sync(device)
    seconds = (time.perf_counter() - start) / done
    peak = peak_tflops()[1]
    return {"first_step_s": round(first, 3), "step_ms": round(1000 * seconds, 2), "timed_steps": done,
            "clips_per_s": round(batch / seconds, 1), "peak_gib": peak_memory_gib(device),
            "mfu_pct": round(100 * gflops_per_step / seconds / (peak * 1e3), 1) if peak else None,
            **count_syncs(step, device)}


def part_env(part: Part) -> None:
    r = part.result
    r.update(python=sys.version.split()[0], platform=platform.platform(), torch=torch.__version__,
             cuda_runtime=torch.version.cuda, cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads())
    for module in ("timm", "einops", "cv2", "pandas", "numpy", "sklearn", "decord", "tensorboardX", "tqdm"):
        try:
            r[f"pkg_{module}"] = getattr(__import__(module), "__version__", "present")
        except Exception as err:  # a missing package is a finding, not a failure of this part
            r[f"pkg_{module}"] = f"missing ({type(err).__name__})"
    with contextlib.suppress(OSError):
        r["dev_shm_gib"] = round(shutil.disk_usage("/dev/shm").total / 2**30, 2)
    r["cuda_available"] = torch.cuda.is_available()
    if not torch.cuda.is_available():
        return
    props = torch.cuda.get_device_properties(0)
    r.update(device=torch.cuda.get_device_name(0), capability=".".join(map(str, torch.cuda.get_device_capability(0))),
             memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
             device_count=torch.cuda.device_count(), cudnn=torch.backends.cudnn.version(),
             bf16_supported=torch.cuda.is_bf16_supported(), peak_tflops_bf16_dense=peak_tflops())
    with contextlib.suppress(Exception):
        r["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    with contextlib.suppress(Exception):
        r["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout


def finetune_step(model, cfg: dict, device: torch.device, amp: str, compiled: bool, channels_last: bool):
    """A training step with AdamW: bf16 autocast, or fp16 autocast with a GradScaler (and the fused AdamW that the
    training scripts take under loss scaling)."""
    import training

    x = torch.randn(cfg["batch"], 3, cfg["frames"], cfg["img"], cfg["img"], device=device)
    if channels_last:
        model, x = to_channels_last(model), x.contiguous(memory_format=torch.channels_last_3d)
    flags = argparse.Namespace(opt="adamw", weight_decay=0.05, momentum=0.9, opt_eps=1e-8, opt_betas=None)
    optimizer = training.create_optimizer(flags, model, 1e-4, loss_scaling=amp == "fp16")
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    forward = torch.compile(model) if compiled else model
    y = torch.randint(0, cfg["classes"], (cfg["batch"],), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def step():
        with torch.autocast(device.type, dtype=dtype):
            loss = F.cross_entropy(forward(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def part_finetune_steps(part: Part) -> None:
    import timm

    import modeling_finetune  # noqa: F401  (registers the models)

    cfg, device = FT_TINY if part.tiny else FT_FULL, part.device
    # (amp, compiled, channels_last): the compiled ones late (their compilation takes most of the budget)
    variants = [("bf16", False, False), ("fp16", False, False), *([] if part.cpu else [("bf16", True, False)]),
                ("bf16", False, True)]
    rows = part.result.setdefault("rows", [])
    part.result.update(model=cfg["model"], batch=cfg["batch"], input=f"{cfg['frames']}x{cfg['img']}^2")
    flops = {}
    for amp, compiled, channels_last in variants:
        for fusion in ("none", "add"):
            row = {"fusion": fusion, "variant": amp + " compiled" * compiled + " channels_last" * channels_last +
                   " + GradScaler" * (amp == "fp16")}
            rows.append(row)
            if part.left() < MIN_VARIANT_SECONDS * (3 if compiled else 1):
                row["error"] = f"skipped: {part.left():.0f} s of the part's budget left"
                continue
            try:
                with recording_error(row):
                    torch.manual_seed(0)
                    model = timm.create_model(cfg["model"], num_classes=cfg["classes"],
                                              fusion=None if fusion == "none" else fusion, **cfg["kwargs"])
                    model = model.to(device).train()
                    step = finetune_step(model, cfg, device, amp, compiled, channels_last)
                    if fusion not in flops:
                        step()  # FLOPs after one warm-up step, on the eager model
                        flops[fusion] = part.result[f"gflops_per_step_{fusion}"] = round(gflops(step), 1)
                    row.update(time_steps(step, device, part, cfg["batch"], flops[fusion]))
            finally:
                model = step = None
                torch._dynamo.reset()
                if device.type == "cuda":
                    torch.cuda.empty_cache()


def part_pretrain_step(part: Part) -> None:
    cfg = PT_TINY if part.tiny else PT_FULL
    step = bench_pretrain.train_step(cfg, part.device, batch=cfg["batch"], amp="bf16")
    step()
    part.result.update(model=cfg["model"], batch=cfg["batch"], mask=f"part window {cfg['mask_ratio']}",
                       variant="bf16 eager", gflops_per_step=round(gflops(step), 1))
    part.result.update(time_steps(step, part.device, part, cfg["batch"], part.result["gflops_per_step"]))


def part_data_path(part: Part) -> None:
    """bench_data's rows on the device: the loader feeding it with 16 workers, decoding, augmenting, resizing."""
    size = (["--workers", "2", "--batch", "4", "--clips", "4", "--frame_size", "48", "--short_side_size", "32",
             "--input_size", "32"] if part.tiny else ["--workers", str(min(16, os.cpu_count() or 1)), "--batch", "64",
                                                      "--clips", "48"])
    args = bench_data.get_args_parser().parse_args(["--device", part.device.type, "--repeats", "2", *size])
    entries = bench_data.make_clips(part.work, args)
    rows = part.result["rows"] = []
    for rows_of in (bench_data.loader_rows, bench_data.decode_rows, bench_data.augment_rows):
        rows += rows_of(entries, args)


def part_eval_compile(part: Part) -> None:
    """bench_compile's variants, each row kept as soon as it is measured, without the compiled training step first
    (its compilation would take the part's budget). CPU: the scripts' path only (compiling is slow there)."""
    cfg = FT_TINY if part.tiny else FT_FULL
    batch, eval_batch = cfg["batch"], int(1.5 * cfg["batch"])
    partial = max(batch // 2 - 3, 1)
    part.result.update(model=cfg["model"], eval_batch=eval_batch, partial=partial)
    rows = part.result["rows"] = []
    for variant in ("eager", "static + pad") if part.cpu else bench_compile.VARIANTS:
        row = {"variant": variant}
        rows.append(row)
        try:
            with recording_error(row):
                row.update(bench_compile.measure(variant, cfg, part.device, "bf16", batch, eval_batch, partial,
                                                 steps=3 if part.tiny else 10, train_first=False))
        finally:
            torch._dynamo.reset()


def data_bound(parts: dict) -> dict | None:
    """Whether the fine-tuning step waits for data: the loader's clips/s (--augment_on device, the CUDA default)
    against the fastest train step's."""
    loader = [r["rate"]["median"] for r in parts.get("data_path", {}).get("result", {}).get("rows", [])
              if r["row"].startswith("loader") and r["row"].endswith("device")]
    steps = [r["clips_per_s"] for r in parts.get("finetune_steps", {}).get("result", {}).get("rows", [])
             if r.get("clips_per_s")]
    if not loader or not steps:
        return None
    return {"loader_clips_per_s": round(loader[0], 1), "fastest_step_clips_per_s": max(steps),
            "data_bound": loader[0] < max(steps)}


PARTS = {"env": part_env, "finetune_steps": part_finetune_steps, "data_path": part_data_path,
         "eval_compile": part_eval_compile, "pretrain_step": part_pretrain_step}


def write_report(report: dict, out: Path) -> None:
    report["seconds"] = round(time.time() - report["_start"], 1)
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    (out / "gpu_check.json").write_text(json.dumps(public, indent=1, default=str))
    lines = [f"# GPU check ({public['mode']})", "", f"{public['started']}; {public['seconds']:.0f} s of a "
             f"{public['budget_s']:.0f} s budget.", "", f"Data-bound fine-tuning step: {public.get('data_bound')}", ""]
    for name, part in public["parts"].items():
        lines += [f"## {name}: {part['status']} ({part['seconds']:.0f} s of {part['budget']:.0f})", ""]
        if part.get("error"):
            lines += ["```", part["error"].rstrip(), "```", ""]
        result = dict(part.get("result", {}))
        rows = result.pop("rows", None)
        lines += [*markdown_table(rows), ""] if rows else []
        lines += [*(f"- **{k}**: {cell(v, 600)}" for k, v in result.items()), ""]
    (out / "gpu_check.md").write_text("\n".join(lines))


def main(args: argparse.Namespace) -> dict:
    cpu = args.cpu or not torch.cuda.is_available()
    tiny = args.tiny or cpu
    args.budget = args.budget or (1000 if cpu else sum(BUDGETS.values()))
    scale = 5 if cpu else 1  # a small shared CPU
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))  # data and compiled code: never in `out`
    if cpu:
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    report = {"mode": ("cpu" if cpu else "cuda") + (", tiny" if tiny else ", full size"), "budget_s": args.budget,
              "started": datetime.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:], "parts": {},
              "_start": time.time()}
    deadline = time.time() + args.budget
    for name in args.parts.split(",") if args.parts else PARTS:
        left = deadline - time.time()
        budget = min(BUDGETS[name] * scale, left)
        entry = report["parts"][name] = {"status": "running", "budget": budget, "seconds": 0.0}
        if budget < MIN_PART_SECONDS:
            entry.update(status="skipped", error=f"{left:.0f} s of the total budget left")
            continue
        part = Part(name, budget, work / name, cpu, tiny)
        part.work.mkdir(parents=True, exist_ok=True)
        entry["result"] = part.result
        print(f"gpu_check: {name} (budget {budget:.0f} s)", flush=True)
        try:
            with alarm(budget + 5):
                PARTS[name](part)
            entry["status"] = "ok"
        except PartTimeout as err:
            entry.update(status="timeout", error=str(err))
        except Exception:
            entry.update(status="error", error=traceback.format_exc()[-3000:])
        entry["seconds"] = round(time.time() - part.started, 1)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(f"gpu_check: {name}: {entry['status']} in {entry['seconds']:.0f} s", flush=True)
        report["data_bound"] = data_bound(report["parts"])
        write_report(report, out)
    shutil.rmtree(work, ignore_errors=True)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_check"),
                   help="folder for the report (gpu_check.md, gpu_check.json) only; default: $OUT, else /tmp/gpu_check")
    p.add_argument("--cpu", action="store_true", help="run every part on the CPU at tiny size (auto without CUDA)")
    p.add_argument("--tiny", action="store_true", help="tiny models and data on the GPU too (a quick rehearsal)")
    p.add_argument("--budget", type=float, default=None, help="seconds for all parts (175; --cpu: 1000)")
    p.add_argument("--parts", default="", help=f"comma-separated subset of {', '.join(PARTS)}")
    return p


if __name__ == "__main__":
    final = main(get_args_parser().parse_args())
    print("\n".join(f"{name}: {p['status']}" for name, p in final["parts"].items()))
