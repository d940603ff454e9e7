"""Compiled evaluation without recompiles: static shapes with the last batch padded, against a dynamic batch.

As run_class_finetuning.py --compile does, a training step of the compiled model runs first (batch B, grad, train
mode). Then validation batches of the evaluation size E and a last partial batch P < E run through:
- eager: the plain module;
- static + pad (what the script does): `training.evaluation_model(compile=True)`, i.e. torch.compile(dynamic=False),
  the partial batch padded to E (`engine.padded_forward`);
- dynamic: torch.compile(dynamic=True), no padding;
- automatic: torch.compile() with torch's default (a new batch size recompiles, then the dimension turns dynamic).
For each: seconds of the first evaluation call (compilation included), of the partial batch's first call, ms per
full and per partial batch after that, and the graphs dynamo compiled for evaluation (one means no recompile).
The variants take turns over --rounds rounds; median [min-max].

    python benchmarks/bench_compile.py                          # CPU: the demo's model, B 16, E 24, P 7
    python benchmarks/bench_compile.py --device cuda --full     # the full-size model in bf16, B 32, E 48, P 13
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import timm
import torch
from common import FT_FULL, sync, write_result
from torch._dynamo.utils import counters

import engine
import modeling_finetune  # noqa: F401  (registers the models)
import training


def demo_config() -> dict:
    """The demo's model (run_class_finetuning.DEMO_DEFAULTS), in gpu_check.py's configuration format."""
    from run_class_finetuning import DEMO_DEFAULTS as d

    return dict(model=d["model"], img=d["input_size"], frames=d["num_frames"], classes=d["nb_classes"],
                kwargs=dict(depth=d["depth"], lg_region_size=d["lg_region_size"], img_size=d["input_size"],
                            lg_classify_token_type=d["lg_classify_token_type"], attn_type="local_global",
                            all_frames=d["num_frames"], tubelet_size=2, use_mean_pooling=True, init_scale=0.001))


VARIANTS = ("eager", "static + pad", "dynamic", "automatic")


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def measure(variant: str, cfg: dict, device: torch.device, amp: str, train_batch: int, eval_batch: int,
            partial: int, steps: int, train_first: bool = True) -> dict:
    """One variant, from a fresh dynamo state: the compiled training step (`train_first`), then evaluation; times
    and the graphs compiled for evaluation."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = timm.create_model(cfg["model"], num_classes=cfg["classes"], fusion="add", **cfg["kwargs"]).to(device)
    precision = engine.Precision(amp, None)
    clip = (3, cfg["frames"], cfg["img"], cfg["img"])
    if train_first and variant != "eager":  # the script's compiled training step comes first
        train = torch.compile(model)
        model.train()
        with precision.autocast(device):
            loss = train(torch.randn(train_batch, *clip, device=device)).float().logsumexp(1).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
    before = graphs()
    forward = {"eager": model, "static + pad": training.evaluation_model(model, compile=True),
               "dynamic": torch.compile(model, dynamic=True), "automatic": torch.compile(model)}[variant]
    pad_to = eval_batch if variant == "static + pad" else None
    full, last = torch.randn(eval_batch, *clip, device=device), torch.randn(partial, *clip, device=device)
    model.eval()

    def call(x: torch.Tensor) -> float:
        sync(device)
        start = time.perf_counter()
        with torch.no_grad(), precision.autocast(device):
            engine.padded_forward(forward, x, pad_to)
        sync(device)
        return time.perf_counter() - start

    first_full, first_partial = call(full), call(last)
    full_ms = 1000 * float(np.median([call(full) for _ in range(steps)]))
    partial_ms = 1000 * float(np.median([call(last) for _ in range(steps)]))
    return dict(first_full_s=first_full, first_partial_s=first_partial, full_ms=full_ms, partial_ms=partial_ms,
                clips_per_s=round(1000 * eval_batch / full_ms, 1),
                eval_graphs=graphs() - before)


def compile_rows(cfg: dict, device: torch.device, amp: str, train_batch: int, eval_batch: int, partial: int,
                 steps: int, rounds: int, variants: tuple[str, ...] = VARIANTS) -> list[dict]:
    """The variants, taking turns over `rounds`: median, min and max of each figure; graphs of the last round."""
    runs = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            runs[variant].append(measure(variant, cfg, device, amp, train_batch, eval_batch, partial, steps))
    rows = []
    for variant, results in runs.items():
        row = {"variant": variant, "eval_graphs": results[-1]["eval_graphs"]}
        for key in ("first_full_s", "first_partial_s", "full_ms", "partial_ms"):
            values = [r[key] for r in results]
            row[key] = [round(float(np.median(values)), 3), round(min(values), 3), round(max(values), 3)]
        row["clips_per_s"] = float(np.median([r["clips_per_s"] for r in results]))
        rows.append(row)
    return rows


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    cfg = FT_FULL if args.full else demo_config()
    amp = args.amp or ("bf16" if device.type == "cuda" else "none")
    batch = args.batch or (32 if args.full else 16)
    eval_batch, partial = args.eval_batch or int(1.5 * batch), args.partial or (13 if args.full else 7)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    print(f"{cfg['model']} ({cfg['kwargs']['depth']} blocks, {cfg['img']} px, fusion add) on {device}, amp {amp}; "
          f"train batch {batch}, evaluation batch {eval_batch}, last batch {partial}; "
          f"{args.rounds} rounds, median [min-max]; load average {os.getloadavg()[0]:.2f}")
    rows = compile_rows(cfg, device, amp, batch, eval_batch, partial, args.steps, args.rounds)
    print(f"{'variant':<13} {'1st full s':>22} {'1st partial s':>22} {'full ms':>24} {'partial ms':>24} "
          f"{'clips/s':>8} {'eval graphs':>11}")
    for r in rows:
        cells = [f"{m:.3f} [{lo:.3f}-{hi:.3f}]" for m, lo, hi in
                 (r["first_full_s"], r["first_partial_s"], r["full_ms"], r["partial_ms"])]
        print(f"{r['variant']:<13} {cells[0]:>22} {cells[1]:>22} {cells[2]:>24} {cells[3]:>24} "
              f"{r['clips_per_s']:>8} {r['eval_graphs']:>11}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"written: {write_result('bench_compile', rows)}")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--full", action="store_true", help="the full-size model (default: the demo's)")
    p.add_argument("--amp", default=None, choices=["none", "bf16", "fp16"], help="default: bf16 on CUDA, none on CPU")
    p.add_argument("--batch", type=int, default=None, help="training batch (16; --full 32)")
    p.add_argument("--eval_batch", type=int, default=None, help="evaluation batch (1.5 x --batch, as the script)")
    p.add_argument("--partial", type=int, default=None, help="the last batch's size (7; --full 13)")
    p.add_argument("--steps", type=int, default=5, help="timed calls of each shape per round (their median)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
