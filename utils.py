"""Helpers the entry scripts share: the memory allocator, the LGI-Former flags as model keywords and the default
precision.

The process group lives in distributed.py, schedules in schedules.py, RNG states in rng.py, checkpoints in
checkpoint.py, the command lines in cli.py, and the training skeleton that uses them in training.py.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging

import torch

logger = logging.getLogger(__name__)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS.

    By default glibc serves blocks above a few MB with mmap and unmaps them on free, so every large activation
    of a forward/backward pass is page-faulted in afresh: on CPU this costs up to ~30% of a training step. With
    mmap off and a high trim threshold, freed blocks are reused. Call once at process start; returns False
    where it does not apply (not glibc).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------------------------------------------
# Entry-script pieces shared by run_class_finetuning.py and run_mae_pretraining.py (their flags: cli.py)

def lg_kwargs(args: argparse.Namespace) -> dict:
    """The --attn_type / --lg_* flags as model keyword arguments."""
    return dict(attn_type=args.attn_type, lg_region_size=args.lg_region_size,
                lg_first_attn_type=args.lg_first_attn_type, lg_third_attn_type=args.lg_third_attn_type,
                lg_attn_param_sharing_first_third=args.lg_attn_param_sharing_first_third,
                lg_attn_param_sharing_all=args.lg_attn_param_sharing_all, lg_no_second=args.lg_no_second,
                lg_no_third=args.lg_no_third)


def default_amp(device: torch.device) -> str:
    """--amp when not given: bf16 on a GPU that computes it natively, fp16 (with loss scaling) on other GPUs, none on
    the CPU."""
    if device.type != "cuda":
        return "none"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
