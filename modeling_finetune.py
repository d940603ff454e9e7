"""MAE-DFER fine-tune model: a video ViT whose blocks are LGI-Former blocks (or plain ViT blocks).

LGI-Former splits the token grid into regions. Inside a region, local tokens and one learnable region
("messenger") token attend to each other; the region tokens of a clip then attend to each other, carrying
global context between regions; finally every local token reads that context back by cross-attention to
the region tokens. With `fusion` set, the CA motion branch of MAE-DFER-CA (`ca_module.py`) runs beside the
encoder and its feature is fused before the head.

Parameter names, shapes and numerics follow the original checkpoints (MAE-DFER and MAE-DFER-CA `modeling_finetune.py`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_, use_fused_attn
from timm.models import register_model
from torch import nn

from ca_module import FUSIONS, CAResNet, PositionViT, ca_output_size, conv_act_stem, fuse, motion_image
from layers import Linear, Mlp, attention, linear

LG_CLASSIFY_TOKEN_TYPES = ("org", "region", "all")
HEAD_ACTIVATIONS = {None: nn.Identity, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


def get_sinusoid_encoding_table(n_position: int, d_hid: int) -> torch.Tensor:
    """Fixed (1, n_position, d_hid) sin/cos table; computed in float64 because float32 angles drift ~6e-5."""
    position = torch.arange(n_position, dtype=torch.float64)[:, None]
    exponent = 2 * torch.div(torch.arange(d_hid, dtype=torch.float64), 2, rounding_mode="floor") / d_hid
    angle = position / torch.pow(10000.0, exponent)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float().unsqueeze(0)


def region_counts(grid: Sequence[int], region_size: Sequence[int]) -> tuple[int, int, int]:
    """Number of regions along (t, h, w); refuses a region size that does not tile the token grid."""
    if len(region_size) != 3 or any(g % r for g, r in zip(grid, region_size)):
        raise ValueError(
            f"lg_region_size {tuple(region_size)} does not tile the token grid (t, h, w) = {tuple(grid)}: "
            "each region size must divide the grid size"
        )
    return tuple(g // r for g, r in zip(grid, region_size))


def tokens_to_regions(x: torch.Tensor, grid: Sequence[int], region_size: Sequence[int]) -> torch.Tensor:
    """(B, t*h*w, C) tokens in raster order -> (B, regions, tokens per region, C), both in raster order."""
    nt, nh, nw = region_counts(grid, region_size)
    rt, rh, rw = region_size
    return rearrange(
        x, "b (nt rt nh rh nw rw) c -> b (nt nh nw) (rt rh rw) c", nt=nt, rt=rt, nh=nh, rh=rh, nw=nw, rw=rw
    )


def regions_to_tokens(x: torch.Tensor, grid: Sequence[int], region_size: Sequence[int]) -> torch.Tensor:
    """Inverse of `tokens_to_regions`: (B, regions, tokens per region, C) -> (B, t*h*w, C) in raster order."""
    nt, nh, nw = region_counts(grid, region_size)
    rt, rh, rw = region_size
    return rearrange(
        x, "b (nt nh nw) (rt rh rw) c -> b (nt rt nh rh nw rw) c", nt=nt, rt=rt, nh=nh, rh=rh, nw=nw, rw=rw
    )


class PatchEmbed(nn.Module):
    """Tubelet embedding: non-overlapping (tubelet, patch, patch) cubes -> tokens in (t, h, w) raster order."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 num_frames: int = 16, tubelet_size: int = 2):
        super().__init__()
        self.img_size, self.num_frames = img_size, num_frames
        self.grid_size = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size),
                              stride=(tubelet_size, patch_size, patch_size))

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse a clip of another size or length than the model was built for (its position table's)."""
        if x.dim() != 5 or x.shape[2:] != (self.num_frames, self.img_size, self.img_size):
            raise ValueError(f"input of shape {tuple(x.shape)}: the model expects (B, C, {self.num_frames}, "
                             f"{self.img_size}, {self.img_size}) (all_frames and img_size)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """ViT self-attention with one qkv matrix; the key bias is fixed at zero (only q_bias and v_bias exist)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.fused_attn = use_fused_attn()
        self.qkv = Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = linear(x, self.qkv.weight, bias)
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        x = attention(q, k, v, self.scale, self.attn_drop, self.fused_attn)
        return self.proj_drop(self.proj(rearrange(x, "b h n d -> b n (h d)")))


class GeneralAttention(nn.Module):
    """Attention of `x` over `context` (self-attention when no context); key bias fixed at zero."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.fused_attn = use_fused_attn()
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.q = Linear(dim, dim, bias=False)
        self.kv = Linear(dim, dim * 2, bias=False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        kv_bias = None
        if self.v_bias is not None:
            kv_bias = torch.cat((torch.zeros_like(self.v_bias), self.v_bias))
        if context is None:
            # One matmul for q, k and v: the same numbers as two, with better GEMM efficiency.
            bias = None if kv_bias is None else torch.cat((self.q_bias, kv_bias))
            qkv = linear(x, torch.cat((self.q.weight, self.kv.weight)), bias)
            q, k, v = rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
        else:
            q = rearrange(linear(x, self.q.weight, self.q_bias), "b t (h d) -> b h t d", h=self.num_heads)
            kv = linear(context, self.kv.weight, kv_bias)
            k, v = rearrange(kv, "b t (two h d) -> two b h t d", two=2, h=self.num_heads)
        x = attention(q, k, v, self.scale, self.attn_drop, self.fused_attn)
        return self.proj_drop(self.proj(rearrange(x, "b h t d -> b t (h d)")))


class Block(nn.Module):
    """Pre-norm ViT block (`attn_type='joint'`), with optional layer-scale gammas."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 init_values: float = 0.0, norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        if init_values > 0:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gamma_1 is None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


@dataclass(frozen=True)
class LGConfig:
    """LGI-Former's options: the original's seven `lg_*` keyword arguments, under their own names, built once by the
    model from its flat timm keyword arguments and handed down to every block."""

    lg_region_size: tuple[int, int, int] = (2, 2, 10)  # (t, h, w) tokens per region
    lg_first_attn_type: str = "self"  # local attention: all tokens of a region (self), or its region token (cross)
    lg_third_attn_type: str = "cross"  # local tokens read the region tokens back (cross), or local self-attention
    lg_attn_param_sharing_first_third: bool = False
    lg_attn_param_sharing_all: bool = False
    lg_no_second: bool = False
    lg_no_third: bool = False

    def __post_init__(self):
        object.__setattr__(self, "lg_region_size", tuple(self.lg_region_size))
        if {self.lg_first_attn_type, self.lg_third_attn_type} - {"self", "cross"}:
            raise ValueError(f"lg attention types must be 'self' or 'cross', got {self.lg_first_attn_type!r}, "
                             f"{self.lg_third_attn_type!r}")


class LGBlock(nn.Module):
    """LGI-Former block on (B * regions, 1 + tokens per region, C); sequence position 0 is the region token.

    1. local attention inside each region (self: all tokens; cross: the region token reads its local tokens),
    2. global self-attention among the region tokens of a clip,
    3. local tokens read the region tokens back (cross), or a second local self-attention (self),
    4. MLP on every token.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_layer: type[nn.Module] = nn.LayerNorm, lg: LGConfig = LGConfig()):
        super().__init__()
        self.first_attn_type, self.third_attn_type = lg.lg_first_attn_type, lg.lg_third_attn_type
        self.no_second, self.no_third = lg.lg_no_second, lg.lg_no_third
        attention = partial(GeneralAttention, dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)

        # Attribute creation order is the original's, so that state_dict() lists keys in the same order.
        self.first_attn_norm0 = norm_layer(dim)
        if self.first_attn_type == "cross":
            self.first_attn_norm1 = norm_layer(dim)
        self.first_attn = attention()
        if not self.no_second:
            self.second_attn_norm0 = norm_layer(dim)
            # Shared modules are registered under both names, as in the original (duplicate state_dict keys).
            self.second_attn = self.first_attn if lg.lg_attn_param_sharing_all else attention()
        if not self.no_third:
            self.third_attn_norm0 = norm_layer(dim)
            if self.third_attn_type == "cross":
                self.third_attn_norm1 = norm_layer(dim)
            shared = lg.lg_attn_param_sharing_first_third or lg.lg_attn_param_sharing_all
            self.third_attn = self.first_attn if shared else attention()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        # One drop-path module for every sub-layer: per (sample, region) rows in 1 and 4, per sample in 2 and 3.
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        if self.first_attn_type == "self":
            x = x + self.drop_path(self.first_attn(self.first_attn_norm0(x)))
        else:
            region = x[:, :1]
            region = region + self.drop_path(
                self.first_attn(self.first_attn_norm0(region), self.first_attn_norm1(x[:, 1:])))
            x = torch.cat((region, x[:, 1:]), dim=1)

        region = rearrange(x[:, 0], "(b n) c -> b n c", b=batch_size)
        if not self.no_second:
            region = region + self.drop_path(self.second_attn(self.second_attn_norm0(region)))
        local = x[:, 1:]

        if not self.no_third and self.third_attn_type == "cross":
            num_regions = region.shape[1]
            local = rearrange(local, "(b n) s c -> b (n s) c", b=batch_size)
            local = local + self.drop_path(
                self.third_attn(self.third_attn_norm0(local), self.third_attn_norm1(region)))
            local = rearrange(local, "b (n s) c -> (b n) s c", n=num_regions)
        x = torch.cat((rearrange(region, "b n c -> (b n) 1 c"), local), dim=1)
        if not self.no_third and self.third_attn_type == "self":
            x = x + self.drop_path(self.third_attn(self.third_attn_norm0(x)))

        return x + self.drop_path(self.mlp(self.norm2(x)))


def build_blocks(attn_type: str, depth: int, drop_path_rate: float, init_values: float = 0.0, *,
                 lg: LGConfig = LGConfig(), **common) -> nn.ModuleList:
    """`depth` LGI-Former blocks ('local_global') or ViT blocks ('joint'), drop path rising linearly to the rate."""
    dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
    if attn_type == "joint":
        return nn.ModuleList([Block(**common, drop_path=dpr[i], init_values=init_values) for i in range(depth)])
    if init_values > 0:
        raise NotImplementedError("init_values > 0 (layer scale) is not supported by LGI-Former blocks")
    return nn.ModuleList([
        LGBlock(**common, drop_path=dpr[i], lg=lg) for i in range(depth)])


class VisionTransformer(nn.Module):
    """MAE-DFER fine-tune ViT (LGI-Former or joint attention), optionally fused with the CA motion branch.

    `forward(x)` maps a normalised clip (B, 3, T, H, W) to logits (B, num_classes);
    `forward(x, save_feature=True)` also returns the pooled encoder feature (before any fusion).
    """

    def __init__(self, pretrained_cfg: dict | None = None, img_size: int = 224, patch_size: int = 16,
                 in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = False, qk_scale: float | None = None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer: type[nn.Module] = nn.LayerNorm, init_values: float = 0.0,
                 use_learnable_pos_emb: bool = False, init_scale: float = 0.0, all_frames: int = 16,
                 tubelet_size: int = 2, use_mean_pooling: bool = True, keep_temporal_dim: bool = False,
                 head_activation_func: str | None = None, attn_type: str = "joint",
                 lg_region_size: Sequence[int] = (2, 2, 10), lg_first_attn_type: str = "self",
                 lg_third_attn_type: str = "cross", lg_attn_param_sharing_first_third: bool = False,
                 lg_attn_param_sharing_all: bool = False, lg_classify_token_type: str = "org",
                 lg_no_second: bool = False, lg_no_third: bool = False, fusion: str | None = None):
        super().__init__()
        if attn_type not in ("joint", "local_global"):
            raise ValueError(f"attn_type must be 'joint' or 'local_global', got {attn_type!r}")
        if lg_classify_token_type not in LG_CLASSIFY_TOKEN_TYPES:
            raise ValueError(
                f"lg_classify_token_type must be one of {LG_CLASSIFY_TOKEN_TYPES}, got {lg_classify_token_type!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if keep_temporal_dim:
            raise NotImplementedError(
                "keep_temporal_dim is not supported (the original breaks with local_global and CA)")
        if head_activation_func not in HEAD_ACTIVATIONS:
            raise ValueError(
                f"head_activation_func must be one of {list(HEAD_ACTIVATIONS)}, got {head_activation_func!r}")

        lg = LGConfig(lg_region_size, lg_first_attn_type, lg_third_attn_type, lg_attn_param_sharing_first_third,
                      lg_attn_param_sharing_all, lg_no_second, lg_no_third)
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.attn_type = attn_type
        self.lg_classify_token_type = lg_classify_token_type
        self.use_mean_pooling = use_mean_pooling
        self.fusion = fusion

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, all_frames, tubelet_size)
        self.grid_size = self.patch_embed.grid_size
        num_patches = self.patch_embed.num_patches
        if use_learnable_pos_emb:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
            trunc_normal_(self.pos_embed, std=0.02)
        else:
            # Fixed table: not a parameter and not saved, exactly as the original checkpoints expect.
            self.register_buffer("pos_embed", get_sinusoid_encoding_table(num_patches, embed_dim), persistent=False)
        self.pos_drop = nn.Dropout(drop_rate)

        self.blocks = build_blocks(
            attn_type, depth, drop_path_rate, init_values, dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate, norm_layer=norm_layer,
            lg=lg)
        if attn_type == "local_global":
            self.lg_region_size = lg.lg_region_size
            num_regions = math.prod(region_counts(self.grid_size, self.lg_region_size))
            self.lg_region_tokens = nn.Parameter(torch.zeros(num_regions, embed_dim))
            trunc_normal_(self.lg_region_tokens, std=0.02)

        self.norm = nn.Identity() if use_mean_pooling else norm_layer(embed_dim)
        self.fc_norm = norm_layer(embed_dim) if use_mean_pooling else None
        head_dim = 2 * embed_dim if fusion == "cat" else embed_dim
        self.head = Linear(head_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head_activation = HEAD_ACTIVATIONS[head_activation_func]()

        if num_classes > 0:
            trunc_normal_(self.head.weight, std=0.02)
        self.apply(self._init_weights)
        if num_classes > 0:
            self.head.weight.data.mul_(init_scale)
            self.head.bias.data.mul_(init_scale)

        if fusion is not None:
            # The CA branch is built after the ViT init pass and keeps its own init; attribute names and order
            # (cablock, conv_act, fc1 [, vit_pos]) are the CA fork's, so its checkpoints load unchanged.
            out_h, out_w = ca_output_size(img_size, img_size)
            self.cablock = CAResNet()
            self.conv_act = conv_act_stem(in_chans)
            self.fc1 = Linear(self.cablock.out_channels * out_h * out_w, embed_dim)
            if fusion == "pos":
                self.vit_pos = PositionViT(grid_size=(out_h, out_w), in_chans=in_chans,
                                           embed_dim=self.cablock.out_channels)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def get_num_layers(self) -> int:
        return len(self.blocks)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "part_tokens", "lg_region_tokens"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^pos_embed|^patch_embed", blocks=[(r"^blocks\.(\d+)", None)])

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output: (B, N, C) for joint attention; (B, regions, 1 + tokens per region, C) for LGI-Former,
        the region token first in each region."""
        batch_size = x.shape[0]
        x = self.patch_embed(x)
        x = self.pos_drop(x + self.pos_embed.to(x.dtype))
        if self.attn_type == "joint":
            for blk in self.blocks:
                x = blk(x)
            return x

        x = tokens_to_regions(x, self.grid_size, self.lg_region_size)
        region_tokens = self.lg_region_tokens.expand(batch_size, -1, -1).unsqueeze(2)
        x = torch.cat((region_tokens, x), dim=2).flatten(0, 1)
        for blk in self.blocks:
            x = blk(x, batch_size)
        return x.unflatten(0, (batch_size, -1))

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's local tokens (B, N, C) in (t, h, w) raster order, e.g. for feature maps."""
        x = self.forward_blocks(x)
        if self.attn_type == "joint":
            return x
        return regions_to_tokens(x[:, :, 1:], self.grid_size, self.lg_region_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder feature (B, C): the mean of the tokens chosen by `lg_classify_token_type`, then fc_norm."""
        x = self.forward_blocks(x)
        if self.attn_type == "local_global":
            # Region-major token layouts of the original: 'org' local tokens only, 'all' with each region's token.
            selected = {"region": x[:, :, 0], "org": x[:, :, 1:], "all": x}[self.lg_classify_token_type]
            x = selected if selected.dim() == 3 else selected.flatten(1, 2)
        # Norms and pooling in float32 under autocast too, so mixed-precision logits stay comparable to float32 ones.
        with torch.autocast(x.device.type, enabled=False):
            x = self.norm(x.float())
            if self.fc_norm is not None:
                return self.fc_norm(x.mean(1))
            return x[:, 0]

    def forward_motion(self, x: torch.Tensor) -> torch.Tensor:
        """CA branch: the motion image of the clip -> conv stem -> CA ResNet -> ReLU(fc1) -> (B, C)."""
        pos = None
        if self.fusion == "pos":
            pos = self.vit_pos(x[:, :, 0])
        features, _ = self.cablock(self.conv_act(motion_image(x)), pos)
        return F.relu(self.fc1(features))

    def forward_head(self, feature: torch.Tensor, motion: torch.Tensor | None = None,
                     pre_logits: bool = False) -> torch.Tensor:
        """Fusion and head, in float32 under autocast too."""
        with torch.autocast(feature.device.type, enabled=False):
            feature = feature.float()
            if self.fusion is not None:
                feature = fuse(feature, motion.float(), self.fusion)
            if pre_logits:
                return feature
            return self.head_activation(self.head(feature))

    def forward(self, x: torch.Tensor, save_feature: bool = False):
        self.patch_embed.check_input(x)
        motion = self.forward_motion(x) if self.fusion is not None else None
        feature = self.forward_features(x)
        logits = self.forward_head(feature, motion)
        return (logits, feature) if save_feature else logits


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Map a pretraining (or other foreign) state_dict onto the fine-tune model, as the original `--finetune` does.

    Strips the `backbone.` / `encoder.` prefixes and drops a head whose shape differs from the model's. Keys the
    model does not have (decoder, mask token, the pretrained encoder's final `norm`) are left for the caller to
    report as unexpected.
    """
    own = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            key = key[len("backbone."):]
        elif key.startswith("encoder."):
            key = key[len("encoder."):]
        out[key] = value
    for key in ("head.weight", "head.bias"):
        if key in out and key in own and out[key].shape != own[key].shape:
            del out[key]
    return out


def infer_fusion(state_dict: dict[str, torch.Tensor]) -> str:
    """The --fusion a fine-tuned state dict was trained with, read off its keys and shapes (docs/ARCHITECTURE.md,
    "Fusions"): the CA fork's checkpoints do not record it, as its model always has the CA branch."""
    if "vit_pos.cls_token" in state_dict:
        return "pos"
    if "fc1.weight" not in state_dict:
        return "none"
    # cat feeds the head the encoder feature and fc1's output side by side
    return "cat" if state_dict["head.weight"].shape[1] == 2 * state_dict["fc1.weight"].shape[0] else "add"


def _create_vit(variant: str, pretrained: bool, config: dict, **kwargs) -> VisionTransformer:
    """Build a registered model: its fixed config, overridden by the caller's keyword arguments."""
    if pretrained:
        raise ValueError(f"{variant}: no weights can be downloaded; load a checkpoint with --finetune / --resume")
    for timm_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(timm_only, None)
    model = VisionTransformer(norm_layer=partial(nn.LayerNorm, eps=1e-6), **{**config, **kwargs})
    img_size = model.patch_embed.img_size
    model.default_cfg = model.pretrained_cfg = dict(
        url="", num_classes=model.num_classes, input_size=(3, kwargs.get("all_frames", 16), img_size, img_size),
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="patch_embed.proj", classifier="head")
    return model


@register_model
def vit_base_patch16_160(pretrained: bool = False, **kwargs) -> VisionTransformer:
    config = dict(img_size=160, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, qkv_bias=True)
    return _create_vit("vit_base_patch16_160", pretrained, config, **kwargs)


@register_model
def vit_base_dim512_no_depth_patch16_160(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """MAE-DFER's model: 512-d, 8 heads; depth comes from the caller (the scripts pass depth=16)."""
    config = dict(img_size=160, patch_size=16, embed_dim=512, num_heads=8, mlp_ratio=4, qkv_bias=True)
    return _create_vit("vit_base_dim512_no_depth_patch16_160", pretrained, config, **kwargs)


@register_model
def vit_tiny_dim128_no_depth_patch16_64(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """A small LGI-Former for the CPU demo: 128-d, 4 heads, 64 px; depth comes from the caller."""
    config = dict(img_size=64, patch_size=16, embed_dim=128, num_heads=4, mlp_ratio=4, qkv_bias=True)
    return _create_vit("vit_tiny_dim128_no_depth_patch16_64", pretrained, config, **kwargs)
