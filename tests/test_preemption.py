"""Preemption: a stop signal mid-epoch makes every process finish its step, checkpoint the same step and exit with
preemption.PREEMPTED; the same command then resumes and ends with the uninterrupted run's weights and pred.csv.

The runs go through tests/support/fault_injection.py (per-rank optimizer steps and parameters recorded;
--step_seconds slows each training step so that the signal lands mid-epoch) and are killed after
PREEMPTION_TEST_TIMEOUT seconds (default 300): a hang fails the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support.demo_runs import demo_clips, demo_videos, resumable_finetune_flags, resumable_pretrain_flags
from support.fault_injection import ROOT, _kill_tree, die_with_parent, free_port

import checkpoint as ckpt
import engine
import preemption

TIMEOUT = float(os.environ.get("PREEMPTION_TEST_TIMEOUT", 300))
HARNESS = str(Path(__file__).resolve().parent / "support" / "fault_injection.py")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return demo_clips(tmp_path_factory.mktemp("preempt") / "data")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return demo_videos(tmp_path_factory.mktemp("preempt_videos") / "videos")


def start(script: str, flags: list[str], work: Path, *, nproc: int, step_seconds: float = 0.0) -> subprocess.Popen:
    """The entry script through the harness: one plain process (nproc 0), or torchrun with `nproc` workers (gloo)."""
    work.mkdir(parents=True, exist_ok=True)
    harness = [HARNESS, script, "--report_dir", str(work / "report"), "--step_seconds", str(step_seconds), "--",
               *flags]
    launcher = [] if nproc == 0 else ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                                      "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(work / "output.txt", "w") as log:
        return subprocess.Popen([sys.executable, *launcher, *harness], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)


def finish(proc: subprocess.Popen, work: Path, deadline: float) -> int:
    """Wait for the run (a hang past the deadline fails the test); returns its exit status."""
    try:
        proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        pytest.fail(f"hang: killed after {TIMEOUT:.0f} s\n{output(work)}")
    finally:
        _kill_tree(proc)  # whatever a finished launcher left behind
    return proc.returncode


def output(work: Path) -> str:
    return (work / "output.txt").read_text(errors="replace")[-4000:]


def reports(work: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((work / "report").glob("rank*.json"))]


def run_to_end(script: str, flags: list[str], work: Path, *, nproc: int) -> None:
    proc = start(script, flags, work, nproc=nproc)
    assert finish(proc, work, time.time() + TIMEOUT) == 0, output(work)


def preempt(script: str, flags: list[str], work: Path, out: Path, *, nproc: int, sig: int,
            target=lambda proc: proc.pid) -> float:
    """Start a run with slow steps, send `sig` to `target(proc)` once its first step checkpoint exists, wait for it
    to stop; returns the seconds from the signal to the exit of every process."""
    deadline = time.time() + TIMEOUT
    proc = start(script, flags, work, nproc=nproc, step_seconds=1.0)
    while not (out / ckpt.LAST).is_file():
        if proc.poll() is not None or time.time() > deadline:
            finish(proc, work, deadline)
            pytest.fail(f"the run ended before its first step checkpoint\n{output(work)}")
        time.sleep(0.05)
    sent = time.time()
    os.kill(target(proc), sig)
    code = finish(proc, work, deadline)
    seconds = time.time() - sent
    if nproc == 0:
        assert code == preemption.PREEMPTED, f"exit status {code}\n{output(work)}"
    else:  # torchrun itself reports a failed worker; each worker exited with PREEMPTED
        assert [r["exit"] for r in reports(work)] == [f"SystemExit: {preemption.PREEMPTED}"] * nproc, output(work)
    return seconds


def assert_stopped_together(work: Path, out: Path, steps_per_epoch: int) -> int:
    """checkpoint-last.pth is mid-epoch 0, of the step every process stopped after, and holds their parameters
    (BatchNorm statistics are rank 0's: DDP gives them to every rank at each forward)."""
    last = ckpt.load_checkpoint(out / ckpt.LAST)
    assert last["epoch"] == 0 and 1 <= last["step"] < steps_per_epoch, (last["epoch"], last["step"])
    ranks = reports(work)
    parameters = {k for k in last["model"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert [r["optimizer_steps"] for r in ranks] == [last["step"]] * len(ranks)
    for report in ranks:
        params = torch.load(work / "report" / f"params-rank{report['rank']}.pt")
        differ = [k for k, v in last["model"].items() if k in parameters and not torch.equal(params[k], v)]
        assert not differ, f"rank {report['rank']} differs in {differ}"
    return last["step"]


def assert_same_end(a: Path, b: Path, final: str, predictions: bool = True) -> None:
    """Bit-identical final weights and optimizer state, and (fine-tuning) predictions and metrics."""
    ca, cb = ckpt.load_checkpoint(a / final), ckpt.load_checkpoint(b / final)
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    for key, state in ca["optimizer"]["state"].items():
        assert all(torch.equal(x, y) for x, y in zip(state.values(), cb["optimizer"]["state"][key].values()))
    if predictions:
        assert (a / "pred.csv").read_text() == (b / "pred.csv").read_text()
        assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())


# --- without a launcher: the flag and the agreement ---------------------------------------------------------------

def test_a_stop_signal_sets_the_flag_and_the_handlers_are_put_back():
    before = signal.getsignal(signal.SIGUSR1)
    with preemption.stop_on_signals():
        assert not preemption.requested()
        agreement = engine.StepAgreement()
        assert agreement.before_forward(True, None, stop=preemption.requested()) == {"train": True, "stop": False}
        os.kill(os.getpid(), signal.SIGUSR1)
        assert preemption.requested()
        assert agreement.before_forward(True, None, stop=preemption.requested()) == {"train": True, "stop": True}
    assert signal.getsignal(signal.SIGUSR1) is before and not preemption.requested()


# --- one process, SIGUSR1 ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigusr1_one_process_stops_mid_epoch_and_resumes_exactly(clips, tmp_path):
    run_to_end("run_class_finetuning.py", resumable_finetune_flags(clips, tmp_path / "ref" / "out"),
               tmp_path / "ref", nproc=0)
    out = tmp_path / "run" / "out"
    seconds = preempt("run_class_finetuning.py", resumable_finetune_flags(clips, out), tmp_path / "run", out, nproc=0,
                      sig=signal.SIGUSR1)
    step = assert_stopped_together(tmp_path / "run", out, steps_per_epoch=10)
    assert "preempted at epoch 0 after step" in output(tmp_path / "run")
    print(f"one process: stopped after step {step}, {seconds:.2f} s from SIGUSR1 to exit")
    run_to_end("run_class_finetuning.py", resumable_finetune_flags(clips, out), tmp_path / "resumed", nproc=0)
    assert_same_end(tmp_path / "ref" / "out", out, "checkpoint-1.pth")


@pytest.mark.slow
def test_sigterm_pretraining_one_process_resumes_exactly(videos, tmp_path):
    run_to_end("run_mae_pretraining.py", resumable_pretrain_flags(videos, tmp_path / "ref" / "out"),
               tmp_path / "ref", nproc=0)
    out = tmp_path / "run" / "out"
    preempt("run_mae_pretraining.py", resumable_pretrain_flags(videos, out), tmp_path / "run", out, nproc=0,
            sig=signal.SIGTERM)
    assert_stopped_together(tmp_path / "run", out, steps_per_epoch=10)
    run_to_end("run_mae_pretraining.py", resumable_pretrain_flags(videos, out), tmp_path / "resumed", nproc=0)
    assert_same_end(tmp_path / "ref" / "out", out, "checkpoint-1.pth", predictions=False)


# --- two processes under torchrun (gloo) -------------------------------------------------------------------------

def worker_pids(proc: subprocess.Popen) -> list[int]:
    """torchrun's workers (its child processes), in start order."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return sorted(int(pid) for pid in children)


@pytest.mark.slow
@pytest.mark.parametrize("whom", ["torchrun", "one worker"])
def test_sigterm_two_processes_stop_after_the_same_step_and_resume_exactly(clips, tmp_path, whom):
    """SIGTERM to torchrun (it forwards it to both workers), or to one worker only (the other learns it in the
    step agreement): both stop after the same step."""
    run_to_end("run_class_finetuning.py", resumable_finetune_flags(clips, tmp_path / "ref" / "out"),
               tmp_path / "ref", nproc=2)
    out = tmp_path / "run" / "out"
    target = (lambda proc: proc.pid) if whom == "torchrun" else (lambda proc: worker_pids(proc)[-1])
    seconds = preempt("run_class_finetuning.py", resumable_finetune_flags(clips, out), tmp_path / "run", out, nproc=2,
                      sig=signal.SIGTERM, target=target)
    step = assert_stopped_together(tmp_path / "run", out, steps_per_epoch=5)
    print(f"two processes, SIGTERM to {whom}: stopped after step {step}, {seconds:.2f} s from the signal to exit")
    with contextlib.suppress(FileNotFoundError):
        (tmp_path / "run" / "report").rename(tmp_path / "run" / "report-preempted")
    run_to_end("run_class_finetuning.py", resumable_finetune_flags(clips, out), tmp_path / "resumed", nproc=2)
    assert_same_end(tmp_path / "ref" / "out", out, "checkpoint-1.pth")
