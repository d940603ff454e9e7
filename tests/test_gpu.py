"""What only a GPU can show: host synchronisations of the training steps, the device augmentation on CUDA against the
CPU, a model and a checkpoint trained on the GPU giving the CPU's outputs, the scripts' collectives in a real NCCL
group, and two processes sharing one GPU staying in sync. Skipped without CUDA; benchmarks/gpu_check.sh runs them
(`pytest -m gpu tests/test_gpu.py`). Their CPU counterparts: tests/test_collective_devices.py,
tests/test_distributed_faults.py, tests/test_run_class_finetuning.py (the same helpers, tests/support/demo_runs.py)."""

from __future__ import annotations

import argparse
import warnings

import pytest
import timm
import torch
from support.demo_runs import (
    assert_no_collective_refused_by_nccl,
    assert_predictions_agree,
    assert_ranks_in_sync,
    demo_clips,
    demo_videos,
    finetune_flags,
    pretrain_flags,
)
from support.fault_injection import launch
from timm.utils import ModelEmaV3
from torch import nn

import cli
import engine
import modeling_finetune  # noqa: F401  (registers the models)
import run_class_finetuning as rcf
import training

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")
TIMEOUT = 120  # seconds per launched run (a hang fails)
FINETUNE, PRETRAIN = "run_class_finetuning.py", "run_mae_pretraining.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("gpu_data")
    return {FINETUNE: demo_clips(folder / "clips"), PRETRAIN: demo_videos(folder / "videos")}


def demo_flags(script: str, data: dict, out, *extra: str, device: str = "cuda") -> list[str]:
    """The script's tiny demo, on the rank's GPU by default."""
    flags = finetune_flags if script == FINETUNE else pretrain_flags
    return flags(data[script], out, "--batch_size", "2", *extra, device=device)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_dim128_no_depth_patch16_64", img_size=32, depth=1, num_classes=5,
                             all_frames=16, lg_region_size=[2, 1, 2], lg_classify_token_type="region", fusion="add")


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 16, 32, 32, generator=gen).pin_memory(), torch.randint(0, 5, (4,), generator=gen))
            for _ in range(n)]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_training_steps_synchronise_at_most_once_per_log_every_steps(amp):
    model = tiny_model().to(CUDA)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    flags = argparse.Namespace(opt="adamw", weight_decay=0.05, momentum=0.9, opt_eps=1e-8, opt_betas=None)
    optimizer = training.create_optimizer(flags, model, 1e-3, loss_scaling=scaler is not None)
    ema = ModelEmaV3(model, decay=0.99) if amp == "fp16" else None
    recipe = engine.StepRecipe(engine.Precision(amp, scaler), max_norm=1.0, model_ema=ema, log_every=5)
    run = dict(criterion=nn.CrossEntropyLoss(), recipe=recipe)
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
    engine.train_one_epoch(model, batches(4), optimizer, CUDA, criterion=nn.CrossEntropyLoss(),
                           recipe=engine.StepRecipe(engine.Precision("bf16")))
    clips = batches(1)[0][0]
    with torch.no_grad():
        on_gpu = model.eval()(clips.to(CUDA)).float().cpu()
        on_cpu = model.cpu()(clips)
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("script", [FINETUNE, PRETRAIN])
def test_the_scripts_collectives_run_in_a_one_rank_nccl_group(data, tmp_path, script):
    """A real NCCL group (one rank, made before the script runs): NCCL refuses a CPU tensor itself, and the guard
    records every collective against NCCL's device rules."""
    result = launch(script, demo_flags(script, data, tmp_path / "out"), tmp_path, nproc=1, timeout=TIMEOUT,
                    wrapper=["--single_process_group", "nccl", "--pretend_backend", "nccl"])
    assert_no_collective_refused_by_nccl(result)


@pytest.mark.parametrize(("script", "extra"), [
    (FINETUNE, ["--amp", "fp16", "--update_freq", "2", "--fusion", "add", "--compile"]), (PRETRAIN, [])])
def test_two_processes_on_one_gpu_end_with_identical_parameters(data, tmp_path, script, extra):
    """Two torchrun nodes on one GPU (NCCL refuses two ranks on one device: gloo with CUDA tensors)."""
    out = tmp_path / "out"
    result = launch(script, demo_flags(script, data, out, *extra), tmp_path, timeout=TIMEOUT,
                    wrapper=["--backend", "gloo"])
    assert result.returncodes == [0, 0], result.tail()
    digests = {report["param_digest"] for report in result.reports}
    assert len(digests) == 1, digests
    assert_ranks_in_sync(result, out / "checkpoint-0.pth")


@pytest.fixture
def backend_flags_kept():
    """The scripts set TF32 and cuDNN's benchmark mode for the process: put back for the other tests."""
    kept = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = kept


def test_a_checkpoint_trained_on_the_gpu_evaluates_alike_on_the_cpu(data, tmp_path, backend_flags_kept):
    """Trained and saved on the GPU; `--eval --resume` on the CPU in float32 is the reference for the GPU in float32
    (TF32 matmuls) and in its default mixed precision."""
    def run(out, *extra: str, device: str = "cuda") -> None:
        rcf.main(cli.parse_args(rcf.get_args_parser(), rcf.DEMO_DEFAULTS, demo_flags(FINETUNE, data, out, *extra,
                                                                                      device=device)))

    run(tmp_path / "train")
    checkpoint = str(tmp_path / "train" / "checkpoint-0.pth")
    for name, device, amp in (("cpu", "cpu", ["--amp", "none"]), ("gpu_fp32", "cuda", ["--amp", "none"]),
                              ("gpu_amp", "cuda", [])):
        run(tmp_path / name, "--eval", "--resume", checkpoint, *amp, device=device)
    assert_predictions_agree(tmp_path / "cpu" / "pred.csv", tmp_path / "gpu_fp32" / "pred.csv", atol=1e-2)
    assert_predictions_agree(tmp_path / "cpu" / "pred.csv", tmp_path / "gpu_amp" / "pred.csv", atol=5e-2)
