"""Checkpoints (safe reading, atomic writing, bit-exact resume), distributed helpers and schedules for the scripts.

Files are always read with `torch.load(weights_only=True)`: nothing in a checkpoint can run code. Besides tensors
and plain containers, the original training checkpoints pickle their `argparse.Namespace` of arguments and, in
the optimizer state, numpy scalars (the learning rates set from a numpy schedule): exactly those are allowed.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import itertools
import logging
import os
import pickle
import random
import shutil
from contextlib import contextmanager
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
    _load_strict(model, checkpoint, path, model_key)
    return checkpoint


def _load_strict(model: nn.Module, checkpoint: dict, path: str | Path, model_key: str = "model|module") -> None:
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
    args.gpu = int(os.environ.get("LOCAL_RANK", max(getattr(args, "local_rank", -1), 0)))
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
# Resuming bit-exactly: every RNG a training step draws from, and a sampler that can start an epoch part-way

def rng_state() -> dict:
    """This process's torch (CPU and CUDA), numpy and Python RNG states, in a form `load_checkpoint` accepts."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states() -> list[dict]:
    """Every rank's `rng_state()`, in rank order (a collective: call it on all ranks)."""
    return all_gather_objects(rng_state())


@contextmanager
def seeded_rngs(seed: int | tuple[int, ...]):
    """Run a block with torch (CPU), numpy and `random` seeded from `seed` (e.g. (seed, epoch, index)), then put
    the caller's states back.

    A sample drawn inside depends on `seed` only: not on the worker that loads it, nor on what came before. The
    three streams are independent: each is seeded from its own child of numpy's SeedSequence (torch and numpy
    seeded with one integer run the same MT19937 stream, so their draws would be the same raw numbers).
    """
    torch_seq, numpy_seq, python_seq = np.random.SeedSequence(seed).spawn(3)
    saved = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.default_generator.manual_seed(int(torch_seq.generate_state(1, np.uint64)[0]))
    np.random.seed(numpy_seq.generate_state(4))
    random.seed(int.from_bytes(python_seq.generate_state(4).tobytes(), "little"))
    try:
        yield
    finally:
        torch.set_rng_state(saved["torch"])
        np.random.set_state(saved["numpy"])
        random.setstate(saved["python"])


class ResumableSampler(torch.utils.data.DistributedSampler):
    """A DistributedSampler whose epoch can start part-way: `set_epoch(epoch, start=k)` skips this rank's first k
    indices of that epoch's order (which depends on seed and epoch only), so a resumed epoch sees what is left."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


# --------------------------------------------------------------------------------------------------------------
# Training checkpoints: {model, optimizer, epoch, scaler, args[, model_ema]} as the originals wrote them, plus
# step (optimizer steps done in `epoch` when it is unfinished, else None) and whatever the caller adds (RNG
# states, meters, ...). checkpoint-last.pth is always the newest complete one.

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


def save_model(args: argparse.Namespace, epoch: int | str, model: nn.Module, optimizer, loss_scaler,
               model_ema: nn.Module | None = None, *, step: int | None = None, extra: dict | None = None,
               numbered: bool = True, keep_last: int = 0) -> Path:
    """Write a checkpoint in args.output_dir (rank 0 only) and point checkpoint-last.pth at it.

    numbered: checkpoint-<epoch>.pth (and checkpoint-last.pth a link to it); else checkpoint-last.pth alone (a
    resume point). epoch "best" writes checkpoint-best.pth and leaves checkpoint-last.pth alone. step: optimizer
    steps done in an unfinished `epoch`. extra: more entries (RNG states, ...). keep_last > 0 then deletes older
    numbered checkpoints.
    """
    output_dir = Path(args.output_dir)
    path = output_dir / (f"checkpoint-{epoch}.pth" if numbered or epoch == "best" else LAST)
    if is_main_process():
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                 "scaler": loss_scaler.state_dict() if loss_scaler is not None else None, "args": args}
        if model_ema is not None:
            state["model_ema"] = model_ema.module.state_dict()
        state.update(extra or {})
        save_checkpoint_atomic(state, path)
        if numbered and epoch != "best":
            _replace_with_link(path, output_dir / LAST)
            prune_checkpoints(output_dir, keep_last)
    return path


def check_output_dir(args: argparse.Namespace) -> None:
    """Never overwrite a previous run silently: training without auto-resume refuses a folder that holds one."""
    evaluating = getattr(args, "eval", False)  # pretraining has no --eval
    previous = resume_candidates(args.output_dir) + sorted(Path(args.output_dir).glob("metrics.json"))
    if evaluating and (Path(args.output_dir) / "metrics.json").exists():
        logger.warning("%s holds a previous test: its pred.csv / metrics.json will be replaced", args.output_dir)
    elif previous and not evaluating and not args.auto_resume and not args.resume:
        raise FileExistsError(f"--output_dir {args.output_dir} holds a previous run ({previous[0].name}): resume it "
                              f"(drop --no_auto_resume) or choose another --output_dir")


def resume_candidates(output_dir: str | Path) -> list[Path]:
    """Resume points, newest first: checkpoint-last.pth, then checkpoint-<N>.pth by decreasing N (not -best)."""
    last = Path(output_dir) / LAST
    return ([last] if last.is_file() else []) + [p for _, p in reversed(_numbered(output_dir))]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest resume point (checkpoint-last.pth, else the checkpoint-<N>.pth with the highest N), unchecked."""
    candidates = resume_candidates(output_dir)
    return candidates[0] if candidates else None


def auto_load_model(args: argparse.Namespace, model: nn.Module, optimizer=None, loss_scaler=None,
                    model_ema: nn.Module | None = None) -> dict | None:
    """--resume CKPT, or with --auto_resume the newest *complete* checkpoint in output_dir (a torn or unreadable one
    is skipped with a warning): strict model load, then the optimizer / scaler / EMA states and the position to
    continue from: args.start_epoch and args.start_step (optimizer steps already done in that epoch).

    Returns the checkpoint (for the caller's own entries, e.g. RNG states), or None when there is none.
    """
    checkpoint = None
    if not args.resume and args.auto_resume and args.output_dir:
        for path in resume_candidates(args.output_dir):
            try:
                checkpoint = load_checkpoint(path)
            except CheckpointError as err:
                logger.warning("auto-resume: skipping an incomplete checkpoint: %s", err)
                continue
            args.resume = str(path)
            break
    if not args.resume:
        return None
    checkpoint = checkpoint or load_checkpoint(args.resume)
    _load_strict(model, checkpoint, args.resume)
    logger.info("resumed model weights from %s", args.resume)
    evaluating = getattr(args, "eval", False)  # pretraining has no --eval
    if checkpoint.get("epoch") == "best" and not evaluating:
        raise CheckpointError(f"{args.resume}: a best-validation checkpoint records no epoch to continue from; "
                              "use it with --eval, or resume training from a checkpoint-<N>.pth")
    args.start_step = 0
    if optimizer is not None and "optimizer" in checkpoint and "epoch" in checkpoint and not evaluating:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if loss_scaler is not None and checkpoint.get("scaler"):
            loss_scaler.load_state_dict(checkpoint["scaler"])
        if model_ema is not None and "model_ema" in checkpoint:
            model_ema.module.load_state_dict(checkpoint["model_ema"])
        if isinstance(checkpoint["epoch"], int):
            step = checkpoint.get("step")
            args.start_epoch = checkpoint["epoch"] + (1 if step is None else 0)
            args.start_step = step or 0
    return checkpoint


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


def parse_args(parser: argparse.ArgumentParser, demo_defaults: dict, argv: list[str] | None = None
               ) -> argparse.Namespace:
    """The command line; with --demo, the demo's defaults take the original ones' place (explicit flags still win)."""
    args = parser.parse_args(argv)
    if args.demo:
        parser.set_defaults(**demo_defaults)
        args = parser.parse_args(argv)
    return args


def start_run(args: argparse.Namespace) -> torch.device:
    """Join torchrun's process group, set up logging (rank 0 speaks), pick the precision, seed every RNG."""
    keep_freed_memory()
    init_distributed_mode(args)
    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING, format="%(message)s")
    device = torch.device(args.device)
    if args.amp is None:
        args.amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    seed = args.seed + get_rank()
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return device


def schedules(args: argparse.Namespace, steps_per_epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-step learning-rate (warm-up from 0, cosine to --min_lr) and weight-decay (cosine) schedules."""
    lr_schedule = cosine_scheduler(args.lr, args.min_lr, args.epochs, steps_per_epoch, args.warmup_epochs,
                                   warmup_steps=args.warmup_steps)
    wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
    return lr_schedule, cosine_scheduler(args.weight_decay, wd_end, args.epochs, steps_per_epoch)
