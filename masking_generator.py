"""Token masks for pretraining (1 = masked, 0 = visible), drawn from numpy's global RNG as the originals do.

`part_window` (tube-window) masking leaves the same number of visible tokens in every window of a frame and
repeats the frame's mask over time, so every LGI region holds the same number of visible tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class TubeMaskingGenerator:
    """One random frame mask with int(ratio * H * W) masked tokens, repeated over all temporal slices."""

    def __init__(self, input_size: Sequence[int], mask_ratio: float):
        self.frames, self.height, self.width = input_size
        self.num_patches_per_frame = self.height * self.width
        self.num_masks_per_frame = int(mask_ratio * self.num_patches_per_frame)

    def __repr__(self) -> str:
        return f"tube mask: {self.num_masks_per_frame * self.frames} of {self.num_patches_per_frame * self.frames}"

    def __call__(self) -> np.ndarray:
        frame = np.hstack([np.zeros(self.num_patches_per_frame - self.num_masks_per_frame),
                           np.ones(self.num_masks_per_frame)])
        np.random.shuffle(frame)
        return np.tile(frame, self.frames)


class TubeWindowMaskingGenerator:
    """Tube mask whose frame mask has the same number of visible tokens in every (wh, ww) window.

    With `apply_symmetry`, each window's visible tokens all fall in one (left or right) half; 'global' draws one
    side per clip, 'local' one per window.
    """

    def __init__(self, input_size: Sequence[int], mask_ratio: float, win_size: Sequence[int],
                 apply_symmetry: str | None = None):
        self.frames, self.height, self.width = input_size
        self.win_h, self.win_w = win_size
        if self.win_w != self.width or self.width % 2 or self.height % self.win_h:
            raise ValueError(f"part window {tuple(win_size)} must span the full token width {self.width} (even) and "
                             f"divide the token height {self.height}")
        if apply_symmetry not in (None, "global", "local"):
            raise ValueError(f"apply_symmetry must be None, 'global' or 'local', got {apply_symmetry!r}")
        if apply_symmetry and mask_ratio <= 0.5:
            raise ValueError("symmetric part windows need mask_ratio > 0.5 (all visible tokens in one half)")
        self.apply_symmetry = apply_symmetry
        self.num_windows = (self.height // self.win_h) * (self.width // self.win_w)
        self.num_masks_per_win = int(mask_ratio * self.win_h * self.win_w)
        self.num_visible_per_win = self.win_h * self.win_w - self.num_masks_per_win

    def __repr__(self) -> str:
        return (f"part-window mask: {self.num_visible_per_win} visible of {self.win_h * self.win_w} per window, "
                f"{self.num_windows} windows per frame, {self.frames} frames, symmetry {self.apply_symmetry}")

    def __call__(self) -> np.ndarray:
        if self.apply_symmetry is None:
            windows = []
            for _ in range(self.num_windows):
                window = [0] * self.num_visible_per_win + [1] * self.num_masks_per_win
                np.random.shuffle(window)
                windows += window
            return np.tile(np.array(windows), self.frames)
        return np.tile(self._symmetric_frame(), self.frames)

    def _symmetric_frame(self) -> np.ndarray:
        half = self.win_w // 2
        left_global = np.random.rand() < 0.5 if self.apply_symmetry == "global" else None
        windows = []
        for _ in range(self.num_windows):
            values = [0] * self.num_visible_per_win + [1] * (self.win_h * half - self.num_visible_per_win)
            np.random.shuffle(values)
            left = left_global if left_global is not None else np.random.rand() < 0.5
            rows = np.array(values).reshape(self.win_h, half)
            masked = np.ones_like(rows)
            windows.append(np.hstack([rows, masked] if left else [masked, rows]).ravel())
        return np.concatenate(windows)


class RandomMaskingGenerator:
    """int(ratio * N) masked tokens anywhere in the clip (no tube structure)."""

    def __init__(self, input_size: Sequence[int], mask_ratio: float):
        self.num_patches = int(np.prod(input_size))
        self.num_masks = int(mask_ratio * self.num_patches)

    def __repr__(self) -> str:
        return f"random mask: {self.num_masks} of {self.num_patches}"

    def __call__(self) -> np.ndarray:
        mask = np.hstack([np.zeros(self.num_patches - self.num_masks), np.ones(self.num_masks)])
        np.random.shuffle(mask)
        return mask


def build_masking_generator(mask_type: str, window_size: Sequence[int], mask_ratio: float,
                            part_win_size: Sequence[int] = (2, 2, 10), part_apply_symmetry: str | None = None):
    """The generator for --mask_type tube | part_window | random (part_win_size's t component is unused)."""
    if mask_type == "tube":
        return TubeMaskingGenerator(window_size, mask_ratio)
    if mask_type == "part_window":
        return TubeWindowMaskingGenerator(window_size, mask_ratio, part_win_size[1:], part_apply_symmetry)
    if mask_type == "random":
        return RandomMaskingGenerator(window_size, mask_ratio)
    raise ValueError(f"unknown mask type {mask_type!r} (tube, part_window, random)")
