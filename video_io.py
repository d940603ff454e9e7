"""Reading an entry's frames: a folder of frame files, one image, or a video file; decoding and resizing."""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from annotations import Annotation

# OpenCV's thread pool does not survive fork: a DataLoader worker forked while it is live can hang in its first
# OpenCV call. Frames are small and the loader is parallel across workers anyway.
cv2.setNumThreads(0)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")


class FrameSource:
    """The frames of one entry: a folder's sorted frame files, one image (a 1-frame clip) or a video file."""

    def __init__(self, entry: Annotation, ext: str):
        self.video, self.source = None, entry.source
        if os.path.isdir(entry.path):
            # Lexicographic order, as the original's sorted glob (which skips hidden files): 10.jpg before 2.jpg.
            names = sorted(n for n in os.listdir(entry.path) if n.endswith("." + ext) and not n.startswith("."))
            if not names:
                raise ValueError(f"{entry.source}: {entry.path}: no *.{ext} frames in the folder")
            self.files = [os.path.join(entry.path, n) for n in names]
        elif os.path.isfile(entry.path):
            self.files = [entry.path]
            if entry.path.lower().endswith(VIDEO_EXTENSIONS):
                import decord  # only video entries need it

                try:
                    self.video = decord.VideoReader(entry.path, num_threads=1)
                except Exception as err:
                    raise OSError(f"{entry.source}: {entry.path}: cannot read the video: {err}") from err
        else:
            raise FileNotFoundError(f"{entry.source}: {entry.path}: no such file or folder")
        self.count = len(self.video) if self.video is not None else len(self.files)
        if self.count == 0:
            raise ValueError(f"{entry.source}: {entry.path}: the video has no frames")

    def video_frames(self, indices: np.ndarray) -> np.ndarray:
        """(len(indices), H, W, 3) uint8 RGB frames of the video."""
        try:
            return self.video.get_batch(indices.tolist()).asnumpy()
        except Exception as err:
            raise OSError(f"{self.source}: {self.files[0]}: cannot decode frames {indices.tolist()}: {err}") from err

    def pil(self, indices: np.ndarray, size: int) -> np.ndarray:
        """(len(indices), size, size, 3) uint8: PIL decode, RGB, PIL bilinear resize to a square (the original)."""
        unique, inverse = np.unique(indices, return_inverse=True)
        if self.video is not None:
            images = [Image.fromarray(f) for f in self.video_frames(unique)]
        else:
            images = []
            for i in unique:
                try:
                    with Image.open(self.files[i]) as im:
                        images.append(im.convert("RGB"))
                except Exception as err:
                    raise OSError(f"{self.source}: {self.files[i]}: cannot read the image: {err}") from err
        return np.stack([np.asarray(im.resize((size, size), Image.BILINEAR)) for im in images])[inverse]

    def resized(self, indices: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """For training: the distinct frames of `indices` as (U, size, size, 3) uint8, and the position of each index
        among them. OpenCV decodes (libjpeg-turbo, as PIL); torch's antialiased bilinear resize is PIL's filter to
        within 2 levels, batched."""
        unique, inverse = np.unique(indices, return_inverse=True)
        if self.video is not None:
            return resize_frames(torch.from_numpy(self.video_frames(unique)), size).numpy(), inverse
        decoded = [torch.from_numpy(f) for f in self.rgb(unique)]
        if len({d.shape for d in decoded}) == 1:
            frames = resize_frames(torch.stack(decoded), size)
        else:
            frames = torch.cat([resize_frames(d[None], size) for d in decoded])
        return frames.numpy(), inverse

    def rgb(self, indices: np.ndarray) -> list[np.ndarray]:
        """The frames at `indices` as (H, W, 3) uint8 RGB arrays at their stored size (OpenCV / decord decode)."""
        if self.video is not None:
            return list(self.video_frames(indices))
        decoded = []
        for i in indices:
            # EXIF orientation ignored, as PIL does.
            image = cv2.imread(self.files[i], cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            if image is None:
                raise OSError(f"{self.source}: {self.files[i]}: cannot read the image")
            decoded.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        return decoded


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8 by torch's antialiased bilinear (its fast channels-last path)."""
    if frames.shape[1:3] == (size, size):
        return frames
    resized = F.interpolate(frames.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False)
    return resized.permute(0, 2, 3, 1).contiguous()  # a no-op: the output is channels-last
