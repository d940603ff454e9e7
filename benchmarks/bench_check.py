"""Data check throughput: entries/s on generated frame folders, fast (training start), full, and full with --decode.

Generates `--clips` frame folders of `--frames` JPEG frames (`--size` px, one encoded image written to every file)
in a temporary folder, lists them in a train.csv, then times data_check.check_annotations with 1 and 2 workers.
The page cache is warm (the files were just written): a cold disk adds its seek time to the full check.

    python benchmarks/bench_check.py [--clips 10000 --frames 16 --size 112]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (first: puts the repository on the path)
import cv2
import numpy as np

from data_check import check_annotations


def make_clips(root: Path, clips: int, frames: int, size: int) -> Path:
    """`clips` folders of `frames` identical JPEG frames and a train.csv listing them (relative paths)."""
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (0, 0), 2)
    encoded = cv2.imencode(".jpg", image)[1].tobytes()
    lines = []
    for c in range(clips):
        folder = root / f"{c:06d}"
        folder.mkdir()
        for t in range(frames):
            (folder / f"{t:05d}.jpg").write_bytes(encoded)
        lines.append(f"{c:06d} {c % 7}\n")
    (root / "train.csv").write_text("".join(lines))
    return root / "train.csv"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=10000)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        csv = make_clips(Path(tmp), args.clips, args.frames, args.size)
        print(f"generated {args.clips} folders x {args.frames} frames ({args.size}px JPEG) in "
              f"{time.perf_counter() - start:.1f} s")
        print(f"{'check':<22} {'workers':>7} {'entries/s':>10} {'frames/s':>10} {'seconds':>8}")
        runs = [("fast (training start)", dict(deep=False), (1,)), ("full", dict(), (1, 2)),
                ("full --decode", dict(decode=True), (1, 2))]
        for name, options, worker_counts in runs:
            for workers in worker_counts:
                start = time.perf_counter()
                report = check_annotations([csv], 7, tmp, num_frames=args.frames, sampling_rate=1,
                                           workers=workers, **options)
                seconds = time.perf_counter() - start
                assert not report.problems, report.format()
                print(f"{name:<22} {workers:>7} {args.clips / seconds:>10.0f} "
                      f"{args.clips * args.frames / seconds:>10.0f} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
