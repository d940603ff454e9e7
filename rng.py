"""Resuming bit-exactly: every RNG a training step draws from, captured, restored and seeded per sample."""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch

from distributed import all_gather_objects


def rng_state() -> dict:
    """This process's torch (CPU and its current GPU), numpy and Python RNG states, in a form `load_checkpoint`
    accepts."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's own GPU only: resumable on another GPU count
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if isinstance(state.get("cuda"), torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


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
