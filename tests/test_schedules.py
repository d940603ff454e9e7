"""schedules.py: the learning-rate and weight-decay schedules."""

from __future__ import annotations

import numpy as np
import pytest

import schedules


def test_cosine_schedule_warms_up_from_zero_then_decays_to_the_minimum():
    schedule = schedules.cosine_scheduler(1e-3, 1e-6, epochs=4, niter_per_ep=10, warmup_epochs=1)
    assert len(schedule) == 40
    assert schedule[0] == 0 and schedule[9] == pytest.approx(1e-3)
    assert schedule[10] == pytest.approx(1e-3)
    assert schedule[-1] == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6) * (1 + np.cos(np.pi * 29 / 30)))
    assert np.all(np.diff(schedule[10:]) <= 0)
    short = schedules.cosine_scheduler(1e-3, 1e-6, epochs=1, niter_per_ep=10, warmup_epochs=5)
    assert len(short) == 10 and short[0] == 0 and short[-1] == pytest.approx(1e-3 * 9 / 49)
