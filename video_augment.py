"""Video RandAugment: timm's RandAugment ops with one random draw per op for all frames of a clip.

The numerics here reproduce PIL's (the original augments each frame with timm's PIL ops): pointwise ops as lookup
tables, AutoContrast / Equalize / translations exactly as PIL computes them, rotations and shears as OpenCV warps
a few levels from PIL's. Checked against PIL in tests/test_datasets.py.
"""

from __future__ import annotations

import copy
import math
import random

import cv2
import numpy as np
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from timm.data.transforms import str_to_pil_interp

# timm ops that are affine warps: ours apply them to all frames with OpenCV (see VideoRandAugment).
_AFFINE_OPS = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel"}
# timm's translations: (axis of the (T, H, W, 3) stack, shift relative to the size along it).
_TRANSLATIONS = {"TranslateX": (2, False), "TranslateY": (1, False), "TranslateXRel": (2, True),
                 "TranslateYRel": (1, True)}
# timm ops whose output level depends only on the input level of the same channel: applied as a lookup table.
_POINTWISE_OPS = {"Invert", "Posterize", "PosterizeIncreasing", "PosterizeOriginal", "Solarize", "SolarizeIncreasing",
                  "SolarizeAdd", "Brightness", "BrightnessIncreasing"}
_LEVELS = Image.fromarray(np.repeat(np.arange(256, dtype=np.uint8), 3).reshape(1, 256, 3))
_CV2_INTERPOLATION = {Image.NEAREST: cv2.INTER_NEAREST, Image.BILINEAR: cv2.INTER_LINEAR,
                      Image.BICUBIC: cv2.INTER_CUBIC}


def _lut_per_frame(frames: np.ndarray, luts: np.ndarray) -> np.ndarray:
    """Apply (T, 3, 256) per-frame, per-channel lookup tables to (T, H, W, 3) uint8 frames."""
    luts = np.ascontiguousarray(np.minimum(luts, 255).astype(np.uint8).transpose(0, 2, 1))[:, None]  # (T, 1, 256, 3)
    return np.stack([cv2.LUT(frame, lut) for frame, lut in zip(frames, luts)])


def autocontrast(frames: np.ndarray) -> np.ndarray:
    """PIL's ImageOps.autocontrast (cutoff 0) of every frame, its tables built as PIL builds them, for all frames at
    once (PIL builds them in Python per call, which made it one of the costliest ops)."""
    planes = np.ascontiguousarray(frames.reshape(len(frames), -1, 3).transpose(0, 2, 1))  # fast reductions
    lo = planes.min(axis=2).astype(np.float64)[..., None]  # (T, 3, 1)
    hi = planes.max(axis=2).astype(np.float64)[..., None]
    levels = np.arange(256, dtype=np.float64)
    scale = 255.0 / np.maximum(hi - lo, 1)
    stretched = np.clip(np.trunc(levels * scale + -lo * scale), 0, 255)  # PIL: int(ix * scale + offset), clipped
    return _lut_per_frame(frames, np.where(hi > lo, stretched, levels))


def equalize(frames: np.ndarray) -> np.ndarray:
    """PIL's ImageOps.equalize of every frame, its tables built as PIL builds them (see autocontrast)."""
    luts = np.empty((len(frames), 3, 256), np.int64)
    for frame, frame_luts in zip(frames, luts):
        for channel, lut in enumerate(frame_luts):
            hist = np.bincount(frame[..., channel].ravel(), minlength=256)
            occupied = np.flatnonzero(hist)
            step = (hist.sum() - hist[occupied[-1]]) // 255
            if len(occupied) <= 1 or step == 0:
                lut[:] = np.arange(256)
            else:
                lut[:] = (step // 2 + np.concatenate([[0], np.cumsum(hist)[:-1]])) // step
    return _lut_per_frame(frames, luts)


# timm ops computed on the whole stack by the functions above (checked against PIL's in tests/test_datasets.py).
_STACK_OPS = {"AutoContrast": autocontrast, "Equalize": equalize}


def _draw_args(_img, *level_args, **kwargs):
    """Stands in for a timm op's image function: returns the arguments timm drew for the call."""
    return level_args, kwargs


def pil_affine_matrix(name: str, arg: float, width: int, height: int) -> tuple[float, ...]:
    """(a, b, c, d, e, f) mapping an output pixel centre to its input point, as timm's op `name` passes it to PIL."""
    if name == "Rotate":  # PIL's Image.rotate(angle) about the centre, without expand
        angle = -math.radians(arg % 360.0)
        a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
        d, e = -b, a
        cx, cy = width / 2.0, height / 2.0
        return a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy
    return {"ShearX": (1, arg, 0, 0, 1, 0), "ShearY": (1, 0, 0, arg, 1, 0),
            "TranslateX": (1, 0, arg, 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, arg),
            "TranslateXRel": (1, 0, arg * width, 0, 1, 0), "TranslateYRel": (1, 0, 0, 0, 1, arg * height)}[name]


def warp_frames(frames: np.ndarray, matrix: tuple[float, ...], fill: tuple[int, ...], resample) -> np.ndarray:
    """PIL's `Image.transform(AFFINE)` of every (H, W, 3) frame, with OpenCV's interpolation (twice as fast).

    Same geometry, edge clamping and fill rule as PIL (a pixel whose input point lies outside the image gets
    `fill`); OpenCV's bicubic kernel (a = -0.75, rounded) differs from PIL's (a = -1, truncated) by a few levels.
    """
    height, width = frames.shape[1:3]
    a, b, c, d, e, f = matrix
    # PIL maps pixel centres (x + 0.5); OpenCV maps pixel indices.
    to_cv = np.array([[a, b, c + 0.5 * (a + b) - 0.5], [d, e, f + 0.5 * (d + e) - 0.5]])
    flags = _CV2_INTERPOLATION[resample] | cv2.WARP_INVERSE_MAP
    ys, xs = np.mgrid[0.5:height, 0.5:width]
    xin, yin = a * xs + b * ys + c, d * xs + e * ys + f
    outside = np.repeat(((xin < 0) | (xin >= width) | (yin < 0) | (yin >= height))[:, :, None], 3, axis=2)
    fill_image = np.empty_like(frames[0])
    fill_image[:] = fill
    out = np.empty_like(frames)
    for frame, warped in zip(frames, out):
        cv2.warpAffine(frame, to_cv, (width, height), dst=warped, flags=flags, borderMode=cv2.BORDER_REPLICATE)
        np.copyto(warped, fill_image, where=outside)
    return out


def translate_frames(frames: np.ndarray, shift: float, axis: int, fill: tuple[int, ...]) -> np.ndarray:
    """PIL's bicubic translation of every (H, W, 3) frame by `shift` pixels along axis 2 (x) or 1 (y) of the stack.

    A translation is one 4-tap filter, so it runs as such over the whole stack: PIL's kernel (a = -1), edge clamping,
    truncation and fill rule, in float32 (PIL computes in double: rarely one level apart). Twice cheaper than a warp.
    """
    size = frames.shape[axis]
    n = math.floor(shift)
    d = shift - n
    kernel = np.array([-d + 2 * d * d - d**3, 1 - 2 * d * d + d**3, d + d * d - d**3, d**3 - d * d], np.float32)
    # Output pixel x reads the input at x + shift; PIL fills it where x + 0.5 + shift falls outside [0, size).
    valid = np.flatnonzero((np.arange(size) + 0.5 + shift >= 0) & (np.arange(size) + 0.5 + shift < size))
    out = np.empty_like(frames)
    out[:] = fill
    if not len(valid):
        return out
    first, last = valid[0], valid[-1] + 1
    pad = [(0, 0)] * 4
    pad[axis] = (2, 2)
    padded = np.pad(frames, pad, mode="edge")
    shape = padded.shape
    # Filtered position j holds sum_k kernel[k] * padded[j + k], the value of output pixel j - n - 1.
    if axis == 2:
        filtered = cv2.filter2D(padded.reshape(-1, shape[2], 3), cv2.CV_32F, kernel[None], anchor=(0, 0))
        values = filtered.reshape(shape)[:, :, first + n + 1:last + n + 1]
        target = out[:, :, first:last]
    else:
        filtered = cv2.filter2D(padded.reshape(-1, shape[2], 3), cv2.CV_32F, kernel[:, None], anchor=(0, 0))
        values = filtered.reshape(shape)[:, first + n + 1:last + n + 1]
        target = out[:, first:last]
    # The epsilon keeps float32 rounding from truncating an exact level (a flat area) to the one below.
    np.copyto(target, np.clip(values + 1e-4, 0, 255), casting="unsafe")
    return out


class VideoRandAugment:
    """timm's RandAugment (e.g. 'rand-m7-n4-mstd0.5-inc1') with one random draw per op for all frames of a clip.

    The ops, their probabilities, magnitudes and signs come from timm's op table (numpy picks the ops, `random` the
    rest, as timm does). Each op then runs on the whole (T, H, W, 3) stack: pointwise ops as the lookup table timm's
    own function gives, AutoContrast/Equalize/translations exactly as PIL computes them, rotations and shears as
    OpenCV warps (`warp_frames`, a few levels from PIL's); the rest (Color, Contrast, Sharpness) with timm's PIL
    function per frame.
    """

    def __init__(self, config_str: str, input_size: int, interpolation: str = "bicubic"):
        hparams = {"translate_const": int(0.45 * input_size)}
        if interpolation and interpolation != "random":
            hparams["interpolation"] = str_to_pil_interp(interpolation)
        ra = rand_augment_transform(config_str, hparams)
        self.ops, self.num_layers, self.choice_weights = ra.ops, ra.num_layers, ra.choice_weights
        self._drawers = []
        for op in self.ops:
            drawer = copy.copy(op)
            drawer.aug_fn = _draw_args
            self._drawers.append(drawer)

    def draw(self) -> list[tuple[int, tuple, dict]]:
        """The clip's applied ops, drawn as timm draws them: (index in `ops`, level arguments, keyword arguments
        with a random interpolation already chosen). Skipped ops (probability) are left out."""
        chosen = np.random.choice(len(self.ops), self.num_layers, replace=self.choice_weights is None,
                                  p=self.choice_weights)
        drawn = []
        for i in chosen:
            args = self._drawers[i](None)  # timm's AugmentOp.__call__: probability, magnitude, level arguments
            if args is None:
                continue
            level_args, kwargs = args
            if self.ops[i].name in _AFFINE_OPS and isinstance(kwargs["resample"], (list, tuple)):
                kwargs["resample"] = random.choice(kwargs["resample"])  # what timm's op function draws next
            drawn.append((int(i), level_args, kwargs))
        return drawn

    def apply(self, frames: np.ndarray, drawn: list[tuple[int, tuple, dict]]) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T, H, W, 3) uint8: the ops of `draw()` in order."""
        for i, level_args, kwargs in drawn:
            frames = self._apply(self.ops[i], level_args, kwargs, frames)
        return frames

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T, H, W, 3) uint8."""
        return self.apply(frames, self.draw())

    @staticmethod
    def _apply(op, level_args: tuple, kwargs: dict, frames: np.ndarray) -> np.ndarray:
        if op.name in _TRANSLATIONS and kwargs["resample"] == Image.BICUBIC:
            axis, relative = _TRANSLATIONS[op.name]
            shift = level_args[0] * (frames.shape[axis] if relative else 1)
            return translate_frames(frames, shift, axis, kwargs["fillcolor"])
        if op.name in _AFFINE_OPS:
            matrix = pil_affine_matrix(op.name, level_args[0], frames.shape[2], frames.shape[1])
            return warp_frames(frames, matrix, kwargs["fillcolor"], kwargs["resample"])
        if op.name in _STACK_OPS:
            return _STACK_OPS[op.name](frames)
        if op.name in _POINTWISE_OPS:
            # The op's own output on all 256 levels is its lookup table: exact, one pass over the clip.
            lut = np.asarray(op.aug_fn(_LEVELS, *level_args, **kwargs))
            return cv2.LUT(frames.reshape(-1, *frames.shape[2:]), lut).reshape(frames.shape)
        return np.stack([np.asarray(op.aug_fn(Image.fromarray(f), *level_args, **kwargs)) for f in frames])
