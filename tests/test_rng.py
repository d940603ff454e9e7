"""rng.py: RNG states through a checkpoint file, and per-sample seeding."""

from __future__ import annotations

import random

import numpy as np
import torch

import checkpoint as ckpt
import rng
from checkpoint import load_checkpoint


def test_rng_states_survive_a_checkpoint_file(tmp_path):
    state = rng.rng_state()
    first = (torch.rand(4), np.random.rand(4), random.random())
    ckpt.save_checkpoint_atomic({"rng": [state]}, tmp_path / "c.pth")
    rng.set_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"][0])
    again = (torch.rand(4), np.random.rand(4), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
    with rng.seeded_rngs(7):
        a = torch.rand(2), np.random.rand(), random.random()
    after = torch.rand(1)
    rng.set_rng_state(state)
    torch.rand(4)
    with rng.seeded_rngs(7):  # the same draws whatever came before, and the caller's streams are untouched
        b = torch.rand(2), np.random.rand(), random.random()
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:] and torch.equal(torch.rand(1), after)


def test_seeded_rngs_gives_torch_numpy_and_python_independent_streams():
    # Seeded with one integer, torch and numpy run the same MT19937 stream: torch's raw 31-bit draws reappear in
    # numpy's (torch takes every other word). Under seeded_rngs they share none.
    torch.manual_seed(7)
    np.random.seed(7)
    assert set(torch.randint(0, 2**31, (8,)).tolist()) <= set(np.random.randint(0, 2**31, 16).tolist())
    for seed in (7, (0, 3, 12), (5, 0, 0)):
        with rng.seeded_rngs(seed):
            drawn = torch.randint(0, 2**31, (64,)).tolist(), np.random.randint(0, 2**31, 128).tolist(), \
                [random.getrandbits(31) for _ in range(128)]
        assert not set(drawn[0]) & set(drawn[1]) and not set(drawn[0]) & set(drawn[2])
        assert not set(drawn[1]) & set(drawn[2])
    with rng.seeded_rngs((0, 3, 12)):  # (seed, epoch, index): a clip's draws are its own
        a = torch.rand(3)
    with rng.seeded_rngs((0, 3, 13)):
        b = torch.rand(3)
    assert not torch.equal(a, b)
