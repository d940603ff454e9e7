"""Speed, memory and FLOPs of the full-size fine-tune models on the CPU, ours against an original-style baseline.

The baseline is `tests/support/spec_reference.py`, an independent transcription of the original forward. Each
measurement runs in a fresh process (its peak memory is its own); baseline and variants take turns round after
round: median [min-max] over the rounds, the speed-up that of the per-round ratios. Variants: `cl` (convolutions and
clip channels-last), `onednn` / `mkl` (the float32 matmul kernel `layers.ONEDNN_LINEAR` does not pick here).

    python benchmarks/bench_model.py                        # batch 1 and 8, eval and train step, both models
    python benchmarks/bench_model.py --batch 1 --rounds 2   # quicker
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from functools import partial

import numpy as np
import timm
import torch
from common import FT_FULL, ROOT, gflops, peak_memory_gib, report, spread, timed

import layers
import modeling_finetune  # noqa: F401  (registers the models)
import utils

MODELS = {"MAE-DFER": ("maedfer_ft_base", None), "CA add": ("ca_add_ft_base", "add")}


def build(impl: str, fusion: str | None) -> torch.nn.Module:
    if impl == "ours":
        return timm.create_model(FT_FULL["model"], num_classes=FT_FULL["classes"], fusion=fusion, **FT_FULL["kwargs"])
    from spec_reference import build_reference

    return build_reference(img_size=160, patch_size=16, embed_dim=512, num_heads=8, mlp_ratio=4, qkv_bias=True,
                           norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), fusion=fusion,
                           num_classes=FT_FULL["classes"], **FT_FULL["kwargs"])


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Conv3d weights to `channels_last_3d`, Conv2d weights to `channels_last`, in place (the rest is unchanged)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last_3d)
        elif isinstance(module, torch.nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
    return model


def measure(impl: str, model_name: str, mode: str, batch: int, repeats: int, channels_last: bool = False,
            onednn: bool | None = None) -> dict:
    """One configuration in this process: the median seconds of a step (eval: forward; train: forward and
    backward) after one warm-up, and the peak memory."""
    if onednn is not None:
        layers.ONEDNN_LINEAR = onednn
    torch.manual_seed(0)
    model = build(impl, MODELS[model_name][1]).train(mode == "train")
    x = torch.randn(batch, 3, FT_FULL["frames"], FT_FULL["img"], FT_FULL["img"])
    if channels_last:
        model, x = to_channels_last(model), x.contiguous(memory_format=torch.channels_last_3d)
    target = torch.randint(0, FT_FULL["classes"], (batch,))

    def step():
        if mode == "eval":
            with torch.inference_mode():
                return model(x)
        torch.nn.functional.cross_entropy(model(x), target).backward()

    return dict(seconds=float(np.median(timed(step, repeats=repeats))), peak_gib=peak_memory_gib("cpu"))


def in_child(args: argparse.Namespace, **config) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps({**config, "repeats": args.repeats}),
           "--threads", str(args.threads)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def model_rows(args: argparse.Namespace, model_name: str, mode: str, batch: int) -> list[dict]:
    """Ours (each variant) against the baseline, taking turns for --rounds rounds, each run in a fresh process."""
    variants = {"ours": {}, "ours cl": dict(channels_last=True)}
    if layers._ONEDNN:  # the kernel ONEDNN_LINEAR does not pick here
        variants["ours mkl" if layers.ONEDNN_LINEAR else "ours onednn"] = dict(onednn=not layers.ONEDNN_LINEAR)
    config = dict(model_name=model_name, mode=mode, batch=batch)
    base, ours = [], {name: [] for name in variants}
    for _ in range(args.rounds):
        base.append(in_child(args, impl="reference", **config))
        for name, options in variants.items():
            ours[name].append(in_child(args, impl="ours", **config, **options))
    return [dict(model=model_name, mode=mode, batch=batch, variant=name,
                 s_per_clip=spread([r["seconds"] / batch for r in runs]),
                 baseline_s_per_clip=spread([b["seconds"] / batch for b in base]),
                 speedup=spread([b["seconds"] / r["seconds"] for b, r in zip(base, runs)], 2),
                 peak_gib=max(r["peak_gib"] for r in runs),
                 mem_ratio=round(max(r["peak_gib"] for r in runs) / max(b["peak_gib"] for b in base), 2))
            for name, runs in ours.items()]


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.child:
        utils.keep_freed_memory()  # as the entry scripts do
        print(json.dumps(measure(**json.loads(args.child))))
        return
    expected = json.loads((ROOT / "tests" / "data" / "keys" / "flops.json").read_text())
    clip = torch.zeros(1, 3, FT_FULL["frames"], FT_FULL["img"], FT_FULL["img"])
    counted = {}
    for name in args.models:
        key, fusion = MODELS[name]
        model = build("ours", fusion).eval()
        with torch.no_grad():
            counted[name] = dict(ours=round(gflops(lambda m=model: m(clip)), 3),
                                 original=expected[key]["flops_1clip"]["gflops"])
    print(f"GFLOPs per clip (FlopCounterMode), ours and the original's: {counted}", flush=True)
    rows = [row for name in args.models for mode in args.modes for batch in args.batch
            for row in model_rows(args, name, mode, batch)]
    report("model", rows, threads=args.threads, gflops_per_clip=counted,
           float32_matmuls="oneDNN" if layers.ONEDNN_LINEAR else "MKL", cpu_vendor=layers.cpu_vendor())


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per process (their median is kept)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds in which the baseline and every variant take turns, each in a fresh process")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
