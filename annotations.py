"""The dataset table (class names in label order, frame extension, validation list) and the annotation CSVs.

An annotation file lists `<path> <label>` lines (one space, no header), as the original's lists do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class DatasetInfo:
    classes: tuple[str, ...]  # class names in label order
    frame_ext: str  # extension of the frame files inside a clip folder
    val_file: str  # what the validation loader reads: test.csv except for DFEW (whose val.csv is a copy of it)


_SEVEN = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
# The label orders of the originals' annotation lists (docs/DATASETS.md); the only place they live.
DATASETS: dict[str, DatasetInfo] = {
    "FERV39k": DatasetInfo(_SEVEN, "jpg", "test.csv"),
    "DFEW": DatasetInfo(_SEVEN, "jpg", "val.csv"),
    "MAFW": DatasetInfo(("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt",
                         "anxiety", "helplessness", "disappointment"), "png", "test.csv"),
    "RAVDESS": DatasetInfo(("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"), "jpg",
                           "test.csv"),
    "CREMA-D": DatasetInfo(("ANG", "DIS", "FEA", "HAP", "NEU", "SAD"), "jpg", "test.csv"),
    "ENTERFACE": DatasetInfo(("anger", "disgust", "fear", "happiness", "sadness", "surprise"), "jpg", "test.csv"),
    # The built-in synthetic demo (demo_data.py draws what each class looks like).
    "DEMO": DatasetInfo(("smile forming", "smile fading", "brows raising", "mouth opening", "neutral"), "jpg",
                        "test.csv"),
}


class Annotation(NamedTuple):
    clip_id: str  # the CSV path exactly as written: the id carried to every output
    path: str  # what is read: clip_id resolved against data_root
    label: int
    source: str  # "<csv>:<line>", for error messages


def parse_line(line: str, nb_classes: int | None) -> tuple[str, int]:
    """(path, label) of one annotation line; ValueError says what is wrong. nb_classes None: any integer label."""
    parts = line.split(" ")
    if len(parts) != 2 or not parts[0]:
        raise ValueError(f"expected '<path> <label>' separated by one space, got {line!r}")
    clip_id, label_text = parts
    try:
        label = int(label_text)
    except ValueError:
        raise ValueError(f"label {label_text!r} is not an integer") from None
    if nb_classes is not None and not 0 <= label < nb_classes:
        raise ValueError(f"label {label} is outside 0..{nb_classes - 1}")
    return clip_id, label


def read_annotations(csv_path: str | os.PathLike, nb_classes: int | None,
                     data_root: str | None = None) -> list[Annotation]:
    """Parse `<path> <label>` lines (one space, no header); relative paths are resolved against data_root.

    Raises ValueError naming `file:line` for a malformed line, a non-integer label or one outside 0..nb_classes-1
    (any integer when nb_classes is None: the pretraining lists' dummy labels).
    """
    with open(csv_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        if not line:  # blank lines are skipped, as pandas does
            continue
        where = f"{csv_path}:{number}"
        try:
            clip_id, label = parse_line(line, nb_classes)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        path = os.path.join(data_root, clip_id) if data_root is not None else clip_id
        entries.append(Annotation(clip_id, path, label, where))
    if not entries:
        raise ValueError(f"{csv_path}: no clips")
    return entries
