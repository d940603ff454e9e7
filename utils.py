"""Helpers the entry scripts share: the memory allocator, the CLI groups and the default precision.

The process group lives in distributed.py, schedules in schedules.py, RNG states in rng.py, checkpoints in
checkpoint.py, and the training skeleton that uses them in training.py. The names VideoMAE's utils.py offered
(get_rank, cosine_scheduler, ...) stay importable from here.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging

import torch

from distributed import (  # noqa: F401
    Process,
    all_gather_objects,
    collective_device,
    find_local_rank,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
)
from rng import gather_rng_states, rng_state, seeded_rngs, set_rng_state  # noqa: F401
from schedules import Schedule, build_schedule, cosine_scheduler, scale_lr  # noqa: F401

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
# Entry-script pieces shared by run_class_finetuning.py and run_mae_pretraining.py (the originals' flags)

def add_lg_arguments(parser: argparse.ArgumentParser) -> None:
    """The LGI-Former block options (--lg_*), as both original scripts define them."""
    add = parser.add_argument
    add("--lg_region_size", type=int, nargs="+", default=(2, 2, 10))
    add("--lg_first_attn_type", type=str, default="self", choices=["cross", "self"])
    add("--lg_third_attn_type", type=str, default="cross", choices=["cross", "self"])
    add("--lg_attn_param_sharing_first_third", action="store_true")
    add("--lg_attn_param_sharing_all", action="store_true")
    add("--lg_no_second", action="store_true")
    add("--lg_no_third", action="store_true")


def lg_kwargs(args: argparse.Namespace) -> dict:
    """The --attn_type / --lg_* flags as model keyword arguments."""
    return dict(attn_type=args.attn_type, lg_region_size=args.lg_region_size,
                lg_first_attn_type=args.lg_first_attn_type, lg_third_attn_type=args.lg_third_attn_type,
                lg_attn_param_sharing_first_third=args.lg_attn_param_sharing_first_third,
                lg_attn_param_sharing_all=args.lg_attn_param_sharing_all, lg_no_second=args.lg_no_second,
                lg_no_third=args.lg_no_third)


def add_optimizer_arguments(parser: argparse.ArgumentParser, lr: float, min_lr: float, warmup_epochs: int) -> None:
    """Optimizer and schedule flags; the defaults that differ between the scripts are passed in."""
    add = parser.add_argument
    add("--opt", default="adamw", type=str)
    add("--opt_eps", default=1e-8, type=float)
    add("--opt_betas", default=None, type=float, nargs="+")
    add("--clip_grad", type=float, default=None)
    add("--momentum", type=float, default=0.9)
    add("--weight_decay", type=float, default=0.05)
    add("--weight_decay_end", type=float, default=None)
    add("--lr", type=float, default=lr, help="learning rate per 256 clips of global batch")
    add("--warmup_lr", type=float, default=1e-6, help="parsed as in the original; warm-up starts at 0")
    add("--min_lr", type=float, default=min_lr)
    add("--warmup_epochs", type=int, default=warmup_epochs)
    add("--warmup_steps", type=int, default=-1)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Device, precision, seed, resume, checkpoint and process flags."""
    add = parser.add_argument
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--amp", default=None, choices=["none", "fp16", "bf16"], help="default: bf16 on CUDA if supported, else none")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--seed", default=0, type=int)
    add("--resume", default="")
    add("--auto_resume", action="store_true")
    add("--no_auto_resume", action="store_false", dest="auto_resume")
    parser.set_defaults(auto_resume=True)
    add("--start_epoch", default=0, type=int)
    add("--save_every_steps", default=0, type=int,
        help="also write checkpoint-last.pth every N optimizer steps, to resume mid-epoch (ours; 0: at epoch ends)")
    add("--log_every", default=10, type=int,
        help="read the loss, gradient norm and loss scale from the device every N optimizer steps (ours; the meters "
             "and TensorBoard still get every step's values)")
    add("--keep_last_ckpts", default=0, type=int, help="keep only the newest N checkpoint-<epoch>.pth (ours; 0: all)")
    add("--num_workers", default=10, type=int)
    add("--pin_mem", action="store_true")
    add("--no_pin_mem", action="store_false", dest="pin_mem")
    parser.set_defaults(pin_mem=True)
    add("--world_size", default=1, type=int)
    # torch.distributed.launch passes --local-rank=N on torch 2.x, --local_rank=N before; LOCAL_RANK wins (torchrun)
    add("--local_rank", "--local-rank", default=-1, type=int)
    add("--dist_on_itp", action="store_true")
    add("--dist_url", default="env://")
    add("--dist_timeout", default=60.0, type=float,
        help="minutes a collective may wait for the other ranks before the run stops (ours; covers --compile on "
             "every rank and a rank-0 write of a large checkpoint)")


def parse_args(parser: argparse.ArgumentParser, demo_defaults: dict, argv: list[str] | None = None
               ) -> argparse.Namespace:
    """The command line; with --demo, the demo's defaults take the original ones' place (explicit flags still win)."""
    args = parser.parse_args(argv)
    if args.demo:
        parser.set_defaults(**demo_defaults)
        args = parser.parse_args(argv)
    return args


def default_amp(device: torch.device) -> str:
    """--amp when not given: bf16 on a GPU that computes it natively, fp16 (with loss scaling) on other GPUs, none on
    the CPU."""
    if device.type != "cuda":
        return "none"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
