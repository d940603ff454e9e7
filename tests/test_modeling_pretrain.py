"""Pretraining model and masks: original keys/params/FLOPs, region grouping of visible tokens, mask statistics."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import timm
import torch
from support.configs import SPEC_KEYS, read_keys
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import modeling_finetune
import modeling_pretrain  # noqa: F401  (registers the models)
from masking_generator import TubeMaskingGenerator, TubeWindowMaskingGenerator, build_masking_generator
from modeling_pretrain import PretrainVisionTransformer

SCRIPT = dict(pretrained=False, drop_path_rate=0.0, drop_block_rate=None, decoder_depth=4, encoder_depth=16,
              attn_type="local_global", lg_region_size=[2, 5, 10], lg_first_attn_type="self",
              lg_third_attn_type="cross", lg_attn_param_sharing_first_third=False, lg_attn_param_sharing_all=False,
              lg_no_second=False, lg_no_third=False)
TINY = dict(img_size=32, patch_size=8, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=4,
            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, decoder_num_classes=3 * 2 * 8 * 8,
            mlp_ratio=2.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), num_frames=8,
            attn_type="local_global", lg_region_size=(2, 2, 4))


def test_full_size_keys_params_and_flops_are_the_originals():
    model = timm.create_model("pretrain_videomae_base_dim512_no_depth_patch16_160", **SCRIPT).eval()
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == read_keys("keys_maedfer_pt_base.txt")
    assert sum(p.numel() for p in model.parameters()) == 92_760_192
    np.random.seed(0)
    mask = torch.from_numpy(build_masking_generator("part_window", (8, 10, 10), 0.9, (2, 5, 10))()).bool()[None]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(1, 3, 16, 160, 160), mask)
    assert out.shape == (1, 720, 1536)
    expected = json.loads((SPEC_KEYS / "flops.json").read_text())["maedfer_pt_base"]["flops_1clip_mask0.9"]["flops"]
    assert abs(counter.get_total_flops() / expected - 1) < 0.01


def test_part_window_mask_leaves_the_same_visible_count_in_every_window_and_slice():
    np.random.seed(1)
    gen = TubeWindowMaskingGenerator((8, 10, 10), 0.9, (5, 10))
    mask = gen().reshape(8, 10, 10)
    assert (mask == mask[0]).all()  # a tube: identical in every temporal slice
    assert (1 - mask[0, :5]).sum() == 5 and (1 - mask[0, 5:]).sum() == 5
    tube = TubeMaskingGenerator((8, 10, 10), 0.9)().reshape(8, 10, 10)
    assert (tube == tube[0]).all() and tube.sum() == 720


@pytest.mark.parametrize("symmetry", ["global", "local"])
def test_symmetric_part_windows_put_visible_tokens_in_one_half(symmetry):
    np.random.seed(2)
    gen = TubeWindowMaskingGenerator((8, 10, 10), 0.9, (5, 10), apply_symmetry=symmetry)
    sides = set()
    for _ in range(20):
        frame = gen().reshape(8, 10, 10)[0]
        for window in (frame[:5], frame[5:]):
            visible = 1 - window
            assert visible.sum() == 5 and (visible[:, :5].sum() == 0 or visible[:, 5:].sum() == 0)
        left = [int((1 - w)[:, :5].sum() > 0) for w in (frame[:5], frame[5:])]
        sides.add(tuple(left))
    if symmetry == "global":
        assert sides <= {(0, 0), (1, 1)}
    else:
        assert len(sides) > 2


def test_masks_refuse_impossible_geometry():
    with pytest.raises(ValueError, match="full token width"):
        TubeWindowMaskingGenerator((8, 10, 10), 0.9, (5, 5))
    with pytest.raises(ValueError, match="unknown mask type"):
        build_masking_generator("block", (8, 10, 10), 0.9)


def test_visible_tokens_are_grouped_into_their_regions_with_a_part_window_mask():
    torch.manual_seed(0)
    model = PretrainVisionTransformer(**TINY).eval()
    np.random.seed(0)
    gen = TubeWindowMaskingGenerator((4, 4, 4), 0.75, (2, 4))
    mask = torch.from_numpy(np.stack([gen(), gen()])).bool()
    x = torch.randn(2, 3, 8, 32, 32)
    tokens = model.encoder.patch_embed(x) + model.encoder.pos_embed
    visible = tokens[~mask].reshape(2, -1, 32)
    grouped = model.encoder._group_visible(visible)
    # Every group must hold exactly the visible tokens of one (2 slices x 2 rows x 4 columns) region.
    positions = torch.arange(64).expand(2, -1)[~mask].reshape(2, -1)
    group_positions = modeling_finetune.tokens_to_regions(positions[..., None], (4, 2, 2), (2, 1, 2))[..., 0]
    t, h = group_positions // 16, group_positions % 16 // 4
    region = (t // 2) * 2 + h // 2
    assert (region == torch.arange(4)[None, :, None]).all()
    assert grouped.shape == (2, 4, 4, 32)
    with torch.no_grad():
        out = model(x, mask)
    assert out.shape == (2, 48, 3 * 2 * 8 * 8) and torch.isfinite(out).all()


def test_unequal_regions_warn_and_impossible_counts_are_refused():
    model = PretrainVisionTransformer(**TINY).eval()
    mask = torch.ones(1, 64, dtype=torch.bool)
    mask[0, [0, 1, 2, 3, 16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51]] = False  # all in the top rows
    with pytest.warns(UserWarning, match="different numbers of visible tokens"):
        model.check_mask(mask)
    mask[0, 60] = False  # 17 visible tokens cannot be split into 4 regions x 2 slices
    with pytest.raises(ValueError, match="cannot be split"), torch.no_grad():
        model(torch.randn(1, 3, 8, 32, 32), mask)


def test_weight_decay_exemptions_match_exact_names():
    model = PretrainVisionTransformer(**TINY)
    names = dict(model.named_parameters())
    exempt = model.no_weight_decay()
    assert "mask_token" in exempt and "mask_token" in names
    assert "encoder.lg_region_tokens" in names and "encoder.lg_region_tokens" not in exempt


def test_pretraining_checkpoint_initialises_the_fine_tune_model(tmp_path):
    import checkpoint as ckpt

    pretrain = PretrainVisionTransformer(**TINY)
    path = tmp_path / "pt.pth"
    ckpt.save_checkpoint_atomic({"model": pretrain.state_dict(), "epoch": 0}, path)
    finetune = modeling_finetune.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, qkv_bias=True, num_classes=5,
        all_frames=8, attn_type="local_global", lg_region_size=(2, 2, 4), lg_classify_token_type="region",
        norm_layer=partial(nn.LayerNorm, eps=1e-6), fusion="add")
    report = ckpt.load_pretrained(finetune, path)
    assert not report.mismatched
    assert set(report.unexpected) == {"mask_token", "norm.weight", "norm.bias", "encoder_to_decoder.weight",
                                      *[k for k in pretrain.state_dict() if k.startswith("decoder.")]}
    assert torch.equal(finetune.blocks[1].mlp.fc1.weight, pretrain.encoder.blocks[1].mlp.fc1.weight)
