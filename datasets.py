"""Fine-tuning data: the dataset table, annotation CSVs and the clip dataset (the original's VideoClsDatasetFrame).

An entry is a folder of frames (sorted `*.jpg`, `*.png` for MAFW), one image (repeated) or a video file (ours).
Validation and test clips are computed exactly as the original does (PIL decode and bilinear resize), so merged
test probabilities match it. Training draws the same augmentations with one set of decisions per clip, on uint8
frame stacks, decoding and augmenting each distinct frame once: over twice the original's clips/s
(benchmarks/bench_data.py). With augment_on "device" a training item is the uint8 clip and its drawn parameters,
for augment_device.DeviceAugment to apply to the batch on the model's device.
"""

from __future__ import annotations

import argparse
import logging
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
from torch.utils.data import default_collate
from torchvision.transforms import RandomResizedCrop

from augment_device import ClipDraw, DeviceAugment, draw_erase, erase_, erase_drawer, pack_draw
from utils import ResumableSampler, get_rank, get_world_size, seeded_rngs
from video_augment import VideoRandAugment

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
    # The built-in synthetic demo (demo_data.py draws what each class looks like).
    "DEMO": DatasetInfo(("smile forming", "smile fading", "brows raising", "mouth opening", "neutral"), "jpg",
                        "test.csv"),
}

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
MODES = ("train", "validation", "test")
AUGMENT_ON = ("workers", "device")


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
# Reading entries

class FrameSource:
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
            return resize_frames(torch.from_numpy(self.video_frames(unique)), size).numpy(), inverse
        decoded = [torch.from_numpy(f) for f in self.rgb(unique)]
        if len({d.shape for d in decoded}) == 1:
            frames = resize_frames(torch.stack(decoded), size)
        else:
            frames = torch.cat([resize_frames(d[None], size) for d in decoded])
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


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8 by torch's antialiased bilinear (its fast channels-last path)."""
    if frames.shape[1:3] == (size, size):
        return frames
    resized = F.interpolate(frames.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False)
    return resized.permute(0, 2, 3, 1).contiguous()  # a no-op: the output is channels-last


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


class ClipDataset(torch.utils.data.Dataset):
    """Clips of one annotation file, for training, validation or the multi-view test (finetune.md §2.9).

    Items: train `(clip, label)`, or `([clip] * num_sample, [label] * num_sample)` with num_sample > 1 (independent
    augmentations of the same frames; `collate` flattens them); validation `(clip, label, clip_id)`; test
    `(clip, label, clip_id, chunk_nb, num_crops)` with item = chunk * N + clip. A test item stands for all
    `num_crops` (= test_num_crop) spatial views of its temporal view: after the square resize the original's crop
    step is 0, so every crop is the whole frame (finetune.md §2.13, quirk 4) and is computed once.
    A clip is float32 (3, T, H, W), ImageNet-normalised. With augment_on "device", a training item is
    `(frames, params, label)` (views: `[frames]` once, lists of the rest): the uint8 (T, short_side_size,
    short_side_size, 3) frames and the augmentation's draw (`augment_device.pack_draw`), for `device_augment()` to
    apply to the batch.

    With `seed`, a train / validation item's random draws depend only on (seed, epoch, index) (`set_epoch`), not on
    the worker or on earlier items: a resumed run sees the same clips. With `skip_bad`, an unreadable entry gives a
    BadSample (`collate` sets it apart) instead of raising.
    """

    def __init__(self, annotations: list[Annotation], mode: str, *, frame_ext: str = "jpg", num_frames: int = 16,
                 sampling_rate: int = 4, input_size: int = 224, short_side_size: int = 224,
                 test_num_segment: int = 5, test_num_crop: int = 3, aa: str | None = "rand-m7-n4-mstd0.5-inc1",
                 train_interpolation: str = "bicubic", reprob: float = 0.25, remode: str = "pixel",
                 recount: int = 1, num_sample: int = 1, seed: int | None = None, skip_bad: bool = False,
                 augment_on: str = "workers"):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {MODES}")
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on {augment_on!r}: expected one of {AUGMENT_ON}")
        self.augment_on = augment_on
        self.annotations, self.mode, self.frame_ext = annotations, mode, frame_ext
        self.num_frames, self.sampling_rate = num_frames, sampling_rate
        self.input_size, self.short_side_size = input_size, short_side_size
        self.test_num_segment, self.test_num_crop = test_num_segment, test_num_crop
        self.num_sample = num_sample
        self.augment = VideoRandAugment(aa, input_size, train_interpolation) if aa and aa != "none" else None
        # Drawn for the (C*T, H, W) view of a clip: one rectangle for all frames, noise drawn per frame and channel.
        self.erase = erase_drawer(reprob, remode, recount) if reprob > 0 else None
        self.erase_mode, self.max_erase = remode.lower(), recount
        self.collate = collate_views if mode == "train" and num_sample > 1 else None
        self.seed, self.epoch, self.skip_bad = seed, 0, skip_bad and mode != "test"
        if self.skip_bad:
            self.collate = collate_skipping_bad

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose draws items take (with `seed`); set it before the DataLoader iterator starts workers."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.annotations)
        return n * self.test_num_segment if self.mode == "test" else n

    def __getitem__(self, index: int):
        if self.mode == "test":
            chunk, clip = divmod(index, len(self.annotations))
            entry = self.annotations[clip]
            return self._test_clip(entry, chunk), entry.label, entry.clip_id, chunk, self.test_num_crop
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
        source = FrameSource(entry, self.frame_ext)
        indices = train_indices(source.count, self.num_frames, self.sampling_rate)
        if self.mode == "validation":
            frames = source.pil(indices, self.short_side_size)
            top = round((self.short_side_size - self.input_size) / 2)  # centre crop, a no-op when equal
            frames = frames[:, top:top + self.input_size, top:top + self.input_size]
            return normalize(frames), entry.label, entry.clip_id
        frames, inverse = source.resized(indices, self.short_side_size)
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
        source = FrameSource(entry, self.frame_ext)
        loaded = loaded_test_indices(source.count, self.num_frames, self.sampling_rate)
        start = view_start(len(loaded), chunk, self.test_num_segment, self.num_frames)
        # Only this view's frames are decoded: a frame's pixels do not depend on the other frames.
        return normalize(source.pil(loaded[start:start + self.num_frames], self.short_side_size))

    def _draw(self, height: int, width: int) -> ClipDraw:
        """Every random decision of a clip's augmentation, in the worker path's order (§2.9.4-2.9.5)."""
        ops = self.augment.draw() if self.augment is not None else []
        crop = RandomResizedCrop.get_params(torch.empty(1, height, width), scale=(0.08, 1.0), ratio=(0.75, 1.3333))
        flip = bool(torch.rand(()) < 0.5)
        boxes, noise_seed = [], 0
        if self.erase is not None:
            boxes = draw_erase(self.erase, 3 * self.num_frames, self.input_size, self.input_size)
            noise_seed = int(torch.randint(2**62, ()))
        return ClipDraw(ops, tuple(crop), flip, boxes, noise_seed)

    def device_augment(self) -> DeviceAugment:
        """What applies this dataset's training augmentation to a batch of its augment_on "device" items."""
        return DeviceAugment(self.augment, self.input_size, self.erase_mode)

    def _augment(self, frames: np.ndarray, inverse: np.ndarray) -> torch.Tensor:
        """RandAugment, random resized crop, flip, normalise, erase: one draw for the whole clip (§2.9.4-2.9.5).

        `frames` are the clip's distinct frames and `inverse` picks the clip from them: with every decision shared,
        a repeated frame comes out of RandAugment as its copies would, so it is augmented once.
        """
        draw = self._draw(*frames.shape[1:3])
        if self.augment is not None:
            frames = self.augment.apply(frames, draw.ops)
        frames = frames[inverse]
        num = frames.shape[0]
        top, left, h, w = draw.crop
        size = self.input_size
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
    dataset = ClipDataset(
        annotations, mode, frame_ext=info.frame_ext, num_frames=args.num_frames, sampling_rate=args.sampling_rate,
        input_size=args.input_size, short_side_size=args.short_side_size, test_num_segment=args.test_num_segment,
        test_num_crop=args.test_num_crop, aa=args.aa, train_interpolation=args.train_interpolation,
        reprob=args.reprob, remode=args.remode, recount=args.recount, num_sample=args.num_sample,
        seed=getattr(args, "seed", None), skip_bad=getattr(args, "max_bad_samples", None) is not None,
        augment_on=resolve_augment_on(args))
    return dataset, args.nb_classes


def add_augment_arguments(parser: argparse.ArgumentParser) -> None:
    """--augment_on, for run_class_finetuning.py."""
    parser.add_argument("--augment_on", choices=AUGMENT_ON, default=None,
                        help="where training clips are augmented: in the loader workers, or batched on the model's "
                             "device from uint8 clips (default: device on CUDA, workers otherwise)")


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
