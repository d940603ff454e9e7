"""Faces in a video: detection behind a small interface, the main face's track, box smoothing and the model's crop.

The default detector is OpenCV's frontal-face Haar cascade: its weights ship inside the opencv-python 4.x wheel,
so nothing is downloaded at run time. Any callable that maps an RGB frame to boxes plugs in (`DETECTORS`).
Boxes are float arrays (x0, y0, x1, y1) in frame pixels; a frame without a face has a row of NaN.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np
from PIL import Image


class FaceDetector(Protocol):
    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB frame -> (K, 4) float boxes (x0, y0, x1, y1), K >= 0."""
        ...


class HaarFaceDetector:
    """OpenCV's Haar cascade, run on the frame scaled down to at most `max_side` pixels (the cost is ~ pixels).

    `alt2` found the face in every frame of our moving-portrait videos down to 54-px faces in 640x360 frames at
    max_side 320, where the `default` cascade missed 9 % (benchmarks/bench_inference.py).
    """

    def __init__(self, cascade: str = "haarcascade_frontalface_alt2.xml", max_side: int = 320,
                 scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 20):
        self.classifier = cv2.CascadeClassifier(cv2.data.haarcascades + cascade)
        if self.classifier.empty():
            raise OSError(f"cannot load the Haar cascade {cv2.data.haarcascades + cascade}")
        self.max_side, self.scale_factor, self.min_neighbors, self.min_size = max_side, scale_factor, \
            min_neighbors, min_size

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        scale = min(self.max_side / max(gray.shape), 1.0)
        if scale < 1:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        found = self.classifier.detectMultiScale(gray, self.scale_factor, self.min_neighbors,
                                                 minSize=(self.min_size, self.min_size))
        boxes = np.asarray(found, dtype=np.float64).reshape(-1, 4) / scale
        boxes[:, 2:] += boxes[:, :2]
        return boxes


class WholeFrame:
    """`--face none`: the input is already a face crop; the box is the whole frame."""

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return np.array([[0.0, 0.0, frame.shape[1], frame.shape[0]]])


DETECTORS = {"haar": HaarFaceDetector, "none": WholeFrame}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    union = (a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter
    return float(inter / union) if union > 0 else 0.0


def main_track(detections: list[np.ndarray], min_iou: float = 0.3, max_gap: int = 10) -> np.ndarray:
    """The main face's box in every frame, (n, 4), NaN where it was not detected.

    Boxes are linked greedily frame to frame (largest first) to the track whose last box overlaps them most
    (IoU >= min_iou, last seen at most max_gap frames before); the main track is the one with the largest summed
    box area, i.e. the largest face that stays longest. Other faces and one-off false detections are dropped.
    """
    tracks: list[dict] = []
    for i, boxes in enumerate(detections):
        taken: set[int] = set()
        for box in sorted(boxes, key=lambda b: -(b[2:] - b[:2]).prod()):
            live = [(iou(t["last"], box), k) for k, t in enumerate(tracks)
                    if k not in taken and i - t["seen"] <= max_gap]
            best_iou, k = max(live, default=(0.0, -1))
            if best_iou < min_iou:
                tracks.append({"boxes": {}, "area": 0.0})
                k = len(tracks) - 1
            track = tracks[k]
            track["boxes"][i], track["last"], track["seen"] = box, box, i
            track["area"] += float((box[2:] - box[:2]).prod())
            taken.add(k)
    out = np.full((len(detections), 4), np.nan)
    if tracks:
        for i, box in max(tracks, key=lambda t: t["area"])["boxes"].items():
            out[i] = box
    return out


def smooth_boxes(boxes: np.ndarray, radius: int) -> np.ndarray:
    """Centred moving average of each box's centre and side over the detected frames within ±radius; NaN rows stay
    NaN. Square boxes are averaged as (cx, cy, side) so that the crop neither jitters nor breathes."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = (boxes[:, 2:] - boxes[:, :2]).max(axis=1, keepdims=True)
    params = np.concatenate([centre, side], axis=1)
    found = ~np.isnan(params[:, 0])
    def window_sum(x: np.ndarray) -> np.ndarray:
        return np.convolve(x, np.ones(2 * radius + 1))[radius:radius + len(x)]

    total = np.stack([window_sum(np.where(found, p, 0.0)) for p in params.T], axis=1)
    count = window_sum(found.astype(float))[:, None]
    params = np.where(found[:, None], total / np.maximum(count, 1), np.nan)
    return np.concatenate([params[:, :2] - params[:, 2:] / 2, params[:, :2] + params[:, 2:] / 2], axis=1)


def fill_missing(boxes: np.ndarray) -> np.ndarray:
    """Boxes for the frames without a face, interpolated linearly between the nearest detected frames (held at the
    ends), so that a window with a few missed frames still has a crop. Callers report which frames these are."""
    found = np.flatnonzero(~np.isnan(boxes[:, 0]))
    if len(found) == 0:
        raise ValueError("no frame has a face box to fill from")
    frames = np.arange(len(boxes))
    return np.stack([np.interp(frames, found, boxes[found, j]) for j in range(4)], axis=1)


def crop_box(box: np.ndarray, scale: float) -> np.ndarray:
    """The square (x0, y0, x1, y1) centred on `box`, of side `scale` × its longer side."""
    centre = (box[:2] + box[2:]) / 2
    half = scale * (box[2:] - box[:2]).max() / 2
    return np.r_[centre - half, centre + half]


def crop(frame: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the square `box` cut out of `frame` (black beyond its edges), PIL bilinear resize as
    the test loader resizes the datasets' face frames (datasets.py)."""
    x0, y0 = np.round(box[:2]).astype(int)
    side = max(round(box[2] - box[0]), 1)
    out = np.zeros((side, side, 3), np.uint8)
    h, w = frame.shape[:2]
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    return np.asarray(Image.fromarray(out).resize((size, size), Image.BILINEAR))
