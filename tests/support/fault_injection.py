"""Run an entry script with faults injected and per-rank facts recorded: the harness of the distributed tests.

    python tests/support/fault_injection.py run_class_finetuning.py --nan_on_rank 1 --nan_at_step 2 --report_dir R \
        -- FLAGS

runs `run_class_finetuning.py FLAGS` exactly as its `__main__` block does (runpy), in this process (under torchrun:
in each rank), after patching only library entry points, so that it survives refactoring of the scripts:

- the model: the first model built through `timm.create_model` (looked up after this wrapper starts) gets a forward
  hook; on rank --nan_on_rank its --nan_at_step-th forward in training mode (0-based, counted over the whole run;
  = the optimizer step with --update_freq 1) returns NaN (tuples: their first element), so loss and gradients are
  NaN as after a real overflow;
- --step_seconds S: every training-mode forward of that model first sleeps S seconds (a slow step, so that a signal
  sent by a test lands mid-epoch);
- collectives: `torch.distributed.<collective>` is wrapped by tests/support/collective_guard.py, which records each call
  (and checks its devices against --pretend_backend, e.g. nccl while the group really is gloo);
- optimizer steps: counted with torch.optim's global step hook (a step GradScaler skips is not counted);
- DDP gradient all-reduces (--count_grad_allreduce): a counting all-reduce comm hook on every DDP model;
- host syncs (--count_syncs, CUDA only): torch.cuda.set_sync_debug_mode("warn") after the first optimizer step;
- --backend / --single_process_group: the group's backend forced (2 ranks on one GPU: gloo), or a 1-rank group
  made before the script runs (a single process then runs its collectives, e.g. on NCCL).

With --report_dir, each rank writes rank<R>.json (what happened, whether the script raised) and params-rank<R>.pt
(the final state_dict of that first model), also when the script fails. `launch()` runs this under torchrun with a
hard wall-clock limit (the process groups are killed: a hang fails, it never blocks the caller).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("script", help="the entry script, e.g. run_class_finetuning.py (relative to the repository)")
    p.add_argument("--nan_on_rank", type=int, default=-1, help="rank whose training forward returns NaN (-1: none)")
    p.add_argument("--nan_at_step", type=int, default=0, help="which training-mode forward of that rank (0-based)")
    p.add_argument("--step_seconds", type=float, default=0.0, help="sleep this long in every training forward")
    p.add_argument("--report_dir", default="", help="write rank<R>.json and params-rank<R>.pt here")
    p.add_argument("--pretend_backend", default="any",
                   help="check every collective as if the group's backend were this (nccl, cpu:gloo,cuda:nccl)")
    p.add_argument("--stand_in_device", default=None,
                   help="with --pretend_backend: the device type standing for the rank's GPU (e.g. cpu for --device "
                        "cpu): tensors on it are accepted")
    p.add_argument("--backend", default="", help="init_process_group uses this backend, whatever the script asks")
    p.add_argument("--single_process_group", default="", metavar="BACKEND",
                   help="without torchrun: make a 1-rank group of BACKEND first, so the script's collectives run")
    p.add_argument("--count_grad_allreduce", action="store_true", help="count DDP's gradient all-reduces")
    p.add_argument("--count_syncs", action="store_true", help="count CUDA host syncs after the first optimizer step")
    p.epilog = "Everything after -- goes to the script."
    return p


@dataclass
class Facts:
    """What one rank records about its run."""

    rank: int
    world_size: int
    script: str
    flags: list[str]
    exit: str = "running"
    train_forwards: int = 0
    nan_injected_at: int | None = None
    optimizer_steps: int = 0  # optimizer.step() calls
    overflow_flags: list = field(default_factory=list, repr=False)  # GradScaler's flags handed to a fused step
    grad_allreduce_calls: int = 0
    syncs: Counter = field(default_factory=Counter)
    models: list = field(default_factory=list, repr=False)
    started: float = field(default_factory=time.time)


def _poison(output):
    import torch

    if isinstance(output, torch.Tensor):
        return output * float("nan")
    if isinstance(output, tuple) and output:
        return (_poison(output[0]), *output[1:])
    raise TypeError(f"cannot inject a NaN into a forward output of type {type(output).__name__}")


def patch_create_model(facts: Facts, nan_on_rank: int, nan_at_step: int, step_seconds: float = 0.0) -> None:
    """Record every model built through timm.create_model; the first one gets the NaN hook on the chosen rank."""
    import timm
    import timm.models
    import torch

    original = timm.create_model

    def hook(module, inputs, output):
        if not module.training:
            return None
        index = facts.train_forwards
        facts.train_forwards += 1
        if index == nan_at_step and facts.rank == nan_on_rank:
            facts.nan_injected_at = index
            print(f"fault_injection: rank {facts.rank}: training forward {index} returns NaN", file=sys.stderr,
                  flush=True)
            return _poison(output)
        return None

    def create_model(*args, **kwargs):
        model = original(*args, **kwargs)
        if not facts.models and nan_on_rank >= 0:
            model.register_forward_hook(torch.compiler.disable(hook))
        if not facts.models and step_seconds > 0:
            model.register_forward_pre_hook(lambda module, _: time.sleep(step_seconds) if module.training else None)
        facts.models.append(model)
        return model

    timm.create_model = timm.models.create_model = create_model


def patch_optimizer_steps(facts: Facts, count_syncs: bool) -> None:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def post_step(optimizer, args, kwargs):
        facts.optimizer_steps += 1
        if getattr(optimizer, "found_inf", None) is not None:  # a fused step that GradScaler may have skipped
            facts.overflow_flags.append(optimizer.found_inf.detach().clone())  # read at the end: no sync here
        if count_syncs and facts.optimizer_steps == 1 and torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("warn")

    register_optimizer_step_post_hook(post_step)
    if count_syncs:
        warnings.filterwarnings("always", message=".*synchronizing CUDA operation.*")
        show = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            if "synchronizing CUDA operation" not in str(message):
                return show(message, category, filename, lineno, file, line)
            frames = [f for f in traceback.extract_stack()[:-1]
                      if str(ROOT) in f.filename and "fault_injection" not in f.filename]
            site = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else \
                f"{Path(filename).name}:{lineno}"
            facts.syncs[site] += 1
            return None

        warnings.showwarning = showwarning


def patch_ddp(facts: Facts) -> None:
    """A counting copy of DDP's default all-reduce on every DDP model (one call per gradient bucket)."""
    import torch
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    ddp = torch.nn.parallel.DistributedDataParallel
    original = ddp.__init__

    def counting_hook(state, bucket):
        facts.grad_allreduce_calls += 1
        return allreduce_hook(state, bucket)

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.register_comm_hook(None, counting_hook)

    ddp.__init__ = __init__


def patch_backend(backend: str) -> None:
    import torch.distributed as dist

    original = dist.init_process_group

    def init_process_group(*args, **kwargs):
        if dist.is_initialized():  # the wrapper's own 1-rank group
            return None
        if args:
            args = (backend, *args[1:])
        else:
            kwargs["backend"] = backend
        return original(*args, **kwargs)

    dist.init_process_group = init_process_group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def state_digest(state_dict) -> str:
    """sha256 over the names and bytes of a state_dict's tensors."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_report(facts: Facts, report_dir: Path, guard) -> None:
    import torch

    report_dir.mkdir(parents=True, exist_ok=True)
    report = {"rank": facts.rank, "world_size": facts.world_size, "script": facts.script, "flags": facts.flags,
              "exit": facts.exit, "seconds": time.time() - facts.started, "train_forwards": facts.train_forwards,
              "nan_injected_at": facts.nan_injected_at,
              "optimizer_steps": facts.optimizer_steps - int(sum(flag.item() for flag in facts.overflow_flags)),
              "grad_allreduce_calls": facts.grad_allreduce_calls, "models_built": len(facts.models),
              "syncs": {"total": sum(facts.syncs.values()), "sites": dict(facts.syncs.most_common(20))},
              "collectives": guard.report() if guard is not None else None}
    if facts.models:
        state = {k: v.detach().cpu().clone() for k, v in facts.models[0].state_dict().items()}
        torch.save(state, report_dir / f"params-rank{facts.rank}.pt")
        report["param_digest"] = state_digest(state)
    (report_dir / f"rank{facts.rank}.json").write_text(json.dumps(report, indent=1))


def main(argv: list[str] | None = None) -> None:
    die_with_parent()  # torchrun's agent killed (by launch's time limit): this rank goes too
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    opts, flags = get_args_parser().parse_args(argv[:split]), argv[split + 1:]
    script = Path(opts.script) if Path(opts.script).is_absolute() else ROOT / opts.script
    sys.path[:1] = [str(script.parent), str(TESTS)]  # as `python SCRIPT` would, plus collective_guard
    import collective_guard
    import torch.distributed as dist

    facts = Facts(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), script.name, flags)
    patch_create_model(facts, opts.nan_on_rank, opts.nan_at_step, opts.step_seconds)
    patch_optimizer_steps(facts, opts.count_syncs)
    if opts.count_grad_allreduce:
        patch_ddp(facts)
    if opts.backend:
        patch_backend(opts.backend)
    guard = collective_guard.install(opts.pretend_backend, strict=False, stand_in=opts.stand_in_device)
    own_group = False
    if opts.single_process_group and facts.world_size == 1:
        import torch

        if opts.single_process_group == "nccl":
            torch.cuda.set_device(0)
        kwargs = {"device_id": torch.device("cuda", 0)} if opts.single_process_group == "nccl" else {}
        guard._originals["init_process_group"](backend=opts.single_process_group, world_size=1, rank=0,
                                               init_method=f"tcp://127.0.0.1:{free_port()}", **kwargs)
        own_group = True
        if not opts.backend:
            patch_backend(opts.single_process_group)  # the script's own init, if it makes one, is skipped
    sys.argv = [str(script), *flags]
    try:
        runpy.run_path(str(script), run_name="__main__")
        facts.exit = "ok"
    except BaseException as err:
        facts.exit = f"{type(err).__name__}: {err}"
        raise
    finally:
        if opts.report_dir:
            write_report(facts, Path(opts.report_dir), guard)
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------------------
# Launching it under torchrun from a test, with a hard time limit

@dataclass
class Launch:
    """The outcome of `launch`: per rank its exit status, its output and (with a report_dir) its report."""

    returncodes: list[int | None]
    outputs: list[str]
    seconds: float
    timed_out: bool
    reports: list[dict | None]
    report_dir: Path

    def tail(self, chars: int = 2500) -> str:
        return "\n".join(f"----- rank {r} (exit {code}) -----\n{out[-chars:]}"
                         for r, (code, out) in enumerate(zip(self.returncodes, self.outputs)))


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (torchrun starts its workers in sessions of their own: killing the agent's
    process group would leave them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(proc: subprocess.Popen) -> None:
    for pid in [proc.pid, *_descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # each is a group leader (or its group is gone)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent exits, so that nothing outlives a killed test (a no-op elsewhere)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def launch(script: str, flags: list[str], work_dir: Path, *, nproc: int = 2, timeout: float = 240,
           wrapper: list[str] = (), env: dict | None = None) -> Launch:
    """`nproc` torchrun "nodes" of one process each (gloo on CPU), as on separate machines, each running the wrapper;
    killed (process group and all) after `timeout` seconds. Reports go to work_dir/report, outputs to work_dir."""
    work_dir = Path(work_dir)
    report_dir = work_dir / "report"
    work_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    procs = []
    start = time.time()
    with contextlib.ExitStack() as files:
        for rank in range(nproc):
            log = files.enter_context(open(work_dir / f"rank{rank}.out", "w"))  # a file: a chatty rank never blocks
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nproc), "--node_rank", str(rank),
                   "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                   str(Path(__file__).resolve()), script, "--report_dir", str(report_dir), *wrapper, "--", *flags]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, preexec_fn=die_with_parent))
        timed_out = False
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, start + timeout - time.time()))
            except subprocess.TimeoutExpired:
                timed_out = True
                break
        for proc in procs:
            _kill_tree(proc)  # also whatever a finished torchrun left behind
    outputs = [(work_dir / f"rank{rank}.out").read_text(errors="replace") for rank in range(nproc)]
    reports = []
    for rank in range(nproc):
        path = report_dir / f"rank{rank}.json"
        reports.append(json.loads(path.read_text()) if path.is_file() else None)
    codes = [None if timed_out and proc.returncode < 0 else proc.returncode for proc in procs]
    return Launch(codes, outputs, time.time() - start, timed_out, reports, report_dir)


if __name__ == "__main__":
    main()
