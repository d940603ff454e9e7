"""Per-step schedules: learning rate (warm-up, then cosine) and weight decay (cosine), scaled to the global batch."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np


def cosine_scheduler(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0.0, warmup_steps: int = -1):
    """Per-step values: linear warm-up from start_warmup_value, then half a cosine from base to final value."""
    warmup_iters = warmup_steps if warmup_steps > 0 else warmup_epochs * niter_per_ep
    total = epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(max(total - warmup_iters, 0))
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
    # A run shorter than its warm-up ends part-way up the warm-up ramp.
    schedule = np.concatenate((warmup, cosine))[:total]
    return schedule


@dataclass(frozen=True)
class Schedule:
    """A run's per-step values: learning rate (warm-up from 0, then cosine) and weight decay (cosine)."""

    lr: np.ndarray
    weight_decay: np.ndarray
    steps_per_epoch: int
    peak_lr: float  # --lr scaled to the global batch (what the optimizer is created with)
    min_lr: float


def scale_lr(value: float, global_batch: int) -> float:
    """The originals' linear rule: flags give the rate per 256 clips of global batch."""
    return value * global_batch / 256


def build_schedule(args: argparse.Namespace, global_batch: int, steps_per_epoch: int) -> Schedule:
    """--lr and --min_lr scaled to the global batch, with --warmup_epochs / --warmup_steps and --weight_decay(_end)."""
    peak_lr, min_lr = scale_lr(args.lr, global_batch), scale_lr(args.min_lr, global_batch)
    lr = cosine_scheduler(peak_lr, min_lr, args.epochs, steps_per_epoch, args.warmup_epochs,
                          warmup_steps=args.warmup_steps)
    wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
    return Schedule(lr, cosine_scheduler(args.weight_decay, wd_end, args.epochs, steps_per_epoch), steps_per_epoch,
                    peak_lr, min_lr)
