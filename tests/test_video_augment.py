"""video_augment.py: RandAugment on whole clips, against timm's and PIL's per-frame ops."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageOps
from support.clips import smooth_frames

import video_augment
from video_augment import VideoRandAugment


def test_rand_augment_ops_match_timm_per_frame():
    """Colour ops are timm's exactly; affine ops are PIL's geometry with OpenCV's bicubic (a few levels apart)."""
    frames = smooth_frames()
    augment = VideoRandAugment("rand-m7-n4-mstd0.5-inc1", 40, "bicubic")
    assert len(augment.ops) == 15
    random.seed(0)
    for op in augment.ops:
        for _ in range(3):
            drawn = augment._drawers[augment.ops.index(op)](None)
            if drawn is None:
                continue
            level_args, kwargs = drawn
            ours = augment._apply(op, level_args, dict(kwargs), frames)
            theirs = np.stack([np.asarray(op.aug_fn(Image.fromarray(f), *level_args, **kwargs)) for f in frames])
            diff = np.abs(ours.astype(int) - theirs)
            if op.name in video_augment._TRANSLATIONS:
                assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, op.name
            elif op.name in video_augment._AFFINE_OPS:
                assert diff.max() <= 8 and diff.mean() < 1.0, op.name
            else:
                assert np.array_equal(ours, theirs), op.name


@pytest.mark.parametrize("shift", [17.3, -33.71, 0.0, 5.0, -0.25, 0.5, 47.9, -60.2, 75.0])
def test_translations_are_pils(shift):
    frames = smooth_frames(3, 48)[:, :, :40].copy()  # not square: W 40, H 48
    frames[:, 10:20, 10:20] = 200  # a flat patch: exact levels must not be truncated to the one below
    for axis, matrix in ((2, (1, 0, shift, 0, 1, 0)), (1, (1, 0, 0, 0, 1, shift))):
        theirs = np.stack([np.asarray(Image.fromarray(f).transform((40, 48), Image.AFFINE, matrix, Image.BICUBIC,
                                                                   fillcolor=(128, 127, 126))) for f in frames])
        diff = np.abs(video_augment.translate_frames(frames, shift, axis, (128, 127, 126)).astype(int) - theirs)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_autocontrast_and_equalize_equal_pils_on_any_histogram():
    rng = np.random.default_rng(0)
    two_levels = np.where(rng.random((4, 24, 24, 3)) < 0.3, 90, 200).astype(np.uint8)
    narrow = rng.integers(100, 111, (4, 24, 24, 3)).astype(np.uint8)
    mixed = np.concatenate([np.full((4, 24, 24, 1), 77), rng.integers(0, 256, (4, 24, 24, 1)),
                            rng.integers(250, 256, (4, 24, 24, 1))], axis=3).astype(np.uint8)
    skewed = np.minimum(rng.exponential(20, (4, 24, 24, 3)), 255).astype(np.uint8)
    for frames in (smooth_frames(4, 24), two_levels, narrow, mixed, skewed, np.full((2, 8, 8, 3), 5, np.uint8)):
        for ours, theirs in ((video_augment.autocontrast, ImageOps.autocontrast),
                             (video_augment.equalize, ImageOps.equalize)):
            expected = np.stack([np.asarray(theirs(Image.fromarray(f))) for f in frames])
            assert np.array_equal(ours(frames), expected), theirs.__name__


def test_rand_augment_draws_like_timm():
    """Per clip: ops picked by numpy with replacement, each applied with p 0.5 and magnitude ~ N(7, 0.5)."""
    augment = VideoRandAugment("rand-m7-n4-mstd0.5-inc1", 160, "bicubic")
    assert augment.num_layers == 4 and augment.choice_weights is None
    assert {op.name for op in augment.ops} == {
        "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
        "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
        "TranslateXRel", "TranslateYRel"}
    rotate = augment._drawers[[op.name for op in augment.ops].index("Rotate")]
    random.seed(0)
    angles = [d[0][0] for d in (rotate(None) for _ in range(4000)) if d is not None]
    assert 0.45 < len(angles) / 4000 < 0.55
    assert abs(np.mean(np.abs(angles)) - 21) < 0.3 and max(np.abs(angles)) <= 30  # 3 degrees per magnitude unit
    assert augment.ops[0].kwargs == {"fillcolor": (128, 128, 128), "resample": Image.BICUBIC}
