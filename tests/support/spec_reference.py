"""Independent, literal re-implementation of the original fine-tune model (MAE-DFER-CA `modeling_finetune.py`).

Written from a text description of the original only, in the style of the original code (explicit attention math,
`F.linear`, index-formula region grouping, in-place slice writes on clones, per-sample CA motion loop),
so that the parity tests catch a misreading of the original in either implementation. It is also the
"original-style" baseline the benchmarks time. Not registered in timm on purpose (names would clash).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

# ---------------------------------------------------------------------------------------------------
# position table


def sinusoid_table(n_position: int, d_hid: int) -> torch.Tensor:
    """(1, n_position, d_hid) sin/cos table, computed in float64 then cast to float32."""
    p = torch.arange(n_position, dtype=torch.float64)[:, None]
    j = torch.arange(d_hid, dtype=torch.float64)[None, :]
    angle = p / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * torch.floor(j / 2) / d_hid)
    table = torch.empty(n_position, d_hid, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.to(torch.float32)[None]


# ---------------------------------------------------------------------------------------------------
# attention modules and Mlp


class GeneralAttention(nn.Module):
    """q from x, k/v from context (default x); k bias fixed at zero; q scaled before q·kᵀ."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, dim * 2, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = None
            self.v_bias = None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, t1, c = x.shape
        h = self.num_heads
        kv_bias = None
        if self.q_bias is not None:
            kv_bias = torch.cat((torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias))
        q = F.linear(input=x, weight=self.q.weight, bias=self.q_bias)
        q = q.reshape(b, t1, h, c // h).permute(0, 2, 1, 3)  # b t (h d) -> b h t d
        if context is None:
            context = x
        t2 = context.shape[1]
        kv = F.linear(input=context, weight=self.kv.weight, bias=kv_bias)
        kv = kv.reshape(b, t2, 2, h, c // h).permute(2, 0, 3, 1, 4)  # b t (two h d) -> two b h t d
        k, v = kv[0], kv[1]
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(b, t1, c)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


class Attention(nn.Module):
    """Joint-block attention: one qkv Linear with bias [q_bias, 0, v_bias]."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = None
            self.v_bias = None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        qkv_bias = None
        if self.q_bias is not None:
            qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias))
        qkv = F.linear(input=x, weight=self.qkv.weight, bias=qkv_bias)
        qkv = qkv.reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)  # b n (three h d) -> three b h n d
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


class Mlp(nn.Module):
    """fc1 → exact-erf GELU → fc2 → Dropout; no dropout between GELU and fc2."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


# ---------------------------------------------------------------------------------------------------
# joint block, LGBlock


class Block(nn.Module):
    """Pre-LN ViT block for attn_type='joint'."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 init_values: float = 0.0, norm_layer=nn.LayerNorm) -> None:
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
            self.gamma_1, self.gamma_2 = None, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gamma_1 is None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        else:
            x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
            x = x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))
        return x


class LGBlock(nn.Module):
    """LGI-Former block: local, global and local–global attention, then the MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 init_values: float = 0.0, norm_layer=nn.LayerNorm, first_attn_type: str = "self",
                 third_attn_type: str = "cross", attn_param_sharing_first_third: bool = False,
                 attn_param_sharing_all: bool = False, no_second: bool = False, no_third: bool = False) -> None:
        super().__init__()
        if first_attn_type not in ("self", "cross"):
            raise ValueError(f"lg_first_attn_type={first_attn_type!r}: expected 'self' or 'cross'")
        if third_attn_type not in ("self", "cross"):
            raise ValueError(f"lg_third_attn_type={third_attn_type!r}: expected 'self' or 'cross'")
        self.first_attn_type = first_attn_type
        self.third_attn_type = third_attn_type
        self.lg_no_second = no_second
        self.lg_no_third = no_third

        def attention() -> GeneralAttention:
            return GeneralAttention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)

        # creation order = state_dict order
        self.first_attn_norm0 = norm_layer(dim)
        if first_attn_type == "cross":
            self.first_attn_norm1 = norm_layer(dim)
        self.first_attn = attention()
        if not no_second:
            self.second_attn_norm0 = norm_layer(dim)
            self.second_attn = self.first_attn if attn_param_sharing_all else attention()
        if not no_third:
            self.third_attn_norm0 = norm_layer(dim)
            if third_attn_type == "cross":
                self.third_attn_norm1 = norm_layer(dim)
            if attn_param_sharing_first_third or attn_param_sharing_all:
                self.third_attn = self.first_attn
            else:
                self.third_attn = attention()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        if init_values > 0:
            self.gamma_0 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))
        else:
            self.gamma_0, self.gamma_1, self.gamma_2 = None, None, None

    def forward(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """x: (B·N_r, 1+S, C), sample-major; b: batch size B."""
        if self.gamma_1 is not None:
            raise NotImplementedError("LGBlock with init_values > 0 (layer scale) is not implemented")
        # Step 1: first, local (intra-region) attention
        if self.first_attn_type == "self":
            x = x + self.drop_path(self.first_attn(self.first_attn_norm0(x)))
        else:  # 'cross': only the region token is updated; it queries its S local tokens
            region = x[:, 0:1] + self.drop_path(
                self.first_attn(self.first_attn_norm0(x[:, 0:1]), context=self.first_attn_norm1(x[:, 1:]))
            )
            x = x.clone()
            x[:, 0:1] = region

        # Step 2: second, global self-attention among the region tokens of one sample
        n = x.shape[0] // b
        region_tokens = x[:, 0].reshape(b, n, x.shape[-1])  # (b n) c -> b n c
        if not self.lg_no_second:
            region_tokens = region_tokens + self.drop_path(self.second_attn(self.second_attn_norm0(region_tokens)))
            x = x.clone()
            x[:, 0] = region_tokens.reshape(b * n, x.shape[-1])  # b n c -> (b n) c

        # Step 3: third, local-global cross attention (or a second local self-attention)
        if not self.lg_no_third:
            if self.third_attn_type == "cross":
                s = x.shape[1] - 1
                local_tokens = x[:, 1:].reshape(b, n * s, x.shape[-1])  # (b n) s c -> b (n s) c
                local_tokens = local_tokens + self.drop_path(
                    self.third_attn(self.third_attn_norm0(local_tokens), context=self.third_attn_norm1(region_tokens))
                )
                x = x.clone()
                x[:, 1:] = local_tokens.reshape(b * n, s, x.shape[-1])  # b (n s) c -> (b n) s c
            else:
                x = x + self.drop_path(self.third_attn(self.third_attn_norm0(x)))

        # Step 4: MLP on all 1+S tokens
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


# ---------------------------------------------------------------------------------------------------
# patch embedding


class PatchEmbed(nn.Module):
    """Conv3d tubelet embedding, (B,3,T,H,W) → (B, N, C) with p = (t·nh + h)·nw + w."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 num_frames: int = 16, tubelet_size: int = 2) -> None:
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.tubelet_size = tubelet_size
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size),
                              stride=(tubelet_size, patch_size, patch_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, _, h, w = x.shape
        assert h == self.img_size[0] and w == self.img_size[1], (
            f"Input image size ({h}*{w}) doesn't match model ({self.img_size[0]}*{self.img_size[1]}).")
        return self.proj(x).flatten(2).transpose(1, 2)


def region_index(grid: Sequence[int], region_size: Sequence[int]) -> torch.Tensor:
    """(N_r, S) token indices: token (t,h,w) goes to region r at in-region position s."""
    gt, gh, gw = grid
    rt, rh, rw = region_size
    if gt % rt or gh % rh or gw % rw:
        raise ValueError(f"lg_region_size {tuple(region_size)} does not divide the token grid {tuple(grid)}")
    nt, nh, nw = gt // rt, gh // rh, gw // rw
    index = torch.empty(nt * nh * nw, rt * rh * rw, dtype=torch.long)
    for t in range(gt):
        for h in range(gh):
            for w in range(gw):
                r = ((t // rt) * nh + h // rh) * nw + w // rw
                s = ((t % rt) * rh + h % rh) * rw + w % rw
                index[r, s] = (t * gh + h) * gw + w
    return index


# ---------------------------------------------------------------------------------------------------
# CA branch: CABlock ResNet (CA fork `CA_block.py`)


class CABlock(nn.Module):
    """Basic residual block followed by a cumulative spatial attention map."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=1, stride=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.attn = nn.Sequential(nn.Conv2d(2, 1, kernel_size=1, stride=1, bias=False), nn.BatchNorm2d(1), nn.Sigmoid())
        self.downsample = downsample
        self.planes = planes

    def forward(self, x: torch.Tensor, attn_last: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = self.relu(out + identity)
        avg_out = torch.mean(out, dim=1, keepdim=True)
        max_out, _ = torch.max(out, dim=1, keepdim=True)
        y = self.attn(torch.cat([avg_out, max_out], dim=1))
        if attn_last is not None:
            y = attn_last * y
        out = out * y.repeat(1, self.planes, 1, 1)
        return out, y


class CAResNet(nn.Module):
    """ResNet(CABlock, [1,1,1,1]) on the conv_act output; returns (flat layer4, a1 flattened)."""

    def __init__(self, inplanes: int = 180) -> None:
        super().__init__()
        self.inplanes = 128
        self.conv1 = nn.Conv2d(inplanes, 128, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool1 = nn.MaxPool2d(kernel_size=2, stride=2)  # never called
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(128, stride=1)
        self.layer2 = self._make_layer(128, stride=2)
        self.layer3 = self._make_layer(256, stride=2)
        self.layer4 = self._make_layer(512, stride=2)
        self.drop = nn.Dropout(0.1)  # never called
        self.fc = nn.Linear(512 * 196, 7)  # never called, but in every state_dict
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        block = CABlock(self.inplanes, planes, stride, downsample)
        self.inplanes = planes
        return nn.Sequential(block)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x1, a1 = self.layer1[0](x)
        x2, a2 = self.layer2[0](x1, self.maxpool(a1))
        x3, a3 = self.layer3[0](x2, self.maxpool(a2))
        x4, _ = self.layer4[0](x3, self.maxpool(a3))
        if pos is not None:
            x4 = x4 + pos
        return torch.flatten(x4, 1), torch.flatten(a1, 1)


def ca_grid(height: int, width: int) -> tuple[int, int]:
    """Spatial size after conv_act and layer2..4: four stride-2 3×3 convs with padding 1 (ceil-halving)."""
    for _ in range(4):
        height, width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    return height, width


# ---------------------------------------------------------------------------------------------------
# vit_pos (PC_module.VisionTransformer_POS)


class PosAttention(nn.Module):
    """Standard timm-0.4 attention: qkv Linear with bias, (q·kᵀ)·scale, softmax."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn.softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class PosBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_layer) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = PosAttention(dim, num_heads)
        self.drop_path = nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PosPatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformerPOS(nn.Module):
    """vit_pos: 1×1 patch ViT over the resized first frame; cls_token, head and to_Mask unused."""

    def __init__(self, img_size: tuple[int, int] = (10, 10), patch_size: int = 1, in_chans: int = 3,
                 embed_dim: int = 512, depth: int = 2, num_heads: int = 4, mlp_ratio: float = 2.0,
                 ln_eps: float = 1e-6) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=ln_eps)
        self.grid = img_size
        num_patches = img_size[0] * img_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
        self.patch_embed = PosPatchEmbed(in_chans, embed_dim, patch_size)
        self.pos_drop = nn.Dropout(0.0)
        self.blocks = nn.ModuleList([PosBlock(embed_dim, num_heads, mlp_ratio, norm_layer) for _ in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.pre_logits = nn.Identity()
        self.head = nn.Linear(embed_dim, 5)
        self.to_Mask = nn.Sequential(nn.Linear(embed_dim, 1), nn.Sigmoid())
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_vit_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        return self.pre_logits(self.norm(x))


def _init_vit_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


# ---------------------------------------------------------------------------------------------------
# the model


class ReferenceVisionTransformer(nn.Module):
    """modeling_finetune.VisionTransformer of the CA fork, written independently; `fusion` picks the variant."""

    def __init__(self, pretrained_cfg: dict | None = None, img_size: int = 224, patch_size: int = 16,
                 in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = False, qk_scale: float | None = None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer=nn.LayerNorm, init_values: float = 0.0, use_learnable_pos_emb: bool = False,
                 init_scale: float = 0.0, all_frames: int = 16, tubelet_size: int = 2, use_mean_pooling: bool = True,
                 keep_temporal_dim: bool = False, head_activation_func: str | None = None, attn_type: str = "joint",
                 lg_region_size: Sequence[int] = (2, 2, 10), lg_first_attn_type: str = "self",
                 lg_third_attn_type: str = "cross", lg_attn_param_sharing_first_third: bool = False,
                 lg_attn_param_sharing_all: bool = False, lg_classify_token_type: str = "org",
                 lg_no_second: bool = False, lg_no_third: bool = False, fusion: str | None = None) -> None:
        super().__init__()
        if keep_temporal_dim:
            raise NotImplementedError("keep_temporal_dim=True is not supported")
        if attn_type not in ("joint", "local_global"):
            raise ValueError(f"attn_type={attn_type!r}: expected 'joint' or 'local_global'")
        if lg_classify_token_type not in ("org", "region", "all"):
            raise ValueError(f"lg_classify_token_type={lg_classify_token_type!r}: expected org/region/all")
        if fusion not in (None, "add", "cat", "pos"):
            raise ValueError(f"fusion={fusion!r}: expected None, 'add', 'cat' or 'pos'")
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.img_size = img_size
        self.attn_type = attn_type
        self.lg_classify_token_type = lg_classify_token_type
        self.use_mean_pooling = use_mean_pooling
        self.fusion = fusion

        # creation order: patch_embed, pos table, blocks, region tokens, norms, head
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, all_frames, tubelet_size)
        num_patches = self.patch_embed.num_patches
        if use_learnable_pos_emb:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
        else:
            self.pos_embed = sinusoid_table(num_patches, embed_dim)  # plain attribute, not in state_dict
        self.pos_drop = nn.Dropout(p=drop_rate)

        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        if attn_type == "local_global":
            self.lg_region_size = tuple(lg_region_size)
            self.lg_index = region_index(self.patch_embed.grid, self.lg_region_size)
            self.blocks = nn.ModuleList([
                LGBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dpr[i],
                        init_values, norm_layer, lg_first_attn_type, lg_third_attn_type,
                        lg_attn_param_sharing_first_third, lg_attn_param_sharing_all, lg_no_second, lg_no_third)
                for i in range(depth)])
            self.lg_region_tokens = nn.Parameter(torch.zeros(self.lg_index.shape[0], embed_dim))
            trunc_normal_(self.lg_region_tokens, std=0.02)
        else:
            self.blocks = nn.ModuleList([
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dpr[i],
                      init_values, norm_layer)
                for i in range(depth)])
        self.norm = nn.Identity() if use_mean_pooling else norm_layer(embed_dim)
        self.fc_norm = norm_layer(embed_dim) if use_mean_pooling else None
        head_in = 2 * embed_dim if fusion == "cat" else embed_dim
        self.head = nn.Linear(head_in, num_classes) if num_classes > 0 else nn.Identity()
        if head_activation_func is None:
            self.head_activation_func = nn.Identity()
        elif head_activation_func == "sigmoid":
            self.head_activation_func = nn.Sigmoid()
        elif head_activation_func == "relu":
            self.head_activation_func = nn.ReLU()
        elif head_activation_func == "tanh":
            self.head_activation_func = nn.Tanh()
        else:
            raise NotImplementedError(f"head_activation_func={head_activation_func!r}")

        if use_learnable_pos_emb:
            trunc_normal_(self.pos_embed, std=0.02)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
        self.apply(_init_vit_weights)
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(init_scale)
            self.head.bias.data.mul_(init_scale)

        # CA modules appended after head (state_dict order cablock, conv_act, fc1[, vit_pos]); built
        # after apply(_init_weights), so they keep their own init
        if fusion is not None:
            ca_h, ca_w = ca_grid(img_size, img_size)
            self.cablock = CAResNet(180)
            self.conv_act = nn.Sequential(nn.Conv2d(in_chans, 180, kernel_size=3, stride=2, padding=1, bias=False),
                                          nn.BatchNorm2d(180), nn.ReLU(inplace=True))
            self.fc1 = nn.Linear(512 * ca_h * ca_w, embed_dim)
            if fusion == "pos":
                self.vit_pos = VisionTransformerPOS(img_size=(ca_h, ca_w), patch_size=1, embed_dim=512, depth=2,
                                                    num_heads=4, mlp_ratio=2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        b, _, c = x.shape
        x = x + self.pos_embed.expand(b, -1, -1).type_as(x).to(x.device).clone().detach()
        x = self.pos_drop(x)

        if self.attn_type == "local_global":
            index = self.lg_index.to(x.device)
            n, s = index.shape
            x = x[:, index]  # (B, N_r, S, C) by the region index formula
            region_tokens = self.lg_region_tokens[None, :, None, :].expand(b, -1, -1, -1)  # n c -> b n 1 c
            x = torch.cat([region_tokens, x], dim=2)  # (B, N_r, 1+S, C)
            x = x.reshape(b * n, s + 1, c)  # b n s c -> (b n) s c
            for blk in self.blocks:
                x = blk(x, b)
            x = x.reshape(b, n, s + 1, c)  # (b n) s c -> b n s c
            if self.lg_classify_token_type == "region":
                x = x[:, :, 0]
            elif self.lg_classify_token_type == "org":
                x = x[:, :, 1:].reshape(b, n * s, c)
            else:  # 'all'
                x = x.reshape(b, n * (s + 1), c)
        else:
            for blk in self.blocks:
                x = blk(x)

        x = self.norm(x)
        if self.fc_norm is not None:
            return self.fc_norm(x.mean(1))
        return x[:, 0]

    def forward(self, x: torch.Tensor, save_feature: bool = False):
        if self.fusion is None:
            x = self.forward_features(x)
            feature = x
        else:
            b, ch, _, h, w = x.shape
            # per-sample loop into scratch tensors (original: torch.randn(...).cuda())
            x_c = torch.empty(b, ch, h, w, dtype=x.dtype, device=x.device)
            x2_c = torch.empty(b, ch, h, w, dtype=x.dtype, device=x.device)
            for i in range(b):
                x_c[i] = torch.mean(x[i], 1) - x[i][:, 0]
                x2_c[i] = x[i][:, 0]
            x1 = self.conv_act(x_c)
            pos = None
            if self.fusion == "pos":
                ca_h, ca_w = self.vit_pos.grid
                small = F.interpolate(x2_c, size=(ca_h, ca_w), mode="bilinear", align_corners=False, antialias=False)
                pos = self.vit_pos(small).transpose(1, 2).reshape(b, 512, ca_h, ca_w)
            x1, _ = self.cablock(x1, pos)
            x1 = F.relu(self.fc1(x1))
            x = self.forward_features(x)
            feature = x
            x = torch.cat((x, x1), 1) if self.fusion == "cat" else x + x1
        x = self.head(x)
        x = self.head_activation_func(x)
        if save_feature:
            return x, feature
        return x


def build_reference(**kwargs) -> ReferenceVisionTransformer:
    """The reference with the class constructor's keyword arguments and defaults (as VisionTransformer)."""
    return ReferenceVisionTransformer(**kwargs)


def build_reference_base(**kwargs) -> ReferenceVisionTransformer:
    """The reference as the `vit_base_dim512_no_depth_patch16_160` entrypoint builds it."""
    cfg = dict(img_size=160, patch_size=16, embed_dim=512, num_heads=8, mlp_ratio=4, qkv_bias=True,
               norm_layer=partial(nn.LayerNorm, eps=1e-6))
    cfg.update(kwargs)
    return ReferenceVisionTransformer(**cfg)

