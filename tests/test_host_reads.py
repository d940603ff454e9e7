"""The training steps read the device at most once per --log_every optimizer steps.

On a GPU every read of a device tensor's value (`.item()`, `.tolist()`, `.cpu()`, `bool(t)`, `float(t)`, ...) waits
for the device to finish its queue: the CPU can no longer run ahead. Here, on the CPU, each such call is counted
during an epoch of the real (tiny) models, except the reads of values that live on the host on a GPU as well:
the optimizer's step counters (torch keeps them on the CPU) and the loader's masks (`visible_count`, read before they
are sent). tests/test_gpu.py counts the real synchronisations on CUDA.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from contextlib import contextmanager

import pytest
import timm
import torch
from test_run_mae_pretraining import tiny_model_and_batch
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn

import engine
import engine_pretrain
import modeling_finetune  # noqa: F401  (registers the models)
import training

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")
HOST_SIDE = {"visible_count"}  # functions that read the loader's CPU tensors, before they go to the device
STEPS = 8


@contextmanager
def counting_host_reads(optimizer: torch.optim.Optimizer):
    """Count every read of a tensor's value in the block, by call site (the innermost frame outside torch)."""
    sites, busy = Counter(), [False]
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counted(tensor: torch.Tensor) -> bool:
        if any(tensor is state.get("step") for state in optimizer.state.values()):
            return False
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_name in HOST_SIDE:
                return False
            frame = frame.f_back
        return True

    def wrap(name, original):
        def read(self, *args, **kwargs):
            if not busy[0]:
                busy[0] = True
                try:
                    if counted(self):
                        frame = sys._getframe(1)
                        sites[f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno} {name}"] += 1
                finally:
                    busy[0] = False
            return original(self, *args, **kwargs)
        return read

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield sites
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def finetune_reads(log_every: int, fp16: bool = False) -> Counter:
    """fp16: autocast with a loss scaler, the optimizer the training scripts make under loss scaling, and an EMA."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_dim128_no_depth_patch16_64", img_size=32, depth=1, num_classes=5,
                              all_frames=16, lg_region_size=[2, 1, 2], lg_classify_token_type="region", fusion="add")
    args = argparse.Namespace(opt="adamw", weight_decay=0.05, momentum=0.9, opt_eps=1e-8, opt_betas=None)
    optimizer = training.create_optimizer(args, model, 1e-3, loss_scaling=fp16)
    precision = engine.Precision("fp16", torch.amp.GradScaler("cpu")) if fp16 else engine.FLOAT32
    ema = ModelEmaV3(model, decay=0.9) if fp16 else None
    gen = torch.Generator().manual_seed(0)
    loader = [(torch.randn(2, 3, 16, 32, 32, generator=gen), torch.randint(0, 5, (2,), generator=gen))
              for _ in range(STEPS)]
    with counting_host_reads(optimizer) as sites:
        stats = engine.train_one_epoch(model, loader, optimizer, torch.device("cpu"), criterion=nn.CrossEntropyLoss(),
                                       recipe=engine.StepRecipe(precision, max_norm=1.0, model_ema=ema,
                                                                log_every=log_every))
    assert math.isfinite(stats["loss"]) and stats["skipped_steps"] == 0
    return sites


def fp16_finetune_reads(log_every: int) -> Counter:
    return finetune_reads(log_every, fp16=True)


def pretrain_reads(log_every: int) -> Counter:
    model, videos, masks = tiny_model_and_batch()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    loader = [(videos, masks)] * STEPS
    with counting_host_reads(optimizer) as sites:
        stats = engine_pretrain.train_one_epoch(model, loader, optimizer, torch.device("cpu"),
                                                objective=engine_pretrain.Objective(),
                                                recipe=engine.StepRecipe(log_every=log_every))
    assert math.isfinite(stats["loss"])
    return sites


@pytest.mark.parametrize("count_reads", [finetune_reads, fp16_finetune_reads, pretrain_reads])
def test_at_most_one_host_read_per_log_every_steps(count_reads):
    # Bound: one read per log_every steps, plus the epoch's end (the last steps' values and the epoch averages).
    for log_every in (4,):
        sites = count_reads(log_every)
        assert sum(sites.values()) <= STEPS // log_every + 2, dict(sites)
    every_step = count_reads(1)  # the counter sees them: one per step
    assert sum(every_step.values()) >= STEPS, dict(every_step)
