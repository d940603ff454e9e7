"""Pretraining targets against a direct per-patch computation on a tiny clip, and the loss weighting."""

from __future__ import annotations

import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from engine_pretrain import reconstruction_loss, reconstruction_targets

P, TUBELET = 4, 2


@pytest.fixture
def clip_and_mask():
    gen = torch.Generator().manual_seed(0)
    videos = torch.randn(2, 3, 4, 8, 8, generator=gen, dtype=torch.float64)  # grid (2, 2, 2) = 8 tokens
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, [1, 2, 5, 7]] = True
    mask[1, [0, 3, 4, 6]] = True
    return videos, mask


def direct_patch(videos: torch.Tensor, b: int, token: int) -> torch.Tensor:
    """Pixels in [0, 1] of one token's tubelet, as (frame, row, col, channel)."""
    t, h, w = token // 4, token // 2 % 2, token % 2
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, dtype=videos.dtype)[:, None, None, None]
    std = torch.tensor(IMAGENET_DEFAULT_STD, dtype=videos.dtype)[:, None, None, None]
    pixels = videos[b] * std + mean
    return pixels[:, 2 * t:2 * t + 2, h * P:(h + 1) * P, w * P:(w + 1) * P].permute(1, 2, 3, 0)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("diff", [None, 2])
def test_targets_equal_a_direct_per_patch_computation(clip_and_mask, normalize, diff):
    videos, mask = clip_and_mask
    targets = reconstruction_targets(videos, mask, P, TUBELET, normalize_target=normalize, frame_diff_group_size=diff)
    assert targets.shape == (2, 4, TUBELET * P * P * 3)
    for b in range(2):
        for slot, token in enumerate(mask[b].nonzero().flatten().tolist()):
            patch = direct_patch(videos, b, token)  # (2, P, P, 3)
            if normalize:
                flat = patch.reshape(-1, 3)
                patch = (patch - flat.mean(0)) / (flat.std(0, unbiased=True) + 1e-6)
            if diff:
                patch = torch.stack((patch[0], patch[1] - patch[0]))
            torch.testing.assert_close(targets[b, slot], patch.flatten())


def test_diff_group_of_four_spans_two_tubelets(clip_and_mask):
    videos, _ = clip_and_mask
    everything = torch.ones(2, 8, dtype=torch.bool)
    plain = reconstruction_targets(videos, everything, P, TUBELET, frame_diff_group_size=None).unflatten(-1, (2, -1))
    grouped = reconstruction_targets(videos, everything, P, TUBELET, frame_diff_group_size=4).unflatten(-1, (2, -1))
    # tokens 0..3 hold frames 0-1, tokens 4..7 frames 2-3: [f0, f1-f0] and [f2-f0, f3-f0]
    torch.testing.assert_close(grouped[:, :4, 0], plain[:, :4, 0])
    torch.testing.assert_close(grouped[:, :4, 1], plain[:, :4, 1] - plain[:, :4, 0])
    torch.testing.assert_close(grouped[:, 4:, 0], plain[:, 4:, 0] - plain[:, :4, 0])


def test_loss_weights_the_frame_and_difference_halves():
    pred, target = torch.zeros(2, 3, 8), torch.zeros(2, 3, 8)
    target[..., :4] = 1.0  # error 1 on the frame half, 0 on the difference half
    assert reconstruction_loss(pred, target).item() == pytest.approx(0.5)
    assert reconstruction_loss(pred, target, target_diff_weight=0.3).item() == pytest.approx(0.7)
    assert reconstruction_loss(pred, target, target_diff_weight=1.0).item() == pytest.approx(0.0)
