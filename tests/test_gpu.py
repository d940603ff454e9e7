"""What only a GPU can show: host synchronisations of the training steps, the device augmentation on CUDA against the
CPU, and a model trained on the GPU giving the CPU's outputs. Skipped without CUDA; benchmarks/gpu_check.sh runs
them (`pytest -m gpu tests/test_gpu.py`)."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from torch import nn

import engine
import modeling_finetune  # noqa: F401  (registers the models)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_dim128_no_depth_patch16_64", img_size=32, depth=1, num_classes=5,
                             all_frames=16, lg_region_size=[2, 1, 2], lg_classify_token_type="region", fusion="add")


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 16, 32, 32, generator=gen).pin_memory(), torch.randint(0, 5, (4,), generator=gen))
            for _ in range(n)]


def test_training_steps_synchronise_at_most_once_per_log_every_steps():
    model = tiny_model().to(CUDA)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    recipe = engine.StepRecipe(engine.Precision("bf16"), max_norm=1.0, log_every=5)
    run = dict(epoch=0, criterion=nn.CrossEntropyLoss(), recipe=recipe)
    engine.train_one_epoch(model, batches(3), optimizer, CUDA, **run)  # warm-up: cuDNN, allocator
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            engine.train_one_epoch(model, batches(20), optimizer, CUDA, **run)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if "synchronizing CUDA operation" in str(w.message)]
    assert len(syncs) <= 20 // 5 + 2, syncs  # one per log_every steps, plus the epoch's end


def test_device_augmentation_on_cuda_gives_the_cpus_clips(tmp_path):
    from test_augment_device import both_paths, write_clips

    _, device = both_paths(write_clips(tmp_path, 3) * 4, num_sample=2)
    loader = torch.utils.data.DataLoader(device, batch_size=6, collate_fn=device.collate)
    frames, params, _ = next(iter(loader))
    augment = device.device_augment()
    on_cpu = augment(frames, params)
    on_cuda = augment(frames.to(CUDA), params).cpu()
    torch.testing.assert_close(on_cuda, on_cpu, rtol=0, atol=2e-2)  # bilinear / bicubic: float rounding only


def test_a_model_trained_on_the_gpu_gives_the_cpus_logits():
    model = tiny_model().to(CUDA)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine.train_one_epoch(model, batches(4), optimizer, CUDA, epoch=0, criterion=nn.CrossEntropyLoss(),
                           recipe=engine.StepRecipe(engine.Precision("bf16")))
    clips = batches(1)[0][0]
    with torch.no_grad():
        on_gpu = model.eval()(clips.to(CUDA)).float().cpu()
        on_cpu = model.cpu()(clips)
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)
