"""Speed, memory and FLOPs of the full-size fine-tune models, ours side by side with an original-style baseline.

The baseline is `tests/spec_reference.py`: an independent transcription of the original code's forward
(explicit softmax attention, per-sample CA motion loop, cloned in-place writes, MKL matmuls) with the same
parameters. Each measurement runs in its own process so that peak RSS is that configuration's alone, and the
baseline and our variants take turns, round after round, so that a busy machine slows all of them alike: every
figure is the median [min-max] over the rounds, the speed-up that of the per-round ratios.

Variants of ours: `cl` stores the patch embedding's Conv3d and the CA branch's Conv2d weights (and the input clip)
channels-last (`channels_last_3d` / `channels_last`), the measurement that decides whether the models use it;
`onednn` / `mkl` force the float32 CPU matmul kernel that `layers.ONEDNN_LINEAR` does not pick on this processor.

    python benchmarks/bench_model.py                 # CPU: batch 1 and 8, eval and train step, both models
    python benchmarks/bench_model.py --batch 1 --rounds 2   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from functools import partial
from typing import NamedTuple

import numpy as np
import timm
import torch
from common import ROOT
from torch.utils.flop_counter import FlopCounterMode

import layers
import modeling_finetune  # noqa: F401  (registers the models)
import utils

MODELS = {"MAE-DFER": ("maedfer_ft_base", None), "CA add": ("ca_add_ft_base", "add")}
KWARGS = dict(num_classes=7, all_frames=16, tubelet_size=2, drop_path_rate=0.1, use_mean_pooling=True,
              init_scale=0.001, depth=16, attn_type="local_global", lg_region_size=[2, 5, 10],
              lg_classify_token_type="region")
# The original code on the 2-core reference machine, batch 1, fp32, 2 threads, for context only.
ORIGINAL_REPORTED = {("MAE-DFER", "eval"): 0.539, ("CA add", "eval"): 0.609,
                     ("MAE-DFER", "train"): 1.665, ("CA add", "train"): 1.904}


def build(impl: str, fusion: str | None) -> torch.nn.Module:
    if impl == "ours":
        return timm.create_model("vit_base_dim512_no_depth_patch16_160", fusion=fusion, **KWARGS)
    from spec_reference import build_reference

    return build_reference(img_size=160, patch_size=16, embed_dim=512, num_heads=8, mlp_ratio=4, qkv_bias=True,
                           norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), fusion=fusion,
                           **KWARGS)


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Conv3d weights to `channels_last_3d`, Conv2d weights to `channels_last`, in place (the rest is unchanged)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last_3d)
        elif isinstance(module, torch.nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
    return model


class Variant(NamedTuple):
    amp: str = "fp32"
    compile: bool = False
    channels_last: bool = False
    onednn: bool | None = None  # the float32 CPU matmul kernel: None = layers.ONEDNN_LINEAR's choice

    @property
    def name(self) -> str:
        kernel = "" if self.onednn is None else " onednn" if self.onednn else " mkl"
        return self.amp + (" compile" if self.compile else "") + (" cl" if self.channels_last else "") + kernel


def measure(impl: str, model_name: str, mode: str, batch: int, device: str, variant: list, repeats: int) -> dict:
    """Time one configuration in this process; returns the median seconds per step and the peak memory."""
    amp, compile_, channels_last, onednn = Variant(*variant)
    if onednn is not None:
        layers.ONEDNN_LINEAR = onednn
    torch.manual_seed(0)
    fusion = MODELS[model_name][1]
    model = build(impl, fusion).to(device)
    model.train(mode == "train")
    x = torch.randn(batch, 3, 16, 160, 160, device=device)
    if channels_last:
        model = to_channels_last(model)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    if compile_:
        model = torch.compile(model)
    target = torch.randint(0, 7, (batch,), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=amp == "bf16")

    def step():
        if mode == "eval":
            with torch.inference_mode(), autocast:
                return model(x)
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        return loss

    step()  # warm-up (and compilation)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return dict(seconds=float(np.median(times)), peak_bytes=peak)


def count_gflops(model_name: str) -> float:
    model = build("ours", MODELS[model_name][1]).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 16, 160, 160))
    return counter.get_total_flops() / 1e9


def matmul_rates() -> dict[str, float]:
    """GFLOP/s of a float32 GEMM shaped like the MLP: torch.mm (MKL) and oneDNN, the two kernels in play."""
    from layers import _ONEDNN, _onednn_matmul

    a, w = torch.randn(6464, 512), torch.randn(2048, 512)
    kernels = {"torch.mm": lambda: a @ w.t()}
    if _ONEDNN:
        kernels["oneDNN"] = lambda: _onednn_matmul(a, w)
    rates = {}
    for name, fn in kernels.items():
        fn()
        start = time.perf_counter()
        for _ in range(10):
            fn()
        rates[name] = 2 * 6464 * 512 * 2048 * 10 / (time.perf_counter() - start) / 1e9
    return rates


def run_child(args: argparse.Namespace, impl: str, model_name: str, mode: str, batch: int, variant: Variant) -> dict:
    config = dict(impl=impl, model_name=model_name, mode=mode, batch=batch, device=args.device, variant=variant,
                  repeats=args.repeats)
    cmd = [sys.executable, __file__, "--child", json.dumps(config), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.child:
        utils.keep_freed_memory()  # as the entry scripts do
        print(json.dumps(measure(**json.loads(args.child))))
        return
    from common import machine, spread

    expected = json.loads((ROOT / "tests" / "data" / "keys" / "flops.json").read_text())
    rates = matmul_rates()
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads; float32 GEMM rate: "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items()))
    variants = [Variant(), Variant(channels_last=True)]
    if args.device == "cpu" and layers._ONEDNN:
        variants.append(Variant(onednn=not layers.ONEDNN_LINEAR))
    if args.device == "cuda":
        variants += [Variant("bf16"), Variant("bf16", channels_last=True), Variant("bf16", compile=True)]
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.2f}; {args.rounds} rounds, each "
          f"the median of {args.repeats} timed steps after one warm-up")
    header = (f"{'model':9} {'mode':5} {'batch':>5} {'variant':12} {'ours s/clip':>21} {'baseline s/clip':>21} "
              f"{'speed-up':>19} {'peak GiB':>8} {'mem ratio':>9} {'of GEMM':>7}")
    for model_name in args.models:
        key = MODELS[model_name][0]
        gflops = count_gflops(model_name)
        reference = expected[key]["flops_1clip"]["gflops"]
        print(f"\n{model_name}: {gflops:.3f} GFLOPs per clip (FlopCounterMode); original {reference:.3f} "
              f"({100 * (gflops / reference - 1):+.2f}%)")
        print(header)
        for mode in args.modes:
            for batch in args.batch:
                base, ours = [], {variant: [] for variant in variants}
                for _ in range(args.rounds):
                    base.append(run_child(args, "reference", model_name, mode, batch, Variant()))
                    for variant in variants:
                        ours[variant].append(run_child(args, "ours", model_name, mode, batch, variant))
                base_s = [b["seconds"] / batch for b in base]
                for variant, runs in ours.items():
                    per_clip = [r["seconds"] / batch for r in runs]
                    ratios = [b["seconds"] / r["seconds"] for b, r in zip(base, runs)]
                    peak = max(r["peak_bytes"] for r in runs)
                    flops = gflops * (3 if mode == "train" else 1)
                    share = 100 * flops / float(np.median(per_clip)) / max(rates.values())
                    print(f"{model_name:9} {mode:5} {batch:5} {variant.name:12} {spread(per_clip, 3):>21} "
                          f"{spread(base_s, 3):>21} {spread(ratios, 2) + 'x':>19} {peak / 2**30:8.2f} "
                          f"{peak / max(b['peak_bytes'] for b in base):9.2f} {share:6.0f}%")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    print("speed-up and mem ratio: ours against the original-style baseline, measured now, same process setup; "
          f"cl = channels_last; ours' float32 CPU matmuls: {'oneDNN' if layers.ONEDNN_LINEAR else 'MKL'} "
          f"({layers.cpu_vendor() or 'unknown vendor'}), onednn / mkl: the other kernel forced.")
    print("of GEMM: achieved FLOP rate (train = 3x forward FLOPs) as a share of the faster GEMM rate above.")
    print("Original code as reported on the 2-core reference machine (batch 1): "
          + ", ".join(f"{m} {mode} {s:.3f} s" for (m, mode), s in ORIGINAL_REPORTED.items()))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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
