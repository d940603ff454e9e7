"""Checkpoints (safe reading, atomic writing, resume), distributed helpers and schedules shared by the scripts.

Files are always read with `torch.load(weights_only=True)`: nothing in a checkpoint can run code. Besides tensors
and plain containers, the original training checkpoints pickle their `argparse.Namespace` of arguments and, in
the optimizer state, numpy scalars (the learning rates set from a numpy schedule): exactly those are allowed.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

# numpy scalars pickle as numpy.core.multiarray.scalar (numpy 1.x, the originals) or numpy._core... (numpy 2).
SAFE_GLOBALS = [argparse.Namespace, np.dtype, np.dtypes.Float64DType, np.dtypes.Float32DType, np.dtypes.Int64DType,
                (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"), np._core.multiarray.scalar]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read, or whose weights do not fit the model."""


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint on the CPU without executing code from it; refuses anything but the allow-list."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: the file pickles objects outside the allow-list (tensors, containers, "
            f"argparse.Namespace, numpy scalars), so it could run code; it was not unpickled.\n{err}") from None
    except (RuntimeError, EOFError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {err}") from None


def select_state_dict(checkpoint: dict, model_key: str = "model|module") -> dict[str, torch.Tensor]:
    """The state_dict under the first of the '|'-separated keys present, else the checkpoint itself (original rule)."""
    for key in model_key.split("|"):
        if key in checkpoint:
            return checkpoint[key]
    return checkpoint


@dataclass
class LoadReport:
    """What a non-strict load did: keys the model kept at init, keys it ignored, keys skipped for their shape."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = []
        for title, keys in (("not initialised from the checkpoint (kept at init)", self.missing),
                            ("in the checkpoint but not used by the model", self.unexpected),
                            ("skipped for a shape mismatch (kept at init)", self.mismatched)):
            if keys:
                lines.append(f"{title}: {len(keys)}\n  " + "\n  ".join(keys))
        return "\n".join(lines) or "all keys matched"


def load_pretrained(model: nn.Module, path: str | Path, model_key: str = "model|module",
                    model_prefix: str = "") -> LoadReport:
    """Initialise a fine-tune model from a pretraining (or fine-tune) checkpoint, as `--finetune` does.

    The model's `checkpoint_filter_fn` maps foreign keys (e.g. the pretraining `encoder.` prefix); weights the
    model lacks are reported as unexpected, weights it has but the file does not as missing, weights of another
    shape (e.g. 8 pretrained region tokens into a 4-region model) are skipped and reported, as the original did.
    """
    from modeling_finetune import checkpoint_filter_fn

    state_dict = checkpoint_filter_fn(select_state_dict(load_checkpoint(path), model_key), model)
    unexpected = []
    if model_prefix:
        unexpected = [k for k in state_dict if not k.startswith(model_prefix)]
        state_dict = {k[len(model_prefix):]: v for k, v in state_dict.items() if k.startswith(model_prefix)}
    own = model.state_dict()
    mismatched = [f"{k}: checkpoint {list(v.shape)}, model {list(own[k].shape)}"
                  for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    state_dict = {k: v for k, v in state_dict.items() if k not in own or v.shape == own[k].shape}
    result = model.load_state_dict(state_dict, strict=False)
    report = LoadReport(list(result.missing_keys), unexpected + list(result.unexpected_keys), mismatched)
    logger.info("loaded %s\n%s", path, report)
    return report


def _grouped(title: str, keys: list[str], tensors: dict[str, torch.Tensor]) -> list[str]:
    """One line per key, or one per top-level module when it has many (e.g. the whole CA branch)."""
    by_module: dict[str, list[str]] = {}
    for key in keys:
        by_module.setdefault(key.split(".")[0], []).append(key)
    lines = []
    for module, names in by_module.items():
        if len(names) > 3:
            lines.append(f"{title}: {module}.* ({len(names)} tensors)")
        else:
            lines += [f"{title}: {k} {list(tensors[k].shape)}" for k in names]
    return lines


def load_model_weights(model: nn.Module, path: str | Path, model_key: str = "model|module") -> dict:
    """Strictly load a fine-tuned checkpoint (ours or the originals'); returns the whole checkpoint dict.

    A checkpoint of another model, class count or fusion fails with every mismatched key listed.
    """
    checkpoint = load_checkpoint(path)
    state_dict = select_state_dict(checkpoint, model_key)
    own = model.state_dict()
    problems = _grouped("missing from the checkpoint", [k for k in own if k not in state_dict], own)
    problems += _grouped("not in the model", [k for k in state_dict if k not in own], state_dict)
    problems += [f"shape: {k} checkpoint {list(v.shape)}, model {list(own[k].shape)}"
                 for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if problems:
        raise CheckpointError(f"{path}: the checkpoint does not fit the model (check --model, --nb_classes, "
                              f"--fusion, --depth, --lg_region_size):\n  " + "\n  ".join(problems))
    model.load_state_dict(state_dict, strict=True)
    return checkpoint


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
# Distributed helpers (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain `python` run is one process)

def init_distributed_mode(args: argparse.Namespace) -> None:
    """Join the torchrun process group if launched by torchrun: NCCL on CUDA, gloo on CPU; sets args.rank etc."""
    args.rank = int(os.environ.get("RANK", 0))
    args.world_size = int(os.environ.get("WORLD_SIZE", 1))
    args.gpu = int(os.environ.get("LOCAL_RANK", 0))
    args.distributed = args.world_size > 1
    if not args.distributed:
        return
    if args.device == "cuda":
        torch.cuda.set_device(args.gpu)
        args.device = f"cuda:{args.gpu}"
    torch.distributed.init_process_group(backend="nccl" if args.device.startswith("cuda") else "gloo")
    torch.distributed.barrier()


def get_rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def get_world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_gather_objects(obj):
    """Every rank's `obj`, in rank order (a one-element list without distributed)."""
    if not torch.distributed.is_initialized():
        return [obj]
    gathered = [None] * get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


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


# --------------------------------------------------------------------------------------------------------------
# Training checkpoints: {model, optimizer, epoch, scaler, args[, model_ema]} as the originals wrote them

def save_checkpoint_atomic(state: dict, path: str | Path) -> None:
    """Write to a temporary file, fsync, then rename: a kill mid-write never leaves a torn file at `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_model(args: argparse.Namespace, epoch: int | str, model: nn.Module, optimizer, loss_scaler,
               model_ema: nn.Module | None = None) -> Path:
    """checkpoint-<epoch>.pth in args.output_dir, written by rank 0 only."""
    path = Path(args.output_dir) / f"checkpoint-{epoch}.pth"
    if is_main_process():
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "scaler": loss_scaler.state_dict() if loss_scaler is not None else None, "args": args}
        if model_ema is not None:
            state["model_ema"] = model_ema.module.state_dict()
        save_checkpoint_atomic(state, path)
    return path


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint-<N>.pth with the highest N (checkpoint-best.pth is not a resume point)."""
    numbered = [(int(p.stem.split("-")[1]), p) for p in Path(output_dir).glob("checkpoint-*.pth")
                if p.stem.split("-")[1].isdigit()]
    return max(numbered)[1] if numbered else None


def auto_load_model(args: argparse.Namespace, model: nn.Module, optimizer=None, loss_scaler=None,
                    model_ema: nn.Module | None = None) -> None:
    """--resume CKPT, or with --auto_resume the newest checkpoint in output_dir: strict model load, and the
    optimizer / scaler / EMA states and start epoch when the checkpoint has them (as the originals do)."""
    if not args.resume and args.auto_resume and args.output_dir:
        latest = latest_checkpoint(args.output_dir)
        args.resume = str(latest) if latest else ""
    if not args.resume:
        return
    checkpoint = load_model_weights(model, args.resume)
    logger.info("resumed model weights from %s", args.resume)
    if checkpoint.get("epoch") == "best" and not args.eval:
        raise CheckpointError(f"{args.resume}: a best-validation checkpoint records no epoch to continue from; "
                              "use it with --eval, or resume training from a checkpoint-<N>.pth")
    if optimizer is not None and "optimizer" in checkpoint and "epoch" in checkpoint and not args.eval:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if loss_scaler is not None and checkpoint.get("scaler"):
            loss_scaler.load_state_dict(checkpoint["scaler"])
        if model_ema is not None and "model_ema" in checkpoint:
            model_ema.module.load_state_dict(checkpoint["model_ema"])
        if isinstance(checkpoint["epoch"], int):
            args.start_epoch = checkpoint["epoch"] + 1
