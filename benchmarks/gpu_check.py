"""The prepared GPU check: one run of at most 5 minutes on one GPU (16 cores), one report.

    bash benchmarks/gpu_check.sh OUT_DIR             # on the GPU machine: carried wheels, `gpu` tests, this script
    python benchmarks/gpu_check.py --out OUT_DIR     # the same without the wheels
    python benchmarks/gpu_check.py --cpu --out DIR   # the CPU-able parts at tiny size (auto without CUDA; a slow test)

Writes OUT_DIR/gpu_check.md and OUT_DIR/gpu_check.json (rewritten after every part, so a killed run leaves what it
had). Parts, each its own section with a time budget; an error or a timeout is recorded and the next part runs:

1. env: versions, the device, native bf16, NCCL, /dev/shm, a measured bf16 matmul rate;
2. finetune_steps: the full-size fine-tune model (vit_base_dim512_no_depth_patch16_160, depth 16, regions 2 5 10,
   region pooling; fusion none and add) at batch 32: train steps in bf16 eager, fp16 + GradScaler, bf16 compiled
   and bf16 eager with the convolutions channels-last (bench_model.to_channels_last): clips/s, MFU (FLOPs of a
   step from FlopCounterMode; peak from PEAK_TFLOPS by device name) and host syncs per step
   (torch.cuda.set_sync_debug_mode("warn"), counted by call site);
3. data_path: benchmarks/bench_data.py's GPU rows (loader with 16 workers feeding the GPU in both --augment_on
   modes, batched decode_jpeg on the GPU against OpenCV, DeviceAugment and resizing on the GPU); the report's
   data_bound line sets the loader's clips/s against the fastest train step's;
4. eval_compile: benchmarks/bench_compile.py, compiled evaluation with static shapes and the last batch padded
   against a dynamic batch, and the graphs each compiles;
5. pretrain_step: the same as 2 for pretrain_videomae_base_dim512_no_depth_patch16_160 (part-window mask 0.9);
6. nccl_one_rank: a 1-rank NCCL group (made by tests/fault_injection.py) in which both scripts' tiny demos run their
   real epoch-end reductions and gathers, every collective checked by tests/collective_guard.py;
7. two_process_demos: 2 processes on the one GPU (NCCL refuses two ranks on one device: gloo with CUDA tensors) run
   the fine-tuning demo with --amp fp16 --compile --update_freq 2 --fusion add, and the pretraining demo;
8. checkpoint_cpu_gpu: a checkpoint trained and saved on the GPU, tested on the CPU and on the GPU (bf16 and fp32),
   the test probabilities compared.

With --cpu every part runs on the CPU at tiny size (nothing compiled but eval_compile's static path, gloo instead
of NCCL with the NCCL device rules checked by the guard, bf16 autocast standing in for the GPU's precision): what
the test suite runs.

Preconditions: on the GPU machine `python3` (3.12) has torch, timm, einops, OpenCV and pandas but neither decord
(pretraining reads videos with it) nor tensorboardX (both entry scripts import it): gpu_check.sh installs their
wheels from .whl/ (its header gives the one command that fetches them) and runs the tests marked `gpu` first.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import functools
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

import torch
import torch.nn.functional as F
from common import FT_FULL, FT_TINY, PEAK_TFLOPS, PT_FULL, PT_TINY, ROOT, sync

# Seconds per part on one GPU: 300 in all, so that the check, the machine's start and a rerun fit in 15 minutes.
BUDGETS = dict(env=10, finetune_steps=85, data_path=30, eval_compile=55, pretrain_step=25, nccl_one_rank=30,
               two_process_demos=40, checkpoint_cpu_gpu=25)
MIN_PART_SECONDS = 10
MIN_VARIANT_SECONDS = 12  # a row starts only with this much of its part's budget left


class PartTimeout(BaseException):
    """A part ran past its budget. A BaseException: torch.compile wraps the Exceptions raised inside it (as a
    Dynamo or Inductor error), which would turn the part's timeout into one row's error."""


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise PartTimeout in this (main) thread after `seconds` (between Python bytecodes: a kernel that hangs is
    not interrupted, the subprocess parts have their own timeouts)."""
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
    """An exception inside becomes the row's "error" (the row stays, the part goes on); a part's timeout is recorded
    and raised on."""
    try:
        yield
    except PartTimeout:
        row["error"] = "part budget reached"
        raise
    except Exception as err:  # PartTimeout is not one: the part stops
        row["error"] = f"{type(err).__name__}: {str(err)[:300]}"


def peak_tflops() -> tuple[str, float] | tuple[None, None]:
    if not torch.cuda.is_available():
        return None, None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_TFLOPS:
        if key in name:
            return key, float(tflops)
    return None, None


def count_syncs(step, device: torch.device) -> dict:
    """Host syncs of one call of `step`: CUDA's sync debug mode warns at each; counted by the warning's location."""
    if device.type != "cuda":
        return {"per_step": None, "sites": {}, "note": "CUDA only"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                    if "synchronizing CUDA operation" in str(w.message))
    return {"per_step": sum(sites.values()), "sites": dict(sites.most_common(8))}


def time_steps(step, device: torch.device, warmup: int, steps: int, part: Part) -> dict:
    """First call (compilation included), then `warmup` more, then `steps` timed ones (stops early near the budget)."""
    start = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    done, start = 0, time.perf_counter()
    while done < steps and (done < 2 or part.left() > 15):
        step()
        done += 1
    sync(device)
    seconds = (time.perf_counter() - start) / done
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"first_step_s": round(first, 3), "step_ms": round(1000 * seconds, 2), "timed_steps": done,
            "peak_gib": None if peak is None else round(peak, 2)}


def step_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


@functools.cache
def measured_matmul_tflops() -> float | None:
    """The bf16 rate of a large matrix product on this GPU (random data; ten timed after three warm-ups)."""
    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return round(10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12, 1)


def mfu(flops: float | None, seconds: float, peak: float | None) -> float | None:
    return None if not flops or not peak else round(100 * flops / seconds / (peak * 1e12), 1)


# --------------------------------------------------------------------------------------------------------------
# 1. environment

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
             device_count=torch.cuda.device_count(), cudnn=torch.backends.cudnn.version())
    try:
        r["bf16_native"] = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        r["bf16_native"] = torch.cuda.is_bf16_supported()
    with contextlib.suppress(Exception):
        r["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    key, peak = peak_tflops()
    r["peak_tflops_bf16_dense"] = peak
    r["peak_from_table"] = key
    with contextlib.suppress(Exception):
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        r["nvidia_smi"] = smi.stdout.strip()
    r["measured_bf16_matmul_tflops"] = measured_matmul_tflops()


# --------------------------------------------------------------------------------------------------------------
# 2, 5. training steps of the full-size models

def finetune_step_fn(model, cfg: dict, device: torch.device, amp: str, compiled: bool, channels_last: bool = False):
    from bench_model import to_channels_last
    from timm.optim import create_optimizer_v2

    x = torch.randn(cfg["batch"], 3, cfg["frames"], cfg["img"], cfg["img"], device=device)
    if channels_last:  # the patch embedding's and the CA branch's convolutions (bench_model.py)
        model = to_channels_last(model)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    forward = torch.compile(model) if compiled else model
    y = torch.randint(0, cfg["classes"], (cfg["batch"],), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def step():
        with torch.autocast(device.type, dtype=dtype):
            loss = F.cross_entropy(forward(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def part_finetune_steps(part: Part) -> None:
    import timm

    import modeling_finetune  # noqa: F401  (registers the models)

    cfg = FT_TINY if part.tiny else FT_FULL
    device = part.device
    _, peak = peak_tflops()
    # (amp, compiled, channels_last): the compiled ones late (their compilation takes most of the budget), the
    # channels_last decision rows last
    variants = [("bf16", False, False), ("fp16", False, False)]
    variants += ([] if part.cpu else [("bf16", True, False)]) + [("bf16", False, True)]
    rows = part.result.setdefault("rows", [])
    part.result.update(model=cfg["model"], batch=cfg["batch"], input=f"{cfg['frames']}x{cfg['img']}^2",
                       peak_tflops=peak)
    if part.cpu:
        part.result["compile"] = "skipped on the CPU (timed on CUDA only)"
    flops = {}
    for amp, compiled, channels_last in variants:
        for fusion in (None, "add"):
            row = {"fusion": fusion or "none", "variant": amp + (" compiled" if compiled else "") +
                   (" channels_last" if channels_last else "") + (" + GradScaler" if amp == "fp16" else "")}
            rows.append(row)
            if part.left() < MIN_VARIANT_SECONDS * (3 if compiled else 1):
                row["error"] = f"skipped: {part.left():.0f} s of the part's budget left"
                continue
            try:
                with recording_error(row):
                    torch.manual_seed(0)
                    model = timm.create_model(cfg["model"], num_classes=cfg["classes"], fusion=fusion,
                                              **cfg["kwargs"]).to(device).train()
                    step = finetune_step_fn(model, cfg, device, amp, compiled, channels_last)
                    if fusion not in flops:
                        step()  # FLOPs after one warm-up step, on the eager model
                        flops[fusion] = step_flops(step)
                        part.result[f"gflops_per_step_{fusion or 'none'}"] = round(flops[fusion] / 1e9, 1)
                    row.update(time_steps(step, device, warmup=1 if part.tiny else 2, steps=3 if part.tiny else 10,
                                          part=part))
                    row["clips_per_s"] = round(cfg["batch"] / (row["step_ms"] / 1000), 1)
                    row["mfu_pct"] = mfu(flops[fusion], row["step_ms"] / 1000, peak)
                    row["of_matmul_pct"] = mfu(flops[fusion], row["step_ms"] / 1000, measured_matmul_tflops())
                    syncs = count_syncs(step, device)
                    row["syncs_per_step"], row["sync_sites"] = syncs["per_step"], syncs["sites"]
            finally:
                model = step = None
                if compiled:
                    torch._dynamo.reset()
                if device.type == "cuda":
                    torch.cuda.empty_cache()


def part_pretrain_step(part: Part) -> None:
    import timm

    import modeling_pretrain  # noqa: F401  (registers the models)
    from masking_generator import TubeWindowMaskingGenerator

    cfg = PT_TINY if part.tiny else PT_FULL
    device = part.device
    _, peak = peak_tflops()
    torch.manual_seed(0)
    model = timm.create_model(cfg["model"], num_frames=cfg["frames"], **cfg["kwargs"]).to(device).train()
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)
    grid = model.encoder.grid_size
    masks = TubeWindowMaskingGenerator(grid, cfg["mask_ratio"], cfg["window"])
    mask = torch.stack([torch.from_numpy(masks()) for _ in range(cfg["batch"])]).bool()
    num_visible = int((~mask[0]).sum())  # counted on the host, as the training loop does: no sync in the step
    mask = mask.to(device)
    x = torch.randn(cfg["batch"], 3, cfg["frames"], cfg["img"], cfg["img"], device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            pred = model(x, mask, num_visible)
        F.mse_loss(pred.float(), torch.zeros_like(pred, dtype=torch.float32)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    part.result.update(model=cfg["model"], batch=cfg["batch"], mask=f"part window {cfg['mask_ratio']}",
                       variant="bf16 eager")
    step()
    flops = step_flops(step)
    part.result["gflops_per_step"] = round(flops / 1e9, 1)
    part.result.update(time_steps(step, device, warmup=1, steps=3 if part.tiny else 8, part=part))
    part.result["clips_per_s"] = round(cfg["batch"] / (part.result["step_ms"] / 1000), 1)
    part.result["mfu_pct"] = mfu(flops, part.result["step_ms"] / 1000, peak)
    part.result["of_matmul_pct"] = mfu(flops, part.result["step_ms"] / 1000, measured_matmul_tflops())
    syncs = count_syncs(step, device)
    part.result["syncs_per_step"], part.result["sync_sites"] = syncs["per_step"], syncs["sites"]


# --------------------------------------------------------------------------------------------------------------
# 6-8. the entry scripts

def demo_data(part: Part) -> tuple[Path, Path]:
    """Demo clips and videos shared by the script parts (generated once, in the run's work folder)."""
    from demo_data import make_demo_dataset, make_demo_videos

    base = part.work.parent / "data"
    size = 32 if part.tiny else 64
    clips = make_demo_dataset(base / "clips", train_per_class=4 if part.tiny else 32,
                              test_per_class=2 if part.tiny else 4, num_frames=16, size=size, seed=3)
    videos = make_demo_videos(base / "videos", per_class=2 if part.tiny else 8, num_frames=16, size=size)
    return clips, videos


def finetune_flags(part: Part, clips: Path, out: Path, *extra: str) -> list[str]:
    flags = ["--demo", "--data_path", str(clips), "--data_root", str(clips), "--output_dir", str(out),
             "--num_workers", "0" if part.cpu else "2", "--device", part.device.type, "--epochs", "1",
             "--warmup_epochs", "0", "--no-disable_eval_during_finetuning"]
    if part.tiny:
        flags += ["--input_size", "32", "--short_side_size", "32", "--depth", "1", "--lg_region_size", "2", "1", "2",
                  "--batch_size", "2"]
    return [*flags, *extra]


def pretrain_flags(part: Part, videos: Path, out: Path, *extra: str) -> list[str]:
    flags = ["--demo", "--data_path", str(videos / "info_clean.csv"), "--data_root", str(videos),
             "--output_dir", str(out), "--num_workers", "0" if part.cpu else "2", "--device", part.device.type,
             "--epochs", "1", "--warmup_epochs", "0", "--save_recon", "0"]
    if part.tiny:
        flags += ["--input_size", "32", "--lg_region_size", "2", "1", "2", "--part_win_size", "2", "1", "2",
                  "--mask_ratio", "0.5", "--encoder_depth", "1", "--decoder_depth", "1", "--batch_size", "2"]
    else:
        flags += ["--batch_size", "4"]
    return [*flags, *extra]


def last_error(text: str) -> str | None:
    """The last line of a traceback-looking output that names an exception."""
    lines = [line.strip() for line in text.splitlines()
             if ("Error" in line or "Exception" in line) and "ChildFailedError" not in line and ":" in line]
    return lines[-1][:400] if lines else None


def run_script(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> dict:
    """One process (its own session, killed with its children after `timeout`); its output goes to `log`. Without
    CUDA it gets one thread (OMP_NUM_THREADS=1, as torchrun's workers: spinning threads on a shared CPU are slow)."""
    start = time.time()
    from fault_injection import die_with_parent

    env = {**({} if torch.cuda.is_available() else {"OMP_NUM_THREADS": "1"}), **(env or {})}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent, env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
        try:
            code = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            code = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    text = log.read_text(errors="replace")
    return {"exit": code if code is not None else f"killed after {timeout:.0f} s", "seconds": round(time.time() - start,
            1), "error": last_error(text) if code != 0 else None}


def guard_summary(report_path: Path) -> dict:
    """What tests/fault_injection.py recorded: the collectives (and what NCCL would refuse), steps, host syncs."""
    if not report_path.is_file():
        return {"report": "missing"}
    report = json.loads(report_path.read_text())
    guard = report.get("collectives") or {}
    steps, syncs = report.get("optimizer_steps"), report.get("syncs", {})
    per_step = round(syncs["total"] / (steps - 1), 2) if syncs.get("total") is not None and (steps or 0) > 1 else None
    return {"collectives": len(guard.get("calls", [])), "violations": guard.get("violations", []),
            "notes": guard.get("notes", []), "optimizer_steps": steps,
            # counted from the first optimizer step on, validation and test included
            "syncs_total": syncs.get("total"), "syncs_per_optimizer_step": per_step,
            "sync_sites": syncs.get("sites")}


def part_nccl_one_rank(part: Part) -> None:
    clips, videos = demo_data(part)
    backend = "gloo" if part.cpu else "nccl"
    part.result["group"] = f"1 rank, {backend}" + (" (NCCL's device rules checked by the guard)" if part.cpu else "")
    wrapper = str(ROOT / "tests" / "support" / "fault_injection.py")
    runs = (("finetuning", "run_class_finetuning.py", finetune_flags), ("pretraining", "run_mae_pretraining.py",
                                                                       pretrain_flags))
    for i, (name, script, flags) in enumerate(runs):
        work = part.work / name
        work.mkdir(parents=True, exist_ok=True)
        data = clips if name == "finetuning" else videos
        cmd = [sys.executable, wrapper, script, "--single_process_group", backend, "--pretend_backend", "nccl",
               "--report_dir", str(work / "report"), *([] if part.cpu else ["--count_syncs"]), "--",
               *flags(part, data, work / "out")]
        outcome = run_script(cmd, work / "output.txt", timeout=part.left() / (len(runs) - i) - 2)
        part.result[name] = {**outcome, **guard_summary(work / "report" / "rank0.json")}


def part_two_process_demos(part: Part) -> None:
    from fault_injection import launch

    clips, videos = demo_data(part)
    env = {"OMP_NUM_THREADS": "1" if part.cpu else "4"}
    wrapper = ["--backend", "gloo"]  # no sync counting here: compilation syncs would swamp the loop's (nccl_one_rank)
    ft_extra = ["--amp", "fp16", "--update_freq", "2", "--fusion", "add"]
    ft_extra += [] if part.cpu else ["--compile", "--batch_size", "8"]
    part.result["setup"] = "2 torchrun nodes x 1 process, gloo" + ("" if part.cpu else " with CUDA tensors on cuda:0")
    runs = (("finetuning", "run_class_finetuning.py", finetune_flags(part, clips, part.work / "ft" / "out", *ft_extra)),
            ("pretraining", "run_mae_pretraining.py", pretrain_flags(part, videos, part.work / "pt" / "out")))
    for i, (name, script, flags) in enumerate(runs):
        work = part.work / ("ft" if name == "finetuning" else "pt")
        result = launch(script, flags, work, timeout=part.left() * (0.7 if i == 0 else 1) - 3, wrapper=wrapper,
                        env=env)
        digests = {(r or {}).get("param_digest") for r in result.reports}
        entry = {"flags": " ".join(f for f in flags if not f.startswith("/")), "exit": result.returncodes,
                 "timed_out": result.timed_out, "seconds": round(result.seconds, 1),
                 "ranks_identical": len(digests) == 1 and None not in digests,
                 "optimizer_steps": [(r or {}).get("optimizer_steps") for r in result.reports],
                 "syncs_total": [(r or {}).get("syncs", {}).get("total") for r in result.reports],
                 "errors": [last_error(out) for out in result.outputs if last_error(out)]}
        metrics = work / "out" / "metrics.json"
        if metrics.is_file():
            entry["uar_war"] = [json.loads(metrics.read_text())[k] for k in ("uar", "war")]
        part.result[name] = entry


def read_probs(pred_csv: Path) -> dict[str, list[float]]:
    with open(pred_csv) as f:
        rows = list(csv.DictReader(f))
    return {row["id"]: [float(row[c]) for c in list(row)[3:]] for row in rows}


def part_checkpoint_cpu_gpu(part: Part) -> None:
    clips, _ = demo_data(part)
    script = str(ROOT / "run_class_finetuning.py")
    train = part.work / "train"
    part.result["train"] = run_script([sys.executable, script, *finetune_flags(part, clips, train)],
                                      part.work / "train.txt", timeout=part.left() / 2)
    checkpoint = train / "checkpoint-0.pth"
    if not checkpoint.is_file():
        raise RuntimeError(f"training wrote no {checkpoint.name}: {part.result['train']['error']}")
    others = [("cpu_bf16", "cpu", "bf16")] if part.cpu else [("gpu_default_amp", "cuda", None),
                                                             ("gpu_fp32", "cuda", "none")]
    evals = [("cpu_fp32", "cpu", "none"), *others]
    part.result["saved_on"] = part.device.type
    probs = {}
    for i, (name, device, amp) in enumerate(evals):
        out = part.work / name
        flags = [*finetune_flags(part, clips, out), "--device", device, "--eval", "--resume", str(checkpoint),
                 *(["--amp", amp] if amp else [])]
        part.result[name] = run_script([sys.executable, script, *flags], part.work / f"{name}.txt",
                                       timeout=part.left() / (len(evals) - i) - 1)
        if (out / "pred.csv").is_file():
            probs[name] = read_probs(out / "pred.csv")
    reference = probs.get("cpu_fp32")
    for name, other in probs.items():
        if name == "cpu_fp32" or reference is None:
            continue
        diffs = [abs(a - b) for clip, p in reference.items() for a, b in zip(p, other[clip])]
        agree = sum(max(range(len(p)), key=p.__getitem__) == max(range(len(p)), key=other[clip].__getitem__)
                    for clip, p in reference.items())
        part.result[f"{name}_vs_cpu_fp32"] = {"max_abs_prob_diff": max(diffs), "argmax_agreement":
                                              f"{agree}/{len(reference)}"}


# --------------------------------------------------------------------------------------------------------------
# 3-4. the fine-tuning data path feeding the device, compiled evaluation

def part_data_path(part: Part) -> None:
    """benchmarks/bench_data.py's GPU rows, in a process of its own: the loader with 16 workers feeding the device
    (both --augment_on modes), batched decode_jpeg on the device against OpenCV, DeviceAugment and resizing there."""
    rows = part.work / "rows.json"
    size = (["--workers", "2", "--batch", "4", "--clips", "4", "--frame_size", "48", "--short_side_size", "32",
             "--input_size", "32"] if part.tiny else
            ["--workers", str(min(16, os.cpu_count() or 1)), "--batch", "64", "--clips", "48"])
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_data.py"), "--sections", "--gpu_rows", "--device",
           part.device.type, "--repeats", "2", "--videos", "0", "--json", str(rows), *size]
    part.result.update(run_script(cmd, part.work / "output.txt", timeout=part.left() - 2,
                                  env={"OMP_NUM_THREADS": "1"}))
    if rows.is_file():
        part.result["rows"] = [{k: v for k, v in row.items() if k != "values"} for row in json.loads(rows.read_text())]


def part_eval_compile(part: Part) -> None:
    """benchmarks/bench_compile.py: evaluation eager, compiled with static shapes and the last batch padded (the
    scripts' --compile), with a dynamic batch, and with torch's automatic default: the first calls' seconds, ms per
    full / partial batch, and the graphs compiled for evaluation (1 = no recompile). Without the compiled training
    step first (its compilation would take the part's budget); a row is kept as soon as it is measured."""
    from bench_compile import VARIANTS, measure

    cfg = FT_TINY if part.tiny else FT_FULL
    batch, eval_batch = cfg["batch"], int(1.5 * cfg["batch"])
    partial = max(batch // 2 - 3, 1)
    variants = ("eager", "static + pad") if part.cpu else VARIANTS  # CPU: the scripts' path only (compile is slow)
    part.result.update(model=cfg["model"], eval_batch=eval_batch, partial=partial)
    rows = part.result["rows"] = []
    for variant in variants:
        row = {"variant": variant}
        rows.append(row)
        try:
            with recording_error(row):
                row.update(measure(variant, cfg, part.device, "bf16", batch, eval_batch, partial,
                                   steps=3 if part.tiny else 10, train_first=False))
        finally:
            torch._dynamo.reset()


def data_bound(parts: dict) -> dict | None:
    """Whether the fine-tuning step waits for data: the loader's clips/s (--augment_on device, the CUDA default)
    against the fastest train step's, from the data_path and finetune_steps parts."""
    loader = [r["median"] for r in parts.get("data_path", {}).get("result", {}).get("rows", [])
              if r["row"].startswith("loader") and r["row"].endswith("device")]
    steps = [r["clips_per_s"] for r in parts.get("finetune_steps", {}).get("result", {}).get("rows", [])
             if r.get("clips_per_s")]
    if not loader or not steps:
        return None
    return {"loader_clips_per_s": round(loader[0], 1), "fastest_step_clips_per_s": max(steps),
            "data_bound": loader[0] < max(steps)}


PARTS = {"env": part_env, "finetune_steps": part_finetune_steps, "data_path": part_data_path,
         "eval_compile": part_eval_compile, "pretrain_step": part_pretrain_step, "nccl_one_rank": part_nccl_one_rank,
         "two_process_demos": part_two_process_demos, "checkpoint_cpu_gpu": part_checkpoint_cpu_gpu}


# --------------------------------------------------------------------------------------------------------------
# report

def render_markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['mode']})", "", f"{report['started']}; {report['seconds']:.0f} s of a "
             f"{report['budget_s']:.0f} s budget.", "", f"Data-bound fine-tuning step: {report.get('data_bound')}", ""]
    for name, part in report["parts"].items():
        lines += [f"## {name}: {part['status']} ({part['seconds']:.0f} s of {part['budget']:.0f})", ""]
        if part.get("error"):
            lines += ["```", part["error"].rstrip(), "```", ""]
        result = dict(part.get("result", {}))
        rows = result.pop("rows", None)
        if rows:
            keys = list(dict.fromkeys(k for row in rows for k in row))
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in rows]
            lines.append("")
        lines += [f"- **{k}**: {_cell(v, 600)}" for k, v in result.items()]
        lines.append("")
    return "\n".join(lines)


def _cell(value, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


def write_report(report: dict, out: Path) -> None:
    report["seconds"] = time.time() - report["_start"]
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    (out / "gpu_check.json").write_text(json.dumps(public, indent=1, default=str))
    (out / "gpu_check.md").write_text(render_markdown(public))


def main(args: argparse.Namespace) -> dict:
    cpu = args.cpu or not torch.cuda.is_available()
    tiny = args.tiny or cpu
    args.budget = args.budget or (1150 if cpu else sum(BUDGETS.values()))
    args.budget_scale = args.budget_scale or (4 if cpu else 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))  # data, checkpoints, logs: never in `out`
    if cpu:
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    names = args.parts.split(",") if args.parts else list(PARTS)
    report = {"mode": ("cpu" if cpu else "cuda") + (", tiny" if tiny else ", full size"), "budget_s": args.budget,
              "started": datetime.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:], "parts": {},
              "_start": time.time()}
    deadline = time.time() + args.budget
    for name in names:
        left = deadline - time.time()
        budget = min(BUDGETS[name] * args.budget_scale, left)
        entry = report["parts"][name] = {"status": "running", "budget": budget, "seconds": 0.0}
        if budget < MIN_PART_SECONDS:
            entry.update(status="skipped", error=f"{left:.0f} s of the total budget left")
            continue
        part = Part(name, budget, work / name, cpu, tiny)
        part.work.mkdir(parents=True, exist_ok=True)
        entry["result"] = part.result
        print(f"gpu_check: {name} (budget {budget:.0f} s)", flush=True)
        try:
            with alarm(budget + 5):  # the subprocess parts stop their children within the budget themselves
                PARTS[name](part)
            entry["status"] = "ok"
        except PartTimeout as err:
            entry.update(status="timeout", error=str(err))
        except Exception:
            entry.update(status="error", error=traceback.format_exc()[-3000:])
        entry["seconds"] = time.time() - part.started
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(f"gpu_check: {name}: {entry['status']} in {entry['seconds']:.0f} s", flush=True)
        report["data_bound"] = data_bound(report["parts"])
        write_report(report, out)
    write_report(report, out)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_check"),
                   help="folder for the report, gpu_check.md and gpu_check.json, only (default: $OUT, else "
                        "/tmp/gpu_check); the parts work in a temporary folder under /tmp")
    p.add_argument("--cpu", action="store_true", help="run every part on the CPU at tiny size (auto without CUDA)")
    p.add_argument("--tiny", action="store_true", help="tiny models and data on the GPU too (a quick rehearsal)")
    p.add_argument("--budget", type=float, default=None, help="seconds for all parts together (300; --cpu: 1150)")
    p.add_argument("--budget_scale", type=float, default=None,
                   help="multiply every part's budget (1; --cpu: 4, for a small shared CPU)")
    p.add_argument("--parts", default="", help=f"comma-separated subset of {', '.join(PARTS)}")
    return p


if __name__ == "__main__":
    final = main(get_args_parser().parse_args())
    print("\n".join(f"{name}: {p['status']}" for name, p in final["parts"].items()))
