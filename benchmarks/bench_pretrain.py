"""Train step of the full-size pretraining model (encoder 16, decoder 4, 90 % part-window masking).

Prints seconds per clip, peak memory and the FLOPs of one forward (FlopCounterMode), against the original count.

    python benchmarks/bench_pretrain.py [--batch 1 4] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import timm
import torch
from common import ROOT
from torch.utils.flop_counter import FlopCounterMode

import modeling_pretrain  # noqa: F401  (registers the models)
import utils
from engine_pretrain import reconstruction_loss, reconstruction_targets
from masking_generator import build_masking_generator

KWARGS = dict(drop_path_rate=0.0, decoder_depth=4, encoder_depth=16, attn_type="local_global",
              lg_region_size=[2, 5, 10])


def step(model: torch.nn.Module, videos: torch.Tensor, masks: torch.Tensor) -> None:
    """One training step's compute: targets, forward, joint pixel + frame-difference loss, backward."""
    targets = reconstruction_targets(videos, masks, frame_diff_group_size=2)
    reconstruction_loss(model(videos, masks), targets).backward()


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    utils.keep_freed_memory()
    device = torch.device(args.device)
    model = timm.create_model("pretrain_videomae_base_dim512_no_depth_patch16_160", **KWARGS).to(device)
    np.random.seed(0)
    generator = build_masking_generator("part_window", (8, 10, 10), 0.9, (2, 5, 10))
    expected = json.loads((ROOT / "tests" / "data" / "keys" / "flops.json").read_text())
    expected = expected["maedfer_pt_base"]["flops_1clip_mask0.9"]["gflops"]

    clip = torch.randn(1, 3, 16, 160, 160, device=device)
    mask = torch.from_numpy(generator()).bool()[None].to(device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(clip, mask)
    gflops = counter.get_total_flops() / 1e9
    print(f"torch {torch.__version__}, {device}, {args.threads} threads; forward {gflops:.3f} GFLOPs per clip "
          f"(original {expected:.3f}, {100 * (gflops / expected - 1):+.2f}%)")
    print(f"{'batch':>5} {'s/clip':>8} {'clips/s':>8} {'peak GiB':>8}")
    for batch in args.batch:
        videos = torch.randn(batch, 3, 16, 160, 160, device=device)
        masks = torch.from_numpy(np.stack([generator() for _ in range(batch)])).bool().to(device)

        step(model, videos, masks)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            step(model, videos, masks)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        per_clip = min(times) / batch
        print(f"{batch:5d} {per_clip:8.3f} {1 / per_clip:8.2f} {peak / 2**30:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    main(parser.parse_args())
