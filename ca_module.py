"""CA motion branch of MAE-DFER-CA (MMNet-style) and its fusion with the encoder feature.

The branch looks at one "motion image" per clip, the mean of the frames minus the first frame, and runs it
through a small ResNet whose blocks end with a spatial attention map; each stage multiplies its map with the
(max-pooled) map of the stage before, so attention accumulates from fine to coarse. Module and parameter
names are the CA fork's (CA fork `CA_block.py`, `modeling_finetune.py`), so its checkpoints load unchanged.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from torch import nn

FUSIONS = (None, "add", "cat", "pos")
STEM_WIDTH = 180
STAGE_WIDTHS = (128, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
# The original's never-called `cablock.fc` (512 * 14 * 14 -> 7, whatever the class count) is kept only so
# that state_dicts have the original keys and shapes.
UNUSED_FC_SHAPE = (512 * 14 * 14, 7)


def motion_image(clip: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) normalised clip -> (B, C, H, W) mean over the frames minus the first frame."""
    return clip.mean(dim=2) - clip[:, :, 0]


def ca_output_size(height: int, width: int) -> tuple[int, int]:
    """Spatial size of the branch output: the stem and three stages each halve it (3x3 convs, padding 1)."""
    for _ in range(1 + sum(s == 2 for s in STAGE_STRIDES)):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


def conv_act_stem(in_chans: int = 3) -> nn.Sequential:
    """`conv_act`: 3x3 stride-2 conv to 180 channels, BN, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_chans, STEM_WIDTH, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(STEM_WIDTH),
        nn.ReLU(inplace=True),
    )


class CABlock(nn.Module):
    """Basic residual block (3x3 conv, 1x1 conv) followed by a cumulative spatial attention map."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Attention from the channel mean and max of the block output: 1x1 conv 2 -> 1, BN, sigmoid.
        self.attn = nn.Sequential(nn.Conv2d(2, 1, kernel_size=1, bias=False), nn.BatchNorm2d(1), nn.Sigmoid())
        self.downsample = downsample

    def forward(self, x: torch.Tensor, prior_attn: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)) + identity)
        attn = self.attn(torch.cat((out.mean(dim=1, keepdim=True), out.amax(dim=1, keepdim=True)), dim=1))
        if prior_attn is not None:
            attn = prior_attn * attn
        return out * attn, attn


class CAResNet(nn.Module):
    """`cablock`: conv stem, then four one-block stages; returns (flattened features, first attention map)."""

    never_used = ("fc",)  # the original's, kept for its checkpoints' keys

    def __init__(self, in_chans: int = STEM_WIDTH):
        super().__init__()
        self.out_channels = STAGE_WIDTHS[-1]
        self.conv1 = nn.Conv2d(in_chans, STAGE_WIDTHS[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = STAGE_WIDTHS[0]
        for i, (planes, stride) in enumerate(zip(STAGE_WIDTHS, STAGE_STRIDES), start=1):
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                                           nn.BatchNorm2d(planes))
            self.add_module(f"layer{i}", nn.Sequential(CABlock(inplanes, planes, stride, downsample)))
            inplanes = planes
        self.fc = nn.Linear(*UNUSED_FC_SHAPE)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        attn = first_attn = None
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            if attn is not None:
                attn = F.max_pool2d(attn, kernel_size=3, stride=2, padding=1)
            for block in layer:
                x, attn = block(x, attn)
            if first_attn is None:
                first_attn = attn
        if pos is not None:
            x = x + pos
        return x.flatten(1), first_attn.flatten(1)


class PositionViT(TimmVisionTransformer):
    """`vit_pos` of the 'pos' variant: a 2-block ViT over the first frame resized to the branch's output grid.

    Its output, one 512-d vector per grid cell, is added to the last CA stage. `cls_token`, `head` and
    `to_Mask` exist in the original's state_dict but are never used.
    """

    never_used = ("cls_token", "head", "to_Mask")

    def __init__(self, grid_size: tuple[int, int] = (10, 10), in_chans: int = 3, embed_dim: int = 512):
        super().__init__(img_size=grid_size, patch_size=1, in_chans=in_chans, num_classes=5, embed_dim=embed_dim,
                         depth=2, num_heads=4, mlp_ratio=2, qkv_bias=True, class_token=True, no_embed_class=True,
                         norm_layer=partial(nn.LayerNorm, eps=1e-6))
        self.grid_size = grid_size
        self.to_Mask = nn.Sequential(nn.Linear(embed_dim, 1), nn.Sigmoid())

    def forward(self, first_frame: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) first frame -> (B, embed_dim, grid_h, grid_w) position features."""
        # Bilinear without antialiasing, as torchvision's Resize on tensors did for the original.
        x = F.interpolate(first_frame, size=self.grid_size, mode="bilinear", align_corners=False, antialias=False)
        x = self.patch_embed(x) + self.pos_embed
        x = self.norm(self.blocks(x))
        return x.transpose(1, 2).unflatten(2, self.grid_size)


def never_used_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that no forward reaches (the modules' `never_used` attributes), e.g. to keep them out of DDP's
    gradient reduction."""
    found = []
    for module in model.modules():
        for name in getattr(module, "never_used", ()):
            part = getattr(module, name)
            found += list(part.parameters()) if isinstance(part, nn.Module) else [part]
    return found


def fuse(feature: torch.Tensor, motion: torch.Tensor, fusion: str) -> torch.Tensor:
    """Fuse the pooled encoder feature with the motion feature: sum ('add', 'pos') or concatenation ('cat')."""
    if fusion == "cat":
        return torch.cat((feature, motion), dim=1)
    return feature + motion
