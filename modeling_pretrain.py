"""MAE-DFER pretraining model: an LGI-Former encoder on the visible tokens and a plain ViT decoder.

The encoder sees only the ~10% visible tokens. With LGI-Former blocks they are regrouped per region by their
position in the visible list (the part-window mask leaves the same number visible in every region), each region
gets its messenger token, and after the blocks the messenger tokens are dropped. The decoder reconstructs every
masked token: 1536 values = one per pixel of a tubelet (with the frame-difference target, the normalised first
frame and the second frame's difference to it).
Names, shapes and numerics follow the original checkpoint (MAE-DFER `modeling_pretrain.py`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import partial

import torch
from einops import rearrange
from timm.layers import trunc_normal_
from timm.models import register_model
from torch import nn

from layers import Linear
from modeling_finetune import (
    Block,
    LGConfig,
    PatchEmbed,
    build_blocks,
    get_sinusoid_encoding_table,
    region_counts,
    tokens_to_regions,
)


def _init_xavier(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def split_tokens(mask: torch.Tensor, num_visible: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) bool mask (True = masked) -> the indices of each clip's visible and of its masked tokens, each in token
    order: what `x[~mask]` and `x[mask]` pick, as gathers. Given `num_visible` (every clip the same, as the masks
    are drawn) no value goes back to the host, so a training step waits for nothing."""
    if num_visible is None:
        counts = (~mask).sum(1).tolist()
        if len(set(counts)) > 1:
            raise ValueError(f"every clip's mask must leave as many tokens visible, got {counts}")
        num_visible = counts[0]
    order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # visible first; each part in token order
    return order[:, :num_visible], order[:, num_visible:]


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, N, C) tokens at (B, K) indices -> (B, K, C)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class PretrainVisionTransformerEncoder(nn.Module):
    """Patch embedding + fixed positions + LGI-Former (or joint) blocks on the visible tokens + final norm."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: float | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_layer: type[nn.Module] = nn.LayerNorm, init_values: float = 0.0,
                 tubelet_size: int = 2, num_frames: int = 16, attn_type: str = "joint", lg: LGConfig = LGConfig()):
        super().__init__()
        if attn_type not in ("joint", "local_global"):
            raise ValueError(f"attn_type must be 'joint' or 'local_global', got {attn_type!r}")
        self.attn_type = attn_type
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, num_frames, tubelet_size)
        self.grid_size = self.patch_embed.grid_size
        self.register_buffer("pos_embed", get_sinusoid_encoding_table(self.patch_embed.num_patches, embed_dim),
                             persistent=False)
        self.blocks = build_blocks(
            attn_type, depth, drop_path_rate, init_values, dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate, norm_layer=norm_layer,
            lg=lg)
        if attn_type == "local_global":
            self.lg_region_size = lg.lg_region_size
            self.region_counts = region_counts(self.grid_size, self.lg_region_size)
        self.norm = norm_layer(embed_dim)
        self.apply(_init_xavier)
        if attn_type == "local_global":
            num_regions = self.region_counts[0] * self.region_counts[1] * self.region_counts[2]
            self.lg_region_tokens = nn.Parameter(torch.zeros(num_regions, embed_dim))
            trunc_normal_(self.lg_region_tokens, std=0.02, a=-0.02, b=0.02)

    def forward(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Visible tokens (B, N_vis, C) after the blocks and the norm (`visible`: their indices, `split_tokens`); with
        LGI blocks in region-major order."""
        batch_size = x.shape[0]
        x = self.patch_embed(x)
        x = gather_tokens(x + self.pos_embed.to(x.dtype), visible)
        if self.attn_type == "joint":
            for blk in self.blocks:
                x = blk(x)
            return self.norm(x)

        x = self._group_visible(x)
        region_tokens = self.lg_region_tokens.expand(batch_size, -1, -1).unsqueeze(2)
        x = torch.cat((region_tokens, x), dim=2).flatten(0, 1)
        for blk in self.blocks:
            x = blk(x, batch_size)
        # The region tokens are dropped; the local tokens stay region-major, as the decoder of the original sees them.
        return self.norm(rearrange(x[:, 1:], "(b n) s c -> b (n s) c", b=batch_size))

    def _group_visible(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N_vis, C) -> (B, regions, visible per region, C), grouped by position in the visible list.

        Each temporal slice of visible tokens is cut into equal consecutive runs, one per spatial region: exact
        for the part-window mask (same visible count in every region); for other masks the runs need not lie in
        their region, which the original accepted silently (reproduced, with a warning from the caller).
        """
        nt, nh, nw = self.region_counts
        rt = self.lg_region_size[0]
        per_run, rest = divmod(x.shape[1], nt * rt * nh * nw)
        if rest or per_run == 0:
            raise ValueError(
                f"{x.shape[1]} visible tokens cannot be split into {nt * nh * nw} LGI regions of equal size "
                f"({nt * rt} token slices x {nh * nw} regions per slice); use --mask_type part_window with "
                f"--part_win_size matching --lg_region_size")
        return tokens_to_regions(x, (nt * rt, nh * nw, per_run), (rt, 1, per_run))


class PretrainVisionTransformerDecoder(nn.Module):
    """Plain pre-norm ViT blocks over all tokens; the head predicts the last `return_token_num` tokens."""

    def __init__(self, num_classes: int = 1536, embed_dim: int = 384, depth: int = 4, num_heads: int = 6,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, qk_scale: float | None = None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer: type[nn.Module] = nn.LayerNorm, init_values: float = 0.0):
        super().__init__()
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr[i], init_values=init_values, norm_layer=norm_layer)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head = Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_xavier)

    def forward(self, x: torch.Tensor, return_token_num: int) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, -return_token_num:]))


class PretrainVisionTransformer(nn.Module):
    """Masked autoencoder: `model(clip, mask)` -> predictions (B, N_masked, 1536) in original masked-token order."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, encoder_in_chans: int = 3,
                 encoder_num_classes: int = 0, encoder_embed_dim: int = 768, encoder_depth: int = 12,
                 encoder_num_heads: int = 12, decoder_num_classes: int = 1536, decoder_embed_dim: int = 384,
                 decoder_depth: int = 4, decoder_num_heads: int = 6, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: float | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_layer: type[nn.Module] = nn.LayerNorm, init_values: float = 0.0,
                 use_learnable_pos_emb: bool = False, tubelet_size: int = 2, num_frames: int = 16,
                 attn_type: str = "joint", lg_region_size: Sequence[int] = (2, 2, 10),
                 lg_first_attn_type: str = "self", lg_third_attn_type: str = "cross",
                 lg_attn_param_sharing_first_third: bool = False, lg_attn_param_sharing_all: bool = False,
                 lg_no_second: bool = False, lg_no_third: bool = False):
        super().__init__()
        if use_learnable_pos_emb:
            raise NotImplementedError("use_learnable_pos_emb is not supported by the pretraining model")
        if encoder_num_classes:
            raise NotImplementedError("the pretraining encoder has no classification head")
        if decoder_num_classes != encoder_in_chans * tubelet_size * patch_size**2:
            raise ValueError(f"decoder_num_classes {decoder_num_classes} must be in_chans * tubelet * patch**2: "
                             "one value per pixel of a tubelet")
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        lg = LGConfig(lg_region_size, lg_first_attn_type, lg_third_attn_type, lg_attn_param_sharing_first_third,
                      lg_attn_param_sharing_all, lg_no_second, lg_no_third)
        self.encoder = PretrainVisionTransformerEncoder(
            img_size=img_size, patch_size=patch_size, in_chans=encoder_in_chans, embed_dim=encoder_embed_dim,
            depth=encoder_depth, num_heads=encoder_num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            qk_scale=qk_scale, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            norm_layer=norm_layer, init_values=init_values, tubelet_size=tubelet_size, num_frames=num_frames,
            attn_type=attn_type, lg=lg)
        self.decoder = PretrainVisionTransformerDecoder(
            num_classes=decoder_num_classes, embed_dim=decoder_embed_dim, depth=decoder_depth,
            num_heads=decoder_num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
            drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            norm_layer=norm_layer, init_values=init_values)
        # Kept at PyTorch's default init: the original defines xavier init here but never applies it.
        self.encoder_to_decoder = Linear(encoder_embed_dim, decoder_embed_dim, bias=False)
        self.register_buffer("pos_embed", get_sinusoid_encoding_table(self.encoder.patch_embed.num_patches,
                                                                      decoder_embed_dim), persistent=False)
        trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        self._warned_mask = False

    def get_num_layers(self) -> int:
        return len(self.encoder.blocks)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # Exact names, as the original matches them: `encoder.lg_region_tokens` is NOT exempt here.
        return {"pos_embed", "cls_token", "mask_token", "lg_region_tokens"}

    def forward(self, x: torch.Tensor, mask: torch.Tensor, num_visible: int | None = None) -> torch.Tensor:
        """Predictions of the masked tokens; `num_visible` (the mask generator's count) spares a host sync."""
        batch_size = x.shape[0]
        visible, masked = split_tokens(mask.flatten(1).to(torch.bool), num_visible)
        x_vis = self.encoder_to_decoder(self.encoder(x, visible))
        pos = self.pos_embed.to(dtype=x_vis.dtype).expand(batch_size, -1, -1)
        # Positions in original token order while x_vis is region-major: the original's pairing, reproduced.
        pos_mask = gather_tokens(pos, masked)
        x_full = torch.cat((x_vis + gather_tokens(pos, visible), self.mask_token + pos_mask), dim=1)
        return self.decoder(x_full, pos_mask.shape[1])

    def check_mask(self, mask: torch.Tensor) -> None:
        """Warn (once) when a mask's visible tokens do not fall evenly into the LGI regions (e.g. a plain tube mask):
        call it where masks are made, not in every step."""
        if self.encoder.attn_type != "local_global" or self._warned_mask:
            return
        mask = mask.flatten(1).to(torch.bool)
        t, h, w = self.encoder.grid_size
        rt, rh, rw = self.encoder.lg_region_size
        visible = rearrange(~mask, "b (nt rt nh rh nw rw) -> b (nt nh nw) (rt rh rw)", rt=rt, rh=rh, rw=rw,
                            nt=t // rt, nh=h // rh, nw=w // rw).sum(-1)
        if (visible != visible[:, :1]).any():
            warnings.warn("the mask leaves different numbers of visible tokens in the LGI regions: the encoder "
                          "groups them by position in the visible list, as the original does (use "
                          "--mask_type part_window for regions that hold their own tokens)", stacklevel=2)
            self._warned_mask = True


def _create_pretrain(variant: str, pretrained: bool, config: dict, **kwargs) -> PretrainVisionTransformer:
    if pretrained:
        raise ValueError(f"{variant}: no weights can be downloaded; pass a checkpoint with --resume")
    for timm_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "drop_block_rate"):
        kwargs.pop(timm_only, None)
    return PretrainVisionTransformer(norm_layer=partial(nn.LayerNorm, eps=1e-6), **{**config, **kwargs})


@register_model
def pretrain_videomae_base_patch16_160(pretrained: bool = False, **kwargs) -> PretrainVisionTransformer:
    config = dict(img_size=160, patch_size=16, encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
                  encoder_num_classes=0, decoder_num_classes=1536, decoder_embed_dim=384, decoder_num_heads=6,
                  mlp_ratio=4, qkv_bias=True)
    return _create_pretrain("pretrain_videomae_base_patch16_160", pretrained, config, **kwargs)


@register_model
def pretrain_videomae_base_dim512_no_depth_patch16_160(pretrained: bool = False,
                                                       **kwargs) -> PretrainVisionTransformer:
    """MAE-DFER's pretraining model: 512-d encoder (depth from the caller, 16 in the scripts), 384-d decoder."""
    config = dict(img_size=160, patch_size=16, encoder_embed_dim=512, encoder_num_heads=8, encoder_num_classes=0,
                  decoder_num_classes=1536, decoder_embed_dim=384, decoder_num_heads=6, mlp_ratio=4, qkv_bias=True)
    return _create_pretrain("pretrain_videomae_base_dim512_no_depth_patch16_160", pretrained, config, **kwargs)


@register_model
def pretrain_videomae_tiny_dim128_no_depth_patch16_64(pretrained: bool = False,
                                                      **kwargs) -> PretrainVisionTransformer:
    """A small pretraining model for the CPU demo, whose encoder initialises `vit_tiny_dim128_no_depth_patch16_64`:
    128-d encoder with 4 heads (depth from the caller), 128-d decoder, 64 px."""
    config = dict(img_size=64, patch_size=16, encoder_embed_dim=128, encoder_num_heads=4, encoder_num_classes=0,
                  decoder_num_classes=1536, decoder_embed_dim=128, decoder_num_heads=4, mlp_ratio=4, qkv_bias=True)
    return _create_pretrain("pretrain_videomae_tiny_dim128_no_depth_patch16_64", pretrained, config, **kwargs)
