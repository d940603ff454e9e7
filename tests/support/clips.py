"""Small clips written for the data tests: flat or textured frame folders, videos, and how to read a clip back."""

from __future__ import annotations

import argparse
from dataclasses import fields

import cv2
import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from annotations import DATASETS, Annotation
from datasets import Augmentation, ClipDataset, Sampling

MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None, None]
STD = torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None, None]


def write_frames(folder, values, size=48, ext="png", names=None):
    """One flat-colour frame per value (frame identity = its level), or `names` for the files."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(values):
        name = names[i] if names else f"{i:05d}.{ext}"
        cv2.imwrite(str(folder / name), np.full((size, size, 3), v, np.uint8))
    return folder


def write_textured(folder, n, size=48, ext="jpg", seed=0):
    """Frames with texture and colour (so resizing and augmentation have something to change)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (0, 0), 2)
    for t in range(n):
        cv2.imwrite(str(folder / f"{t:05d}.{ext}"), np.roll(base, t, axis=1))
    return folder


def write_video(path, n, size=32):  # decord misreads some mp4v sizes (48x48), so 32
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (size, size))
    for t in range(n):
        writer.write(np.full((size, size, 3), 10 * t + 5, np.uint8))
    writer.release()
    return path


def levels(clip):
    """Per-frame mean pixel level (0..255) of a normalised (3, T, H, W) clip."""
    return ((clip * STD + MEAN) * 255).mean(dim=(0, 2, 3))


def entry(path, label=0, source="x.csv:1"):
    return Annotation(str(path), str(path), label, source)


def args_for(data_path, data_set="DFEW", **kw):
    base = dict(data_path=str(data_path), data_root=None, data_set=data_set, nb_classes=len(DATASETS[data_set].classes),
                num_frames=16, sampling_rate=2, input_size=32, short_side_size=32, test_num_segment=2,
                test_num_crop=2, aa="rand-m7-n4-mstd0.5-inc1", train_interpolation="bicubic", reprob=0.25,
                remode="pixel", recount=1, num_sample=1, num_segments=1)
    return argparse.Namespace(**{**base, **kw})


def smooth_frames(num=3, size=40):
    rng = np.random.default_rng(1)
    base = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (0, 0), 3)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
    return np.stack([np.roll(base, t, axis=0) for t in range(num)])


def clip_dataset(annotations: list[Annotation], mode: str, *, seed: int | None = None, skip_bad: bool = False,
                 **settings) -> ClipDataset:
    """A ClipDataset from the flags' names (num_frames=8, reprob=0, augment_on="device", ...): each goes to the
    Sampling or the Augmentation field of that name."""
    names = {f.name for f in fields(Sampling)}
    sampling = Sampling(**{k: v for k, v in settings.items() if k in names})
    augmentation = Augmentation(**{k: v for k, v in settings.items() if k not in names})
    return ClipDataset(annotations, mode, sampling, augmentation, seed=seed, skip_bad=skip_bad)
