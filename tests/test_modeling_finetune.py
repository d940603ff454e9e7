"""Shapes, options, registry, key compatibility and attention paths of the fine-tune model (tiny configs, CPU)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from support.configs import SCRIPT_KWARGS, TINY, random_state_dict, read_keys

import modeling_finetune
from modeling_finetune import (
    VisionTransformer,
    get_sinusoid_encoding_table,
    infer_fusion,
    region_counts,
    regions_to_tokens,
    tokens_to_regions,
)


def tiny(**overrides) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(**{**TINY, **overrides})


LG_OPTIONS = [
    dict(),
    dict(lg_classify_token_type="org"),
    dict(lg_classify_token_type="all"),
    dict(lg_first_attn_type="cross"),
    dict(lg_third_attn_type="self"),
    dict(lg_no_second=True),
    dict(lg_no_third=True),
    dict(lg_attn_param_sharing_first_third=True),
    dict(lg_attn_param_sharing_all=True),
    dict(lg_region_size=(1, 4, 2)),
    dict(lg_region_size=(4, 4, 4)),
    dict(use_mean_pooling=False),
    dict(attn_type="joint"),
    dict(attn_type="joint", init_values=0.1),
    dict(head_activation_func="sigmoid"),
    dict(fusion="add"),
    dict(fusion="cat"),
    dict(fusion="pos"),
    dict(fusion="add", lg_classify_token_type="all", img_size=48, patch_size=16, all_frames=4,
         lg_region_size=(1, 3, 1)),
]


@pytest.mark.parametrize("options", LG_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_every_option_runs_forward_and_backward(options, clip):
    model = tiny(**options)
    x = clip if "img_size" not in options else torch.randn(2, 3, options["all_frames"], 48, 48)
    logits, feature = model(x, save_feature=True)
    assert logits.shape == (2, TINY["num_classes"])
    assert feature.shape == (2, TINY["embed_dim"])
    logits.logsumexp(1).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    assert grads["patch_embed.proj.weight"].abs().sum() > 0
    if options.get("fusion"):
        assert grads["fc1.weight"].abs().sum() > 0 and grads["conv_act.0.weight"].abs().sum() > 0
        assert grads["cablock.fc.weight"] is None  # stored for the original keys, never used


def test_region_helpers_round_trip_and_follow_the_spec_formula():
    grid, region = (4, 6, 10), (2, 3, 5)
    x = torch.arange(math.prod(grid)).reshape(1, -1, 1)
    regions = tokens_to_regions(x, grid, region)
    assert regions.shape == (1, 2 * 2 * 2, 2 * 3 * 5, 1)
    assert torch.equal(regions_to_tokens(regions, grid, region), x)
    nh, nw = grid[1] // region[1], grid[2] // region[2]
    for t, h, w in [(0, 0, 0), (3, 5, 9), (1, 4, 7), (2, 2, 3)]:
        r = ((t // region[0]) * nh + h // region[1]) * nw + w // region[2]
        s = ((t % region[0]) * region[1] + h % region[1]) * region[2] + w % region[2]
        assert regions[0, r, s, 0] == (t * grid[1] + h) * grid[2] + w


def test_region_size_that_does_not_tile_the_grid_is_refused():
    with pytest.raises(ValueError, match="does not tile"):
        region_counts((8, 10, 10), (2, 3, 10))
    with pytest.raises(ValueError, match="does not tile"):
        tiny(lg_region_size=(2, 3, 2))


def test_script_region_size_gives_eight_regions_of_a_hundred_tokens():
    assert region_counts((8, 10, 10), (2, 5, 10)) == (4, 2, 1)
    assert region_counts((8, 10, 10), (4, 5, 10)) == (2, 2, 1)


def test_position_table_is_float64_accurate_and_not_saved():
    table = get_sinusoid_encoding_table(800, 512)
    p, j = 799, 10
    angle = p / 10000 ** (2 * (j // 2) / 512)
    assert abs(table[0, p, j].item() - math.sin(angle)) < 1e-7
    assert abs(table[0, p, j + 1].item() - math.cos(angle)) < 1e-7
    assert "pos_embed" not in tiny().state_dict()
    assert "pos_embed" in tiny(use_learnable_pos_emb=True).state_dict()


@pytest.mark.parametrize("options", [dict(), dict(attn_type="joint"), dict(lg_first_attn_type="cross")])
def test_fused_and_math_attention_agree(options, clip):
    model = tiny(**options).eval()
    with torch.no_grad():
        fused = model(clip)
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
        plain = model(clip)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-6)


def test_eval_is_deterministic_and_does_not_touch_the_global_rng(clip):
    model = tiny(fusion="add", drop_path_rate=0.2).eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        first, second = model(clip), model(clip)
    assert torch.equal(first, second)
    assert torch.equal(state, torch.get_rng_state())


def test_drop_path_is_active_in_train_mode_only(clip):
    model = tiny(drop_path_rate=0.5)
    model.head.weight.data.normal_()
    model.train()
    assert not torch.equal(model(clip), model(clip))
    model.eval()
    assert torch.equal(model(clip), model(clip))


def test_head_init_scale_and_weight_decay_exemptions():
    model = tiny(init_scale=0.001)
    assert 0 < model.head.weight.abs().max() <= 6 * 0.02 * 0.001  # trunc_normal(std 0.02), then x init_scale
    assert not model.head.bias.any()
    assert {"pos_embed", "lg_region_tokens"} <= model.no_weight_decay()


def test_invalid_options_fail_with_clear_messages():
    with pytest.raises(ValueError, match="fusion"):
        tiny(fusion="mul")
    with pytest.raises(ValueError, match="lg_classify_token_type"):
        tiny(lg_classify_token_type="cls")
    with pytest.raises(NotImplementedError, match="init_values"):
        tiny(init_values=0.1)
    with pytest.raises(ValueError, match=r"expects \(B, C, 8, 32, 32\)"):
        tiny()(torch.randn(1, 3, 8, 48, 48))
    with pytest.raises(ValueError, match=r"expects \(B, C, 8, 32, 32\)"):
        tiny(fusion="add")(torch.randn(1, 3, 4, 32, 32))


def test_registered_in_timm_with_the_original_keyword_arguments():
    assert "vit_base_dim512_no_depth_patch16_160" in timm.list_models()
    assert "vit_base_patch16_160" in timm.list_models()
    model = timm.create_model("vit_base_dim512_no_depth_patch16_160", **{**SCRIPT_KWARGS, "depth": 1})
    assert isinstance(model, modeling_finetune.VisionTransformer)
    assert (model.embed_dim, len(model.blocks), model.lg_region_tokens.shape) == (512, 1, (8, 512))
    assert model.blocks[0].first_attn_norm0.eps == 1e-6
    with pytest.raises(ValueError, match="no weights can be downloaded"):
        timm.create_model("vit_base_dim512_no_depth_patch16_160", pretrained=True)


@pytest.mark.parametrize("fusion,keys_file", [(None, "keys_maedfer_ft_base.txt"), ("add", "keys_ca_add_ft_base.txt")])
def test_full_size_keys_shapes_and_parameter_counts_are_the_originals(fusion, keys_file):
    model = timm.create_model("vit_base_dim512_no_depth_patch16_160", fusion=fusion, **SCRIPT_KWARGS)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == read_keys(keys_file)
    expected = {None: 84_878_343, "add": 114_324_610}[fusion]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


@pytest.mark.parametrize("options,params", [
    (dict(fusion="cat"), 114_328_194),
    (dict(fusion="pos"), 118_588_040),
    (dict(fusion="add", lg_region_size=[4, 5, 10]), 114_322_562),
    (dict(attn_type="joint"), 51_221_511),
])
def test_variant_parameter_counts_match_the_original_logs(options, params):
    model = timm.create_model("vit_base_dim512_no_depth_patch16_160", **{**SCRIPT_KWARGS, **options})
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == params
    if options.get("fusion") == "cat":
        assert model.head.weight.shape == (7, 1024)


@pytest.mark.parametrize("fusion,keys_file", [(None, "keys_maedfer_ft_base.txt"), ("add", "keys_ca_add_ft_base.txt")])
def test_original_format_state_dict_at_depth_two_loads_strictly(fusion, keys_file):
    state_dict = random_state_dict(read_keys(keys_file, depth=2))
    model = timm.create_model("vit_base_dim512_no_depth_patch16_160", fusion=fusion, **{**SCRIPT_KWARGS, "depth": 2})
    model.load_state_dict(state_dict, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_dict[key]), key


def test_parameter_sharing_duplicates_keys_like_the_original():
    model = tiny(lg_attn_param_sharing_first_third=True)
    keys = model.state_dict().keys()
    assert "blocks.0.third_attn.q.weight" in keys and "blocks.0.first_attn.q.weight" in keys
    assert model.blocks[0].third_attn is model.blocks[0].first_attn
    model.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("options", [dict(), dict(attn_type="joint")])
def test_forward_tokens_returns_the_raster_token_grid(options, clip):
    model = tiny(**options).eval()
    with torch.no_grad():
        tokens = model.forward_tokens(clip)
        assert tokens.shape == (2, math.prod(model.grid_size), TINY["embed_dim"])
        if model.attn_type == "local_global":
            blocks = model.forward_blocks(clip)
            regions = tokens_to_regions(tokens, model.grid_size, model.lg_region_size)
            assert torch.equal(regions, blocks[:, :, 1:])


@pytest.mark.parametrize("fusion", [None, "add", "cat", "pos"])
@pytest.mark.parametrize("pooling", [True, False])
def test_the_fusion_is_read_off_the_weights(fusion, pooling):
    assert infer_fusion(tiny(fusion=fusion, use_mean_pooling=pooling).state_dict()) == (fusion or "none")


def test_the_fusion_of_the_original_checkpoints_key_lists():
    # the CA fork's checkpoints (625 keys) record no fusion; MAE-DFER's (519) have no CA branch
    assert infer_fusion(random_state_dict(read_keys("keys_ca_add_ft_base.txt"))) == "add"
    assert infer_fusion(random_state_dict(read_keys("keys_maedfer_ft_base.txt"))) == "none"
