"""DFEW (docs/DATASETS.md): train.csv, test.csv and val.csv (= test.csv) of each single-labeled 5-fold split.

    python -m preprocess.dfew --root /data/DFEW [--fold k] [--out saved/data/dfew/org] [--relative]

Reads <root>/EmoLabel_DataSplit/{train,test}(single-labeled)/set_<k>.csv (header; columns video_name, label 1..7)
and lists <root>/Clip/jpg_256/<NNNNN> with label - 1, in split-file order, into <out>/split0<k>/.
"""

from __future__ import annotations

if not __package__:  # run as `python preprocess/<name>.py`: the repository root goes on sys.path
    import _bootstrap  # noqa: F401

import csv
import shutil
from pathlib import Path

from preprocess.common import absolute, cli, entry_path, finish, fold_dir, parser, selected_folds, write_list

# The originals read jpg_256: the official jpg_224 folder renamed (its images are 256x256).
FRAME_DIRS = ("jpg_256", "jpg_224")


def frames_dir(root: Path) -> str:
    """Clip/jpg_256 as in the originals, else the official name of the same folder, Clip/jpg_224."""
    for name in FRAME_DIRS:
        if (root / "Clip" / name).is_dir():
            return f"Clip/{name}"
    raise FileNotFoundError(f"{root}/Clip: neither {' nor '.join(FRAME_DIRS)} exists (the face frames of DFEW)")


def read_split(path: Path, root: Path, frames: str, relative: bool) -> list[tuple[str, int]]:
    """(entry path, label 0..6) of each row of an official split file."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"video_name", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}:1: no column {', '.join(sorted(missing))} in the header")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            try:
                clip, label = int(row["video_name"]), int(row["label"])
            except (TypeError, ValueError):
                raise ValueError(f"{where}: video_name and label must be integers, got {row}") from None
            if not 1 <= label <= 7:
                raise ValueError(f"{where}: label {label} is outside DFEW's 1..7")
            rows.append((entry_path(root, f"{frames}/{clip:05d}", relative), label - 1))
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], "dfew/org", folds=5).parse_args(argv)
    root = absolute(args.root)
    frames = frames_dir(root)
    splits = root / "EmoLabel_DataSplit"
    written = []
    for k in selected_folds(args, 5):
        out = fold_dir(args.out, k)
        for part in ("train", "test"):
            rows = read_split(splits / f"{part}(single-labeled)" / f"set_{k}.csv", root, frames, args.relative)
            written.append(write_list(out / f"{part}.csv", rows))
        shutil.copyfile(out / "test.csv", out / "val.csv")  # the originals' val.csv is a copy of test.csv
        written.append(out / "val.csv")
    finish(args, written, "DFEW")


if __name__ == "__main__":
    cli(main)
