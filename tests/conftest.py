"""Shared fixtures (the constants they use live in tests/support/configs.py)."""

from __future__ import annotations

import pytest
import torch
from support.configs import TINY


@pytest.fixture
def clip() -> torch.Tensor:
    size = TINY["img_size"]
    return torch.randn(2, 3, TINY["all_frames"], size, size, generator=torch.Generator().manual_seed(1))
