"""The training augmentation from drawn parameters, batched in torch on any device (`--augment_on device`).

Workers draw a clip's parameters exactly as the worker path does (`datasets.ClipDataset`, same code, same random
streams) and send its uint8 frames with a fixed-size record (`pack_draw`); `DeviceAugment` applies RandAugment,
the random resized crop, flip, normalisation and random erasing to the batch, clips grouped by op. Against the
worker path on the same frames and parameters (tests/test_augment_device.py):
- pointwise ops (timm's own lookup tables), AutoContrast, Equalize, Color, Contrast, Sharpness: identical;
- translations: PIL's bicubic (a = -1) as the worker computes it, in float32: rarely one level apart;
- rotations, shears (and translations with a bilinear / nearest resample): `grid_sample`, whose bicubic kernel
  (a = -0.75) and edge clamping are OpenCV's, at exact coordinates where OpenCV snaps them to 1/32 pixel: a few
  levels apart on sharp edges; both are a few levels from PIL's (a = -1). Nearest rounds ties to even, PIL up;
- crop + resize: the original's F.interpolate (bilinear, no antialiasing) where the worker uses OpenCV's float
  resize: within float rounding; flip, normalisation: identical;
- erasing: the same rectangles; the noise comes from a generator seeded per clip: identical on the CPU, another
  normal sample on CUDA (another generator).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.random_erasing import RandomErasing

from video_augment import _AFFINE_OPS, _LEVELS, _POINTWISE_OPS, _TRANSLATIONS, VideoRandAugment, pil_affine_matrix

# timm ops whose level argument is an integer (bits, threshold, addend); the record stores every argument as float.
_INT_ARG_OPS = {"Posterize", "PosterizeIncreasing", "PosterizeOriginal", "Solarize", "SolarizeIncreasing",
                "SolarizeAdd"}
_BLEND_OPS = {"Color", "ColorIncreasing", "Contrast", "ContrastIncreasing", "Sharpness", "SharpnessIncreasing"}
_GRID_MODES = {Image.NEAREST: "nearest", Image.BILINEAR: "bilinear", Image.BICUBIC: "bicubic"}


class ClipDraw(NamedTuple):
    """Every random decision of one training clip's augmentation."""

    ops: list[tuple[int, tuple, dict]]  # VideoRandAugment.draw(): the applied ops in order
    crop: tuple[int, int, int, int]  # top, left, height, width (on the short_side_size frames)
    flip: bool
    erase: list[tuple[int, int, int, int]]  # top, left, height, width (on the input_size crop)
    noise_seed: int  # the erasing noise's generator seed


class _BoxRecorder:
    """Stands in for the planes timm's RandomErasing erases: records the rectangles instead of filling them."""

    def __init__(self):
        self.boxes = []

    def __setitem__(self, key, _value):
        rows, cols = key[1], key[2]
        self.boxes.append((rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start))


def erase_drawer(probability: float, mode: str, max_count: int) -> RandomErasing:
    """timm's RandomErasing set to draw rectangles only (its 'const' fill: no noise drawn), for `draw_erase`."""
    drawer = RandomErasing(probability, mode=mode, max_count=max_count, device="cpu")
    drawer.per_pixel = drawer.rand_color = False
    return drawer


def draw_erase(drawer: RandomErasing, chan: int, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """The rectangles timm's RandomErasing would erase in (chan, height, width) planes, drawn by timm's own code."""
    recorder = _BoxRecorder()
    drawer._erase(recorder, chan, height, width, torch.float32)
    return recorder.boxes


def erase_(planes: torch.Tensor, boxes: list[tuple[int, int, int, int]], mode: str, seed: int) -> None:
    """Fill `boxes` of a clip's (C*T, H, W) planes in place as timm's RandomErasing does ('pixel': N(0, 1) per
    pixel, 'rand': per plane, 'const': 0), the noise from a generator seeded with `seed` on the planes' device."""
    if not boxes:
        return
    generator = torch.Generator(device=planes.device).manual_seed(seed)
    for top, left, h, w in boxes:
        shape = (planes.shape[0], h, w) if mode == "pixel" else (planes.shape[0], 1, 1)
        values = torch.zeros(shape, dtype=planes.dtype, device=planes.device)
        if mode in ("pixel", "rand"):
            values.normal_(generator=generator)
        planes[:, top:top + h, left:left + w] = values


def pack_draw(draw: ClipDraw, num_layers: int, max_boxes: int) -> dict[str, torch.Tensor]:
    """A clip's draw as fixed-size tensors (default_collate stacks them): ops padded with -1 to num_layers."""
    op = torch.full((num_layers,), -1, dtype=torch.int64)
    arg = torch.zeros(num_layers, dtype=torch.float64)
    resample = torch.zeros(num_layers, dtype=torch.int64)
    for layer, (i, level_args, kwargs) in enumerate(draw.ops):
        op[layer], arg[layer] = i, float(level_args[0]) if level_args else 0.0
        if isinstance(kwargs.get("resample"), int):  # an affine op's (chosen) interpolation, a PIL code
            resample[layer] = kwargs["resample"]
    erase = torch.zeros((max_boxes, 4), dtype=torch.int64)
    if draw.erase:
        erase[:len(draw.erase)] = torch.tensor(draw.erase)
    return {"op": op, "arg": arg, "resample": resample, "crop": torch.tensor(draw.crop),
            "flip": torch.tensor(draw.flip), "erase": erase, "noise_seed": torch.tensor(draw.noise_seed)}


def _to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on `device`; to CUDA through pinned memory, without waiting for the device."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _lut(x: torch.Tensor, luts: torch.Tensor) -> torch.Tensor:
    """x (R, ...) uint8 through per-row (R, 256) uint8 tables."""
    flat = x.reshape(x.shape[0], 1, -1)
    return luts[:, None].gather(2, flat.long()).view_as(x)  # (R, 1, 256) gathered at (R, 1, N)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.autocontrast (cutoff 0) of every plane of x (R, H, W) uint8, tables as `video_augment`."""
    lo, hi = x.flatten(1).aminmax(dim=1)
    lo, hi = lo.double()[:, None], hi.double()[:, None]
    levels = torch.arange(256, dtype=torch.float64, device=x.device)
    scale = torch.full_like(lo, 255.0) / (hi - lo).clamp(min=1)  # not 255 / x: torch computes that as 255 * (1 / x)
    stretched = torch.trunc(levels * scale + -lo * scale).clamp(0, 255)
    return _lut(x, torch.where(hi > lo, stretched, levels).to(torch.uint8))


def equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize of every plane of x (R, H, W) uint8 (one batched histogram)."""
    rows = x.shape[0]
    offsets = torch.arange(rows, device=x.device, dtype=torch.int64).mul_(256)[:, None]
    # scatter_add, not bincount: on CUDA bincount reads its input's maximum on the host (a sync)
    index = (x.flatten(1).long() + offsets).view(-1)
    hist = torch.zeros(rows * 256, dtype=torch.int64, device=x.device).scatter_add_(
        0, index, torch.ones_like(index)).view(rows, 256)
    occupied = hist > 0
    last = 255 - occupied.flip(1).int().argmax(dim=1, keepdim=True)
    step = (hist.sum(1, keepdim=True) - hist.gather(1, last)) // 255
    before = hist.cumsum(1) - hist
    levels = torch.arange(256, device=x.device).expand(rows, 256)
    equalized = (step // 2 + before) // step.clamp(min=1)
    identity = (occupied.sum(1, keepdim=True) <= 1) | (step == 0)
    return _lut(x, torch.where(identity, levels, equalized).clamp(max=255).to(torch.uint8))


def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend of uint8 images in float32: truncated, clipped."""
    return (degenerate + factor * (image - degenerate)).clamp_(0, 255).trunc_().to(torch.uint8)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L of x (n, 3, ...) uint8: (n, ...) int32, its fixed-point ITU-R 601-2 weights."""
    r, g, b = x[:, 0].int(), x[:, 1].int(), x[:, 2].int()
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageFilter.SMOOTH of planes x (..., H, W) uint8 as float32: its float sums, rounding, copied edges."""
    f = x.float()
    side, centre = float(np.float32(1 / 13)), float(np.float32(5 / 13))  # PIL's float32 kernel

    def row(r: torch.Tensor, middle: float) -> torch.Tensor:
        return r[..., :-2] * side + r[..., 1:-1] * middle + r[..., 2:] * side

    ss = (0.5 + row(f[..., 2:, :], side)) + row(f[..., 1:-1, :], centre)
    ss = (ss + row(f[..., :-2, :], side)).clamp_(0, 255).trunc_()
    out = f.clone()
    out[..., 1:-1, 1:-1] = ss
    return out


class DeviceAugment:
    """The worker path's training augmentation (`datasets.ClipDataset`) for a batch of uint8 clips and their records.

    Call with frames (B, T, H, W, 3) uint8 on any device and the collated records (`pack_draw`) left on the CPU,
    k per clip (--num_sample k, a clip's views adjacent: its frames are expanded here, on the device),
    as the loader gives them: the grouping by op reads them there, and what the device needs goes to it through
    pinned memory, so the call does not wait for the device. Returns (B, 3, T, S, S) float32, ImageNet-normalised,
    S = input_size.
    """

    def __init__(self, rand_augment: VideoRandAugment | None, input_size: int, erase_mode: str = "pixel"):
        self.ops = rand_augment.ops if rand_augment is not None else []
        for op in self.ops:
            if not (op.name in _POINTWISE_OPS or op.name in _AFFINE_OPS or op.name in _BLEND_OPS
                    or op.name in ("AutoContrast", "Equalize")):
                raise ValueError(f"RandAugment op {op.name}: no device implementation (use --augment_on workers)")
        self.input_size, self.erase_mode = input_size, erase_mode
        self.mean = torch.tensor(IMAGENET_DEFAULT_MEAN)
        self.std = torch.tensor(IMAGENET_DEFAULT_STD)

    def __call__(self, frames: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        params = {k: v.cpu() for k, v in params.items()}
        x = frames.permute(0, 4, 1, 2, 3)  # (B, 3, T, H, W)
        views = len(params["op"]) // len(frames)  # --num_sample: the loader sends each clip's frames once
        x = (x.repeat_interleave(views, dim=0) if views > 1 else x).contiguous()
        for layer in range(params["op"].shape[1]):
            # One group per op and interpolation: its clips go through the op in one batched call.
            key = params["op"][:, layer] * 8 + params["resample"][:, layer]
            for k in key.unique().tolist():
                if k < 0:
                    continue
                clips = (key == k).nonzero()[:, 0]
                index = _to(clips, x.device)
                out = self._apply(self.ops[k // 8], x.index_select(0, index), params["arg"][clips, layer].tolist(),
                                  k % 8)
                x.index_copy_(0, index, out)
        clip = self._crop_resize_flip_normalize(x, params["crop"], params["flip"])
        for b in params["erase"][:, :, 2].nonzero()[:, 0].unique().tolist():
            boxes = [tuple(box) for box in params["erase"][b].tolist() if box[2] > 0]
            erase_(clip[b].view(-1, *clip.shape[3:]), boxes, self.erase_mode, int(params["noise_seed"][b]))
        return clip

    def _apply(self, op, x: torch.Tensor, args: list[float], resample: int) -> torch.Tensor:
        """One op on x (n, 3, T, H, W) uint8, clip i with argument args[i] (`resample`: of affine ops)."""
        n, _, _, height, width = x.shape
        if op.name in _TRANSLATIONS and resample == Image.BICUBIC:
            axis, relative = _TRANSLATIONS[op.name]
            size = x.shape[axis + 2]
            return translate(x, [a * size if relative else a for a in args], 4 if axis == 2 else 3,
                             op.kwargs["fillcolor"])
        if op.name in _AFFINE_OPS:
            matrices = [pil_affine_matrix(op.name, a, width, height) for a in args]
            return warp(x, matrices, op.kwargs["fillcolor"], resample)
        if op.name == "AutoContrast":
            return autocontrast(x.view(-1, height, width)).view_as(x)
        if op.name == "Equalize":
            return equalize(x.view(-1, height, width)).view_as(x)
        if op.name in _POINTWISE_OPS:
            # The op's own output on all 256 levels is its lookup table, as in the worker path.
            luts = [np.asarray(op.aug_fn(_LEVELS, *self._level_args(op, a), **op.kwargs))[0, :, 0] for a in args]
            return _lut(x, _to(torch.from_numpy(np.stack(luts)), x.device))
        factor = _to(torch.tensor(args, dtype=torch.float32), x.device).view(n, 1, 1, 1, 1)
        if op.name.startswith("Color"):
            degenerate = _luma(x)[:, None].float()
        elif op.name.startswith("Contrast"):
            luma_sum = _luma(x).sum(dim=(2, 3), dtype=torch.int64)  # (n, T): per frame
            degenerate = torch.floor(luma_sum.double() / (height * width) + 0.5).float()[:, None, :, None, None]
        else:  # Sharpness
            degenerate = _smooth(x)
        return _blend(degenerate, x.float(), factor)

    @staticmethod
    def _level_args(op, arg: float) -> tuple:
        if op.level_fn is None:
            return ()
        return (int(arg),) if op.name in _INT_ARG_OPS else (arg,)

    def _crop_resize_flip_normalize(self, x: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """x (B, 3, T, H, W) uint8 -> (B, 3, T, S, S) float32: each clip's crop resized by the original's
        F.interpolate (bilinear, not antialiased; OpenCV's float resize in the worker path, to float rounding),
        mirrored where flipped, normalised as the worker path does."""
        batch, chan, frames = x.shape[:3]
        size = self.input_size
        out = torch.empty((batch, chan, frames, size, size), device=x.device)
        scale = _to(1 / (255 * self.std), x.device)[:, None, None, None]
        for b, ((top, left, h, w), mirrored) in enumerate(zip(crop.tolist(), flip.tolist())):
            planes = x[b, :, :, top:top + h, left:left + w].float().view(1, chan * frames, h, w)
            resized = F.interpolate(planes, size=(size, size), mode="bilinear", align_corners=False)
            resized = resized.view(chan, frames, size, size)
            torch.mul(resized.flip(-1) if mirrored else resized, scale, out=out[b])
        return out.sub_(_to(self.mean / self.std, x.device)[:, None, None, None])


def translate(x: torch.Tensor, shifts: list[float], dim: int, fill: tuple[int, ...]) -> torch.Tensor:
    """PIL's bicubic translation (a = -1, edges clamped, truncated) of clip i of x (n, 3, T, H, W) uint8 by
    shifts[i] pixels along dim 4 (x) or 3 (y), as `video_augment.translate_frames` computes it."""
    size, device = x.shape[dim], x.device
    positions = torch.arange(size, dtype=torch.float64)
    kernels, taps, outside = [], [], []
    for shift in shifts:
        n = math.floor(shift)
        d = shift - n
        kernels.append(np.array([-d + 2 * d * d - d**3, 1 - 2 * d * d + d**3, d + d * d - d**3, d**3 - d * d],
                                np.float32))
        taps.append(torch.stack([(torch.arange(size) + n - 1 + k).clamp(0, size - 1) for k in range(4)]))
        outside.append((positions + 0.5 + shift < 0) | (positions + 0.5 + shift >= size))
    kernel = _to(torch.from_numpy(np.stack(kernels)), device)  # (n, 4)
    taps_t = _to(torch.stack(taps), device)  # (n, 4, size)
    view = [len(shifts), 1, 1, 1, 1]
    view[dim] = size
    values = None
    for k in range(4):
        index = taps_t[:, k].view(view).expand(x.shape)
        term = x.gather(dim, index).float() * kernel[:, k].view(-1, 1, 1, 1, 1)
        values = term if values is None else values + term
    out = (values + 1e-4).clamp_(0, 255).trunc_().to(torch.uint8)
    return _fill(out, _to(torch.stack(outside), device).view(view).expand(x.shape), fill)


def warp(x: torch.Tensor, matrices: list[tuple[float, ...]], fill: tuple[int, ...], resample: int) -> torch.Tensor:
    """PIL's `Image.transform(AFFINE)` of clip i of x (n, 3, T, H, W) uint8 with matrices[i] (output pixel centre ->
    input point) by grid_sample (OpenCV's bicubic and edge clamping), `fill` where the input point is outside."""
    n, chan, frames, height, width = x.shape
    m = torch.tensor(matrices, dtype=torch.float64)[:, :, None, None]  # (n, 6, 1, 1)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                            torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    xin, yin = m[:, 0] * xs + m[:, 1] * ys + m[:, 2], m[:, 3] * xs + m[:, 4] * ys + m[:, 5]
    grid = _to(torch.stack([2 * xin / width - 1, 2 * yin / height - 1], dim=-1).float(), x.device)
    outside = _to((xin < 0) | (xin >= width) | (yin < 0) | (yin >= height), x.device)
    warped = F.grid_sample(x.view(n, chan * frames, height, width).float(), grid, mode=_GRID_MODES[resample],
                           padding_mode="border", align_corners=False)
    out = warped.round_().clamp_(0, 255).to(torch.uint8).view_as(x)
    return _fill(out, outside[:, None, None].expand(x.shape), fill)


def _fill(x: torch.Tensor, where: torch.Tensor, fill: tuple[int, ...]) -> torch.Tensor:
    """x (n, 3, ...) uint8 with the colour `fill` where `where`."""
    colour = _to(torch.tensor(fill, dtype=torch.uint8), x.device).view(1, 3, *[1] * (x.dim() - 2))
    return torch.where(where, colour, x)
