"""The fine-tuning data path on generated DFEW-like frame folders (256 px JPEG, 40-60 frames), on --device.

Rows, median [min-max] over --repeats: the loader with --workers workers feeding the device in both --augment_on
modes (device: DeviceAugment there too), timed in steady state from iter() on; torchvision's batched decode_jpeg on
the device against OpenCV in one worker; the device augmentation and the resize alone, batches of --batch. The GPU
check runs them on the GPU with 16 workers and batch 64.

    python benchmarks/bench_data.py [--clips 12 --workers 2 --batch 16 --repeats 3]
    python benchmarks/bench_data.py --device cuda --workers 16 --batch 64
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from common import report, spread, sync, timed
from torch.utils.data import default_collate
from torchvision.io import decode_jpeg, read_file

import utils
from annotations import Annotation
from datasets import Augmentation, ClipDataset, Sampling, seed_worker
from video_io import resize_frames


def make_clips(folder: Path, args: argparse.Namespace) -> list[Annotation]:
    """--clips smooth synthetic 'face' clips (blurred colour field, a moving ellipse, sensor-like noise) as JPEG."""
    rng = np.random.default_rng(args.seed)
    entries = []
    for i in range(args.clips):
        clip = folder / f"{i:05d}"
        clip.mkdir(parents=True)
        size = args.frame_size
        base = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (0, 0), size / 32)
        base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
        for t in range(int(rng.integers(args.min_frames, args.max_frames + 1))):
            frame = base.astype(np.int16) + rng.normal(0, 3, base.shape).astype(np.int16)
            cv2.ellipse(frame, (size // 2 + t % 9, size // 2), (size // 4, size // 3), t, 0, 360, (150, 170, 200), -1)
            cv2.imwrite(str(clip / f"{t:05d}.jpg"), np.clip(frame, 0, 255).astype(np.uint8),
                        [cv2.IMWRITE_JPEG_QUALITY, args.jpeg_quality])
        entries.append(Annotation(clip.name, str(clip), i % 7, f"bench:{i + 1}"))
    return entries


def clip_dataset(entries: list[Annotation], mode: str, args: argparse.Namespace, augment_on: str = "workers"
                 ) -> ClipDataset:
    sampling = Sampling(num_frames=args.num_frames, sampling_rate=args.sampling_rate, input_size=args.input_size,
                        short_side_size=args.short_side_size, test_num_segment=args.test_num_segment,
                        test_num_crop=args.test_num_crop)
    return ClipDataset(entries, mode, sampling, Augmentation(aa=args.aa, reprob=args.reprob, augment_on=augment_on),
                       seed=args.seed)


def loader_rows(entries: list[Annotation], args: argparse.Namespace, steps: int = 8) -> list[dict]:
    """The loader with --workers workers feeding --device, in steady state: timed from the batch after the
    2 x workers that the workers build ahead from iter() on (prefetch_factor 2)."""
    ahead = 2 * max(args.workers, 1)
    entries = entries * -(-(ahead + steps) * args.batch // len(entries))
    rows = []
    for mode in ("workers", "device"):
        dataset = clip_dataset(entries, "train", args, mode)
        augment = dataset.device_augment() if mode == "device" else None
        rates = []
        for _ in range(args.repeats):
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=True,
                pin_memory=args.device.startswith("cuda"), worker_init_fn=seed_worker)
            arrivals = []  # (seconds, clips) of each batch ready on the device, from iter() on
            for batch in itertools.islice(iter(loader), ahead + steps):
                frames = batch[0].to(args.device, non_blocking=True)
                clips = augment(frames, batch[1]) if augment is not None else frames
                sync(args.device)
                arrivals.append((time.perf_counter(), len(clips)))
            start, timed_batches = arrivals[ahead - 1][0], arrivals[ahead:]
            rates.append(sum(n for _, n in timed_batches) / (timed_batches[-1][0] - start))
        rows.append(dict(row=f"loader, {args.workers} workers, --augment_on {mode}", unit="clips/s",
                         rate=spread(rates)))
    return rows


def decode_rows(entries: list[Annotation], args: argparse.Namespace) -> list[dict]:
    """A batch's frames: decode_jpeg batched on --device against OpenCV in one worker."""
    files = sorted(str(p) for e in entries for p in Path(e.path).glob("*.jpg"))[:args.batch * args.num_frames]
    data = [read_file(f) for f in files]
    batched = timed(lambda: decode_jpeg(data, device=args.device), args.device, args.repeats)
    opencv = timed(lambda: [cv2.imread(f, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) for f in files],
                   repeats=args.repeats)
    return [dict(row=f"decode_jpeg batched on {args.device}", unit="frames/s",
                 rate=spread([len(files) / s for s in batched])),
            dict(row="OpenCV decode, one worker", unit="frames/s", rate=spread([len(files) / s for s in opencv]))]


def augment_rows(entries: list[Annotation], args: argparse.Namespace, count: int = 4) -> list[dict]:
    """DeviceAugment over `count` batches of --batch, and resize_frames of a batch (antialiased bilinear, as the
    worker) from --frame_size to --short_side_size, on --device."""
    dataset = clip_dataset(entries, "train", args, "device")
    items = [dataset[i % len(dataset)] for i in range(count * args.batch)]
    batches = [default_collate(items[i:i + args.batch]) for i in range(0, len(items), args.batch)]
    batches = [(frames.to(args.device), params) for frames, params, _ in batches]
    augment = dataset.device_augment()
    augmenting = timed(lambda: [augment(*batch) for batch in batches], args.device, args.repeats)
    size = args.frame_size
    frames = torch.randint(0, 256, (args.batch * args.num_frames, size, size, 3), dtype=torch.uint8,
                           device=args.device)
    resizing = timed(lambda: resize_frames(frames, args.short_side_size), args.device, args.repeats)
    return [dict(row=f"device augmentation on {args.device}, batch {args.batch}", unit="clips/s",
                 rate=spread([count * args.batch / s for s in augmenting])),
            dict(row=f"resize {size} -> {args.short_side_size} on {args.device}", unit="clips/s",
                 rate=spread([args.batch / s for s in resizing]))]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=12, help="frame folders to generate")
    p.add_argument("--min_frames", type=int, default=40)
    p.add_argument("--max_frames", type=int, default=60)
    p.add_argument("--frame_size", type=int, default=256)
    p.add_argument("--jpeg_quality", type=int, default=90)
    p.add_argument("--repeats", type=int, default=3, help="repetitions of every measurement (median [min-max])")
    p.add_argument("--batch", type=int, default=16, help="batch of the loader and device rows")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=2, help="workers of the loader rows")
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
    utils.keep_freed_memory()  # as the entry scripts do
    with tempfile.TemporaryDirectory() as tmp:
        entries = make_clips(Path(tmp), args)
        frame_kb = np.mean([f.stat().st_size for f in Path(tmp).glob("*/*.jpg")]) / 1024
        rows = [*loader_rows(entries, args), *decode_rows(entries, args), *augment_rows(entries, args)]
    report("data", rows, frames=f"{args.min_frames}-{args.max_frames} of {args.frame_size} px, {frame_kb:.1f} KB",
           cpu_count=os.cpu_count())


if __name__ == "__main__":
    main(get_args_parser().parse_args())
