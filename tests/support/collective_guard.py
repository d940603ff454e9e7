"""Check every torch.distributed collective the product issues against a (pretended) process-group backend.

Under NCCL a tensor collective needs CUDA tensors (a CPU tensor raises "No backend type associated with device type
cpu"), and an object collective pickles its payload into a tensor on `cuda:torch.cuda.current_device()`, so each
rank must have called `torch.cuda.set_device(LOCAL_RANK)`. On a CPU machine the group is gloo, so the guard
*pretends* the backend is e.g. "nccl" and reports what NCCL would refuse:

    with guard_collectives("nccl") as guard:    # raises CollectiveDeviceError at the first offending call
        torch.distributed.all_reduce(torch.zeros(2))

`install(backend, strict=False)` does the same for a whole process and only records (what fault_injection.py
uses): the collective still runs, so every rank reaches the end and writes its report (`guard.report()`).

Only calls made through the `torch.distributed` namespace from outside torch are checked (torch's own internal
calls, e.g. DDP's, run on the model's device and are not the product's choice).
"""

from __future__ import annotations

import os
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

TENSOR_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
                      "broadcast", "reduce", "gather", "scatter", "all_to_all", "all_to_all_single", "send", "recv",
                      "isend", "irecv")
OBJECT_COLLECTIVES = ("all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list",
                      "send_object_list", "recv_object_list")
BARRIERS = ("barrier", "monitored_barrier")
BACKEND_DEVICES = {"nccl": {"cuda"}, "gloo": {"cpu", "cuda"}, "mpi": {"cpu"}, "ucc": {"cpu", "cuda"}}

_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
_THIS_FILE = str(Path(__file__).resolve())


class CollectiveDeviceError(RuntimeError):
    """A collective that the declared backend would refuse (strict mode)."""


def supported_devices(backend: str) -> set[str]:
    """Device types a backend string serves: "nccl" -> {cuda}; "cpu:gloo,cuda:nccl" -> {cpu, cuda}."""
    if ":" in backend:
        return {part.split(":")[0].strip() for part in backend.split(",")}
    return set(BACKEND_DEVICES.get(backend.lower(), {"cpu", "cuda"}))


def _tensors(value, depth: int = 0):
    """The tensors in a (nested) argument: a tensor, or lists / tuples / dicts of them."""
    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 6 and isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item, depth + 1)
    elif depth < 6 and isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item, depth + 1)


def _call_site() -> tuple[str, bool]:
    """Where the collective was issued: 'file.py:line in function', followed by that function's caller ('<-'), and
    whether the issuing code is torch's own."""
    frames = [f for f in traceback.extract_stack()[:-1] if str(Path(f.filename).resolve()) != _THIS_FILE]
    if not frames:
        return "?", False
    internal = str(Path(frames[-1].filename).resolve()).startswith(_TORCH_DIR)
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in reversed(frames[-2:])), internal


@dataclass
class Call:
    name: str
    site: str
    devices: list[str]

    def as_dict(self) -> dict:
        return {"name": self.name, "site": self.site, "devices": self.devices}


@dataclass
class CollectiveGuard:
    """Wraps the torch.distributed collectives; `backend` is the one the checks assume (e.g. "nccl")."""

    backend: str
    strict: bool = True
    # A pretended run on the CPU: the device type that stands for the rank's GPU (tensors on it are the ones a real
    # run would have there), e.g. "cpu" for `--device cpu` under a pretended "nccl".
    stand_in: str | None = None
    calls: list[Call] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    init_kwargs: dict = field(default_factory=dict)
    _originals: dict = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local)

    # --- the checks -------------------------------------------------------------------------------------------
    def check(self, name: str, args: tuple, kwargs: dict, site: str) -> list[str]:
        group = kwargs.get("group")
        backend = self.backend if group in (None, dist.group.WORLD) else str(dist.get_backend(group))  # own group
        devices = supported_devices(backend) | ({self.stand_in} if self.stand_in else set())
        problems = []
        tensors = list(_tensors((args, kwargs)))
        if name in TENSOR_COLLECTIVES:
            refused = [t for t in tensors if t.device.type not in devices]
            if refused:
                kinds = ", ".join(dict.fromkeys(f"{t.device.type} {str(t.dtype).removeprefix('torch.')} tensor "
                                                f"{list(t.shape)}" for t in refused))
                problems.append(f"{name} of a {kinds} at {site}: backend {backend} has no {refused[0].device.type}"
                                f" support (\"No backend type associated with device type {refused[0].device.type}\")")
            elif "cpu" not in devices and torch.cuda.is_available():
                current = torch.cuda.current_device()
                elsewhere = sorted({str(t.device) for t in tensors if t.device.index not in (None, current)})
                if elsewhere:
                    problems.append(f"{name} of tensors on {', '.join(elsewhere)} at {site}, but this rank's current "
                                    f"device is cuda:{current}")
        elif name in OBJECT_COLLECTIVES:
            for t in tensors:
                if t.device.type != "cpu":
                    problems.append(f"{name} at {site} pickles a {t.device} tensor: it is unpickled onto "
                                    f"{t.device} on every rank (a GPU another rank may not have); send CPU data")
            if "cpu" not in devices:
                problems += self._object_device_problems(name, site)
        elif name in BARRIERS and "cpu" not in devices and not self.init_kwargs.get("device_id"):
            self._note(f"{name} at {site} under {backend} without init_process_group(device_id=...): NCCL "
                       f"guesses the rank's GPU from torch.cuda.current_device()")
        return problems

    def _object_device_problems(self, name: str, site: str) -> list[str]:
        """Under NCCL an object collective stages its payload on cuda:current_device()."""
        if not torch.cuda.is_available():
            self._note(f"{name} at {site}: under {self.backend} its payload goes through cuda:current_device(); each "
                       f"rank must call torch.cuda.set_device(LOCAL_RANK) first (not checkable without CUDA)")
            return []
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        current = torch.cuda.current_device()
        if torch.cuda.device_count() > local_rank and current != local_rank:
            return [f"{name} at {site}: current CUDA device is cuda:{current} but LOCAL_RANK is {local_rank}: the "
                    f"ranks of a node would all stage objects on one GPU (torch.cuda.set_device(LOCAL_RANK) missing)"]
        return []

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # --- patching ---------------------------------------------------------------------------------------------
    def _wrap(self, name: str, original):
        guard = self

        def wrapper(*args, **kwargs):
            if getattr(guard._local, "busy", False):
                return original(*args, **kwargs)
            site, internal = _call_site()
            if not internal:
                tensors = list(_tensors((args, kwargs)))
                guard.calls.append(Call(name, site, sorted({str(t.device) for t in tensors})))
                problems = guard.check(name, args, kwargs, site)
                guard.violations += problems
                if problems and guard.strict:
                    raise CollectiveDeviceError("\n".join(problems))
            guard._local.busy = True
            try:
                return original(*args, **kwargs)
            finally:
                guard._local.busy = False

        wrapper.__wrapped__ = original
        return wrapper

    def _wrap_init(self, original):
        guard = self

        def init_process_group(*args, **kwargs):
            guard.init_kwargs = {"backend": kwargs.get("backend", args[0] if args else None),
                                 "device_id": str(kwargs["device_id"]) if kwargs.get("device_id") is not None
                                 else None, "timeout": str(kwargs.get("timeout"))}
            if "cpu" not in supported_devices(guard.backend) and guard.init_kwargs["device_id"] is None:
                guard._note(f"init_process_group without device_id under {guard.backend}: the communicator binds "
                            f"its GPU lazily (torch warns that barrier() may hang on a wrong rank-to-GPU mapping)")
            return original(*args, **kwargs)

        init_process_group.__wrapped__ = original
        return init_process_group

    def install(self) -> CollectiveGuard:
        for name in (*TENSOR_COLLECTIVES, *OBJECT_COLLECTIVES, *BARRIERS):
            if hasattr(dist, name) and name not in self._originals:
                self._originals[name] = getattr(dist, name)
                setattr(dist, name, self._wrap(name, self._originals[name]))
        if "init_process_group" not in self._originals:
            self._originals["init_process_group"] = dist.init_process_group
            dist.init_process_group = self._wrap_init(dist.init_process_group)
        return self

    def uninstall(self) -> None:
        for name, original in self._originals.items():
            setattr(dist, name, original)
        self._originals.clear()

    def report(self) -> dict:
        return {"backend": self.backend, "init": self.init_kwargs, "calls": [c.as_dict() for c in self.calls],
                "violations": self.violations, "notes": self.notes}


def install(backend: str, strict: bool = False, stand_in: str | None = None) -> CollectiveGuard:
    """Guard this process's collectives from now on (never uninstalled); see the module docstring."""
    return CollectiveGuard(backend, strict, stand_in=stand_in).install()


@contextmanager
def guard_collectives(backend: str = "nccl", strict: bool = True):
    """Within the block, check every collective as if the default group's backend were `backend`."""
    guard = CollectiveGuard(backend, strict).install()
    try:
        yield guard
    finally:
        guard.uninstall()
