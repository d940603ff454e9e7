"""Inference over a whole video: read it, find and crop the main face, slide windows, predict (run_inference.py).

A video is read twice, by decord: once to detect faces on the frames the windows sample, once to crop them with
the smoothed track; only the crops are kept (one per examined frame), so memory does not grow with frame size.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import faces
from datasets import loaded_test_indices, normalize
from engine import autocast

logger = logging.getLogger(__name__)


class VideoError(ValueError):
    """A video that cannot be used: unreadable, empty, or without a face."""


class NoFaceError(VideoError):
    """No face was found in the video (or too few frames of every window had one)."""


def open_video(path: str | Path):
    """A decord reader and the frame rate; FileNotFoundError / VideoError name the file and the problem."""
    import decord

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: the file is empty (0 bytes)")
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
    except Exception as err:
        raise VideoError(f"{path}: cannot read the video: {str(err).splitlines()[0]}") from None
    if len(reader) == 0:
        raise VideoError(f"{path}: the video has no frames")
    fps = float(reader.get_avg_fps())
    if not fps > 0:
        logger.warning("%s: no frame rate in the file, assuming 25 fps", path)
        fps = 25.0
    return reader, fps


def plan_windows(n: int, num_frames: int, rate: int, stride: int) -> np.ndarray:
    """(windows, num_frames) frame indices: every rate-th frame from each start, starts every `stride` frames and a
    last one at the latest multiple of `rate` that still fits (so that, with a stride that is a multiple of the rate,
    all windows sample the same frames 0, rate, 2 rate, ... and each is decoded and examined once). A video shorter
    than one window gets one, padded with its last sampled frame as the test loader pads short clips
    (datasets.loaded_test_indices)."""
    span = (num_frames - 1) * rate + 1
    if n < span:
        return loaded_test_indices(n, num_frames, rate)[None, :num_frames]
    starts = list(range(0, n - span + 1, stride))
    last = (n - span) // rate * rate
    if starts[-1] < last:
        starts.append(last)
    return np.array(starts)[:, None] + rate * np.arange(num_frames)


def default_stride(num_frames: int, rate: int) -> int:
    """Half a window, rounded to a multiple of the sampling rate (see plan_windows)."""
    return max(round((num_frames - 1) * rate / 2 / rate) * rate, rate)


def read_frames(reader, frames: np.ndarray, path: str | Path, chunk: int = 32):
    """Yield (frame index, RGB frame) for the sorted `frames`, decoded a chunk at a time."""
    for i in range(0, len(frames), chunk):
        try:
            batch = reader.get_batch(frames[i:i + chunk].tolist()).asnumpy()
        except Exception as err:
            raise VideoError(f"{path}: cannot decode frames {frames[i]}..{frames[i:i + chunk][-1]}: "
                             f"{str(err).splitlines()[0]}") from None
        yield from zip(frames[i:i + chunk].tolist(), batch)


def eye_angles(reader, frames: np.ndarray, track: np.ndarray, path: str | Path, radius: int) -> np.ndarray:
    """--align eyes: the roll of the face in each of `frames` from the eyes in its track box (faces.EyeAligner),
    smoothed over ±radius frames and filled where the eyes or the face were not found."""
    aligner = faces.EyeAligner()
    found = np.flatnonzero(~np.isnan(track[:, 0]))
    angles = np.full(len(frames), np.nan)
    for (_, frame), i in zip(read_frames(reader, frames[found], path), found):
        angles[i] = aligner(frame, track[i])
    return faces.smooth_angles(angles, radius)


def crop_plan(reader, frames: np.ndarray, track: np.ndarray, path: str | Path,
              args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """The crop box and rotation of each of `frames` from their face track (the face flags of
    `faces.add_face_arguments`): boxes at --face_scale × the face's side, smoothed over --smooth frames, and with
    --align eyes the angle of the eye line (else 0). run_inference.py and preprocess/extract_faces.py crop alike."""
    boxes = faces.crop_boxes(track, args.face_scale or faces.FACE_SCALES[args.face], args.smooth)
    angles = eye_angles(reader, frames, track, path, args.smooth) if args.align == "eyes" else np.zeros(len(frames))
    return boxes, angles


@torch.no_grad()
def predict_windows(model, rows: np.ndarray, crops: dict[int, np.ndarray], device: torch.device, amp: str,
                    batch_size: int, desc: str) -> np.ndarray:
    """Softmax probabilities (float64) of the windows whose frame indices are `rows`, batched; each batch's clips
    are assembled from the crops only when it runs, so memory does not grow with the number of windows."""
    probs = []
    for i in tqdm(range(0, len(rows), batch_size), desc=desc, leave=False, dynamic_ncols=True):
        clips = torch.stack([normalize(np.stack([crops[f] for f in row])) for row in rows[i:i + batch_size]])
        with autocast(device, amp):
            logits = model(clips.to(device))
        probs.append(torch.softmax(logits.double(), dim=1).cpu().numpy())
    return np.concatenate(probs)


def process_video(path: str | Path, model, cfg: argparse.Namespace, args: argparse.Namespace,
                  device: torch.device) -> dict:
    """Detect, track, crop and predict one video; returns everything timeline.py writes."""
    seconds = dict.fromkeys(("decode", "detect", "crop", "predict"), 0.0)
    tick = time.perf_counter()
    reader, fps = open_video(path)
    n = len(reader)
    height, width = next(read_frames(reader, np.zeros(1, int), path))[1].shape[:2]
    span = (cfg.num_frames - 1) * cfg.sampling_rate + 1
    windows = plan_windows(n, cfg.num_frames, cfg.sampling_rate,
                           args.stride or default_stride(cfg.num_frames, cfg.sampling_rate))
    notes = []
    if n < span:
        notes.append(f"the video has {n} frames, fewer than one window ({cfg.num_frames} frames every "
                     f"{cfg.sampling_rate} = {span} frames): its last sampled frame is repeated to fill the window")
        logger.warning("%s: %s", path, notes[-1])
    examined = np.unique(windows)
    seconds["decode"] += time.perf_counter() - tick

    detector = faces.make_detector(args.face, args.detect_size)
    detections = []
    tick = time.perf_counter()
    for _, frame in tqdm(read_frames(reader, examined, path), total=len(examined), desc="faces", leave=False,
                         dynamic_ncols=True):
        start = time.perf_counter()
        detections.append(detector(frame))
        seconds["detect"] += time.perf_counter() - start
    seconds["decode"] += time.perf_counter() - tick - seconds["detect"]
    boxes = faces.main_track(detections)
    found = ~np.isnan(boxes[:, 0])
    if not found.any():
        raise NoFaceError(f"{path}: no face found in any of the {len(examined)} frames examined (detector "
                          f"{args.face}); if the video is already a face crop, use --face none")
    position = {f: i for i, f in enumerate(examined.tolist())}
    face_frames = found[np.vectorize(position.get)(windows)].sum(axis=1)
    min_face = args.min_face_frames if args.min_face_frames is not None else (cfg.num_frames + 1) // 2
    predicted = face_frames >= min_face
    if not predicted.any():
        raise NoFaceError(f"{path}: a face was found in {found.sum()} of {len(examined)} frames examined, but no "
                          f"window has {min_face} frames with a face (--min_face_frames)")

    # Second pass: frames are decoded again rather than kept, so memory stays at one crop per frame.
    tick = time.perf_counter()
    crop_boxes, angles = crop_plan(reader, examined, boxes, path, args)
    crops = {}
    for f, frame in read_frames(reader, np.unique(windows[predicted]), path):
        start = time.perf_counter()
        crops[f] = faces.crop(frame, crop_boxes[position[f]], cfg.input_size, angles[position[f]])
        seconds["crop"] += time.perf_counter() - start
    seconds["decode"] += time.perf_counter() - tick - seconds["crop"]

    tick = time.perf_counter()
    probs = np.full((len(windows), cfg.nb_classes), np.nan)
    probs[predicted] = predict_windows(model, windows[predicted], crops, device, args.amp, args.batch_size,
                                       f"windows {Path(path).name}")
    seconds["predict"] = time.perf_counter() - tick
    return dict(video=str(path), frames=n, fps=fps, width=width, height=height, windows=windows, probs=probs,
                face_frames=face_frames, predicted=predicted, examined=examined, found=found, boxes=crop_boxes,
                angles=angles, min_face_frames=min_face, notes=notes, seconds=seconds)
