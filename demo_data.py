"""The demo's synthetic "dynamic expressions" dataset: drawn faces whose class is defined by how they move.

Every face has a random identity, pose, background and lighting. Three expression parameters (smile, brow raise,
mouth opening, each in 0..1) are either held or moved along a smooth trajectory; the class says which one moves
and how. Held values are drawn from the same per-frame distribution as moving ones and 'smile fading' is the exact
time reverse of 'smile forming', so a single frame says nothing about the class: only the change does.
Clips are written in the real format (frame folders + `<path> <label>` CSVs) so the demo runs the real loader.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from annotations import DATASETS

DEMO_CLASSES = DATASETS["DEMO"].classes

# Bump when the generator's output changes, so existing datasets are regenerated instead of reused.
_VERSION = 1
_SS = 2  # faces are drawn at 2x and downsampled (INTER_AREA): cheap anti-aliasing for the small strokes
_SHIFT = 4  # OpenCV fixed-point coordinates (1/16 px), so sub-pixel motion stays smooth
_SMILE, _BROWS, _MOUTH = 0, 1, 2
_MOVING = {0: _SMILE, 2: _BROWS, 3: _MOUTH}  # class -> the parameter that moves (1 = reversed 0, 4 = none)

_SKIN = np.array([(255, 226, 200), (240, 196, 160), (222, 170, 128), (196, 134, 96), (158, 104, 70),
                  (112, 72, 48), (78, 52, 36)], np.float32)
_HAIR = np.array([(20, 16, 14), (50, 34, 24), (92, 60, 36), (196, 160, 100), (150, 70, 36), (150, 146, 140)],
                 np.float32)
_IRIS = np.array([(70, 44, 24), (40, 26, 18), (70, 110, 160), (80, 120, 80), (110, 110, 120)], np.float32)


def make_demo_dataset(root: str | os.PathLike, *, train_per_class: int = 70, test_per_class: int = 20,
                      num_frames: int = 16, size: int = 64, seed: int = 0, max_extra_frames: int | None = None
                      ) -> Path:
    """Write the dataset to `root` (frames/<id>/<NNNNN>.jpg, train.csv, test.csv, meta.json) and return `root`.

    Clips have num_frames..num_frames+max_extra_frames frames (default extra: num_frames // 4); every movement lies
    inside each window of `num_frames` consecutive frames. Reuses `root` if it holds this exact dataset already.
    Deterministic given the arguments.
    """
    root = Path(root)
    extra = num_frames // 4 if max_extra_frames is None else max_extra_frames
    # At least 3 frames must lie in every window, for a movement to start and end in them.
    if num_frames < 4 or not 0 <= extra <= num_frames - 3 or size < 16 or min(train_per_class, test_per_class) < 1:
        raise ValueError(f"demo dataset: need num_frames >= 4, 0 <= max_extra_frames <= num_frames - 3, size >= 16 and "
                         f"a clip per class (got {num_frames}, {extra}, {size}, {train_per_class}, {test_per_class})")
    params = dict(version=_VERSION, classes=list(DEMO_CLASSES), train_per_class=train_per_class,
                  test_per_class=test_per_class, num_frames=num_frames, max_extra_frames=extra, size=size, seed=seed)
    meta = _read_meta(root)
    if meta == params:
        return root
    if root.exists() and meta is None and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root}: exists and is not a demo dataset (no meta.json); refusing to overwrite it")

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        next_id = 0
        for split_no, (split, per_class) in enumerate((("train", train_per_class), ("test", test_per_class))):
            lines = []
            for clip_id, label, frames in _split_clips(seed, split_no, per_class, num_frames, extra, size, next_id):
                folder = tmp / "frames" / f"{clip_id:06d}"
                folder.mkdir(parents=True)
                for t, frame in enumerate(frames, 1):
                    cv2.imwrite(str(folder / f"{t:05d}.jpg"), frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
                lines.append(f"frames/{clip_id:06d} {label}\n")
            lines.sort()  # by clip id; ids are shuffled across classes, as in the real lists
            (tmp / f"{split}.csv").write_text("".join(lines), newline="\n")
            next_id += len(lines)
        # meta.json last: its presence means the dataset is complete.
        clips = dict(train=len(DEMO_CLASSES) * train_per_class, test=len(DEMO_CLASSES) * test_per_class)
        (tmp / "meta.json").write_text(json.dumps({**params, "clips": clips}, indent=1))
        _replace_dir(tmp, root, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def make_demo_videos(root: str | os.PathLike, *, per_class: int = 200, num_frames: int = 16, size: int = 64,
                     seed: int = 0, fps: int = 25) -> Path:
    """Unlabelled demo videos for pretraining: `root`/videos/<id>.mp4 and `info_clean.csv` (`<path> 0` lines, the
    VoxCeleb2 list format), from a split of their own (other faces than the labelled demo clips). Reuses `root` if
    it holds these exact videos already."""
    root = Path(root)
    if min(num_frames, size, per_class) < 1 or num_frames < 4:
        raise ValueError(f"demo videos: need num_frames >= 4, size >= 1 and per_class >= 1 (got {num_frames}, "
                         f"{size}, {per_class})")
    params = dict(version=_VERSION, kind="unlabelled videos", per_class=per_class, num_frames=num_frames, size=size,
                  seed=seed, fps=fps)
    if _read_meta(root) == params:
        return root
    if root.exists() and _read_meta(root) is None and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root}: exists and is not a demo video set (no meta.json); refusing to overwrite it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        (tmp / "videos").mkdir()
        lines = []
        for clip_id, _, frames in _split_clips(seed, 2, per_class, num_frames, num_frames // 4, size, 0):
            name = f"videos/{clip_id:06d}.mp4"
            writer = cv2.VideoWriter(str(tmp / name), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
            for frame in frames:
                writer.write(np.ascontiguousarray(frame[..., ::-1]))
            writer.release()
            lines.append(f"{name} 0\n")
        (tmp / "info_clean.csv").write_text("".join(sorted(lines)), newline="\n")
        (tmp / "meta.json").write_text(json.dumps({**params, "clips": len(lines)}, indent=1))
        _replace_dir(tmp, root, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _read_meta(root: Path) -> dict | None:
    """The generation parameters stored in root/meta.json (without the clip counts), or None."""
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    meta.pop("clips", None)
    return meta


def _replace_dir(tmp: Path, root: Path, params: dict) -> None:
    """Move the finished `tmp` to `root` with renames only, replacing an older demo dataset there."""
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        root.rename(old)  # an older demo dataset (checked by the caller) or an empty directory
    try:
        tmp.rename(root)
    except OSError:
        if _read_meta(root) != params:  # not another process that just wrote the same dataset
            raise
    if old is not None:
        shutil.rmtree(old)


def _split_clips(seed: int, split_no: int, per_class: int, num_frames: int, extra: int, size: int, first_id: int):
    """Yield (clip id, label, frames (n, size, size, 3) uint8 RGB) for one split, per_class clips of each class."""
    order = np.random.default_rng([seed, split_no, 1]).permutation(len(DEMO_CLASSES) * per_class)
    ids = iter(first_id + order)
    for label in (0, 2, 3, 4):  # class 1 comes from class 0
        for k in range(per_class):
            # One generator per clip: a clip depends only on (seed, split, class, index).
            rng = np.random.default_rng([seed, split_no, 0, label, k])
            frames = _render_clip(rng, label, num_frames, int(rng.integers(num_frames, num_frames + extra + 1)), size)
            yield int(next(ids)), label, frames
            if label == 0:  # 'smile fading' = the same frames in reverse: identical frame sets, opposite motion
                yield int(next(ids)), 1, frames[::-1]


def _trajectory(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    """n values rising by 0.5-0.8 from a random level, smoothly (smoothstep), starting and ending in frames lo..hi."""
    delta = rng.uniform(0.5, 0.8)
    start = rng.uniform(0.0, 1.0 - delta)
    shortest = max(2, (hi - lo + 1) // 4)
    t0 = int(rng.integers(lo, hi - shortest + 1))
    t1 = int(rng.integers(t0 + shortest, hi + 1))
    u = np.clip((np.arange(n) - t0) / (t1 - t0), 0.0, 1.0)
    return start + delta * u * u * (3 - 2 * u)


def _expressions(rng: np.random.Generator, label: int, num_frames: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (smile, brows, mouth) in 0..1, (n, 3), and eye openness, (n,), for a clip of class `label`."""
    # Any window of num_frames consecutive frames (the loader's training windows and test views) contains lo..hi.
    lo, hi = n - num_frames, num_frames - 1
    expr = np.empty((n, 3), np.float32)
    for p in range(3):
        traj = _trajectory(rng, n, lo, hi)
        # A held parameter takes the value of an unseen trajectory at a random frame: the same per-frame
        # distribution as a moving one, so e.g. raised brows or an open mouth also appear in 'neutral' clips.
        expr[:, p] = traj if _MOVING.get(label) == p else traj[rng.integers(n)]
    eyes = np.ones(n, np.float32)
    if rng.random() < 0.3:  # a blink: nuisance motion every class may have
        t = int(rng.integers(n))
        eyes[t:t + int(rng.integers(1, 3))] = 0.1
    return expr, eyes


def _render_clip(rng: np.random.Generator, label: int, num_frames: int, n: int, size: int) -> np.ndarray:
    """One clip of class `label` (0, 2, 3 or 4) with n frames: (n, size, size, 3) uint8 RGB."""
    expr, eyes = _expressions(rng, label, num_frames, n)
    face = _random_face(rng)
    canvas = size * _SS
    background = _random_background(rng, canvas)
    light = _lighting(rng, size)
    # Head pose: a random base, a slow drift over the clip and per-frame jitter (all in canvas pixels / degrees).
    centre = canvas * (0.5 + rng.uniform(-0.06, 0.06, 2)) + np.array([0.0, canvas * 0.04])
    drift = canvas * rng.uniform(-0.01, 0.01, 2)
    angle, angle_drift = rng.uniform(-10, 10), rng.uniform(-1.5, 1.5)
    radius = canvas * rng.uniform(0.29, 0.35)
    scale_drift = rng.uniform(-0.03, 0.03)
    noise_sd = rng.uniform(1.0, 4.0)

    frames = np.empty((n, size, size, 3), np.uint8)
    for t in range(n):
        phase = t / max(n - 1, 1) - 0.5
        pose = (centre + drift * phase + rng.normal(0, 0.003 * canvas, 2), angle + angle_drift * phase
                + rng.normal(0, 0.3), radius * (1 + scale_drift * phase + rng.normal(0, 0.003)))
        img = background.copy()
        _draw_face(img, face, pose, expr[t], eyes[t])
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
        img *= light * (1 + rng.normal(0, 0.01))  # global lighting and a little flicker
        img += rng.normal(0, noise_sd, img.shape)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def _random_face(rng: np.random.Generator) -> dict:
    """Identity: outline polygons, feature geometry (in head half-heights, origin at the head's centre), colours."""
    i = rng.uniform(0, len(_SKIN) - 1)  # a point on the piecewise-linear range of skin tones
    skin = _SKIN[int(i)] + (i - int(i)) * (_SKIN[min(int(i) + 1, len(_SKIN) - 1)] - _SKIN[int(i)])
    skin = np.clip(skin + rng.normal(0, 6, 3), 0, 255)
    hair = np.clip(_HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.8, 1.2), 0, 255)
    w = rng.uniform(0.70, 0.86)  # half-width
    # Head outline: a superellipse (round to squarish) whose lower half narrows towards the chin.
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    c, s, e = np.cos(theta), np.sin(theta), 2 / rng.uniform(2.0, 2.8)
    hx, hy = w * np.sign(c) * np.abs(c) ** e, np.sign(s) * np.abs(s) ** e
    head = np.stack([hx * (1 - rng.uniform(0.05, 0.3) * np.clip(hy, 0, 1) ** 2), hy], 1)
    behind, above = [], []  # hair polygons drawn before / after the head
    style = rng.choice(3, p=[0.2, 0.5, 0.3])  # none, short, long
    if style == 2:
        arc = np.linspace(np.pi, 2 * np.pi, 16)
        crown = np.stack([1.2 * w * np.cos(arc), -0.15 + 0.98 * np.sin(arc)], 1)
        behind.append(np.concatenate([[[-1.25 * w, 1.0]], crown, [[1.25 * w, 1.0]]]))  # falls to the shoulders
    if style > 0:  # the part of the head above a wavy hairline, kept above the highest brow position
        hairline = rng.uniform(0.68, 0.85)
        top = head[head[:, 1] < -hairline] * 1.04
        top = top[np.argsort(np.arctan2(top[:, 1], top[:, 0]))]
        x = np.linspace(top[:, 0].max(), top[:, 0].min(), 9)
        above.append(np.concatenate([top, np.stack([x, -hairline + 0.04 * np.sin(x * 9)], 1)]))
    colors = dict(skin=skin, neck=skin * 0.85, ears=skin * 0.9, lids=skin * 0.4, nose=skin * 0.72, hair=hair,
                  brows=np.minimum(hair, skin * 0.5),  # darker than the skin, so always visible
                  lips=skin * np.array([0.78, 0.52, 0.55]) * rng.uniform(0.75, 0.95),  # reddish, darker than skin
                  clothes=rng.uniform(20, 235, 3), iris=_IRIS[rng.integers(len(_IRIS))], white=(245, 245, 240),
                  pupil=(15, 12, 12), cavity=(70, 20, 28), teeth=(235, 230, 220))
    return dict(
        w=w, head=head, behind=behind, above=above, colors={k: _rgb(v) for k, v in colors.items()},
        neck=np.array([[-0.42 * w, 0.6], [0.42 * w, 0.6], [0.5 * w, 1.3], [-0.5 * w, 1.3]]),
        eye_x=rng.uniform(0.30, 0.40) * w / 0.7, eye_y=rng.uniform(-0.16, -0.04), eye_r=rng.uniform(0.085, 0.125),
        brow_gap=rng.uniform(1.4, 1.9), brow_th=rng.uniform(0.035, 0.075), brow_len=rng.uniform(1.2, 1.7),
        brow_tilt=rng.uniform(-0.04, 0.04), nose=rng.uniform(0.8, 1.2), mouth_y=rng.uniform(0.45, 0.58),
        mouth_w=rng.uniform(0.23, 0.31) * w / 0.7, mouth_curve=rng.uniform(-0.015, 0.015),
    )


def _random_background(rng: np.random.Generator, canvas: int) -> np.ndarray:
    """A flat colour, a gradient or a blurred texture, (canvas, canvas, 3) uint8."""
    base = rng.uniform(30, 230, 3).astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        img = np.broadcast_to(base, (canvas, canvas, 3)).copy()
    elif kind == 1:
        ramp = np.linspace(-1, 1, canvas, dtype=np.float32)
        ramp = ramp[:, None, None] if rng.random() < 0.5 else ramp[None, :, None]
        img = base + ramp * rng.uniform(-50, 50, 3).astype(np.float32) + np.zeros((canvas, canvas, 1), np.float32)
    else:
        cells = int(rng.integers(3, 9))
        blobs = rng.normal(0, rng.uniform(15, 45), (cells, cells, 3)).astype(np.float32)
        img = base + cv2.resize(blobs, (canvas, canvas), interpolation=cv2.INTER_CUBIC)
    return np.clip(img, 0, 255).astype(np.uint8)


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    """Per-pixel gain: global brightness times a linear gradient in a random direction, (size, size, 1)."""
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j].astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    gradient = 1 + rng.uniform(0, 0.3) * (np.cos(direction) * x + np.sin(direction) * y)
    return (rng.uniform(0.7, 1.25) * gradient)[..., None]


def _draw_face(img: np.ndarray, f: dict, pose: tuple, expr: np.ndarray, eye_open: float) -> None:
    """Draw one face in place; pose = (centre xy, angle in degrees, head half-height in px)."""
    centre, angle, r = pose
    rad = np.deg2rad(angle)
    rot = r * np.array([[np.cos(rad), -np.sin(rad)], [np.sin(rad), np.cos(rad)]])
    one, aa, col = 1 << _SHIFT, cv2.LINE_AA, f["colors"]

    def pts(p: np.ndarray) -> np.ndarray:  # face units -> fixed-point canvas coordinates
        return np.round((p @ rot.T + centre) * one).astype(np.int32).reshape(-1, 1, 2)

    def fill(p: np.ndarray, color: str) -> None:
        cv2.fillPoly(img, [pts(p)], col[color], aa, _SHIFT)

    def ellipse(cx: float, cy: float, ax: float, ay: float, color: str) -> None:
        c = pts(np.array([cx, cy]))[0, 0]
        axes = (max(round(ax * r * one), 1), max(round(ay * r * one), 1))
        cv2.ellipse(img, (int(c[0]), int(c[1])), axes, angle, 0, 360, col[color], -1, aa, _SHIFT)

    def stroke(x: np.ndarray, y: np.ndarray, color: str, width: float) -> None:
        cv2.polylines(img, [pts(np.stack([x, y], 1))], False, col[color], max(1, round(width * r)), aa, _SHIFT)

    w = f["w"]
    ellipse(0, 1.75, 2.1 * w, 0.65, "clothes")
    fill(f["neck"], "neck")
    for p in f["behind"]:
        fill(p, "hair")
    for side in (-1, 1):
        ellipse(side * 0.97 * w, 0.02, 0.12, 0.2, "ears")
    fill(f["head"], "skin")
    for p in f["above"]:
        fill(p, "hair")

    smile, brows, mouth = (float(v) for v in expr)
    ex, ey, er = f["eye_x"], f["eye_y"], f["eye_r"]
    arc = np.linspace(-1, 1, 7)
    for side in (-1, 1):
        ellipse(side * ex, ey, 1.35 * er, max(0.85 * er * eye_open, 0.01), "white")
        if eye_open > 0.5:
            ellipse(side * ex, ey, 0.62 * er, 0.62 * er, "iris")
            ellipse(side * ex, ey, 0.28 * er, 0.28 * er, "pupil")
        stroke(side * ex + 1.4 * er * arc, ey - 0.85 * er * eye_open * (1 - arc ** 2), "lids", 0.025)
        # Brows: raising lifts them (by up to 0.18 head half-heights) and arches them a little more.
        by = ey - f["brow_gap"] * er - 0.18 * brows - (0.03 + 0.03 * brows) * (1 - arc**2) + side * arc * f["brow_tilt"]
        stroke(side * ex + f["brow_len"] * er * arc, by, "brows", f["brow_th"])
    nose = f["nose"]
    stroke(np.array([0.0, 0.05 * nose, -0.06 * nose]), np.array([ey + 0.05, 0.28 * nose, 0.33 * nose]), "nose", 0.025)

    # Mouth: a smile lifts the corners and widens the mouth; opening parts the lips around the centre line.
    x = np.linspace(-1, 1, 13)
    half = f["mouth_w"] * (1 + 0.2 * smile) * (1 - 0.12 * mouth)
    centre_line = f["mouth_y"] + 0.03 * smile - (0.19 * smile + f["mouth_curve"]) * x ** 2
    bulge = (1 - x ** 2) ** 0.8
    upper, lower = centre_line - 0.04 * mouth * bulge, centre_line + 0.22 * mouth * bulge
    if mouth > 0.05:
        fill(np.stack([half * np.r_[x, x[::-1]], np.r_[upper, lower[::-1]]], 1), "cavity")
        teeth = upper + 0.3 * (lower - upper)
        fill(np.stack([half * 0.8 * np.r_[x, x[::-1]], np.r_[upper, teeth[::-1]]], 1), "teeth")
    stroke(half * x, upper, "lips", 0.04)
    stroke(half * x, lower, "lips", 0.05)


def _rgb(color) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(color, 0, 255))


# ---------------------------------------------------------------------------------------------------------------
# A demo video of a real face for run_inference.py: the portrait matplotlib ships (Grace Hopper, 512x600), moved,
# zoomed and re-lit over time. Nothing is downloaded: matplotlib is already a dependency.

# Eyes, nose and mouth of the portrait (x0, y0, x1, y1), marked by hand: the part any face crop must contain.
PHOTO_FACE_CORE = (185.0, 165.0, 350.0, 310.0)


def face_photo() -> np.ndarray:
    """The portrait matplotlib ships, (600, 512, 3) uint8 RGB."""
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        data = np.frombuffer(f.read(), np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def make_face_video(path: str | os.PathLike, *, seconds: float = 6.0, fps: float = 25.0,
                    size: tuple[int, int] = (640, 360), face_height: float = 0.45) -> np.ndarray:
    """Write an mp4 of the portrait drifting, zooming (±15 %) and brightening / darkening (±25 %) smoothly.

    face_height is the face core's height as a fraction of the frame height. Returns the face core's box in every
    frame, (n, 4) as (x0, y0, x1, y1) pixels, so that a test can check detections and crops against it.
    """
    width, height = size
    photo = face_photo()
    core = np.array(PHOTO_FACE_CORE)
    core_centre = (core[:2] + core[2:]) / 2
    base_scale = face_height * height / (core[3] - core[1])
    n = max(round(seconds * fps), 1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write an mp4 here")
    boxes = np.empty((n, 4))
    for i in range(n):
        t = i / fps
        scale = base_scale * (1 + 0.15 * np.sin(2 * np.pi * t / 5.0))
        centre = np.array([width / 2 + 0.18 * width * np.sin(2 * np.pi * t / 4.0),
                           height / 2 + 0.08 * height * np.sin(2 * np.pi * t / 3.0 + 1)])
        shift = centre - scale * core_centre
        warp = np.array([[scale, 0, shift[0]], [0, scale, shift[1]]])
        frame = cv2.warpAffine(photo, warp, (width, height), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=(96, 110, 128))
        gain = 1 + 0.25 * np.sin(2 * np.pi * t / 3.5)
        frame = np.clip(frame.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        boxes[i] = np.r_[scale * core[:2] + shift, scale * core[2:] + shift]
    writer.release()
    return boxes


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("Generate the synthetic dynamic-expression demo dataset")
    p.add_argument("--out", default="saved/data/demo", help="dataset root (frames/, train.csv, test.csv)")
    p.add_argument("--train_per_class", type=int, default=70)
    p.add_argument("--test_per_class", type=int, default=20)
    p.add_argument("--num_frames", type=int, default=16, help="frames every clip has at least")
    p.add_argument("--max_extra_frames", type=int, default=None, help="clips have up to this many more (num_frames//4)")
    p.add_argument("--size", type=int, default=64, help="frame width and height in pixels")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    marker = Path(args.out) / "meta.json"
    before = marker.stat().st_mtime_ns if marker.exists() else None
    root = make_demo_dataset(args.out, train_per_class=args.train_per_class, test_per_class=args.test_per_class,
                             num_frames=args.num_frames, size=args.size, seed=args.seed,
                             max_extra_frames=args.max_extra_frames)
    meta = json.loads(marker.read_text())
    lengths = [len(os.listdir(d)) for d in (root / "frames").iterdir()]
    how = "reused (same parameters)" if marker.stat().st_mtime_ns == before else \
        f"generated in {time.perf_counter() - start:.1f} s"
    print(f"{root}: {how}\n  {root / 'train.csv'}: {meta['clips']['train']} clips, {root / 'test.csv'}: "
          f"{meta['clips']['test']} clips, {min(lengths)}-{max(lengths)} frames of {meta['size']}x{meta['size']} px "
          f"in {root / 'frames'}\n  labels: " + ", ".join(f"{i} {name}" for i, name in enumerate(DEMO_CLASSES)))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
