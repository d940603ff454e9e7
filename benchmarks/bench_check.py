"""Data check throughput: entries/s on generated frame folders, fast (training start), full, and full with --decode.

`--clips` frame folders of `--frames` JPEG frames (`--size` px, one encoded image in every file) listed in a
train.csv, checked by data_check.check_annotations with 1 and 2 workers. The page cache is warm (the files were just
written): a cold disk adds its seek time to the full check.

    python benchmarks/bench_check.py [--clips 10000 --frames 16 --size 112]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from common import report

from data_check import check_annotations


def make_clips(root: Path, clips: int, frames: int, size: int) -> Path:
    """`clips` folders of `frames` identical JPEG frames and a train.csv listing them (relative paths)."""
    image = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (size, size, 3)).astype(np.uint8), (0, 0), 2)
    encoded = cv2.imencode(".jpg", image)[1].tobytes()
    for c in range(clips):
        (root / f"{c:06d}").mkdir()
        for t in range(frames):
            (root / f"{c:06d}" / f"{t:05d}.jpg").write_bytes(encoded)
    (root / "train.csv").write_text("".join(f"{c:06d} {c % 7}\n" for c in range(clips)))
    return root / "train.csv"


def check_rows(csv: Path, clips: int, frames: int):
    for name, options, worker_counts in (("fast (training start)", dict(deep=False), (1,)), ("full", {}, (1, 2)),
                                         ("full --decode", dict(decode=True), (1, 2))):
        for workers in worker_counts:
            start = time.perf_counter()
            result = check_annotations([csv], 7, csv.parent, num_frames=frames, sampling_rate=1, workers=workers,
                                       **options)
            seconds = time.perf_counter() - start
            assert not result.problems, result.format()
            yield {"check": name, "workers": workers, "entries/s": round(clips / seconds),
                   "frames/s": round(clips * frames / seconds), "seconds": round(seconds, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=10000)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = list(check_rows(make_clips(Path(tmp), args.clips, args.frames, args.size), args.clips, args.frames))
    report("check", rows, clips=args.clips, frames=args.frames, size=args.size)


if __name__ == "__main__":
    main()
