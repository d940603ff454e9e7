"""augment_device: the device path against the worker path — per op, per clip, the draws, determinism, batches."""

from __future__ import annotations

import argparse
import random

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from support.clips import clip_dataset
from torch.utils.data import DataLoader, default_collate

import augment_device
import datasets
import video_augment
from annotations import Annotation
from augment_device import DeviceAugment, pack_draw
from cli import add_augment_arguments
from datasets import ClipDataset, build_dataset, resolve_augment_on, seed_worker
from demo_data import make_demo_dataset
from video_augment import VideoRandAugment

AA = "rand-m7-n4-mstd0.5-inc1"
WARPS = {"Rotate", "ShearX", "ShearY"}  # the ops whose device kernel differs from the worker's (module docstring)
LEVEL = 1 / (255 * 0.225)  # one grey level in normalised units (the smallest std: the largest step)


def smooth_frames(num: int, size: int, rng: np.random.Generator) -> np.ndarray:
    base = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (0, 0), 3)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
    return np.stack([np.roll(base, t, axis=0) for t in range(num)])


def to_device_layout(clips: list[np.ndarray]) -> torch.Tensor:
    """(T, H, W, 3) clips -> (n, 3, T, H, W), the layout DeviceAugment's ops work in."""
    return torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).contiguous()


def write_clips(root, count: int, num_frames: int = 12, size: int = 40) -> list[Annotation]:
    rng = np.random.default_rng(0)
    entries = []
    for c in range(count):
        folder = root / f"{c:03d}"
        folder.mkdir(parents=True)
        for t, frame in enumerate(smooth_frames(num_frames, size, rng)):
            cv2.imwrite(str(folder / f"{t:05d}.jpg"), np.roll(frame, 2 * t, axis=1))
        entries.append(Annotation(str(folder), str(folder), c % 3, f"train.csv:{c + 1}"))
    return entries


KW = dict(num_frames=8, sampling_rate=1, input_size=32, short_side_size=40, seed=3)


def both_paths(entries, **kw) -> tuple[ClipDataset, ClipDataset]:
    kw = {**KW, **kw}
    return clip_dataset(entries, "train", **kw), clip_dataset(entries, "train", augment_on="device", **kw)


def op_names(aug: DeviceAugment, ops: torch.Tensor) -> set[str]:
    return {aug.ops[i].name for i in ops.tolist() if i >= 0}


# --- each op, same frames, same parameters ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                                  "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                                  "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
                                  "TranslateXRel", "TranslateYRel"])
def test_each_op_matches_the_worker_op(name):
    """Identical but for rotations and shears: OpenCV snaps coordinates to 1/32 px, grid_sample does not."""
    augment = VideoRandAugment(AA, 48, "bicubic")
    device = DeviceAugment(augment, 48)
    index = [op.name for op in augment.ops].index(name)
    op, rng = augment.ops[index], np.random.default_rng(index)
    random.seed(index)
    for _ in range(3):
        clips = [smooth_frames(4, 48, rng) for _ in range(3)]  # three clips in one call, each its own argument
        drawn = []
        while len(drawn) < 3:
            d = augment._drawers[index](None)
            drawn += [d] if d is not None else []
        args = [float(level_args[0]) if level_args else 0.0 for level_args, _ in drawn]
        ours = device._apply(op, to_device_layout(clips), args, Image.BICUBIC).permute(0, 2, 3, 4, 1).numpy()
        for clip, (level_args, kwargs), out in zip(clips, drawn, ours):
            diff = np.abs(out.astype(int) - augment._apply(op, level_args, dict(kwargs), clip))
            if name in WARPS:
                assert diff.max() <= 6 and diff.mean() < 0.2, (name, diff.max(), diff.mean())
            else:
                assert diff.max() == 0, name


def test_warps_are_opencvs_kernel_at_exact_coordinates():
    """Where OpenCV's 1/32-pixel snapping is exact (shifts in 32nds), grid_sample's bicubic warp is OpenCV's."""
    frames = smooth_frames(3, 40, np.random.default_rng(0))
    for matrix in ((1, 0, 5 / 32, 0, 1, -37 / 32), (1, 0, -3.5, 0, 1, 2.25)):
        ours = augment_device.warp(to_device_layout([frames]), [matrix], (128, 127, 126), Image.BICUBIC)
        theirs = video_augment.warp_frames(frames, matrix, (128, 127, 126), Image.BICUBIC)
        assert np.abs(ours[0].permute(1, 2, 3, 0).numpy().astype(int) - theirs).max() <= 1


def test_bilinear_warps_match_the_worker():
    """--train_interpolation bilinear / random: affine ops (translations too) go through the warp."""
    frames = smooth_frames(3, 40, np.random.default_rng(1))
    for matrix in ((1, 0.2, 0, 0, 1, 0), (1, 0, 7.3, 0, 1, 0), (1, 0, 0, 0, 1, -4.5)):
        ours = augment_device.warp(to_device_layout([frames]), [matrix], (128, 128, 128), Image.BILINEAR)
        theirs = video_augment.warp_frames(frames, matrix, (128, 128, 128), Image.BILINEAR)
        diff = np.abs(ours[0].permute(1, 2, 3, 0).numpy().astype(int) - theirs)
        assert diff.mean() < 0.2 and diff.max() <= 3


# --- whole clips: the same seed gives the same clip ------------------------------------------------------------------

def test_clips_equal_the_worker_paths_given_the_same_seed(tmp_path):
    entries = write_clips(tmp_path, 6)
    workers, device = both_paths(entries * 6)
    augment = device.device_augment()
    frames, params, labels = default_collate([device[i] for i in range(len(device))])
    assert frames.dtype == torch.uint8 and frames.shape == (36, 8, 40, 40, 3)
    ours = augment(frames, params)
    theirs = torch.stack([workers[i][0] for i in range(len(workers))])
    assert ours.shape == theirs.shape == (36, 3, 8, 32, 32) and ours.dtype == torch.float32
    assert labels.tolist() == [workers[i][1] for i in range(len(workers))]
    exact = 0
    for b in range(len(ours)):
        diff = (ours[b] - theirs[b]).abs()
        if op_names(augment, params["op"][b]) & WARPS:  # a few levels, which later ops (posterize...) can magnify
            assert diff.mean() < 0.6 * LEVEL, b
        else:
            assert diff.max() < 0.01 * LEVEL, b  # float rounding of the resize
            exact += 1
    assert exact > 10 and (params["erase"][:, 0, 2] > 0).any() and params["flip"].any() and not params["flip"].all()


def test_erasing_is_the_worker_paths_rectangle_and_noise(tmp_path):
    for mode in ("pixel", "rand", "const"):
        workers, device = both_paths(write_clips(tmp_path / mode, 2) * 4, aa=None, reprob=1.0, remode=mode)
        frames, params, _ = default_collate([device[i] for i in range(len(device))])
        ours = device.device_augment()(frames, params)
        for b in range(len(ours)):
            theirs = workers[b][0]
            top, left, h, w = params["erase"][b, 0].tolist()
            assert h > 0 and torch.equal(ours[b, :, :, top:top + h, left:left + w],
                                         theirs[:, :, top:top + h, left:left + w]), mode
            assert torch.allclose(ours[b], theirs, atol=1e-4, rtol=0)


# --- the draws ---------------------------------------------------------------------------------------------------

def test_draws_are_the_worker_paths_clip_by_clip(tmp_path, monkeypatch):
    """The device record holds what the worker path draws and applies, for every view (num_sample 2)."""
    workers, device = both_paths(write_clips(tmp_path, 3) * 10, num_sample=2)
    applied = []
    draw = ClipDataset._draw
    monkeypatch.setattr(ClipDataset, "_draw", lambda self, h, w: applied.append(draw(self, h, w)) or applied[-1])
    for i in range(len(workers)):
        workers[i]
    monkeypatch.undo()
    records = [view for i in range(len(device)) for view in device[i][1]]
    assert len(records) == len(applied) == 60
    for record, drawn in zip(records, applied):
        expected = pack_draw(drawn, 4, 1)
        assert all(torch.equal(record[k], expected[k]) for k in expected)


def draw_stats(records: list[dict], ops: list) -> dict[str, np.ndarray]:
    params = default_collate(records)
    crop = params["crop"].double()
    erase = params["erase"][:, 0].double()
    applied = params["op"][params["op"] >= 0]
    rotate = [op.name for op in ops].index("Rotate")
    return {"scale": (crop[:, 2] * crop[:, 3] / 40**2).numpy(), "aspect": (crop[:, 3] / crop[:, 2]).numpy(),
            "flip": params["flip"].double().numpy(), "erased": (erase[:, 2] > 0).double().numpy(),
            "erase_area": (erase[:, 2] * erase[:, 3] / 32**2)[erase[:, 2] > 0].numpy(),
            "ops": np.bincount(applied.numpy(), minlength=len(ops)), "applied": (params["op"] >= 0).sum(1).numpy(),
            "angle": params["arg"][params["op"] == rotate].abs().numpy()}


def test_parameter_distributions_match_the_worker_path(tmp_path, monkeypatch):
    """2,000 clips each way (other seeds): crop scale and aspect, flip and erase rates, erase area, op frequencies
    and magnitudes agree between the paths and with timm's / torchvision's definitions."""
    n = 2000
    workers = clip_dataset(write_clips(tmp_path, 4) * (n // 4), "train", **{**KW, "seed": 1})
    device = clip_dataset(workers.annotations, "train", augment_on="device", **{**KW, "seed": 2})
    applied = []
    draw = ClipDataset._draw
    monkeypatch.setattr(ClipDataset, "_draw", lambda self, h, w: applied.append(draw(self, h, w)) or applied[-1])
    monkeypatch.setattr(datasets, "erase_", lambda *args: None)  # the worker path's pixel work, minus erasing
    for i in range(n):
        workers[i]
    monkeypatch.undo()
    ops = workers.augment.ops
    ours = draw_stats([device[i][1] for i in range(n)], ops)
    theirs = draw_stats([pack_draw(d, 4, 1) for d in applied], ops)
    for key in ("scale", "aspect", "erase_area", "angle", "applied"):
        assert ks_2samp(ours[key], theirs[key]).pvalue > 1e-3, key
    for stats in (ours, theirs):
        # torchvision's scale U(0.08, 1) and log-uniform aspect in [3/4, 4/3], within rounding to whole pixels
        assert stats["scale"].min() >= 0.06 and stats["scale"].max() <= 1
        assert abs(np.log(stats["aspect"]).mean()) < 0.02 and np.mean(np.abs(np.log(stats["aspect"])) < 0.35) > 0.99
        assert abs(stats["flip"].mean() - 0.5) < 0.04 and abs(stats["erased"].mean() - 0.25) < 0.035
        assert stats["erase_area"].min() > 0.015 and stats["erase_area"].max() < 0.36
        assert abs(stats["applied"].mean() - 2) < 0.1  # 4 layers, each applied with p 0.5
        expected = n * 4 * 0.5 / 15
        assert np.all(np.abs(stats["ops"] - expected) < 5 * np.sqrt(expected))  # each of the 15 ops equally often
        assert abs(stats["angle"].mean() - 21) < 1 and stats["angle"].max() <= 30  # magnitude ~N(7, 0.5): 3 deg/unit


# --- determinism, batches, options -----------------------------------------------------------------------------------

def test_output_depends_on_seed_epoch_and_index_only(tmp_path):
    """Bit-exact on the CPU: the same (seed, epoch, index) gives the same clip whatever its batch or position."""
    _, device = both_paths(write_clips(tmp_path, 3) * 3)
    augment = device.device_augment()
    items = [device[i] for i in range(len(device))]
    batch = augment(*default_collate(items)[:2])
    reordered = augment(*default_collate(items[::-1][:5])[:2])
    assert torch.equal(augment(*default_collate(items)[:2]), batch)
    assert all(torch.equal(reordered[k], batch[len(items) - 1 - k]) for k in range(5))
    assert torch.equal(augment(*default_collate([device[4]])[:2])[0], batch[4])
    device.set_epoch(1)
    assert not torch.equal(augment(*default_collate([device[4]])[:2])[0], batch[4])


def test_loader_batches_views_and_bad_entries(tmp_path):
    entries = write_clips(tmp_path, 3)
    _, device = both_paths(entries * 2, num_sample=2)
    loader = DataLoader(device, batch_size=3, num_workers=2, worker_init_fn=seed_worker, collate_fn=device.collate)
    frames, params, labels = next(iter(loader))
    # Each clip's frames travel once, with one record per view (views adjacent); the device expands them.
    assert frames.shape == (3, 8, 40, 40, 3) and frames.dtype == torch.uint8 and labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert not torch.equal(params["crop"][0], params["crop"][1])
    assert params["op"].shape == (6, 4) and params["erase"].shape == (6, 1, 4) and params["noise_seed"].shape == (6,)
    augmented = device.device_augment()(frames, params)
    assert augmented.shape == (6, 3, 8, 32, 32)
    assert torch.equal(augmented, device.device_augment()(frames.repeat_interleave(2, dim=0), params))
    missing = Annotation(str(tmp_path / "missing"), str(tmp_path / "missing"), 0, "train.csv:9")
    bad = clip_dataset([entries[0], missing], "train", augment_on="device", skip_bad=True, **KW)
    frames, params, labels, skipped = bad.collate([bad[0], bad[1]])
    assert len(frames) == 1 and params["op"].shape == (1, 4) and [s.source for s in skipped] == ["train.csv:9"]


def test_augment_on_option_and_the_unchanged_evaluation_paths(tmp_path):
    parser = argparse.ArgumentParser()
    add_augment_arguments(parser)
    assert parser.parse_args([]).augment_on is None
    assert parser.parse_args(["--augment_on", "device"]).augment_on == "device"
    for value, device, expected in ((None, "cuda", "device"), (None, "cpu", "workers"), ("device", "cpu", "device"),
                                    ("workers", "cuda:0", "workers")):
        assert resolve_augment_on(argparse.Namespace(augment_on=value, device=device)) == expected
    assert resolve_augment_on(argparse.Namespace(device="cuda")) == "workers"  # scripts without the option
    with pytest.raises(ValueError, match="augment_on"):
        clip_dataset([], "train", augment_on="gpu")
    entries = write_clips(tmp_path, 2)
    for mode in ("validation", "test"):
        plain = clip_dataset(entries, mode, **KW)
        device = clip_dataset(entries, mode, augment_on="device", **KW)
        assert all(torch.equal(plain[i][0], device[i][0]) for i in range(2))
    (tmp_path / "train.csv").write_text("".join(f"{e.path} {e.label}\n" for e in entries))
    args = argparse.Namespace(data_path=str(tmp_path), data_set="CREMA-D", nb_classes=6, num_frames=8, sampling_rate=1,
                              input_size=32, short_side_size=40, test_num_segment=2, test_num_crop=1, aa=AA,
                              train_interpolation="bicubic", reprob=0.25, remode="pixel", recount=1, num_sample=1,
                              augment_on=None, device="cuda")
    assert build_dataset(True, False, args)[0].augment_on == "device"


def test_demo_batches_have_the_worker_paths_statistics(tmp_path):
    """One epoch of demo data through the loader (2 workers, seeded as training is), both paths: the batches agree."""
    root = make_demo_dataset(tmp_path / "demo", train_per_class=8, test_per_class=1, num_frames=8, size=32)
    args = argparse.Namespace(data_path=str(root), data_root=str(root), data_set="DEMO", nb_classes=5, num_frames=8,
                              sampling_rate=1, input_size=32, short_side_size=32, test_num_segment=1,
                              test_num_crop=1, aa=AA, train_interpolation="bicubic", reprob=0.25, remode="pixel",
                              recount=1, num_sample=1, seed=0, num_workers=2, pin_mem=False, device="cpu")
    batches = {}
    for mode in ("workers", "device"):
        dataset, _ = build_dataset(True, False, argparse.Namespace(**vars(args), augment_on=mode))
        augment = dataset.device_augment() if mode == "device" else None
        clips = []
        for batch in datasets.build_loader(dataset, args, batch_size=8, device=torch.device("cpu"), train=True,
                                            sequential=True):
            clips.append(augment(batch[0], batch[1]) if augment else batch[0])
        batches[mode] = torch.cat(clips)
    ours, theirs = batches["device"], batches["workers"]
    assert ours.shape == theirs.shape == (40, 3, 8, 32, 32)
    for reduce in ((0, 2, 3, 4), (2, 3, 4)):  # per channel; per clip and channel
        assert torch.allclose(ours.mean(dim=reduce), theirs.mean(dim=reduce), atol=0.02)
        assert torch.allclose(ours.std(dim=reduce), theirs.std(dim=reduce), atol=0.02)
    assert (ours - theirs).abs().mean() < 0.01
