"""CA motion branch: motion image, output geometry, cumulative attention, fusion, device/size independence."""

from __future__ import annotations

import pytest
import torch

from ca_module import CAResNet, PositionViT, ca_output_size, conv_act_stem, fuse, motion_image


def test_motion_image_is_mean_over_frames_minus_first_frame():
    clip = torch.randn(2, 3, 5, 4, 4, dtype=torch.float64)
    expected = sum(clip[:, :, t] - clip[:, :, 0] for t in range(5)) / 5
    torch.testing.assert_close(motion_image(clip), expected)
    static = clip[:, :, :1].expand(-1, -1, 5, -1, -1)
    torch.testing.assert_close(motion_image(static), torch.zeros(2, 3, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("size,expected", [(160, (10, 10)), (64, (4, 4)), (32, (2, 2)), (100, (7, 7)), (224, (14, 14))])
def test_output_size_follows_the_stride_two_stages(size, expected):
    assert ca_output_size(size, size) == expected
    features, attn1 = CAResNet().eval()(conv_act_stem().eval()(torch.randn(1, 3, size, size)))
    assert features.shape == (1, 512 * expected[0] * expected[1])
    assert attn1.shape == (1, ((size + 1) // 2) ** 2)


def test_attention_is_cumulative_and_bounded():
    torch.manual_seed(0)
    net = CAResNet().eval()
    x = torch.randn(1, 180, 32, 32)
    maps = []
    for block in (net.layer1[0], net.layer2[0], net.layer3[0], net.layer4[0]):
        block.register_forward_hook(lambda m, i, o: maps.append((i, o[1])))
    with torch.no_grad():
        net(x)
    for (inputs, attn), (_, previous) in zip(maps[1:], maps[:-1]):
        prior = inputs[1]
        assert torch.equal(prior, torch.nn.functional.max_pool2d(previous, 3, 2, 1))
        assert (attn <= prior + 1e-7).all()  # a product with a sigmoid never exceeds the prior map
    assert all(((a > 0) & (a < 1)).all() for _, a in maps)


def test_unused_fc_keeps_the_original_shape_whatever_the_class_count():
    assert CAResNet().fc.weight.shape == (7, 100352)


def test_fusion_modes():
    a, b = torch.randn(2, 8), torch.randn(2, 8)
    assert torch.equal(fuse(a, b, "add"), a + b)
    assert torch.equal(fuse(a, b, "pos"), a + b)
    assert torch.equal(fuse(a, b, "cat"), torch.cat((a, b), 1))


def test_position_branch_resizes_without_antialias_and_returns_a_feature_map():
    torch.manual_seed(0)
    vit_pos = PositionViT(grid_size=(10, 10)).eval()
    frame = torch.randn(2, 3, 160, 160)
    out = vit_pos(frame)
    assert out.shape == (2, 512, 10, 10)
    # Bilinear 160 -> 10 without antialiasing averages the 2x2 source pixels at rows/cols 16k+7 and 16k+8.
    captured = []
    vit_pos.patch_embed.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    vit_pos(frame)
    expected = frame[:, :, 7::16][:, :, :, 7::16] + frame[:, :, 8::16][:, :, :, 8::16]
    expected = (expected + frame[:, :, 7::16][:, :, :, 8::16] + frame[:, :, 8::16][:, :, :, 7::16]) / 4
    torch.testing.assert_close(captured[0], expected)
