"""Face detectors on tilted and scaled real faces, and face extraction's frames/s per core.

640x360 frames of the portrait matplotlib ships, turned by ±angle and scaled to a face height (eyes to mouth),
pasted on scikit-learn's two photographs (demo_data.face_scene); found = a detection with IoU >= 0.3. Both
detectors (haar, dnn) take turns on every frame. Then preprocess/extract_faces.py (one process, one OpenCV thread).

    python benchmarks/bench_faces.py                  # 4 sizes x 4 angles x 20 frames, 4 videos extracted
    python benchmarks/bench_faces.py --frames 5 --videos 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from common import report, spread

import faces
from demo_data import background_photo, face_photo, face_scene, make_scene_video
from preprocess import extract_faces

SIZE = (640, 360)


def found(boxes: np.ndarray, truth: np.ndarray) -> bool:
    return any(faces.iou(b, truth) >= 0.3 for b in boxes)


def recall_table(args: argparse.Namespace, detectors: dict) -> tuple[list[dict], dict]:
    """Per (face height, angle): the share of frames each detector found the face in; and ms per frame."""
    rng = np.random.default_rng(0)
    photo = face_photo()
    backgrounds = [cv2.resize(background_photo(name), SIZE, interpolation=cv2.INTER_AREA)
                   for name in ("china.jpg", "flower.jpg")]
    ms = {name: [] for name in detectors}
    rows = []
    for height in args.heights:
        for angle in args.angles:
            hits = dict.fromkeys(detectors, 0)
            for i in range(args.frames):
                margin = 0.8 * height
                centre = (rng.uniform(margin, SIZE[0] - margin), rng.uniform(margin, SIZE[1] - margin))
                turn = angle * (1 if i % 2 else -1)
                frame, truth = face_scene(photo, backgrounds[i % 2], centre, height, turn)
                for name, detect in detectors.items():
                    start = time.perf_counter()
                    boxes = detect(frame)
                    ms[name].append(1000 * (time.perf_counter() - start))
                    hits[name] += found(boxes, truth)
            rows.append(dict(face_height=height, angle=angle, frames=args.frames,
                             **{name: hits[name] / args.frames for name in detectors}))
            print(f"face {height:3d} px, ±{angle:2d}°: " + ", ".join(f"{name} {100 * rows[-1][name]:3.0f} %"
                                                                     for name in detectors), flush=True)
    false = {name: 0 for name in detectors}
    for background in backgrounds:
        for frame in (background, background[:, ::-1].copy(), background[::-1].copy()):
            for name, detect in detectors.items():
                false[name] += len(detect(frame))
    return rows, dict(ms_per_frame={name: spread(t, 1) for name, t in ms.items()},
                      false_detections_in_6_no_face_frames=false)


def extraction_speed(args: argparse.Namespace) -> dict:
    """extract_faces.main on --videos videos of 50 frames, one process: frames/s."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "videos"
        root.mkdir()
        t = np.arange(50)
        for v in range(args.videos):
            poses = np.stack([200 + 4 * t + 20 * v, 180 + 20 * np.sin(t / 8), 110 + 20 * np.sin(t / 10),
                              25 * np.sin(t / 12 + v)], axis=1)
            make_scene_video(root / f"{v}.mp4", poses, size=SIZE)
        cv2.setNumThreads(1)
        start = time.perf_counter()
        extract_faces.main(["--root", str(root), "--out", str(Path(tmp) / "faces"), "--workers", "1"])
        seconds = time.perf_counter() - start
    frames = 50 * args.videos
    print(f"extraction: {frames} frames of {SIZE[0]}x{SIZE[1]} in {seconds:.1f} s, {frames / seconds:.1f} frames/s "
          "on one core", flush=True)
    return dict(frames=frames, seconds=seconds, frames_per_s_per_core=frames / seconds)


def alignment_figure(path: Path) -> None:
    """The crops of the tilted portrait (top) and the same crops with --align eyes (bottom), as run_inference.py and
    extract_faces.py cut them with the default detector."""
    photo = face_photo()
    scene = cv2.resize(background_photo(), SIZE, interpolation=cv2.INTER_AREA)
    detector, aligner = faces.make_detector("dnn"), faces.EyeAligner()
    rows = [[], []]
    for angle in (-40, -25, -10, 10, 25, 40):
        frame, _ = face_scene(photo, scene, (320, 180), 100, angle)
        (box,) = detector(frame)[:1]
        square = faces.crop_box(box, faces.FACE_SCALES["dnn"])
        roll = aligner(frame, box)
        for row, turn in zip(rows, (0.0, 0.0 if np.isnan(roll) else roll)):
            tile = cv2.cvtColor(faces.crop(frame, square, 160, turn), cv2.COLOR_RGB2BGR)
            label = f"tilt {angle:+d}" if row is rows[0] else f"turned {turn:+.0f}"
            cv2.putText(tile, label, (6, 152), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            row.append(tile)
    cv2.imwrite(str(path), cv2.vconcat([cv2.hconcat(r) for r in rows]))
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heights", nargs="+", type=int, default=[40, 70, 120, 200], help="face heights (eyes to mouth)")
    p.add_argument("--angles", nargs="+", type=int, default=[0, 15, 30, 45], help="tilts in degrees (either way)")
    p.add_argument("--frames", type=int, default=20, help="frames per (height, angle) cell")
    p.add_argument("--videos", type=int, default=4, help="50-frame videos for the extraction timing")
    p.add_argument("--figure", type=Path, default=None, help="also draw the crops with and without --align eyes")
    args = p.parse_args()
    if args.figure:
        alignment_figure(args.figure)
    detectors = {name: faces.make_detector(name) for name in ("haar", "dnn")}
    rows, other = recall_table(args, detectors)
    print(other)
    report("faces", rows, opencv=cv2.__version__, **other, extraction=extraction_speed(args))


if __name__ == "__main__":
    main()
