"""Preemption that loses nothing: SIGTERM / SIGUSR1 stop a training run after an optimizer step, with a checkpoint.

A signal only sets a flag. The step loops read it in their per-step agreement (engine.StepAgreement), so every
process of a run stops after the same optimizer step; the entry script then writes checkpoint-last.pth of that
step and exits with PREEMPTED. Running the same command again resumes from it, bit-exactly (the same RNG states,
position and averages as the step checkpoints of --save_every_steps). docs/SLURM.md says how a job uses it.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from training import Checkpointer

logger = logging.getLogger(__name__)

PREEMPTED = 75  # the exit status of a preempted, resumable run (sysexits' EX_TEMPFAIL: "try again later")
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # Slurm's preemption / time-limit signal, and --signal=USR1@<s>

_received: list[int] = []  # the signals this process received while handled


def requested() -> bool:
    """Whether this process received a stop signal (the step loops agree on it across processes)."""
    return bool(_received)


def _record(signum: int, frame) -> None:
    if not _received:
        logger.warning("received %s: stopping after the optimizer step in progress, with a checkpoint",
                       signal.Signals(signum).name)
    _received.append(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Around an entry script's main: SIGTERM and SIGUSR1 request a stop instead of killing the process (the
    previous handlers are put back after). DataLoader workers forked inside inherit it, so they are not killed
    either when a job's every process is signalled."""
    previous = {sig: signal.signal(sig, _record) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.clear()


class StopRequested(Exception):
    """Raised by a step loop at a step boundary that every process agreed on: `step` optimizer steps of the epoch
    are done, `meters` holds their averages."""

    def __init__(self, step: int, meters: dict):
        super().__init__(f"stop requested after optimizer step {step}")
        self.step, self.meters = step, meters


@contextmanager
def checkpoint_on_stop(saver: Checkpointer, epoch: int) -> Iterator[None]:
    """Around an epoch's training: a StopRequested is answered with checkpoint-last.pth of that step (every process
    calls the saver; rank 0 writes), then every process exits with PREEMPTED once it is written."""
    try:
        yield
    except StopRequested as stop:
        saver.save(epoch, step=stop.step, meters=stop.meters)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # nobody exits (and makes a launcher stop the others) before the write
        written = f"{saver.run.output_dir}/checkpoint-last.pth written" if saver.enabled else "no checkpoint " \
            "(--no_save_ckpt)"
        logger.warning("preempted at epoch %d after step %d: %s; run the same command again to resume (exit status "
                       "%d)", epoch, stop.step, written, PREEMPTED)
        raise SystemExit(PREEMPTED) from None
