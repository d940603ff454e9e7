"""Fine-tuning loader throughput: an original-style loader (a stand-in written here) against datasets.ClipDataset.

Generates frame folders (256x256 JPEG, like DFEW's) and short mp4s in a temporary folder, then prints training
clips/s and test views/s of one process (as one DataLoader worker: one torch and one OpenCV thread) for both.

The original-style loader does what the original VideoClsDatasetFrame does, per frame: PIL open/convert/resize,
timm's RandAugment ops with one random draw per op for all frames (the original's video RandAugment), ToTensor,
normalise, random resized crop, flip and the same-rectangle random erasing; its test path loads every sampled
frame of the clip for each view. It is a faithful stand-in, not the original code.

    python benchmarks/bench_data.py [--clips 12 --train_items 400 --test_items 200 --min_frames 40 --max_frames 60]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import utils
from datasets import Annotation, ClipDataset, loaded_test_indices, train_indices, view_start

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def make_frames(folder: Path, num_frames: int, size: int, quality: int, rng: np.random.Generator) -> None:
    """A smooth synthetic 'face' clip: blurred colour field, a moving ellipse and sensor-like noise, as JPEG."""
    folder.mkdir(parents=True)
    base = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (0, 0), size / 32)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
    for t in range(num_frames):
        frame = base.astype(np.int16) + rng.normal(0, 3, base.shape).astype(np.int16)
        cv2.ellipse(frame, (size // 2 + t % 9, size // 2), (size // 4, size // 3), t, 0, 360, (150, 170, 200), -1)
        cv2.imwrite(str(folder / f"{t:05d}.jpg"), np.clip(frame, 0, 255).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, quality])


def make_video(path: Path, num_frames: int, size: int, rng: np.random.Generator) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (size, size))
    base = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (0, 0), size / 32)
    for t in range(num_frames):
        writer.write(np.roll(base, t, axis=1))
    writer.release()


class OriginalStyle(torch.utils.data.Dataset):
    """The original loader's work per item, frame by frame with PIL (see the module docstring)."""

    def __init__(self, annotations: list[Annotation], mode: str, args: argparse.Namespace):
        self.annotations, self.mode, self.args = annotations, mode, args

    def __len__(self) -> int:
        n = len(self.annotations)
        return n * self.args.test_num_segment * self.args.test_num_crop if self.mode == "test" else n

    def _frames(self, path: str, indices: np.ndarray) -> np.ndarray:
        if os.path.isdir(path):
            files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".jpg"))
            images = [Image.open(files[i]).convert("RGB") for i in indices]
        else:
            import decord

            images = [Image.fromarray(f) for f in decord.VideoReader(path, num_threads=1).get_batch(
                indices.tolist()).asnumpy()]
        size = self.args.short_side_size
        return np.array([np.array(im.resize((size, size), Image.BILINEAR)) for im in images])

    def _count(self, path: str) -> int:
        if os.path.isdir(path):
            return len([f for f in os.listdir(path) if f.endswith(".jpg")])
        import decord

        return len(decord.VideoReader(path, num_threads=1))

    def __getitem__(self, index: int):
        a = self.args
        if self.mode == "test":
            entry = self.annotations[index % len(self.annotations)]
            chunk = index // len(self.annotations) // a.test_num_crop
            indices = loaded_test_indices(self._count(entry.path), a.num_frames, a.sampling_rate)
            loaded = self._frames(entry.path, indices)
            start = view_start(len(loaded), chunk, a.test_num_segment, a.num_frames)
            clip = torch.from_numpy(loaded[start:start + a.num_frames]).permute(3, 0, 1, 2).float() / 255
            return (clip - MEAN[:, None, None, None]) / STD[:, None, None, None], entry.label
        entry = self.annotations[index]
        buffer = self._frames(entry.path, train_indices(self._count(entry.path), a.num_frames, a.sampling_rate))
        # The original's _aug_frame: RandAugment built per item, applied to a list of PIL frames.
        ra = rand_augment_transform(a.aa, {"translate_const": int(0.45 * a.input_size),
                                           "interpolation": Image.BICUBIC})
        frames = [transforms.ToPILImage()(f) for f in buffer]
        for op in np.random.choice(ra.ops, ra.num_layers, replace=True):
            if random.random() > op.prob:
                continue
            magnitude = max(0.0, min(10.0, random.gauss(op.magnitude, op.magnitude_std)))
            level_args = op.level_fn(magnitude, op.hparams) if op.level_fn is not None else ()
            frames = [op.aug_fn(f, *level_args, **op.kwargs) for f in frames]
        clip = torch.stack([transforms.ToTensor()(f) for f in frames]).permute(0, 2, 3, 1)  # T H W C
        clip = ((clip - MEAN) / STD).permute(3, 0, 1, 2)  # C T H W
        top, left, h, w = self._crop_params(clip.shape[2], clip.shape[3])
        clip = F.interpolate(clip[:, :, top:top + h, left:left + w], size=(a.input_size, a.input_size),
                             mode="bilinear", align_corners=False)
        if np.random.uniform() < 0.5:
            clip = clip.flip(-1)
        self._erase_cube(clip.permute(1, 0, 2, 3))
        return clip, entry.label

    @staticmethod
    def _crop_params(height: int, width: int) -> tuple[int, int, int, int]:
        for _ in range(10):
            area = random.uniform(0.08, 1.0) * height * width
            ratio = math.exp(random.uniform(math.log(0.75), math.log(1.3333)))
            w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < w <= width and 0 < h <= height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        return 0, 0, height, width

    def _erase_cube(self, frames: torch.Tensor) -> None:
        """(T, C, H, W): one rectangle for all frames, per-frame noise (the original's 'cube' erasing)."""
        if random.random() > self.args.reprob:
            return
        _, chan, height, width = frames.shape
        for _ in range(100):
            area = random.uniform(0.02, 1 / 3) * height * width
            ratio = math.exp(random.uniform(math.log(0.3), math.log(1 / 0.3)))
            h, w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if w < width and h < height:
                top, left = random.randint(0, height - h), random.randint(0, width - w)
                for frame in frames:
                    frame[:, top:top + h, left:left + w] = torch.empty((chan, h, w)).normal_()
                return


class _RNG:
    """A loader's own numpy / random / torch random streams, swapped in while it runs."""

    def __init__(self, seed: int):
        np.random.seed(seed)
        random.seed(seed)
        torch.manual_seed(seed)
        self.states = np.random.get_state(), random.getstate(), torch.get_rng_state()

    def __enter__(self):
        np.random.set_state(self.states[0])
        random.setstate(self.states[1])
        torch.set_rng_state(self.states[2])

    def __exit__(self, *exc):
        self.states = np.random.get_state(), random.getstate(), torch.get_rng_state()


def throughput(loaders: list, indices: list[int], seed: int, chunk: int = 10) -> list[float]:
    """Items per second of each loader over `indices` (one process). The loaders take turns every `chunk` items,
    so that other load on the machine affects them alike; each draws from its own seeded random streams."""
    rngs, seconds = [_RNG(seed) for _ in loaders], [0.0] * len(loaders)
    for loader, rng in zip(loaders, rngs):  # warm-up
        with rng:
            loader[indices[0]]
    for begin in range(0, len(indices), chunk):
        for k, (loader, rng) in enumerate(zip(loaders, rngs)):
            with rng:
                start = time.perf_counter()
                for i in indices[begin:begin + chunk]:
                    loader[i]
                seconds[k] += time.perf_counter() - start
    return [len(indices) / s for s in seconds]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("fine-tuning loader throughput", add_help=True)
    p.add_argument("--clips", type=int, default=12, help="frame folders to generate")
    p.add_argument("--videos", type=int, default=4, help="mp4 files to generate (ours reads them too)")
    p.add_argument("--min_frames", type=int, default=40)
    p.add_argument("--max_frames", type=int, default=60)
    p.add_argument("--frame_size", type=int, default=256)
    p.add_argument("--jpeg_quality", type=int, default=90)
    p.add_argument("--train_items", type=int, default=400, help="training clips timed per loader and entry kind")
    p.add_argument("--test_items", type=int, default=200, help="test views timed per loader and entry kind")
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--sampling_rate", type=int, default=4)
    p.add_argument("--input_size", type=int, default=160)
    p.add_argument("--short_side_size", type=int, default=160)
    p.add_argument("--test_num_segment", type=int, default=2)
    p.add_argument("--test_num_crop", type=int, default=2)
    p.add_argument("--aa", default="rand-m7-n4-mstd0.5-inc1")
    p.add_argument("--reprob", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(args: argparse.Namespace) -> None:
    # As in a DataLoader worker of run_class_finetuning.py: one torch thread (datasets.py keeps OpenCV to one),
    # glibc keeping freed memory.
    torch.set_num_threads(1)
    utils.keep_freed_memory()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folders = []
        for i in range(args.clips):
            make_frames(Path(tmp) / f"{i:05d}", int(rng.integers(args.min_frames, args.max_frames + 1)),
                        args.frame_size, args.jpeg_quality, rng)
            folders.append(Annotation(f"{i:05d}", os.path.join(tmp, f"{i:05d}"), i % 7, f"bench:{i + 1}"))
        videos = []
        for i in range(args.videos):
            path = Path(tmp) / f"v{i}.mp4"
            make_video(path, int(rng.integers(args.min_frames, args.max_frames + 1)), args.frame_size, rng)
            videos.append(Annotation(path.name, str(path), i % 7, f"bench:{i + 1}"))
        frame_kb = np.mean([f.stat().st_size for f in Path(tmp).glob("*/*.jpg")]) / 1024
        print(f"generated {args.clips} frame folders ({args.min_frames}-{args.max_frames} frames of "
              f"{args.frame_size}px JPEG, {frame_kb:.1f} KB each) and {args.videos} mp4s in "
              f"{time.perf_counter() - t0:.1f} s")

        kwargs = dict(num_frames=args.num_frames, sampling_rate=args.sampling_rate, input_size=args.input_size,
                      short_side_size=args.short_side_size, test_num_segment=args.test_num_segment,
                      test_num_crop=args.test_num_crop, aa=args.aa, reprob=args.reprob)
        rows = []
        for name, entries in (("frame folders", folders), ("mp4 files", videos)):
            if not entries:
                continue
            for mode, items in (("train", args.train_items), ("test", args.test_items)):
                ours, orig = ClipDataset(entries, mode, **kwargs), OriginalStyle(entries, mode, args)
                indices = [i % len(ours) for i in range(items)]
                rows.append((name, mode, *throughput([orig, ours], indices, args.seed)))
    unit = {"train": "clips/s", "test": "views/s"}
    print(f"\n{'entries':<14} {'path':<6} {'original-style':>16} {'ours':>12} {'ratio':>7}")
    for name, mode, orig, ours in rows:
        print(f"{name:<14} {mode:<6} {orig:>8.1f} {unit[mode]:<7} {ours:>6.1f} {unit[mode]:<7} {ours / orig:>6.2f}x")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
