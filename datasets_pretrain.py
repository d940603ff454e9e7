"""Pretraining data: unlabelled face videos (VoxCeleb2, or the demo's) as clips + masks (docs/PRETRAIN.md).

Each item is a clip of num_samples x num_frames frames, sampled at `sampling_rate` from a random offset, the
VoxCeleb2 face crop when the list is VoxCeleb2's, one multi-scale corner crop for the whole clip, ImageNet
normalisation, and one token mask from the chosen generator. Entries are read by the fine-tuning reader
(`datasets`): videos through decord, or frame folders.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from annotations import Annotation, read_annotations
from datasets import BadSample, collate_skipping_bad, load_item, normalize
from masking_generator import build_masking_generator
from video_io import FrameSource, resize_frames

MULTI_SCALES = (1, 0.875, 0.75, 0.66)


def pretrain_indices(n: int, num_frames: int = 16, rate: int = 4, num_segments: int = 1) -> np.ndarray:
    """Frame indices of `num_segments` windows of num_frames frames at `rate` (the original's TSN sampling).

    A window starts at a random offset in its segment of the video; inside it, the index advances by `rate` only
    while that stays before the last frame, so a short video repeats its last reachable frame.
    """
    skip = num_frames * rate
    average = (n - skip + 1) // num_segments
    if average > 0:
        offsets = np.arange(num_segments) * average + np.random.randint(average, size=num_segments)
    elif n > max(num_segments, skip):
        offsets = np.sort(np.random.randint(n - skip + 1, size=num_segments))
    else:
        offsets = np.zeros(num_segments, dtype=np.int64)
    indices = []
    for offset in offsets + 1:  # the original's offsets are 1-based
        position = int(offset)
        for _ in range(num_frames):
            indices.append(position - 1)
            if position + rate < n:
                position += rate
    return np.array(indices, dtype=np.int64)


def voxceleb2_crop(model_input_size: int) -> tuple[slice, slice]:
    """Rows and columns of VoxCeleb2's 224x224 frames kept before augmentation: the face, as the original crops."""
    if model_input_size <= 160:
        return slice(0, 160), slice(32, 192)
    if model_input_size == 192:
        return slice(0, 192), slice(16, 208)
    return slice(None), slice(None)


def multi_scale_crop_box(width: int, height: int, input_size: int,
                         scales: tuple[float, ...] = MULTI_SCALES, max_distort: int = 1) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height) of GroupMultiScaleCrop with fixed, 'more' crop positions.

    The crop side is a scale of the short side (snapped to the input size within 3 px), width and height scales
    at most `max_distort` steps apart, placed at one of 13 positions (corners, centre, edge centres, quarters).
    Draws from python's `random`, as the original.
    """
    sizes = [int(min(width, height) * s) for s in scales]
    sizes = [input_size if abs(s - input_size) < 3 else s for s in sizes]
    pairs = [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_distort]
    crop_w, crop_h = random.choice(pairs)
    w_step, h_step = (width - crop_w) // 4, (height - crop_h) // 4
    positions = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    i, j = random.choice(positions)
    return i * w_step, j * h_step, crop_w, crop_h


class PretrainDataset(torch.utils.data.Dataset):
    """Items `(clip, mask)`: clip float32 (3, num_samples*num_frames, S, S) normalised; mask bool (N,), True = masked.

    The mask is drawn per item after the frame sampling. With `seed`, an item's random draws depend only on
    (seed, epoch, index) (`set_epoch`), not on the worker or on earlier items: a resumed run sees the same clips.
    With `skip_bad`, an unreadable video gives a BadSample (`collate` sets it apart), never another video.
    """

    def __init__(self, annotations: list[Annotation], mask_generator, *, num_frames: int = 16,
                 sampling_rate: int = 4, num_samples: int = 1, input_size: int = 224,
                 face_crop: tuple[slice, slice] | None = None, augment: bool = True, frame_ext: str = "jpg",
                 seed: int | None = None, skip_bad: bool = False):
        self.annotations, self.mask_generator = annotations, mask_generator
        self.seed, self.epoch, self.skip_bad = seed, 0, skip_bad
        self.collate = collate_skipping_bad if skip_bad else None
        self.num_frames, self.sampling_rate, self.num_samples = num_frames, sampling_rate, num_samples
        self.input_size, self.face_crop, self.augment, self.frame_ext = input_size, face_crop, augment, frame_ext

    def __len__(self) -> int:
        return len(self.annotations)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose draws items take (with `seed`); set it before the DataLoader iterator starts workers."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | BadSample:
        seed = None if self.seed is None else (self.seed, self.epoch, index)
        return load_item(self.annotations[index], seed, self.skip_bad, lambda: self._item(index))

    def _item(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        entry = self.annotations[index]
        source = FrameSource(entry, self.frame_ext)
        indices = pretrain_indices(source.count, self.num_frames, self.sampling_rate, self.num_samples)
        unique, inverse = np.unique(indices, return_inverse=True)
        frames = np.stack(source.rgb(unique))[inverse]
        if self.face_crop is not None:
            frames = frames[:, self.face_crop[0], self.face_crop[1]]
        if self.augment:
            left, top, w, h = multi_scale_crop_box(frames.shape[2], frames.shape[1], self.input_size)
            frames = frames[:, top:top + h, left:left + w]
        frames = resize_frames(torch.from_numpy(np.ascontiguousarray(frames)), self.input_size).numpy()
        mask = torch.from_numpy(np.asarray(self.mask_generator(), dtype=bool))
        return normalize(frames), mask


def face_crop_box(args: argparse.Namespace) -> tuple[slice, slice] | None:
    """--face_crop: `voxceleb2` cuts the VoxCeleb2 face box; `auto` (the original's rule) does so when the list's
    path names voxceleb2, at the size in the model's name (the original reads it from there)."""
    if args.face_crop == "none" or (args.face_crop == "auto" and "voxceleb2" not in args.data_path.lower()):
        return None
    name_size = args.model.rsplit("_", 1)[-1]  # e.g. ..._patch16_160
    return voxceleb2_crop(int(name_size) if name_size.isdigit() else args.input_size)


def build_pretrain_dataset(args: argparse.Namespace, window_size: tuple[int, int, int],
                           skip_bad: bool = False) -> PretrainDataset:
    """The dataset of --data_path (a `<path> <label>` list; labels are read but unused), masks drawn on the model's
    token grid `window_size` (t, h, w)."""
    annotations = read_annotations(args.data_path, None, args.data_root)
    generator = build_masking_generator(args.mask_type, window_size, args.mask_ratio, args.part_win_size,
                                        args.part_apply_symmetry)
    face_crop = face_crop_box(args)
    return PretrainDataset(annotations, generator, num_frames=args.num_frames, sampling_rate=args.sampling_rate,
                           num_samples=args.num_samples, input_size=args.input_size, face_crop=face_crop,
                           augment=not args.no_augmentation, seed=args.seed, skip_bad=skip_bad)
