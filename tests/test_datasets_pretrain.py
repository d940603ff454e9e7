"""The pretraining loader: frame sampling, the VoxCeleb2 face crop, the multi-scale crop and the item layout."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from annotations import Annotation
from datasets_pretrain import (
    MULTI_SCALES,
    PretrainDataset,
    build_pretrain_dataset,
    multi_scale_crop_box,
    pretrain_indices,
    voxceleb2_crop,
)
from masking_generator import TubeWindowMaskingGenerator


def pretrain_args(**overrides) -> argparse.Namespace:
    """The flags build_pretrain_dataset reads: the demo's (64 px, 75 % part-window), with overrides."""
    flags = dict(data_root=None, mask_type="part_window", window_size=(8, 4, 4), mask_ratio=0.75,
                 part_win_size=(2, 2, 4), part_apply_symmetry=None,
                 model="pretrain_videomae_tiny_dim128_no_depth_patch16_64", input_size=64, num_frames=16,
                 sampling_rate=1, num_samples=1, no_augmentation=False, seed=0, face_crop="auto")
    return argparse.Namespace(**{**flags, **overrides})


def test_window_of_sixteen_frames_at_rate_four_starts_anywhere_it_fits():
    np.random.seed(0)
    starts = set()
    for _ in range(300):
        idx = pretrain_indices(100, 16, 4)
        assert np.array_equal(np.diff(idx), np.full(15, 4))
        starts.add(int(idx[0]))
    assert starts == set(range(100 - 64 + 1))  # offsets 0..36, all reachable


def test_short_video_repeats_its_last_reachable_frame():
    # 30 frames: positions 1, 5, ..., 29 (frames 0..28), then 29 + 4 is past the end and the last frame repeats.
    assert pretrain_indices(30, 16, 4).tolist() == list(range(0, 29, 4)) + [28] * 8
    assert pretrain_indices(64, 16, 4).tolist() == list(range(0, 64, 4))  # exactly one window: offset 0


def test_repeated_sampling_draws_one_window_per_segment():
    np.random.seed(1)
    idx = pretrain_indices(200, 16, 4, num_segments=2)
    first, second = idx[:16], idx[16:]
    segment = (200 - 64 + 1) // 2
    assert 0 <= first[0] < segment <= second[0] < 2 * segment
    assert np.array_equal(np.diff(first), np.full(15, 4)) and np.array_equal(np.diff(second), np.full(15, 4))


def test_multi_scale_crop_takes_the_original_sizes_and_thirteen_positions():
    random.seed(0)
    sizes = {int(160 * s) for s in MULTI_SCALES}  # 160, 140, 120, 105
    seen_positions, seen_pairs = set(), set()
    for _ in range(4000):
        left, top, w, h = multi_scale_crop_box(160, 160, 160)
        assert w in sizes and h in sizes and 0 <= left <= 160 - w and 0 <= top <= 160 - h
        order = sorted(sizes, reverse=True)
        assert abs(order.index(w) - order.index(h)) <= 1  # max_distort 1
        w_step, h_step = (160 - w) // 4, (160 - h) // 4
        seen_pairs.add((w, h))
        if w_step and h_step:
            seen_positions.add((left // w_step, top // h_step))
    assert len(seen_pairs) == 10  # 4 + 2 * 3 pairs at most one scale step apart
    assert len(seen_positions) == 13
    # A size within 3 px of the input snaps to it: 0.66 * 224 = 147 -> kept; 0.875 * 184 = 161 -> 160.
    random.seed(0)
    assert all(multi_scale_crop_box(184, 184, 160)[2] in {184, 160, 138, 121} for _ in range(200))


def write_png_frames(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{t:05d}.png"), frame[..., ::-1])


def test_voxceleb2_face_crop_keeps_rows_0_160_and_columns_32_192(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (20, 224, 224, 3), dtype=np.uint8)
    write_png_frames(tmp_path / "clip", frames)
    generator = TubeWindowMaskingGenerator((8, 10, 10), 0.9, (5, 10))
    dataset = PretrainDataset([Annotation("clip", str(tmp_path / "clip"), 0, "list:1")], generator, num_frames=16,
                              sampling_rate=1, input_size=160, face_crop=voxceleb2_crop(160), augment=False,
                              frame_ext="png")
    np.random.seed(0)
    clip, mask = dataset[0]
    np.random.seed(0)
    idx = pretrain_indices(20, 16, 1)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None, None]
    pixels = (clip * std + mean) * 255
    expected = torch.from_numpy(frames[idx][:, 0:160, 32:192]).permute(3, 0, 1, 2).float()
    torch.testing.assert_close(pixels, expected, atol=1e-3, rtol=0)
    assert clip.shape == (3, 16, 160, 160) and mask.dtype == torch.bool and mask.shape == (800,)
    assert int((~mask).sum()) == 80
    assert voxceleb2_crop(192) == (slice(0, 192), slice(16, 208))
    assert voxceleb2_crop(176) == voxceleb2_crop(224) == (slice(None), slice(None))  # only 160 and 192 have one


def test_item_of_a_demo_video_with_repeated_sampling(tmp_path):
    from demo_data import make_demo_videos

    root = make_demo_videos(tmp_path / "videos", per_class=1, num_frames=16, size=64)
    args = pretrain_args(data_path=str(root / "info_clean.csv"), data_root=str(root), input_size=48, num_frames=8,
                         num_samples=2)
    dataset = build_pretrain_dataset(args, args.window_size)
    assert dataset.face_crop is None and len(dataset) == 5
    clip, mask = dataset[0]
    assert clip.shape == (3, 16, 48, 48) and mask.shape == (128,)
    visible = (~mask).reshape(8, 2, 2, 4).sum(dim=(2, 3))  # per token slice and window
    assert (visible == 2).all()


def test_voxceleb2_lists_get_the_face_crop(tmp_path):
    video_list = tmp_path / "VoxCeleb2" / "info_clean.csv"  # matched case-insensitively, as the original
    video_list.parent.mkdir()
    video_list.write_text("dev/mp4/id0/a/00001.mp4 0\n")
    args = pretrain_args(data_path=str(video_list), data_root=str(tmp_path), mask_type="tube", window_size=(8, 10, 10),
                         mask_ratio=0.9, model="pretrain_videomae_base_dim512_no_depth_patch16_160", input_size=160)
    assert build_pretrain_dataset(args, args.window_size).face_crop == voxceleb2_crop(160)


def test_a_bad_list_line_names_the_file_and_line(tmp_path):
    video_list = tmp_path / "info_clean.csv"
    video_list.write_text("a.mp4 0\nb.mp4\n")
    args = pretrain_args(data_path=str(video_list))
    with pytest.raises(ValueError, match=r"info_clean.csv:2"):
        build_pretrain_dataset(args, args.window_size)


def test_seeded_items_depend_on_seed_epoch_and_index_only(tmp_path):
    from demo_data import make_demo_videos

    root = make_demo_videos(tmp_path / "videos", per_class=1, num_frames=16, size=64)
    args = pretrain_args(data_path=str(root / "info_clean.csv"), data_root=str(root), seed=5)
    dataset = build_pretrain_dataset(args, args.window_size)
    first = dataset[2]
    np.random.seed(123)  # the global RNGs do not matter, nor do other items drawn in between
    random.seed(123)
    dataset[0]
    again = dataset[2]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    dataset.set_epoch(1)
    later = dataset[2]
    assert not (torch.equal(first[0], later[0]) and torch.equal(first[1], later[1]))
