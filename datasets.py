"""Fine-tuning data: temporal sampling, the clip dataset (the original's VideoClsDatasetFrame), collate and loader.

An entry is a folder of frames (sorted `*.jpg`, `*.png` for MAFW), one image (repeated) or a video file (ours).
Validation and test clips are computed exactly as the original does (PIL decode and bilinear resize), so merged
test probabilities match it. Training draws the same augmentations with one set of decisions per clip, on uint8
frame stacks, decoding and augmenting each distinct frame once: over twice the original's clips/s
(benchmarks/results/SETTLED.md). The dataset table and the CSVs are read in annotations.py, frames in video_io.py.
With augment_on "device" a training item is the uint8 clip and its drawn parameters,
for augment_device.DeviceAugment to apply to the batch on the model's device.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import default_collate
from torchvision.transforms import RandomResizedCrop

from annotations import DATASETS, Annotation, read_annotations
from augment_device import ClipDraw, DeviceAugment, draw_erase, erase_, erase_drawer, pack_draw
from distributed import get_rank, get_world_size
from rng import seeded_rngs
from video_augment import VideoRandAugment
from video_io import FrameSource

logger = logging.getLogger(__name__)

MODES = ("train", "validation", "test")
AUGMENT_ON = ("workers", "device")


# ---------------------------------------------------------------------------------------------------------------
# Temporal sampling (docs/ARCHITECTURE.md, "Data flow"). Pure functions of the frame count; the random one
# draws from numpy's global RNG as the original does, so seeding numpy (seed_worker) reproduces it.

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


def original_test_order(num_clips: int, views_per_clip: int, world_size: int) -> list[int]:
    """The clips (list indices) in the order the original's test merge first meets them, which pred.csv keeps.

    The original makes every view an item of its own (index = view * num_clips + clip), shares them among the
    processes with a DistributedSampler (no shuffling, padded from the start) and reads rank 0's views first,
    then rank 1's, and so on. With one process this is the list order.
    """
    total = num_clips * views_per_clip
    padded = -(-total // world_size) * world_size
    indices = (list(range(total)) * -(-padded // total))[:padded]
    return list(dict.fromkeys(i % num_clips for rank in range(world_size) for i in indices[rank::world_size]))


# ---------------------------------------------------------------------------------------------------------------
# The dataset

_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN)
_STD = torch.tensor(IMAGENET_DEFAULT_STD)


def normalize(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float32: /255 then ImageNet mean/std, the original's exact float ops."""
    clip = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div_(255)
    return clip.sub_(_MEAN[:, None, None, None]).div_(_STD[:, None, None, None])


def collate_views(batch: list) -> tuple:
    """Collate training items of num_sample > 1 views into one flat batch (views of a clip adjacent)."""
    return tuple(default_collate([view for views in field for view in views]) for field in zip(*batch))


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


def load_item(entry: Annotation, seed: tuple[int, ...] | None, skip_bad: bool, load: Callable[[], Any]):
    """load(), its draws seeded from `seed` (seeded_rngs) when given; with skip_bad, an entry that cannot be read
    gives a BadSample instead of raising."""
    try:
        with nullcontext() if seed is None else seeded_rngs(seed):
            return load()
    except (OSError, ValueError) as err:
        if not skip_bad:
            raise
        return BadSample(entry.source, entry.path, str(err))


class TooManyBadSamplesError(RuntimeError):
    """More distinct unreadable entries than --max_bad_samples."""


class BadSampleLog:
    """The distinct unreadable entries met so far (logged once each, with the file and the error); more than
    `limit` of them raise TooManyBadSamplesError listing them all: `record`, then `check` once the processes of a
    run agree whether any of them went past the limit (engine.StepAgreement)."""

    def __init__(self, limit: int, seen: dict[str, str] | None = None):
        self.limit, self.seen = limit, dict(seen or {})

    def record(self, bad: list[BadSample]) -> None:
        for item in bad:
            if item.source not in self.seen:
                self.seen[item.source] = item.error
                logger.warning("skipped unreadable sample %d (--max_bad_samples %d): %s", len(self.seen),
                               self.limit, item.error)

    @property
    def exceeded(self) -> bool:
        return len(self.seen) > self.limit

    def check(self, seen: dict[str, str] | None = None) -> None:
        """Raise if past the limit; `seen` (e.g. every process's entries) is what the error lists."""
        seen = self.seen if seen is None else seen
        if len(seen) > self.limit:
            raise TooManyBadSamplesError(f"{len(seen)} unreadable samples, more than --max_bad_samples "
                                         f"{self.limit}:\n  " + "\n  ".join(seen.values()))


@dataclass(frozen=True)
class Sampling:
    """Which frames a clip takes and at what size (the original's flags of the same names)."""

    frame_ext: str = "jpg"  # of the frame files in a clip folder (DatasetInfo.frame_ext)
    num_frames: int = 16
    sampling_rate: int = 4
    input_size: int = 224
    short_side_size: int = 224
    test_num_segment: int = 5
    test_num_crop: int = 3


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation (the original's flags of the same names) and where it runs (--augment_on)."""

    aa: str | None = "rand-m7-n4-mstd0.5-inc1"
    train_interpolation: str = "bicubic"
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    num_sample: int = 1
    augment_on: str = "workers"


class ClipDataset(torch.utils.data.Dataset):
    """Clips of one annotation file, for training, validation or the multi-view test (docs/ARCHITECTURE.md).

    Items: train `(clip, label)`, or `([clip] * num_sample, [label] * num_sample)` with num_sample > 1 (independent
    augmentations of the same frames; `collate` flattens them); validation `(clip, label, clip_id)`; test
    `(clip, label, clip_id, chunk_nb, num_crops)` with item = chunk * N + clip. A test item stands for all
    `num_crops` (= test_num_crop) spatial views of its temporal view: after the square resize the original's crop
    step is 0, so every crop is the whole frame (docs/ARCHITECTURE.md, "Quirks of the original code") and is
    computed once.
    A clip is float32 (3, T, H, W), ImageNet-normalised. With augment_on "device", a training item is
    `(frames, params, label)` (views: `[frames]` once, lists of the rest): the uint8 (T, short_side_size,
    short_side_size, 3) frames and the augmentation's draw (`augment_device.pack_draw`), for `device_augment()` to
    apply to the batch.

    With `seed`, a train / validation item's random draws depend only on (seed, epoch, index) (`set_epoch`), not on
    the worker or on earlier items: a resumed run sees the same clips. With `skip_bad`, an unreadable entry gives a
    BadSample (`collate` sets it apart) instead of raising.
    """

    def __init__(self, annotations: list[Annotation], mode: str, sampling: Sampling = Sampling(),
                 augmentation: Augmentation = Augmentation(), *, seed: int | None = None, skip_bad: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {MODES}")
        if augmentation.augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on {augmentation.augment_on!r}: expected one of {AUGMENT_ON}")
        self.annotations, self.mode, self.sampling = annotations, mode, sampling
        self.augment_on, self.num_sample = augmentation.augment_on, augmentation.num_sample
        aa = augmentation.aa
        self.augment = (VideoRandAugment(aa, sampling.input_size, augmentation.train_interpolation)
                        if aa and aa != "none" else None)
        # Drawn for the (C*T, H, W) view of a clip: one rectangle for all frames, noise drawn per frame and channel.
        self.erase = (erase_drawer(augmentation.reprob, augmentation.remode, augmentation.recount)
                      if augmentation.reprob > 0 else None)
        self.erase_mode, self.max_erase = augmentation.remode.lower(), augmentation.recount
        self.collate = collate_views if mode == "train" and self.num_sample > 1 else None
        self.seed, self.epoch, self.skip_bad = seed, 0, skip_bad and mode != "test"
        if self.skip_bad:
            self.collate = collate_skipping_bad

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose draws items take (with `seed`); set it before the DataLoader iterator starts workers."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.annotations)
        return n * self.sampling.test_num_segment if self.mode == "test" else n

    def __getitem__(self, index: int):
        if self.mode == "test":
            chunk, clip = divmod(index, len(self.annotations))
            entry = self.annotations[clip]
            return self._test_clip(entry, chunk), entry.label, entry.clip_id, chunk, self.sampling.test_num_crop
        entry = self.annotations[index]
        seed = None if self.seed is None else (self.seed, self.epoch, index)
        return load_item(entry, seed, self.skip_bad, lambda: self._train_item(entry))

    def _train_item(self, entry: Annotation):
        """A training or validation item (the same temporal sampler, as in the original)."""
        source = FrameSource(entry, self.sampling.frame_ext)
        indices = train_indices(source.count, self.sampling.num_frames, self.sampling.sampling_rate)
        if self.mode == "validation":
            short, size = self.sampling.short_side_size, self.sampling.input_size
            frames = source.pil(indices, short)
            top = round((short - size) / 2)  # centre crop, a no-op when equal
            frames = frames[:, top:top + size, top:top + size]
            return normalize(frames), entry.label, entry.clip_id
        frames, inverse = source.resized(indices, self.sampling.short_side_size)
        if self.augment_on == "device":
            layers = self.augment.num_layers if self.augment is not None else 0
            views = [pack_draw(self._draw(*frames.shape[1:3]), layers, self.max_erase) for _ in range(self.num_sample)]
            clip = torch.from_numpy(frames[inverse])
            if self.num_sample == 1:
                return clip, views[0], entry.label
            return [clip], views, [entry.label] * self.num_sample  # the frames once, for every view's draw
        if self.num_sample == 1:
            return self._augment(frames, inverse), entry.label
        return [self._augment(frames, inverse) for _ in range(self.num_sample)], [entry.label] * self.num_sample

    def _test_clip(self, entry: Annotation, chunk: int) -> torch.Tensor:
        s = self.sampling
        source = FrameSource(entry, s.frame_ext)
        loaded = loaded_test_indices(source.count, s.num_frames, s.sampling_rate)
        start = view_start(len(loaded), chunk, s.test_num_segment, s.num_frames)
        # Only this view's frames are decoded: a frame's pixels do not depend on the other frames.
        return normalize(source.pil(loaded[start:start + s.num_frames], s.short_side_size))

    def _draw(self, height: int, width: int) -> ClipDraw:
        """Every random decision of a clip's augmentation, in the worker path's order (MAE-DFER `_aug_frame`)."""
        ops = self.augment.draw() if self.augment is not None else []
        crop = RandomResizedCrop.get_params(torch.empty(1, height, width), scale=(0.08, 1.0), ratio=(0.75, 1.3333))
        flip = bool(torch.rand(()) < 0.5)
        boxes, noise_seed = [], 0
        if self.erase is not None:
            size = self.sampling.input_size
            boxes = draw_erase(self.erase, 3 * self.sampling.num_frames, size, size)
            noise_seed = int(torch.randint(2**62, ()))
        return ClipDraw(ops, tuple(crop), flip, boxes, noise_seed)

    def device_augment(self) -> DeviceAugment:
        """What applies this dataset's training augmentation to a batch of its augment_on "device" items."""
        return DeviceAugment(self.augment, self.sampling.input_size, self.erase_mode)

    def _augment(self, frames: np.ndarray, inverse: np.ndarray) -> torch.Tensor:
        """RandAugment, random resized crop, flip, normalise, erase: one draw for the whole clip.

        `frames` are the clip's distinct frames and `inverse` picks the clip from them: with every decision shared,
        a repeated frame comes out of RandAugment as its copies would, so it is augmented once.
        """
        draw = self._draw(*frames.shape[1:3])
        if self.augment is not None:
            frames = self.augment.apply(frames, draw.ops)
        frames = frames[inverse]
        num = frames.shape[0]
        top, left, h, w = draw.crop
        size = self.sampling.input_size
        crops = frames[:, top:top + h, left:left + w].astype(np.float32)
        out = np.empty((num, size, size, 3), np.float32)
        for crop, resized in zip(crops, out):
            # OpenCV's bilinear on float is the original's F.interpolate(align_corners=False) to float rounding.
            cv2.resize(crop, (size, size), dst=resized, interpolation=cv2.INTER_LINEAR)
            if draw.flip:
                cv2.flip(resized, 1, dst=resized)
        # Normalising after the (linear) resize instead of before: the same map; the first op also transposes.
        clip = torch.empty((3, num, size, size))
        torch.mul(torch.from_numpy(out).permute(3, 0, 1, 2), (1 / (255 * _STD))[:, None, None, None], out=clip)
        clip.sub_((_MEAN / _STD)[:, None, None, None])
        erase_(clip.view(-1, size, size), draw.erase, self.erase_mode, draw.noise_seed)
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
    sampling = Sampling(frame_ext=info.frame_ext, num_frames=args.num_frames, sampling_rate=args.sampling_rate,
                        input_size=args.input_size, short_side_size=args.short_side_size,
                        test_num_segment=args.test_num_segment, test_num_crop=args.test_num_crop)
    augmentation = Augmentation(aa=args.aa, train_interpolation=args.train_interpolation, reprob=args.reprob,
                                remode=args.remode, recount=args.recount, num_sample=args.num_sample,
                                augment_on=resolve_augment_on(args))
    dataset = ClipDataset(annotations, mode, sampling, augmentation, seed=getattr(args, "seed", None),
                          skip_bad=getattr(args, "max_bad_samples", None) is not None)
    return dataset, args.nb_classes


def resolve_augment_on(args: argparse.Namespace) -> str:
    """args.augment_on, its default (None) resolved from args.device; "workers" where args has no such option."""
    if not hasattr(args, "augment_on"):
        return "workers"
    return args.augment_on or ("device" if str(getattr(args, "device", "cpu")).startswith("cuda") else "workers")


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed numpy and `random` from the worker's torch seed, which differs per worker."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class SharedMemoryError(RuntimeError):
    """A DataLoader worker died for lack of shared memory (/dev/shm), e.g. in a Docker container's 64 MB default."""


def shm_size() -> str:
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return "unknown (no /dev/shm)"
    return f"{stat.f_blocks * stat.f_frsize / 2**20:.0f} MB, {stat.f_bavail * stat.f_frsize / 2**20:.0f} MB free"


class Loader(torch.utils.data.DataLoader):
    """torch's DataLoader, whose workers dying of a full /dev/shm (a bus error) stop the run saying so and how to
    fix it, instead of a bare bus error."""

    def __iter__(self):
        iterator = super().__iter__()
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except RuntimeError as err:
                chain = [err, err.__cause__, err.__context__]  # torch chains the worker's signal to "exited"
                if not any("shared memory" in str(e) or "Bus error" in str(e) for e in chain if e is not None):
                    raise
                raise SharedMemoryError(
                    f"a data-loading worker was killed for lack of shared memory: /dev/shm is {shm_size()}, and "
                    f"every worker passes its batches through it. Give the container more (docker run --shm-size "
                    f"16g, or a larger /dev/shm), or use fewer --num_workers or a smaller --batch_size.\n({err})"
                ) from err
            yield batch


class ResumableSampler(torch.utils.data.DistributedSampler):
    """A DistributedSampler whose epoch can start part-way: `set_epoch(epoch, start=k)` skips this rank's first k
    indices of that epoch's order (which depends on seed and epoch only), so a resumed epoch sees what is left."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start



def build_loader(dataset, args: argparse.Namespace, batch_size: int, *, device: torch.device, train: bool = False,
                 sequential: bool = False) -> Loader:
    """Train and test go through a DistributedSampler (as in the original); validation does with --dist_eval."""
    if sequential:
        sampler = torch.utils.data.SequentialSampler(dataset)
    else:
        sampler = ResumableSampler(dataset, get_world_size(), get_rank(), shuffle=train, seed=args.seed)
    # Workers start afresh each epoch, with the dataset's current epoch (its draws depend on it); the loader's own
    # generator keeps it from drawing a worker seed from the global RNG, which a resume restores step by step.
    return Loader(
        dataset, sampler=sampler, batch_size=batch_size, num_workers=args.num_workers, drop_last=train,
        pin_memory=args.pin_mem and device.type == "cuda", worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(args.seed), collate_fn=getattr(dataset, "collate", None))
