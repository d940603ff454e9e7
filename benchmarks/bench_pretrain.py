"""Train step of the full-size pretraining model (encoder 16, decoder 4, 90 % part-window masking).

Seconds per clip, clips/s and peak memory of forward, joint pixel + frame-difference loss, backward and AdamW step,
and the FLOPs of one forward (FlopCounterMode) against the original's count. The GPU check times the same step.

    python benchmarks/bench_pretrain.py [--batch 1 4] [--device cuda --amp bf16]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np
import timm
import torch
from common import PT_FULL, ROOT, gflops, peak_memory_gib, report, spread, timed
from timm.optim import create_optimizer_v2

import modeling_pretrain  # noqa: F401  (registers the models)
import utils
from engine_pretrain import reconstruction_loss, reconstruction_targets
from masking_generator import build_masking_generator


def train_step(cfg: dict, device: torch.device, *, batch: int, amp: str = "none") -> Callable[[], torch.Tensor]:
    """One training step of `cfg`'s model on random clips; the visible-token count is taken on the host, as the
    training loop does (no sync in the step)."""
    torch.manual_seed(0)
    np.random.seed(0)
    model = timm.create_model(cfg["model"], num_frames=cfg["frames"], **cfg["kwargs"]).to(device).train()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)
    masks = build_masking_generator("part_window", model.encoder.grid_size, cfg["mask_ratio"], cfg["part_win_size"])
    mask = torch.from_numpy(np.stack([masks() for _ in range(batch)])).bool()
    num_visible = int((~mask[0]).sum())
    mask = mask.to(device)
    videos = torch.randn(batch, 3, cfg["frames"], cfg["img"], cfg["img"], device=device)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            pred = model(videos, mask, num_visible)
        targets = reconstruction_targets(videos, mask, frame_diff_group_size=2, num_visible=num_visible)
        loss = reconstruction_loss(pred.float(), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def forward_gflops(cfg: dict) -> float:
    """FLOPs of one clip's forward, as the original's count."""
    model = timm.create_model(cfg["model"], num_frames=cfg["frames"], **cfg["kwargs"])
    mask = build_masking_generator("part_window", model.encoder.grid_size, cfg["mask_ratio"], cfg["part_win_size"])()
    clip = torch.randn(1, 3, cfg["frames"], cfg["img"], cfg["img"])
    with torch.no_grad():
        return gflops(lambda: model(clip, torch.from_numpy(mask).bool()[None]))


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    utils.keep_freed_memory()
    device = torch.device(args.device)
    expected = json.loads((ROOT / "tests" / "data" / "keys" / "flops.json").read_text())
    expected = expected["maedfer_pt_base"]["flops_1clip_mask0.9"]["gflops"]
    rows = []
    for batch in args.batch:
        per_clip = [s / batch for s in timed(train_step(PT_FULL, device, batch=batch, amp=args.amp), device,
                                             repeats=args.repeats)]
        rows.append(dict(batch=batch, s_per_clip=spread(per_clip), peak_gib=peak_memory_gib(device),
                         clips_per_s=round(1 / float(np.median(per_clip)), 2)))
    report("pretrain", rows, device=str(device), amp=args.amp, threads=args.threads,
           forward_gflops=round(forward_gflops(PT_FULL), 3), original_gflops=expected)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    main(parser.parse_args())
