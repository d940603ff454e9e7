"""Checkpoints: safe loading, filtering and the load report, atomic saving, pruning and resume candidates.

Files are always read with `torch.load(weights_only=True)`: nothing in a checkpoint can run code. Besides tensors
and plain containers, the original training checkpoints pickle their `argparse.Namespace` of arguments and, in
the optimizer state, numpy scalars (the learning rates set from a numpy schedule): exactly those are allowed.

Training checkpoints hold {model, optimizer, epoch, scaler, args[, model_ema]} as the originals wrote them, plus
step (optimizer steps done in `epoch` when it is unfinished, else None) and whatever the caller adds (RNG
states, meters, ...). checkpoint-last.pth is always the newest complete one.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distributed import is_main_process

logger = logging.getLogger(__name__)

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
    load_strict(model, checkpoint, path, model_key)
    return checkpoint


def load_strict(model: nn.Module, checkpoint: dict, path: str | Path, model_key: str = "model|module") -> None:
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


LAST = "checkpoint-last.pth"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous file at that path is intact."""


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint_atomic(state: dict, path: str | Path) -> None:
    """Write to a temporary file, fsync, then rename: a kill mid-write never leaves a torn file at `path`.

    A failed write (disk full, ...) removes the temporary file and raises CheckpointWriteError.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise CheckpointWriteError(getattr(err, "errno", None) or 0,
                                   f"{path}: could not write the checkpoint ({err}); {kept}") from err
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _replace_with_link(source: Path, target: Path) -> None:
    """Atomically make `target` the same file as `source` (a hard link; a copy where links are not supported)."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def _numbered(output_dir: str | Path) -> list[tuple[int, Path]]:
    return sorted((int(p.stem.split("-")[1]), p) for p in Path(output_dir).glob("checkpoint-*.pth")
                  if p.stem.split("-")[1].isdigit())


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoint-<N>.pth (never -best or -last); returns the deleted."""
    doomed = [p for _, p in _numbered(output_dir)[:-keep_last]] if keep_last > 0 else []
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def save_model(output_dir: str | Path, epoch: int | str, *, model: nn.Module, optimizer: torch.optim.Optimizer,
               args: argparse.Namespace, scaler: torch.amp.GradScaler | None = None,
               model_ema: nn.Module | None = None, step: int | None = None, extra: dict | None = None,
               numbered: bool = True, keep_last: int = 0) -> Path:
    """Write a training checkpoint in output_dir (rank 0 only) and point checkpoint-last.pth at it.

    numbered: checkpoint-<epoch>.pth (and checkpoint-last.pth a link to it); else checkpoint-last.pth alone (a
    resume point). epoch "best" writes checkpoint-best.pth and leaves checkpoint-last.pth alone. step: optimizer
    steps done in an unfinished `epoch`. extra: more entries (RNG states, ...). keep_last > 0 then deletes older
    numbered checkpoints.
    """
    output_dir = Path(output_dir)
    path = output_dir / (f"checkpoint-{epoch}.pth" if numbered or epoch == "best" else LAST)
    if is_main_process():
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                 "scaler": scaler.state_dict() if scaler is not None else None, "args": args}
        if model_ema is not None:
            state["model_ema"] = model_ema.module.state_dict()
        state.update(extra or {})
        save_checkpoint_atomic(state, path)
        if numbered and epoch != "best":
            _replace_with_link(path, output_dir / LAST)
            prune_checkpoints(output_dir, keep_last)
    return path


def check_output_dir(output_dir: str | Path, *, evaluating: bool, resuming: bool) -> None:
    """Never overwrite a previous run silently: training that does not resume refuses a folder that holds one."""
    previous = resume_candidates(output_dir) + sorted(Path(output_dir).glob("metrics.json"))
    if evaluating and (Path(output_dir) / "metrics.json").exists():
        logger.warning("%s holds a previous test: its pred.csv / metrics.json will be replaced", output_dir)
    elif previous and not evaluating and not resuming:
        raise FileExistsError(f"--output_dir {output_dir} holds a previous run ({previous[0].name}): resume it "
                              f"(drop --no_auto_resume) or choose another --output_dir")


def resume_candidates(output_dir: str | Path) -> list[Path]:
    """Resume points, newest first: checkpoint-last.pth, then checkpoint-<N>.pth by decreasing N (not -best)."""
    last = Path(output_dir) / LAST
    return ([last] if last.is_file() else []) + [p for _, p in reversed(_numbered(output_dir))]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest resume point (checkpoint-last.pth, else the checkpoint-<N>.pth with the highest N), unchecked."""
    candidates = resume_candidates(output_dir)
    return candidates[0] if candidates else None


@dataclass(frozen=True)
class Restored:
    """A checkpoint a run continues from: its path and contents, and where training resumes (None: not a training
    checkpoint, or evaluating: the run's own --start_epoch applies)."""

    path: str
    checkpoint: dict
    start_epoch: int | None
    start_step: int


def restore(model: nn.Module, resume: str, output_dir: str | Path, auto_resume: bool, *,
            optimizer: torch.optim.Optimizer | None = None, scaler: torch.amp.GradScaler | None = None,
            model_ema: nn.Module | None = None, evaluating: bool = False) -> Restored | None:
    """--resume CKPT, or with --auto_resume the newest *complete* checkpoint in output_dir (a torn or unreadable one
    is skipped with a warning): strict model load, then (training) the optimizer / scaler / EMA states and the
    position to continue from. None when there is nothing to resume.
    """
    checkpoint = None
    if not resume and auto_resume and output_dir:
        for path in resume_candidates(output_dir):
            try:
                checkpoint = load_checkpoint(path)
            except CheckpointError as err:
                logger.warning("auto-resume: skipping an incomplete checkpoint: %s", err)
                continue
            resume = str(path)
            break
    if not resume:
        return None
    checkpoint = checkpoint or load_checkpoint(resume)
    load_strict(model, checkpoint, resume)
    logger.info("resumed model weights from %s", resume)
    if checkpoint.get("epoch") == "best" and not evaluating:
        raise CheckpointError(f"{resume}: a best-validation checkpoint records no epoch to continue from; "
                              "use it with --eval, or resume training from a checkpoint-<N>.pth")
    start_epoch, start_step = None, 0
    if optimizer is not None and "optimizer" in checkpoint and "epoch" in checkpoint and not evaluating:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        if model_ema is not None and "model_ema" in checkpoint:
            model_ema.module.load_state_dict(checkpoint["model_ema"])
        if isinstance(checkpoint["epoch"], int):
            step = checkpoint.get("step")
            start_epoch = checkpoint["epoch"] + (1 if step is None else 0)
            start_step = step or 0
    return Restored(resume, checkpoint, start_epoch, start_step)
