"""The pretraining entry script and epoch loop end to end on a few generated videos: train, log, checkpoint,
resume, pictures, and the checkpoint initialising the fine-tune model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import checkpoint as ckpt
import engine
import engine_pretrain
import run_class_finetuning as rcf
import run_mae_pretraining as rmp
import training
from demo_data import make_demo_videos
from masking_generator import TubeWindowMaskingGenerator
from reconstruction import reconstruct, save_reconstruction_grid


@pytest.fixture(scope="module")
def videos_root(tmp_path_factory):
    return make_demo_videos(tmp_path_factory.mktemp("pretrain") / "videos", per_class=2, num_frames=16, size=32)


def demo_args(root, output_dir, *extra: str):
    """The --demo configuration shrunk to seconds: 32 px, depth 1, two epochs of two steps, no workers."""
    parser = rmp.get_args_parser()
    parser.set_defaults(**rmp.DEMO_DEFAULTS)
    return parser.parse_args([
        "--data_path", str(root / "info_clean.csv"), "--data_root", str(root), "--output_dir", str(output_dir),
        "--input_size", "32", "--lg_region_size", "2", "1", "2", "--part_win_size", "2", "1", "2",
        "--mask_ratio", "0.5", "--encoder_depth", "1", "--decoder_depth", "1", "--epochs", "2",
        "--warmup_epochs", "1", "--batch_size", "4", "--num_workers", "0", "--device", "cpu",
        "--save_ckpt_freq", "1", "--save_recon", "2", *extra])


def test_pretraining_runs_logs_checkpoints_and_resumes(videos_root, tmp_path):
    rmp.main(demo_args(videos_root, tmp_path))
    lines = [json.loads(line) for line in (tmp_path / "log.txt").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1]
    for key in ("train_lr", "train_min_lr", "train_loss", "train_loss_scale", "train_weight_decay",
                "train_grad_norm", "n_parameters"):
        assert all(np.isfinite(line[key]) for line in lines), key
    assert lines[0]["train_weight_decay"] == 0.05
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.pth")) == [
        "checkpoint-0.pth", "checkpoint-1.pth", "checkpoint-last.pth"]
    assert sorted(p.name for p in (tmp_path / "recon").iterdir()) == ["epoch_000.png", "epoch_001.png"]
    assert list(tmp_path.glob("events.out.tfevents.*"))
    checkpoint = ckpt.load_checkpoint(tmp_path / "checkpoint-1.pth")
    assert set(checkpoint) >= {"model", "optimizer", "epoch", "scaler", "args"} and checkpoint["epoch"] == 1

    # A longer schedule in the same folder continues after the newest checkpoint.
    rmp.main(demo_args(videos_root, tmp_path, "--epochs", "3"))
    lines = [json.loads(line) for line in (tmp_path / "log.txt").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1, 2]


def test_a_missing_video_stops_the_run_before_training(videos_root, tmp_path):
    bad_list = tmp_path / "info_clean.csv"
    bad_list.write_text((videos_root / "info_clean.csv").read_text() + "videos/missing.mp4 0\n")
    args = demo_args(videos_root, tmp_path / "out", "--data_path", str(bad_list))
    with pytest.raises(SystemExit, match=r"info_clean.csv:11.*missing.mp4"):
        rmp.main(args)
    assert not (tmp_path / "out" / "log.txt").exists()


def test_unreadable_video_is_skipped_and_counted_then_fails_beyond_the_limit(videos_root, tmp_path):
    import shutil

    from datasets import TooManyBadSamplesError

    data = tmp_path / "videos"
    shutil.copytree(videos_root, data)
    broken = data / (data / "info_clean.csv").read_text().split()[2]  # the second video
    broken.write_bytes(b"not a video")
    args = demo_args(data, tmp_path / "out", "--data_root", str(data), "--data_path", str(data / "info_clean.csv"),
                     "--epochs", "1")
    rmp.main(args)  # one bad video of 10: skipped, the epoch trains on the others
    (line,) = (tmp_path / "out" / "log.txt").read_text().splitlines()
    assert np.isfinite(json.loads(line)["train_loss"])
    assert ckpt.load_checkpoint(tmp_path / "out" / "checkpoint-last.pth")["bad_samples"].keys() == {
        f"{data / 'info_clean.csv'}:2"}
    with pytest.raises(TooManyBadSamplesError, match=rf"1 unreadable samples.*\n.*{broken.name}"):
        rmp.main(demo_args(data, tmp_path / "strict", "--data_root", str(data), "--data_path",
                           str(data / "info_clean.csv"), "--epochs", "1", "--max_bad_samples", "0"))


class Interrupted(Exception):
    pass


def test_resume_mid_epoch_equals_the_uninterrupted_run(videos_root, tmp_path, monkeypatch):
    flags = ("--epochs", "2", "--save_every_steps", "1", "--num_workers", "1", "--save_recon", "0")
    rmp.main(demo_args(videos_root, tmp_path / "whole", *flags))  # 10 videos, batch 4: 2 steps per epoch

    calls = {"n": 0}
    loss = engine_pretrain.reconstruction_loss

    def interrupted_in_the_fourth_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Interrupted
        return loss(*args, **kwargs)

    monkeypatch.setattr(engine_pretrain, "reconstruction_loss", interrupted_in_the_fourth_step)
    with pytest.raises(Interrupted):
        rmp.main(demo_args(videos_root, tmp_path / "resumed", *flags))
    last = ckpt.load_checkpoint(tmp_path / "resumed" / "checkpoint-last.pth")
    assert (last["epoch"], last["step"]) == (1, 1)
    monkeypatch.undo()
    rmp.main(demo_args(videos_root, tmp_path / "resumed", *flags))

    whole, resumed = (ckpt.load_checkpoint(tmp_path / run / "checkpoint-1.pth") for run in ("whole", "resumed"))
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert (tmp_path / "whole" / "log.txt").read_text() == (tmp_path / "resumed" / "log.txt").read_text()


def test_pretrained_checkpoint_initialises_the_demo_fine_tune_model(videos_root, tmp_path):
    rmp.main(demo_args(videos_root, tmp_path, "--epochs", "1"))
    pretrained = ckpt.load_checkpoint(tmp_path / "checkpoint-0.pth")["model"]
    parser = rcf.get_args_parser()
    parser.set_defaults(**rcf.DEMO_DEFAULTS)
    args = parser.parse_args(["--input_size", "32", "--depth", "1", "--lg_region_size", "2", "1", "2"])
    model = rcf.create_model(args)
    report = ckpt.load_pretrained(model, tmp_path / "checkpoint-0.pth")
    assert report.mismatched == []
    assert all(k.startswith("decoder.") or k in ("mask_token", "encoder_to_decoder.weight", "norm.weight",
                                                  "norm.bias") for k in report.unexpected), report.unexpected
    # (BatchNorm step counters of the CA branch are filled silently, as in the original.)
    loaded = {k for k in model.state_dict() if k not in report.missing and not k.endswith("num_batches_tracked")}
    assert {f"encoder.{k}" for k in loaded} | {"encoder.norm.weight", "encoder.norm.bias"} == \
        {k for k in pretrained if k.startswith("encoder.")}
    for key in loaded:
        assert torch.equal(model.state_dict()[key], pretrained[f"encoder.{key}"]), key


def test_optimizer_groups_follow_the_original_names(videos_root):
    args = demo_args(videos_root, "unused")
    model = rmp.create_model(args)
    groups = training.create_optimizer(args, model, lr=1e-3).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert "mask_token" in no_decay and "encoder.lg_region_tokens" in decay  # exact-name matching, as the original
    assert all(n.endswith(".bias") or model.get_parameter(n).ndim == 1 or n == "mask_token" for n in no_decay)
    assert "encoder.patch_embed.proj.weight" in decay and len(decay) + len(no_decay) == len(names)
    assert len(groups) == 2 and groups[0]["betas"] == (0.9, 0.95)


def test_normlize_target_reads_true_and_false():
    parser = rmp.get_args_parser()
    assert parser.parse_args([]).normlize_target is True
    assert parser.parse_args(["--normlize_target", "False"]).normlize_target is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--normlize_target", "maybe"])


class _Batch(torch.utils.data.Dataset):
    def __init__(self, videos, masks, repeats):
        self.videos, self.masks, self.repeats = videos, masks, repeats

    def __len__(self):
        return self.repeats

    def __getitem__(self, i):
        return self.videos, self.masks


def tiny_model_and_batch():
    torch.manual_seed(0)
    np.random.seed(0)
    parser = rmp.get_args_parser()
    parser.set_defaults(**rmp.DEMO_DEFAULTS)
    args = parser.parse_args(["--input_size", "32", "--lg_region_size", "2", "1", "2", "--encoder_depth", "1",
                              "--decoder_depth", "1"])
    model = rmp.create_model(args)
    generator = TubeWindowMaskingGenerator((8, 2, 2), 0.5, (1, 2))
    videos = torch.randn(2, 3, 16, 32, 32)
    masks = torch.from_numpy(np.stack([generator() for _ in range(2)]).astype(bool))
    return model, videos, masks


def test_loss_falls_when_fitting_one_batch():
    model, videos, masks = tiny_model_and_batch()
    loader = torch.utils.data.DataLoader(_Batch(videos, masks, 40), batch_size=None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    objective = engine_pretrain.Objective(16, 2, True, 2, None)
    with torch.no_grad():
        before = objective.loss(model(videos, masks), objective.targets(videos, masks)).item()
    stats = engine_pretrain.train_one_epoch(model, loader, optimizer, torch.device("cpu"), objective=objective)
    with torch.no_grad():
        after = objective.loss(model(videos, masks), objective.targets(videos, masks)).item()
    assert after < 0.8 * before, (before, after)
    assert stats["skipped_steps"] == 0 and np.isfinite(stats["grad_norm"])


def test_non_finite_loss_names_the_step_and_the_last_checkpoint(tmp_path):
    model, videos, masks = tiny_model_and_batch()
    with torch.no_grad():
        model.decoder.head.bias.fill_(float("nan"))
    loader = torch.utils.data.DataLoader(_Batch(videos, masks, 2), batch_size=None)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(FloatingPointError, match=r"nan at epoch 3, step 0 .*global step 30.*checkpoint-2.pth"):
        (tmp_path / "checkpoint-2.pth").touch()
        with training.naming_last_checkpoint(tmp_path):
            engine_pretrain.train_one_epoch(model, loader, optimizer, torch.device("cpu"),
                                            objective=engine_pretrain.Objective(),
                                            start=engine.EpochStart(epoch=3, global_step_offset=30))


def test_repeated_sampling_splits_the_clip_and_repeats_its_mask():
    videos = torch.arange(2 * 3 * 8).float().reshape(2, 3, 8, 1, 1).expand(-1, -1, -1, 4, 4)
    mask = torch.tensor([[True, False], [False, True]])
    clips, masks = engine_pretrain.split_samples(videos, mask, 2)
    assert torch.equal(clips[1], videos[0, :, 4:]) and torch.equal(clips[2], videos[1, :, :4])
    assert torch.equal(masks, mask.repeat_interleave(2, dim=0))


class _Oracle(nn.Module):
    """A 'model' that predicts the exact targets: its reconstruction must be the input."""

    def __init__(self, objective):
        super().__init__()
        self.objective = objective

    def forward(self, videos, mask):
        return self.objective.targets(videos, mask)


@pytest.mark.parametrize("group", [None, 2, 4])
@pytest.mark.parametrize("normalize", [True, False])
def test_perfect_predictions_reconstruct_the_input(group, normalize, tmp_path):
    torch.manual_seed(0)
    objective = engine_pretrain.Objective(8, 2, normalize, group, None)
    pixels = torch.rand(2, 3, 8, 16, 16)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None, None]
    videos = (pixels - mean) / torch.tensor([0.229, 0.224, 0.225])[:, None, None, None]
    mask = torch.rand(2, 16) < 0.7
    images = reconstruct(_Oracle(objective), videos, mask, objective)
    np.testing.assert_allclose(images["input"], pixels.permute(0, 2, 3, 4, 1).numpy(), atol=1e-6)
    np.testing.assert_allclose(images["reconstruction"], images["input"], atol=1e-5)
    assert images["input"].shape == (2, 8, 16, 16, 3)
    masked_patches = (images["masked"] == 0.5).all(-1)
    assert masked_patches.mean() == pytest.approx(mask.float().mean().item(), abs=0.02)
    if group:
        target, pred = images["diff_target"], images["diff_prediction"]
        assert not target[:, ::group].any() and target[:, 1].any()
        on_masked = masked_patches.all(1)[:, None]  # the mask is the same for the frames of a tubelet
        np.testing.assert_allclose(pred * on_masked, target * on_masked, atol=1e-5)
    path = save_reconstruction_grid(images, tmp_path / "grid.png", title="oracle")
    assert path.stat().st_size > 0


@pytest.mark.slow
def test_voxceleb2_launcher_runs_the_original_recipe(tmp_path):
    """The launcher as written (torchrun, full-width model, 160 px, part-window 0.9) on a laid-out VoxCeleb2 tree;
    the extra flags only shrink the run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import cv2

    root = Path(__file__).resolve().parents[1]
    rng = np.random.default_rng(0)
    lines = []
    for speaker in range(2):
        video = tmp_path / "voxceleb2" / "dev" / "mp4" / f"id0000{speaker}" / "abc" / "00001.mp4"
        video.parent.mkdir(parents=True)
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25, (224, 224))
        for _ in range(40):
            writer.write(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        writer.release()
        lines.append(f"{video} 0\n")
    video_list = tmp_path / "voxceleb2" / "info_clean.csv"
    video_list.write_text("".join(lines))
    env = {**os.environ, "NPROC_PER_NODE": "1", "OUTPUT_DIR": str(tmp_path / "out"), "DATA_PATH": str(video_list),
           "MASTER_PORT": "29517", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = root / "scripts/voxceleb2/pretrain_local_global_attn_depth16_region_size2510_with_diff_target_102.sh"
    run = subprocess.run(["bash", str(script), "--encoder_depth", "1", "--decoder_depth", "1", "--epochs", "1",
                          "--batch_size", "2", "--num_workers", "0", "--device", "cpu"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (line,) = (tmp_path / "out" / "log.txt").read_text().splitlines()
    assert np.isfinite(json.loads(line)["train_loss"])
    checkpoint = ckpt.load_checkpoint(tmp_path / "out" / "checkpoint-0.pth")
    assert checkpoint["args"].mask_type == "part_window" and checkpoint["args"].use_frame_diff_as_target
    assert "part-window mask: 5 visible of 50 per window" in (tmp_path / "out" / "nohup.out").read_text()


@pytest.mark.slow
def test_two_process_pretraining_with_ddp(videos_root, tmp_path):
    """torchrun with 2 CPU processes (gloo): each rank trains on its half of the videos through DDP; rank 0 writes
    the checkpoint (with both ranks' RNG states) and the log."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    flags = ["--demo", "--data_path", str(videos_root / "info_clean.csv"), "--data_root", str(videos_root),
             "--input_size", "32", "--lg_region_size", "2", "1", "2", "--part_win_size", "2", "1", "2",
             "--mask_ratio", "0.5", "--encoder_depth", "1", "--decoder_depth", "1", "--epochs", "1",
             "--warmup_epochs", "1", "--batch_size", "2", "--num_workers", "0", "--device", "cpu", "--save_recon", "0",
             "--output_dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["torchrun", "--nproc_per_node", "2", "--master_port", "29533",
                          str(Path(rmp.__file__)), *flags], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (line,) = (tmp_path / "log.txt").read_text().splitlines()
    assert np.isfinite(json.loads(line)["train_loss"])
    checkpoint = ckpt.load_checkpoint(tmp_path / "checkpoint-0.pth")
    assert checkpoint["args"].world_size == 2 and len(checkpoint["rng"]) == 2
    # 10 videos, 2 ranks x batch 2: global batch 4, so 2 optimizer steps in the epoch.
    assert all(state["step"] == 2 for state in checkpoint["optimizer"]["state"].values())
