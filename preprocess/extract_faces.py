"""Face-frame folders from a tree of videos: the main face of every frame, cropped as run_inference.py crops it.

    python -m preprocess.extract_faces --root /data/RAVDESS --out /data/RAVDESS/face_aligned [--workers 4]

Each video <root>/<rel>/<name>.<ext> gives <out>/<rel>/<name>/00001.jpg, 00002.jpg, ... (one square crop per frame,
--size px, JPEG quality 95), spaces in folder and file names written as '_' (the lists cannot hold spaces). The
faces are detected in every frame (--face, default the res10 SSD), linked into the main face's track, smoothed and
filled where missed, then cropped at --face_scale × the face's side (faces.py), turned upright by the eyes with
--align eyes, exactly as run_inference.py crops (engine_inference.crop_plan). A video's folder appears only once
complete, so a rerun skips what is done and finishes an interrupted extraction. <out>/extract_report.csv lists every
video: frames, frames with a face and the reason it needs a look (no face, face missed in some frames, unreadable).
"""

from __future__ import annotations

if not __package__:  # run as `python preprocess/<name>.py`: the repository root goes on sys.path
    import _bootstrap  # noqa: F401

import argparse
import csv
import multiprocessing
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

import faces
from engine_inference import VideoError, crop_plan, open_video, read_frames
from preprocess.common import cli
from video_io import VIDEO_EXTENSIONS

EXTENSIONS = (*VIDEO_EXTENSIONS, ".flv")  # CREMA-D is distributed as Flash video
REPORT = "extract_report.csv"
REPORT_FIELDS = ("video", "frames", "face_frames", "reason")
NO_FACE = "no face"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = p.add_argument
    add("--root", required=True, type=Path, help="folder searched (recursively) for videos")
    add("--out", required=True, type=Path, help="face-frame folders go to OUT/<path of the video under ROOT>/")
    add("--glob", default="**/*", help="which files under ROOT to consider (default: %(default)s; e.g. "
        "'Actor_*/02-01-*' for RAVDESS' video-only speech clips)")
    faces.add_face_arguments(p, whole_frame=False)
    add("--size", default=224, type=int, help="side of the square crops written, in pixels")
    add("--workers", default=os.cpu_count() or 1, type=int, help="videos processed in parallel (processes)")
    return p


def output_folder(root: Path, out: Path, video: Path) -> Path:
    """<out>/<video's folder under root>/<video's stem>, spaces made '_'."""
    rel = video.relative_to(root).with_suffix("")
    return out.joinpath(*(part.replace(" ", "_") for part in rel.parts))


def find_videos(root: Path, out: Path, pattern: str) -> list[Path]:
    """The video files matching `pattern` under root, sorted, leaving out anything under `out`."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (--root)")
    out = out.resolve()
    videos = sorted(p for p in root.glob(pattern) if p.suffix.lower() in EXTENSIONS and p.is_file()
                    and not p.resolve().is_relative_to(out))
    if not videos:
        raise FileNotFoundError(f"{root}: no video files matching {pattern!r} ({', '.join(EXTENSIONS)})")
    return videos


def lost_reason(found: np.ndarray) -> str:
    """'' when every frame had the face, else how many frames missed it and the first and last of them (1-based)."""
    missed = np.flatnonzero(~found) + 1
    if len(missed) == 0:
        return ""
    return f"face missed in {len(missed)} frames ({missed[0]}..{missed[-1]}): their crops hold the nearest boxes"


_detector: faces.FaceDetector | None = None


def extract_video(video: Path, folder: Path, args: argparse.Namespace) -> dict:
    """Write one video's crops to `folder` (through a temporary folder beside it); returns its report row."""
    global _detector
    if _detector is None:  # one per process, built on first use
        _detector = faces.make_detector(args.face, args.detect_size)
    row = dict(video=str(video), frames=0, face_frames=0, reason="")
    try:
        reader, _ = open_video(video)
        n = len(reader)
        row["frames"] = n
        detections = [_detector(frame) for _, frame in read_frames(reader, np.arange(n), video)]
        track = faces.main_track(detections)
        found = ~np.isnan(track[:, 0])
        row["face_frames"] = int(found.sum())
        if not found.any():
            return {**row, "reason": NO_FACE}
        frames = np.arange(n)
        boxes, angles = crop_plan(reader, frames, track, video, args)
        partial = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for f, frame in read_frames(reader, frames, video):
            image = faces.crop(frame, boxes[f], args.size, angles[f])
            cv2.imwrite(str(partial / f"{f + 1:05d}.jpg"), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        partial.rename(folder)
        return {**row, "reason": lost_reason(found)}
    except (OSError, VideoError) as err:
        return {**row, "reason": f"cannot read: {err}"}


def _work(job: tuple[Path, Path, argparse.Namespace]) -> dict:
    return extract_video(*job)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the processes are the parallelism


def read_report(path: Path) -> dict[str, dict]:
    """The rows of an earlier run's report, by video."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["video"]: row for row in csv.DictReader(f)}


def main(argv: list[str] | None = None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: need at least 1")
    videos = find_videos(args.root, args.out, args.glob)
    folders = [output_folder(args.root, args.out, v) for v in videos]
    clash = {f for f in folders if folders.count(f) > 1}
    if clash:
        raise ValueError(f"{args.root}: several videos would write to {sorted(map(str, clash))[0]} (same name, "
                         "other extension)")
    earlier = read_report(args.out / REPORT)
    rows, jobs = {}, []
    for video, folder in zip(videos, folders):
        if folder.is_dir() or earlier.get(str(video), {}).get("reason") == NO_FACE:
            rows[str(video)] = earlier.get(str(video), dict(video=str(video), frames="", face_frames="",
                                                            reason="done before (no earlier report row)"))
        else:
            jobs.append((video, folder, args))
    print(f"{len(videos)} videos under {args.root}: {len(videos) - len(jobs)} done already, {len(jobs)} to extract")
    args.out.mkdir(parents=True, exist_ok=True)
    progress = dict(total=len(jobs), desc="videos", dynamic_ncols=True, smoothing=0)
    if args.workers == 1 or len(jobs) <= 1:
        done = (extract_video(*job) for job in jobs)
        rows.update((r["video"], r) for r in tqdm(done, **progress))
    else:
        with multiprocessing.get_context("spawn").Pool(min(args.workers, len(jobs)), _init_worker) as pool:
            rows.update((r["video"], r) for r in tqdm(pool.imap_unordered(_work, jobs), **progress))
    report = [rows[str(v)] for v in videos]
    tmp = args.out / f".{REPORT}.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, REPORT_FIELDS)
        writer.writeheader()
        writer.writerows(report)
    tmp.replace(args.out / REPORT)
    flagged = [r for r in report if r["reason"]]
    print(f"wrote {args.out / REPORT}: {len(report)} videos, {len(flagged)} with a reason to look at them")
    return report


if __name__ == "__main__":
    cli(main)
