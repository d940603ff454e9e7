"""The entry scripts' command lines: argument groups, the flags the scripts share, and the ignored original flags.

Flags keep the original scripts' names and defaults, so the authors' command lines run unchanged. Flags this
project adds are in the "ours" group; flags the original scripts parse but this project does not use are in the
"ignored" group, and giving one a value other than its default logs a warning.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

import torch

from datasets import AUGMENT_ON

logger = logging.getLogger(__name__)

IGNORED_TITLE = "ignored (accepted so that the original command lines run)"


@dataclass(frozen=True)
class Groups:
    """The --help sections, in timm's train.py manner."""

    model: argparse._ArgumentGroup
    optimizer: argparse._ArgumentGroup
    augmentation: argparse._ArgumentGroup
    data: argparse._ArgumentGroup
    run: argparse._ArgumentGroup
    ours: argparse._ArgumentGroup
    ignored: argparse._ArgumentGroup


def make_groups(parser: argparse.ArgumentParser) -> Groups:
    """The argument groups of an entry script's parser."""
    group = parser.add_argument_group
    return Groups(
        model=group("model"), optimizer=group("optimizer and schedule"), augmentation=group("augmentation"),
        data=group("data"), run=group("run: device, seed, checkpoints, processes"),
        ours=group("ours", "options this project adds to the original scripts"),
        ignored=group(IGNORED_TITLE, "parsed and never used; a value other than the default logs a warning"))


def add_lg_arguments(group: argparse._ArgumentGroup) -> None:
    """The LGI-Former block options (--lg_*), as both original scripts define them."""
    add = group.add_argument
    add("--lg_region_size", type=int, nargs="+", default=(2, 2, 10), metavar="N",
        help="region size (t, h, w) in tokens; each region gets one region token (docs/ARCHITECTURE.md)")
    add("--lg_first_attn_type", type=str, default="self", choices=["cross", "self"],
        help="local attention: all tokens of a region attend to each other (self), or only its region token reads "
             "them (cross)")
    add("--lg_third_attn_type", type=str, default="cross", choices=["cross", "self"],
        help="local-global attention: every token reads the sample's region tokens (cross), or self-attention "
             "inside its region again (self)")
    add("--lg_attn_param_sharing_first_third", action="store_true",
        help="share the weights of the first and third attention")
    add("--lg_attn_param_sharing_all", action="store_true", help="share the weights of all three attentions")
    add("--lg_no_second", action="store_true", help="leave out the global attention between region tokens")
    add("--lg_no_third", action="store_true", help="leave out the local-global attention")


def add_optimizer_arguments(group: argparse._ArgumentGroup, *, epochs: int, lr: float, min_lr: float,
                            warmup_epochs: int) -> None:
    """Batch, optimizer and schedule flags; the defaults that differ between the scripts are passed in."""
    add = group.add_argument
    add("--batch_size", default=64, type=int, help="clips per process and step")
    add("--epochs", default=epochs, type=int, help="training epochs")
    add("--opt", default="adamw", type=str, help="optimizer, any name timm's create_optimizer_v2 knows")
    add("--opt_eps", default=1e-8, type=float, help="optimizer epsilon")
    add("--opt_betas", default=None, type=float, nargs="+", metavar="BETA",
        help="optimizer betas (default: the optimizer's own)")
    add("--clip_grad", type=float, default=None, metavar="NORM", help="clip the gradient norm (default: no clipping)")
    add("--momentum", type=float, default=0.9, help="SGD momentum")
    add("--weight_decay", type=float, default=0.05, help="weight decay")
    add("--weight_decay_end", type=float, default=None,
        help="final weight decay of a cosine schedule (default: constant --weight_decay)")
    add("--lr", type=float, default=lr, help="peak learning rate per 256 clips of global batch")
    add("--min_lr", type=float, default=min_lr, help="final learning rate of the cosine, per 256 clips")
    add("--warmup_epochs", type=int, default=warmup_epochs, help="epochs of linear warm-up from 0")
    add("--warmup_steps", type=int, default=-1, help="steps of warm-up; overrides --warmup_epochs when > 0")


def add_run_arguments(groups: Groups) -> None:
    """Device, precision, seed, resume, checkpoint and process flags."""
    add, ours = groups.run.add_argument, groups.ours.add_argument
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda (each process takes its LOCAL_RANK's GPU), cuda:N or cpu (default: cuda if available)")
    ours("--amp", default=None, choices=["none", "fp16", "bf16"],
         help="mixed precision (default: bf16 on CUDA if supported, else fp16 on CUDA, none on the CPU)")
    ours("--compile", action="store_true", help="torch.compile the model")
    add("--seed", default=0, type=int, help="random seed (each process adds its rank)")
    add("--resume", default="", help="resume from this checkpoint (default: --auto_resume's choice)")
    add("--auto_resume", action="store_true", help="resume from the newest checkpoint in --output_dir (default)")
    add("--no_auto_resume", action="store_false", dest="auto_resume", help="start afresh")
    groups.run.set_defaults(auto_resume=True)
    add("--start_epoch", default=0, type=int, help="first epoch when not resuming")
    ours("--save_every_steps", default=0, type=int, metavar="N",
         help="also write checkpoint-last.pth every N optimizer steps, to resume mid-epoch (0: at epoch ends)")
    ours("--log_every", default=10, type=int, metavar="N",
         help="read the loss, gradient norm and loss scale from the device every N optimizer steps (the meters and "
              "TensorBoard still get every step's values)")
    ours("--keep_last_ckpts", default=0, type=int, metavar="N",
         help="keep only the newest N checkpoint-<epoch>.pth (0: all)")
    add("--num_workers", default=10, type=int, help="data loader worker processes per process")
    add("--pin_mem", action="store_true", help="pin loader memory for faster copies to the GPU (default)")
    add("--no_pin_mem", action="store_false", dest="pin_mem", help="do not pin loader memory")
    groups.run.set_defaults(pin_mem=True)
    # torch.distributed.launch passes --local-rank=N on torch 2.x, --local_rank=N before; LOCAL_RANK wins (torchrun)
    add("--local_rank", "--local-rank", default=-1, type=int,
        help="set by torch.distributed.launch; the LOCAL_RANK environment variable wins")
    ours("--dist_timeout", default=60.0, type=float, metavar="MINUTES",
         help="minutes a collective may wait for the other ranks before the run stops (covers --compile on every "
              "rank and a rank-0 write of a large checkpoint)")
    ignored = groups.ignored.add_argument
    ignored("--world_size", default=1, type=int, help="the process count comes from torchrun (WORLD_SIZE)")
    ignored("--dist_on_itp", action="store_true", help="the original's cluster launcher; use torchrun")
    ignored("--dist_url", default="env://", help="torchrun's environment is always used")


def add_common_ignored_arguments(group: argparse._ArgumentGroup, color_jitter: float) -> None:
    """Original flags both scripts parse and neither uses (as in the originals)."""
    add = group.add_argument
    add("--color_jitter", type=float, default=color_jitter, help="no color jitter is applied, as in the original")
    add("--warmup_lr", type=float, default=1e-6, help="warm-up starts at 0, as in the original")
    add("--imagenet_default_mean_and_std", default=True, action="store_true",
        help="always on: clips are normalised with ImageNet's mean and std")


def add_augment_arguments(group: argparse._ArgumentGroup) -> None:
    """--augment_on, for run_class_finetuning.py."""
    group.add_argument("--augment_on", choices=AUGMENT_ON, default=None,
                       help="where training clips are augmented: in the loader workers, or batched on the model's "
                            "device from uint8 clips (default: device on CUDA, workers otherwise)")


def warn_ignored(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Log a warning for every ignored flag given a value other than its default; returns their names."""
    given = []
    for group in parser._action_groups:  # argparse has no public accessor for a group's actions
        if group.title != IGNORED_TITLE:
            continue
        for action in group._group_actions:
            if getattr(args, action.dest) != action.default:
                given.append(action.option_strings[0])
                logger.warning("%s is accepted for the original command lines and ignored", action.option_strings[0])
    return given


def parse_args(parser: argparse.ArgumentParser, demo_defaults: dict, argv: list[str] | None = None
               ) -> argparse.Namespace:
    """The command line; with --demo, the demo's defaults take the original ones' place (explicit flags still win)."""
    args = parser.parse_args(argv)
    if args.demo:
        parser.set_defaults(**demo_defaults)
        args = parser.parse_args(argv)
    warn_ignored(parser, args)
    return args
