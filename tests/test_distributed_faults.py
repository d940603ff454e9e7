"""Two processes (torchrun, gloo, one CPU process per "node", as on two machines) meeting faults: an
unreadable clip, a NaN on one rank with and without fp16 loss scaling; and gradient accumulation under DDP.

Every run goes through tests/support/fault_injection.py (the entry scripts' command line, a NaN injected at one rank's
forward, per-rank parameters and counts recorded) and is killed after FAULT_TEST_TIMEOUT seconds (default 240): a
hang fails the test instead of blocking it. A normal run of these configurations takes ~15-20 s on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil

import pytest
from support.demo_runs import (
    TRAIN_CLIPS,
    assert_ranks_in_sync,
    demo_clips,
    demo_videos,
    finetune_flags,
    pretrain_flags,
)
from support.fault_injection import launch

import checkpoint as ckpt

pytestmark = pytest.mark.slow
TIMEOUT = float(os.environ.get("FAULT_TEST_TIMEOUT", 240))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return demo_clips(tmp_path_factory.mktemp("faults") / "data")


@pytest.fixture(scope="module")
def clips_one_bad(clips, tmp_path_factory):
    """The demo set with every frame of the first training clip unreadable (found when decoded, not by the
    start-up list check)."""
    data = tmp_path_factory.mktemp("faults_bad") / "data"
    shutil.copytree(clips, data)
    folder = data / (data / "train.csv").read_text().split()[0]
    for frame in folder.iterdir():
        frame.write_bytes(b"not a jpeg")
    return data


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return demo_videos(tmp_path_factory.mktemp("faults_videos") / "videos")


def run(work_dir, script: str, flags: list[str], wrapper: list[str] = ()):
    result = launch(script, flags, work_dir, timeout=TIMEOUT, wrapper=list(wrapper))
    if result.timed_out:
        pytest.fail(f"hang: the 2 processes had not finished after {TIMEOUT:.0f} s and were killed\n{result.tail()}")
    return result


def assert_finished(result) -> None:
    assert result.returncodes == [0, 0], f"the run failed\n{result.tail()}"


def epoch_logs(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines() if line.startswith("{\"train_")]


def assert_steps_accounted(result, out, steps: int) -> int:
    """Each rank applied the same number of optimizer steps, and the steps not applied are those log.txt counts as
    skipped. Returns that count."""
    (epoch,) = epoch_logs(out)
    applied = {report["optimizer_steps"] for report in result.reports}
    assert len(applied) == 1, f"the ranks applied {applied} optimizer steps"
    assert applied.pop() + epoch["train_skipped_steps"] == steps, (steps, epoch["train_skipped_steps"])
    return epoch["train_skipped_steps"]


# --- (a) and (e): one unreadable clip ----------------------------------------------------------------------------

BATCHES = {"partial": ["--batch_size", "5"], "empty": ["--batch_size", "1"],
           "mixup": ["--batch_size", "2", "--mixup", "0.8", "--cutmix", "1.0"]}


@pytest.mark.parametrize("batch", list(BATCHES))
def test_unreadable_training_clip_two_processes(clips_one_bad, tmp_path, batch):
    """One unreadable clip: the batch it was in loses it on its rank (partial: 4 clips of 5), or comes out empty
    (batch 1; or batch 2 with mixup, which drops one more clip for an even batch). Both ranks still finish, with
    identical parameters; every clip is read (no partial last batch), so the bad one is met and recorded once."""
    out = tmp_path / "out"
    result = run(tmp_path, "run_class_finetuning.py", finetune_flags(clips_one_bad, out, *BATCHES[batch]))
    assert_finished(result)
    assert_ranks_in_sync(result, out / "checkpoint-0.pth")
    assert_steps_accounted(result, out, TRAIN_CLIPS // (2 * int(BATCHES[batch][1])))
    (source,) = ckpt.load_checkpoint(out / "checkpoint-0.pth")["bad_samples"]
    assert source.endswith("train.csv:1")
    clip = (clips_one_bad / "train.csv").read_text().split()[0]
    mentions = [output.count(clip) for output in result.outputs]
    assert max(mentions) == 1, f"the unreadable {clip} is logged {mentions} times by the ranks"


def test_unreadable_video_in_pretraining_two_processes(videos, tmp_path):
    """Pretraining, batch 1 per rank: the step whose video is unreadable has no data on that rank."""
    data = tmp_path / "videos"
    shutil.copytree(videos, data)
    (data / (data / "info_clean.csv").read_text().split()[2]).write_bytes(b"not a video")  # the second video
    out = tmp_path / "out"
    result = run(tmp_path, "run_mae_pretraining.py", pretrain_flags(data, out, "--batch_size", "1"))
    assert_finished(result)
    assert_ranks_in_sync(result, out / "checkpoint-0.pth")
    (epoch,) = epoch_logs(out)
    assert math.isfinite(epoch["train_loss"])
    assert list(ckpt.load_checkpoint(out / "checkpoint-0.pth")["bad_samples"]) == [f"{data / 'info_clean.csv'}:2"]


# --- (b) and (c): a NaN on one rank --------------------------------------------------------------------------------

@pytest.mark.parametrize("step", [0, 2])
def test_nan_on_one_rank_under_fp16_loss_scaling_skips_the_step_on_every_rank(clips, tmp_path, step):
    """--amp fp16 (CPU autocast + GradScaler("cpu")): rank 1's forward returns NaN at optimizer step `step` (0: the
    very first micro-batch, before any scale()). The step is skipped on both ranks and the run goes on."""
    out = tmp_path / "out"
    result = run(tmp_path, "run_class_finetuning.py", finetune_flags(clips, out, "--batch_size", "2", "--amp", "fp16"),
                 wrapper=["--nan_on_rank", "1", "--nan_at_step", str(step)])
    assert result.reports[1] is not None and result.reports[1]["nan_injected_at"] == step, result.tail()
    assert_finished(result)
    assert_ranks_in_sync(result, out / "checkpoint-0.pth")
    assert assert_steps_accounted(result, out, TRAIN_CLIPS // 4) >= 1


@pytest.mark.parametrize("script", ["run_class_finetuning.py", "run_mae_pretraining.py"])
def test_nan_on_one_rank_without_scaling_stops_every_rank(clips, videos, tmp_path, script):
    """No loss scaling: rank 1's loss is NaN at step 2. Every rank stops (nonzero exit) within the time limit, each
    saying at which step and which checkpoint is the last good one (written after step 2 by --save_every_steps 1)."""
    out = tmp_path / "out"
    flags = (finetune_flags(clips, out, "--batch_size", "2") if script == "run_class_finetuning.py"
             else pretrain_flags(videos, out, "--batch_size", "1"))
    result = run(tmp_path, script, [*flags, "--amp", "none", "--save_every_steps", "1"],
                 wrapper=["--nan_on_rank", "1", "--nan_at_step", "2"])
    assert all(code not in (0, None) for code in result.returncodes), result.tail()
    last = out / "checkpoint-last.pth"
    for rank, output in enumerate(result.outputs):
        assert re.search(r"step 2\b", output) and f"last good checkpoint: {last}" in output, (
            f"rank {rank} does not say why it stopped\n{result.tail()}")
    assert ckpt.load_checkpoint(last)["step"] == 2


# --- (d): gradient accumulation -------------------------------------------------------------------------------------

ACCUMULATION_TOLERANCE = 1e-5  # max |difference| of any parameter after 2 AdamW steps: float summation order only


@pytest.fixture(scope="module")
def accumulation_runs(clips, tmp_path_factory):
    """2 processes x batch 2 x --update_freq 2, and 2 processes x batch 4: the same clips, augmentation drawn per clip
    (seeded by clip and epoch), no mixup / drop path / erasing / smoothing, and no BatchNorm (fusion none)."""
    deterministic = ["--fusion", "none", "--mixup", "0", "--cutmix", "0", "--drop_path", "0", "--reprob", "0",
                     "--aa", "none", "--smoothing", "0", "--disable_eval_during_finetuning"]
    runs = {}
    for name, extra in (("accumulated", ["--batch_size", "2", "--update_freq", "2"]), ("large", ["--batch_size", "4"])):
        work = tmp_path_factory.mktemp(name)
        result = run(work, "run_class_finetuning.py", finetune_flags(clips, work / "out", *deterministic, *extra),
                     wrapper=["--count_grad_allreduce"])
        assert_finished(result)
        runs[name] = (result, work / "out")
    return runs


def test_gradient_accumulation_equals_a_twice_larger_batch(accumulation_runs):
    accumulated, large = (ckpt.load_checkpoint(accumulation_runs[n][1] / "checkpoint-0.pth")["model"]
                          for n in ("accumulated", "large"))
    for name, (result, out) in accumulation_runs.items():
        assert result.reports[0]["optimizer_steps"] == TRAIN_CLIPS // 8, name
        assert_ranks_in_sync(result, out / "checkpoint-0.pth")
    worst = max((accumulated[k].float() - large[k].float()).abs().max().item() for k in large)
    assert worst <= ACCUMULATION_TOLERANCE, f"parameters differ by up to {worst:.3g}"


def test_gradient_accumulation_all_reduces_once_per_optimizer_step(accumulation_runs):
    """The micro-batches before an optimizer step skip DDP's gradient all-reduce (no_sync): as many all-reduces as
    the run with the twice larger batch."""
    counts = {name: [report["grad_allreduce_calls"] for report in result.reports]
              for name, (result, _) in accumulation_runs.items()}
    assert counts["large"][0] > 0, counts
    assert counts["accumulated"] == counts["large"], f"gradient all-reduces per rank: {counts}"


# --- every fusion trains under DDP without searching for unused parameters ---------------------------------------

@pytest.mark.parametrize("fusion", ["none", "add", "cat", "pos"])
def test_every_fusion_trains_under_ddp(clips, tmp_path, fusion):
    """The parameters no forward reaches (cablock.fc, the pos branch's cls_token, head, to_Mask) are kept out of DDP,
    so it runs without find_unused_parameters; both ranks end with the checkpoint's weights and BatchNorm statistics."""
    out = tmp_path / "out"
    flags = finetune_flags(clips, out, "--fusion", fusion, "--batch_size", "2", "--disable_eval_during_finetuning")
    result = run(tmp_path, "run_class_finetuning.py", flags)
    assert_finished(result)
    assert_ranks_in_sync(result, out / "checkpoint-0.pth")
    assert ckpt.load_checkpoint(out / "checkpoint-0.pth")["args"].fusion == fusion
