"""Fine-tuning loader throughput: an original-style loader (a stand-in written here) against datasets.ClipDataset.

Generates frame folders (256x256 JPEG, like DFEW's) and short mp4s in a temporary folder, then prints, side by side
in one run and repeated (median [min-max] over --repeats), per core (one process, one torch and one OpenCV thread):
- loader: training clips/s and test views/s of the original-style loader and ours, with --augment_on workers
  (the whole augmentation in the worker) and device (the worker's part: decode, sample, resize, draw);
- device augmentation: augment_device.DeviceAugment on the CPU, clips/s for batches of --batch;
- resizing: the worker's decode alone and decode + resize, against the resize done on the device (here the CPU).
`gpu_rows(device)` gives the rows a GPU check adds (loader with N workers feeding the device, batched
decode_jpeg on the device, device augmentation); with --gpu_rows it runs here too (tiny on the CPU).

The original-style loader does what the original VideoClsDatasetFrame does, per frame: PIL open/convert/resize,
timm's RandAugment ops with one random draw per op for all frames (the original's video RandAugment), ToTensor,
normalise, random resized crop, flip and the same-rectangle random erasing; its test path loads every sampled
frame of the clip for each view. It is a faithful stand-in, not the original code.

    python benchmarks/bench_data.py [--clips 12 --train_items 200 --test_items 100 --repeats 3]
    python benchmarks/bench_data.py --sections loader resize        # only some sections
    python benchmarks/bench_data.py --sections --gpu_rows --device cuda --workers 16 --batch 64   # GPU rows only
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from common import machine, spread, sync, take_turns, write_result
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from torch.utils.data import default_collate
from torchvision import transforms
from torchvision.io import decode_jpeg, read_file

import utils
from datasets import (
    Annotation,
    Augmentation,
    ClipDataset,
    FrameSource,
    Sampling,
    loaded_test_indices,
    resize_frames,
    seed_worker,
    train_indices,
    view_start,
)

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


def clip_dataset(entries: list[Annotation], mode: str, args: argparse.Namespace, augment_on: str = "workers",
                 seed: int | None = None) -> ClipDataset:
    sampling = Sampling(num_frames=args.num_frames, sampling_rate=args.sampling_rate, input_size=args.input_size,
                        short_side_size=args.short_side_size, test_num_segment=args.test_num_segment,
                        test_num_crop=args.test_num_crop)
    augmentation = Augmentation(aa=args.aa, reprob=args.reprob, augment_on=augment_on)
    return ClipDataset(entries, mode, sampling, augmentation, seed=seed)


def loader_rows(folders: list[Annotation], videos: list[Annotation], args: argparse.Namespace) -> list[tuple]:
    """(entries, path, unit, original-style, ours workers, ours device-worker side) items/s per core, repeated."""
    rows = []
    for name, entries in (("frame folders", folders), ("mp4 files", videos)):
        if not entries:
            continue
        for mode, items in (("train", args.train_items), ("test", args.test_items)):
            loaders = [OriginalStyle(entries, mode, args), clip_dataset(entries, mode, args)]
            if mode == "train":
                loaders.append(clip_dataset(entries, mode, args, augment_on="device"))
            indices = [i % len(loaders[1]) for i in range(items)]
            runs = [take_turns(loaders, indices, args.seed + r) for r in range(args.repeats)]
            if mode == "test":  # an item of ours is all test_num_crop (identical) spatial views of a temporal view
                runs = [(original, ours * args.test_num_crop) for original, ours in runs]
            rows.append((name, mode, *zip(*runs)))
    return rows


def device_items(entries: list[Annotation], args: argparse.Namespace, count: int) -> tuple[ClipDataset, list]:
    dataset = clip_dataset(entries, "train", args, augment_on="device", seed=args.seed)
    return dataset, [dataset[i % len(dataset)] for i in range(count)]


def augment_rate(dataset: ClipDataset, items: list, batch: int, device: str, repeats: int) -> list[float]:
    """DeviceAugment clips/s on `device` over `items` in batches of `batch` (frames moved there first)."""
    augment = dataset.device_augment()
    batches = [default_collate(items[i:i + batch]) for i in range(0, len(items) - batch + 1, batch)]
    batches = [(frames.to(device), params) for frames, params, _ in batches]
    augment(*batches[0])  # warm-up
    rates = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for frames, params in batches:
            augment(frames, params)
        sync(device)
        rates.append(len(batches) * batch / (time.perf_counter() - start))
    return rates


class _ClipWork:
    """Item i: `work(source, indices)` on training clip i's FrameSource and frame indices (for `throughput`)."""

    def __init__(self, work, clips: list[tuple[FrameSource, np.ndarray]]):
        self.work, self.clips = work, clips

    def __getitem__(self, i: int):
        return self.work(*self.clips[i])


def resize_rows(folders: list[Annotation], args: argparse.Namespace) -> list[tuple[str, list[float]]]:
    """Clips/s per core: the worker decoding a training clip's frames alone, decoding and resizing them (taking
    turns), and the resize done on the device (the CPU here) for batches of --batch stored-size clips."""
    np.random.seed(args.seed)
    clips = []
    for i in range(args.train_items):
        source = FrameSource(folders[i % len(folders)], "jpg")
        clips.append((source, train_indices(source.count, args.num_frames, args.sampling_rate)))
    works = [_ClipWork(lambda s, idx: s.rgb(np.unique(idx)), clips),
             _ClipWork(lambda s, idx: s.resized(idx, args.short_side_size), clips)]
    runs = [take_turns(works, list(range(len(clips))), args.seed) for _ in range(args.repeats)]
    decode, resized = zip(*runs)
    return [("worker: decode", list(decode)), ("worker: decode + resize", list(resized)),
            ("device (CPU): resize", resize_rate("cpu", args.batch, args.num_frames, args.frame_size,
                                                  args.short_side_size, args.repeats))]


def resize_rate(device: str, batch: int, num_frames: int, frame_size: int, size: int, repeats: int,
                steps: int = 4) -> list[float]:
    """Clips/s of resize_frames (antialiased bilinear, as the worker) on `device` for (batch, T, F, F, 3) uint8."""
    frames = torch.randint(0, 256, (batch * num_frames, frame_size, frame_size, 3), dtype=torch.uint8, device=device)
    resize_frames(frames, size)
    rates = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            resize_frames(frames, size)
        sync(device)
        rates.append(steps * batch / (time.perf_counter() - start))
    return rates


def gpu_rows(device: str, folders: list[Annotation], args: argparse.Namespace, steps: int = 8
             ) -> list[tuple[str, str, list[float]]]:
    """The GPU check's rows (also runnable on the CPU with tiny sizes): (row, unit, values over repeats).

    - loader with --workers workers feeding `device`, both --augment_on modes (device: + DeviceAugment there),
      timed in steady state: the batches after the 2 x workers the workers build ahead from iter() on;
    - JPEG decoding: torchvision's batched decode_jpeg on `device` against OpenCV in one worker, frames/s;
    - device augmentation alone on `device`, clips/s, batches of --batch.
    """
    rows = []
    ahead = 2 * max(args.workers, 1)  # batches the workers build from iter() on (prefetch_factor 2)
    entries = folders * -(-(ahead + steps) * args.batch // len(folders))
    for mode in ("workers", "device"):
        dataset = clip_dataset(entries, "train", args, augment_on=mode, seed=args.seed)
        augment = dataset.device_augment() if mode == "device" else None
        rates = []
        for _ in range(args.repeats):
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=True,
                pin_memory=device.startswith("cuda"), worker_init_fn=seed_worker, persistent_workers=False)
            arrivals = []  # (seconds, clips) of each batch ready on the device, from iter() on
            for batch in itertools.islice(iter(loader), ahead + steps):
                frames = batch[0].to(device, non_blocking=True)
                clips = augment(frames, batch[1]) if augment is not None else frames
                sync(device)
                arrivals.append((time.perf_counter(), len(clips)))
            # Steady state: the batches after those the workers had built ahead while the first were awaited.
            start, timed = arrivals[ahead - 1][0], arrivals[ahead:]
            rates.append(sum(n for _, n in timed) / (timed[-1][0] - start))
        rows.append((f"loader, {args.workers} workers, --augment_on {mode}", "clips/s", rates))
    files = sorted(str(p) for entry in folders for p in Path(entry.path).glob("*.jpg"))[:args.batch * args.num_frames]
    data = [read_file(f) for f in files]
    on_device, in_worker = [], []
    for _ in range(args.repeats):
        sync(device)
        start = time.perf_counter()
        decode_jpeg(data, device=device)
        sync(device)
        on_device.append(len(files) / (time.perf_counter() - start))
        start = time.perf_counter()
        for f in files:
            cv2.imread(f, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        in_worker.append(len(files) / (time.perf_counter() - start))
    rows.append((f"decode_jpeg batched on {device}", "frames/s", on_device))
    rows.append(("OpenCV decode, one worker", "frames/s", in_worker))
    dataset, items = device_items(folders, args, 4 * args.batch)
    rows.append((f"device augmentation on {device}, batch {args.batch}", "clips/s",
                 augment_rate(dataset, items, args.batch, device, args.repeats)))
    rows.append((f"resize {args.frame_size} -> {args.short_side_size} on {device}", "clips/s",
                 resize_rate(device, args.batch, args.num_frames, args.frame_size, args.short_side_size,
                             args.repeats)))
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("fine-tuning loader throughput", add_help=True)
    p.add_argument("--clips", type=int, default=12, help="frame folders to generate")
    p.add_argument("--videos", type=int, default=4, help="mp4 files to generate (ours reads them too)")
    p.add_argument("--min_frames", type=int, default=40)
    p.add_argument("--max_frames", type=int, default=60)
    p.add_argument("--frame_size", type=int, default=256)
    p.add_argument("--jpeg_quality", type=int, default=90)
    p.add_argument("--train_items", type=int, default=200, help="training clips timed per loader and entry kind")
    p.add_argument("--test_items", type=int, default=100, help="test views timed per loader and entry kind")
    p.add_argument("--repeats", type=int, default=3, help="repetitions of every measurement (median [min-max])")
    p.add_argument("--batch", type=int, default=16, help="batch of the device-side rows")
    p.add_argument("--sections", nargs="*", default=["loader", "device", "resize"],
                   choices=["loader", "device", "resize"])
    p.add_argument("--gpu_rows", action="store_true", help="also the GPU check's rows, on --device")
    p.add_argument("--json", default=None, help="also write the GPU check's rows to this JSON file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=2, help="loader workers of the GPU rows")
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
    print(f"machine: {machine()}; one process, 1 torch thread; median [min-max] of {args.repeats} runs")
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

        results = []
        if "loader" in args.sections:
            unit = {"train": "clips/s", "test": "views/s"}
            print(f"\n{'entries':<14} {'path':<6} {'unit':<8} {'original-style':>18} {'ours, workers':>18} "
                  f"{'ratio':>6} {'ours, device: worker side':>26} {'ratio':>6}")
            loader = loader_rows(folders, videos, args)
            results += [dict(entries=name, path=mode, unit=unit[mode], original_style=orig, ours_workers=ours,
                             ours_device_worker_side=device[0] if device else None)
                        for name, mode, orig, ours, *device in loader]
            for name, mode, orig, ours, *device in loader:
                line = (f"{name:<14} {mode:<6} {unit[mode]:<8} {spread(orig):>18} {spread(ours):>18} "
                        f"{np.median(ours) / np.median(orig):>5.2f}x")
                if device:
                    line += f" {spread(device[0]):>26} {np.median(device[0]) / np.median(orig):>5.2f}x"
                print(line)
        if "device" in args.sections:
            dataset, items = device_items(folders, args, 4 * args.batch)
            rates = augment_rate(dataset, items, args.batch, "cpu", args.repeats)
            results.append(dict(row=f"device augmentation on the CPU, batch {args.batch}", unit="clips/s",
                                values=rates))
            print(f"\ndevice augmentation (augment_device.DeviceAugment) on the CPU, batch {args.batch}, "
                  f"1 thread: {spread(rates)} clips/s")
        if "resize" in args.sections:
            print(f"\n{'resize ' + str(args.frame_size) + ' -> ' + str(args.short_side_size):<30} {'clips/s':>18}")
            for name, rates in resize_rows(folders, args):
                results.append(dict(row=name, unit="clips/s", values=rates))
                print(f"{name:<30} {spread(rates):>18}")
        if args.gpu_rows:
            print(f"\n{'GPU check row':<48} {'unit':<9} {'value':>18}")
            rows = gpu_rows(args.device, folders, args)
            for name, unit, values in rows:
                print(f"{name:<48} {unit:<9} {spread(values):>18}")
            results += [dict(row=name, unit=unit, values=values) for name, unit, values in rows]
            if args.json:
                Path(args.json).write_text(json.dumps([dict(row=name, unit=unit, median=float(np.median(values)),
                                                            values=values) for name, unit, values in rows]))
        if args.json is None:  # a run of its own (the GPU check's rows go to --json)
            print(f"written: {write_result('bench_data', results)}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
