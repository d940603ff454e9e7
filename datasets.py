"""Fine-tuning data: the dataset table, annotation CSVs and the clip dataset (the original's VideoClsDatasetFrame).

An entry is a folder of frames (sorted `*.jpg`, `*.png` for MAFW), one image (repeated) or a video file (ours).
Validation and test clips are computed exactly as the original does (PIL decode and bilinear resize), so merged
test probabilities match it. Training draws the same augmentations with one set of decisions per clip, on uint8
frame stacks, decoding and augmenting each distinct frame once: over twice the original's clips/s
(benchmarks/bench_data.py).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import str_to_pil_interp
from torch.utils.data import default_collate
from torchvision.transforms import RandomResizedCrop

from demo_data import DEMO_CLASSES
from utils import ResumableSampler, get_rank, get_world_size, seeded_rngs

logger = logging.getLogger(__name__)

# OpenCV's thread pool does not survive fork: a DataLoader worker forked while it is live can hang in its first
# OpenCV call. Frames are small and the loader is parallel across workers anyway.
cv2.setNumThreads(0)


@dataclass(frozen=True)
class DatasetInfo:
    classes: tuple[str, ...]  # class names in label order
    frame_ext: str  # extension of the frame files inside a clip folder
    val_file: str  # what the validation loader reads: test.csv except for DFEW (whose val.csv is a copy of it)


_SEVEN = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
# The label orders of data.md §1.2, §2.2, §3.2 and §5; the only place they live.
DATASETS: dict[str, DatasetInfo] = {
    "FERV39k": DatasetInfo(_SEVEN, "jpg", "test.csv"),
    "DFEW": DatasetInfo(_SEVEN, "jpg", "val.csv"),
    "MAFW": DatasetInfo(("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt",
                         "anxiety", "helplessness", "disappointment"), "png", "test.csv"),
    "RAVDESS": DatasetInfo(("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"), "jpg",
                           "test.csv"),
    "CREMA-D": DatasetInfo(("ANG", "DIS", "FEA", "HAP", "NEU", "SAD"), "jpg", "test.csv"),
    "ENTERFACE": DatasetInfo(("anger", "disgust", "fear", "happiness", "sadness", "surprise"), "jpg", "test.csv"),
    "DEMO": DatasetInfo(DEMO_CLASSES, "jpg", "test.csv"),  # the generator defines what each class looks like
}

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
MODES = ("train", "validation", "test")


class Annotation(NamedTuple):
    clip_id: str  # the CSV path exactly as written: the id carried to every output
    path: str  # what is read: clip_id resolved against data_root
    label: int
    source: str  # "<csv>:<line>", for error messages


def parse_line(line: str, nb_classes: int | None) -> tuple[str, int]:
    """(path, label) of one annotation line; ValueError says what is wrong. nb_classes None: any integer label."""
    parts = line.split(" ")
    if len(parts) != 2 or not parts[0]:
        raise ValueError(f"expected '<path> <label>' separated by one space, got {line!r}")
    clip_id, label_text = parts
    try:
        label = int(label_text)
    except ValueError:
        raise ValueError(f"label {label_text!r} is not an integer") from None
    if nb_classes is not None and not 0 <= label < nb_classes:
        raise ValueError(f"label {label} is outside 0..{nb_classes - 1}")
    return clip_id, label


def read_annotations(csv_path: str | os.PathLike, nb_classes: int | None,
                     data_root: str | None = None) -> list[Annotation]:
    """Parse `<path> <label>` lines (one space, no header); relative paths are resolved against data_root.

    Raises ValueError naming `file:line` for a malformed line, a non-integer label or one outside 0..nb_classes-1
    (any integer when nb_classes is None: the pretraining lists' dummy labels).
    """
    with open(csv_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        if not line:  # blank lines are skipped, as pandas does
            continue
        where = f"{csv_path}:{number}"
        try:
            clip_id, label = parse_line(line, nb_classes)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        path = os.path.join(data_root, clip_id) if data_root is not None else clip_id
        entries.append(Annotation(clip_id, path, label, where))
    if not entries:
        raise ValueError(f"{csv_path}: no clips")
    return entries


# ---------------------------------------------------------------------------------------------------------------
# Temporal sampling (finetune.md §2.9.3). Pure functions of the frame count; the random one draws from numpy's
# global RNG as the original does, so seeding numpy (seed_worker) reproduces it.

def train_indices(n: int, clip_len: int = 16, rate: int = 4) -> np.ndarray:
    """Frame indices of a training (and validation) clip: a random window of clip_len*rate frames, 16 points evenly
    spread over it (step span/15, not `rate`); a clip of at most that many frames is spread whole and padded."""
    span = clip_len * rate
    if n <= span:
        points = n // rate
        idx = np.concatenate([np.linspace(0, n, num=points), np.full(clip_len - points, n)])
        return np.clip(idx, 0, n - 1).astype(np.int64)
    end = np.random.randint(span, n)
    start = end - span
    return np.clip(np.linspace(start, end, num=clip_len), start, end - 1).astype(np.int64)


def loaded_test_indices(n: int, clip_len: int = 16, rate: int = 4) -> np.ndarray:
    """The frames all test views draw from: every rate-th frame from 0, the last repeated to at least clip_len."""
    idx = np.arange(0, n, rate)
    return np.concatenate([idx, np.full(max(clip_len - len(idx), 0), idx[-1])])


def view_start(num_loaded: int, chunk: int, num_segments: int, clip_len: int = 16) -> int:
    """Start of temporal view `chunk` in the test frame list: views evenly spaced from the first to the last window.

    The original divides by num_segments - 1; with one segment we use step 0 (its only view starts at 0 anyway).
    """
    step = max((num_loaded - clip_len) / (num_segments - 1), 0) if num_segments > 1 else 0
    return int(chunk * step)


# ---------------------------------------------------------------------------------------------------------------
# Reading entries

class _Frames:
    """The frames of one entry: a folder's sorted frame files, one image (a 1-frame clip) or a video file."""

    def __init__(self, entry: Annotation, ext: str):
        self.video, self.source = None, entry.source
        if os.path.isdir(entry.path):
            # Lexicographic order, as the original's sorted glob (which skips hidden files): 10.jpg before 2.jpg.
            names = sorted(n for n in os.listdir(entry.path) if n.endswith("." + ext) and not n.startswith("."))
            if not names:
                raise ValueError(f"{entry.source}: {entry.path}: no *.{ext} frames in the folder")
            self.files = [os.path.join(entry.path, n) for n in names]
        elif os.path.isfile(entry.path):
            self.files = [entry.path]
            if entry.path.lower().endswith(VIDEO_EXTENSIONS):
                import decord  # only video entries need it

                try:
                    self.video = decord.VideoReader(entry.path, num_threads=1)
                except Exception as err:
                    raise OSError(f"{entry.source}: {entry.path}: cannot read the video: {err}") from err
        else:
            raise FileNotFoundError(f"{entry.source}: {entry.path}: no such file or folder")
        self.count = len(self.video) if self.video is not None else len(self.files)
        if self.count == 0:
            raise ValueError(f"{entry.source}: {entry.path}: the video has no frames")

    def video_frames(self, indices: np.ndarray) -> np.ndarray:
        """(len(indices), H, W, 3) uint8 RGB frames of the video."""
        try:
            return self.video.get_batch(indices.tolist()).asnumpy()
        except Exception as err:
            raise OSError(f"{self.source}: {self.files[0]}: cannot decode frames {indices.tolist()}: {err}") from err

    def pil(self, indices: np.ndarray, size: int) -> np.ndarray:
        """(len(indices), size, size, 3) uint8: PIL decode, RGB, PIL bilinear resize to a square (the original)."""
        unique, inverse = np.unique(indices, return_inverse=True)
        if self.video is not None:
            images = [Image.fromarray(f) for f in self.video_frames(unique)]
        else:
            images = []
            for i in unique:
                try:
                    with Image.open(self.files[i]) as im:
                        images.append(im.convert("RGB"))
                except Exception as err:
                    raise OSError(f"{self.source}: {self.files[i]}: cannot read the image: {err}") from err
        return np.stack([np.asarray(im.resize((size, size), Image.BILINEAR)) for im in images])[inverse]

    def resized(self, indices: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """For training: the distinct frames of `indices` as (U, size, size, 3) uint8, and the position of each index
        among them. OpenCV decodes (libjpeg-turbo, as PIL); torch's antialiased bilinear resize is PIL's filter to
        within 2 levels, batched."""
        unique, inverse = np.unique(indices, return_inverse=True)
        if self.video is not None:
            return _resize_hwc(torch.from_numpy(self.video_frames(unique)), size).numpy(), inverse
        decoded = [torch.from_numpy(f) for f in self.rgb(unique)]
        if len({d.shape for d in decoded}) == 1:
            frames = _resize_hwc(torch.stack(decoded), size)
        else:
            frames = torch.cat([_resize_hwc(d[None], size) for d in decoded])
        return frames.numpy(), inverse

    def rgb(self, indices: np.ndarray) -> list[np.ndarray]:
        """The frames at `indices` as (H, W, 3) uint8 RGB arrays at their stored size (OpenCV / decord decode)."""
        if self.video is not None:
            return list(self.video_frames(indices))
        decoded = []
        for i in indices:
            # EXIF orientation ignored, as PIL does.
            image = cv2.imread(self.files[i], cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            if image is None:
                raise OSError(f"{self.source}: {self.files[i]}: cannot read the image")
            decoded.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        return decoded


def _resize_hwc(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8 by torch's antialiased bilinear (its fast channels-last path)."""
    if frames.shape[1:3] == (size, size):
        return frames
    resized = F.interpolate(frames.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False)
    return resized.permute(0, 2, 3, 1).contiguous()  # a no-op: the output is channels-last


# ---------------------------------------------------------------------------------------------------------------
# Training augmentation

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


def _pil_affine_matrix(name: str, arg: float, width: int, height: int) -> tuple[float, ...]:
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

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T, H, W, 3) uint8."""
        chosen = np.random.choice(len(self.ops), self.num_layers, replace=self.choice_weights is None,
                                  p=self.choice_weights)
        for i in chosen:
            drawn = self._drawers[i](None)  # timm's AugmentOp.__call__: probability, magnitude, level arguments
            if drawn is not None:  # else skipped (probability)
                frames = self._apply(self.ops[i], *drawn, frames)
        return frames

    @staticmethod
    def _apply(op, level_args: tuple, kwargs: dict, frames: np.ndarray) -> np.ndarray:
        if op.name in _TRANSLATIONS and kwargs["resample"] == Image.BICUBIC:
            axis, relative = _TRANSLATIONS[op.name]
            shift = level_args[0] * (frames.shape[axis] if relative else 1)
            return translate_frames(frames, shift, axis, kwargs["fillcolor"])
        if op.name in _AFFINE_OPS:
            resample = kwargs["resample"]
            resample = random.choice(resample) if isinstance(resample, (list, tuple)) else resample
            matrix = _pil_affine_matrix(op.name, level_args[0], frames.shape[2], frames.shape[1])
            return warp_frames(frames, matrix, kwargs["fillcolor"], resample)
        if op.name in _STACK_OPS:
            return _STACK_OPS[op.name](frames)
        if op.name in _POINTWISE_OPS:
            # The op's own output on all 256 levels is its lookup table: exact, one pass over the clip.
            lut = np.asarray(op.aug_fn(_LEVELS, *level_args, **kwargs))
            return cv2.LUT(frames.reshape(-1, *frames.shape[2:]), lut).reshape(frames.shape)
        return np.stack([np.asarray(op.aug_fn(Image.fromarray(f), *level_args, **kwargs)) for f in frames])


# ---------------------------------------------------------------------------------------------------------------
# The dataset

_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN)
_STD = torch.tensor(IMAGENET_DEFAULT_STD)


def normalize(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float32: /255 then ImageNet mean/std, the original's exact float ops."""
    clip = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div_(255)
    return clip.sub_(_MEAN[:, None, None, None]).div_(_STD[:, None, None, None])


def collate_views(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate training items of num_sample > 1 views into one flat batch (views of a clip adjacent)."""
    clips = [clip for views, _ in batch for clip in views]
    labels = [label for _, labels in batch for label in labels]
    return torch.stack(clips), torch.tensor(labels)


class BadSample(NamedTuple):
    """What a dataset with skip_bad returns for an entry it cannot read (in place of the item)."""

    source: str  # "<csv>:<line>"
    path: str
    error: str


def collate_skipping_bad(batch: list) -> tuple:
    """Collate the readable items as usual, then append the list of BadSample (never replaced by other clips)."""
    bad = [item for item in batch if isinstance(item, BadSample)]
    good = [item for item in batch if not isinstance(item, BadSample)]
    if not good:
        return (bad,)
    return (*(collate_views(good) if isinstance(good[0][0], list) else default_collate(good)), bad)


class TooManyBadSamplesError(RuntimeError):
    """More distinct unreadable entries than --max_bad_samples."""


class BadSampleLog:
    """The distinct unreadable entries met so far (logged once each, with the file and the error); more than
    `limit` of them raise TooManyBadSamplesError listing them all."""

    def __init__(self, limit: int, seen: dict[str, str] | None = None):
        self.limit, self.seen = limit, dict(seen or {})

    def add(self, bad: list[BadSample]) -> None:
        for item in bad:
            if item.source not in self.seen:
                self.seen[item.source] = item.error
                logger.warning("skipped unreadable sample %d (--max_bad_samples %d): %s", len(self.seen),
                               self.limit, item.error)
        if len(self.seen) > self.limit:
            raise TooManyBadSamplesError(f"{len(self.seen)} unreadable samples, more than --max_bad_samples "
                                         f"{self.limit}:\n  " + "\n  ".join(self.seen.values()))


class ClipDataset(torch.utils.data.Dataset):
    """Clips of one annotation file, for training, validation or the multi-view test (finetune.md §2.9).

    Items: train `(clip, label)`, or `([clip] * num_sample, [label] * num_sample)` with num_sample > 1 (independent
    augmentations of the same frames; `collate` flattens them); validation `(clip, label, clip_id)`; test
    `(clip, label, clip_id, chunk_nb, split_nb)` with item = (chunk * test_num_crop + split) * N + clip.
    A clip is float32 (3, T, H, W), ImageNet-normalised.

    With `seed`, a train / validation item's random draws depend only on (seed, epoch, index) (`set_epoch`), not on
    the worker or on earlier items: a resumed run sees the same clips. With `skip_bad`, an unreadable entry gives a
    BadSample (`collate` sets it apart) instead of raising.
    """

    def __init__(self, annotations: list[Annotation], mode: str, *, frame_ext: str = "jpg", num_frames: int = 16,
                 sampling_rate: int = 4, input_size: int = 224, short_side_size: int = 224,
                 test_num_segment: int = 5, test_num_crop: int = 3, aa: str | None = "rand-m7-n4-mstd0.5-inc1",
                 train_interpolation: str = "bicubic", reprob: float = 0.25, remode: str = "pixel",
                 recount: int = 1, num_sample: int = 1, seed: int | None = None, skip_bad: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {MODES}")
        self.annotations, self.mode, self.frame_ext = annotations, mode, frame_ext
        self.num_frames, self.sampling_rate = num_frames, sampling_rate
        self.input_size, self.short_side_size = input_size, short_side_size
        self.test_num_segment, self.test_num_crop = test_num_segment, test_num_crop
        self.num_sample = num_sample
        self.augment = VideoRandAugment(aa, input_size, train_interpolation) if aa and aa != "none" else None
        # Applied to the (C*T, H, W) view of a clip: one rectangle for all frames, noise drawn per frame and channel.
        self.erase = RandomErasing(reprob, mode=remode, max_count=recount, device="cpu") if reprob > 0 else None
        self.collate = collate_views if mode == "train" and num_sample > 1 else None
        self.seed, self.epoch, self.skip_bad = seed, 0, skip_bad and mode != "test"
        if self.skip_bad:
            self.collate = collate_skipping_bad

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose draws items take (with `seed`); set it before the DataLoader iterator starts workers."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.annotations)
        return n * self.test_num_segment * self.test_num_crop if self.mode == "test" else n

    def __getitem__(self, index: int):
        if self.mode == "test":
            entry = self.annotations[index % len(self.annotations)]
            view = index // len(self.annotations)
            chunk, split = divmod(view, self.test_num_crop)
            return self._test_clip(entry, chunk), entry.label, entry.clip_id, chunk, split
        entry = self.annotations[index]
        seed = None if self.seed is None else (self.seed, self.epoch, index)
        try:
            with nullcontext() if seed is None else seeded_rngs(seed):
                return self._train_item(entry)
        except (OSError, ValueError) as err:
            if not self.skip_bad:
                raise
            return BadSample(entry.source, entry.path, str(err))

    def _train_item(self, entry: Annotation):
        """A training or validation item (the same temporal sampler, as in the original)."""
        source = _Frames(entry, self.frame_ext)
        indices = train_indices(source.count, self.num_frames, self.sampling_rate)
        if self.mode == "validation":
            frames = source.pil(indices, self.short_side_size)
            top = round((self.short_side_size - self.input_size) / 2)  # centre crop, a no-op when equal
            frames = frames[:, top:top + self.input_size, top:top + self.input_size]
            return normalize(frames), entry.label, entry.clip_id
        frames, inverse = source.resized(indices, self.short_side_size)
        if self.num_sample == 1:
            return self._augment(frames, inverse), entry.label
        return [self._augment(frames, inverse) for _ in range(self.num_sample)], [entry.label] * self.num_sample

    def _test_clip(self, entry: Annotation, chunk: int) -> torch.Tensor:
        source = _Frames(entry, self.frame_ext)
        loaded = loaded_test_indices(source.count, self.num_frames, self.sampling_rate)
        start = view_start(len(loaded), chunk, self.test_num_segment, self.num_frames)
        # Only this view's frames are decoded: a frame's pixels do not depend on the other frames.
        # Every spatial view is the whole frame: after the square resize the original's crop step is 0.
        return normalize(source.pil(loaded[start:start + self.num_frames], self.short_side_size))

    def _augment(self, frames: np.ndarray, inverse: np.ndarray) -> torch.Tensor:
        """RandAugment, random resized crop, flip, normalise, erase: one draw for the whole clip (§2.9.4-2.9.5).

        `frames` are the clip's distinct frames and `inverse` picks the clip from them: with every decision shared,
        a repeated frame comes out of RandAugment as its copies would, so it is augmented once.
        """
        if self.augment is not None:
            frames = self.augment(frames)
        frames = frames[inverse]
        num, height, width = frames.shape[:3]
        top, left, h, w = RandomResizedCrop.get_params(torch.empty(1, height, width), scale=(0.08, 1.0),
                                                       ratio=(0.75, 1.3333))
        flip = bool(torch.rand(()) < 0.5)
        size = self.input_size
        crops = frames[:, top:top + h, left:left + w].astype(np.float32)
        out = np.empty((num, size, size, 3), np.float32)
        for crop, resized in zip(crops, out):
            # OpenCV's bilinear on float is the original's F.interpolate(align_corners=False) to float rounding.
            cv2.resize(crop, (size, size), dst=resized, interpolation=cv2.INTER_LINEAR)
            if flip:
                cv2.flip(resized, 1, dst=resized)
        # Normalising after the (linear) resize instead of before: the same map; the first op also transposes.
        clip = torch.empty((3, num, size, size))
        torch.mul(torch.from_numpy(out).permute(3, 0, 1, 2), (1 / (255 * _STD))[:, None, None, None], out=clip)
        clip.sub_((_MEAN / _STD)[:, None, None, None])
        if self.erase is not None:
            self.erase(clip.view(-1, size, size))
        return clip


def build_dataset(is_train: bool, test_mode: bool, args: argparse.Namespace
                  ) -> tuple[torch.utils.data.Dataset, int]:
    """The training (is_train), validation (neither) or test (test_mode) set of args.data_set, and its class count."""
    if args.data_set not in DATASETS:
        raise ValueError(f"--data_set {args.data_set}: not a fine-tuning dataset here; one of {', '.join(DATASETS)}")
    info = DATASETS[args.data_set]
    if args.nb_classes != len(info.classes):
        raise ValueError(f"--nb_classes {args.nb_classes} does not match {args.data_set}, which has "
                         f"{len(info.classes)} classes ({', '.join(info.classes)})")
    if getattr(args, "num_segments", 1) != 1:
        raise ValueError(f"--num_segments {args.num_segments}: the fine-tuning loader gives one segment of "
                         f"--num_frames frames (the original passed 1 as well)")
    mode = "train" if is_train else "test" if test_mode else "validation"
    csv_name = {"train": "train.csv", "validation": info.val_file, "test": "test.csv"}[mode]
    annotations = read_annotations(os.path.join(args.data_path, csv_name), args.nb_classes,
                                   getattr(args, "data_root", None))
    dataset = ClipDataset(
        annotations, mode, frame_ext=info.frame_ext, num_frames=args.num_frames, sampling_rate=args.sampling_rate,
        input_size=args.input_size, short_side_size=args.short_side_size, test_num_segment=args.test_num_segment,
        test_num_crop=args.test_num_crop, aa=args.aa, train_interpolation=args.train_interpolation,
        reprob=args.reprob, remode=args.remode, recount=args.recount, num_sample=args.num_sample,
        seed=getattr(args, "seed", None), skip_bad=getattr(args, "max_bad_samples", None) is not None)
    return dataset, args.nb_classes


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed numpy and `random` from the worker's torch seed, which differs per worker."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_loader(dataset, args: argparse.Namespace, batch_size: int, train: bool = False,
                 sequential: bool = False) -> torch.utils.data.DataLoader:
    """Train and test go through a DistributedSampler (as in the original); validation does with --dist_eval."""
    if sequential:
        sampler = torch.utils.data.SequentialSampler(dataset)
    else:
        sampler = ResumableSampler(dataset, get_world_size(), get_rank(), shuffle=train,
                                         seed=args.seed)
    # Workers start afresh each epoch, with the dataset's current epoch (its draws depend on it); the loader's own
    # generator keeps it from drawing a worker seed from the global RNG, which a resume restores step by step.
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=batch_size, num_workers=args.num_workers, drop_last=train,
        pin_memory=args.pin_mem and args.device.startswith("cuda"), worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(args.seed), collate_fn=getattr(dataset, "collate", None))
