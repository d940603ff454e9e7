"""Checkpoint reading and weight loading shared by the entry scripts.

Files are always read with `torch.load(weights_only=True)`: nothing in a checkpoint can run code. The only
non-tensor object the original training checkpoints pickle is their `argparse.Namespace` of arguments, so
that, and nothing else, is allowed in addition to tensors and plain containers.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

SAFE_GLOBALS = [argparse.Namespace]


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
            f"argparse.Namespace), so it could run code; it was not unpickled.\n{err}") from None
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
