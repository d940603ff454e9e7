"""CREMA-D (docs/DATASETS.md): train.csv and test.csv of the 5 actor-independent folds of the originals' lists.

    python -m preprocess.crema_d --root /data/CREMA-D [--fold k] [--out saved/data/crema-d] [--relative]

Lists every face-frame folder <root>/face_aligned/<Actor>_<Sentence>_<EMO>_<Level> (label from EMO), sorted by
name; fold k tests actors 1001-1018, 1019-1036, 1037-1054, 1055-1072, 1073-1091 and trains on the others.
"""

from __future__ import annotations

if not __package__:  # run as `python preprocess/<name>.py`: the repository root goes on sys.path
    import _bootstrap  # noqa: F401

import re
from pathlib import Path

from datasets import DATASETS
from preprocess.common import absolute, cli, entry_path, finish, label_of, parser, report_skipped, write_group_folds

TEST_ACTORS = [range(1001, 1019), range(1019, 1037), range(1037, 1055), range(1055, 1073), range(1073, 1092)]
NAME = re.compile(r"^(\d{4})_[A-Z0-9]+_([A-Z]{3})_[A-Z0-9]+$")


def scan(root: Path, relative: bool) -> tuple[list[tuple[str, int, int]], list[str]]:
    """(entry path, label, actor) of every clip folder, and the folder names that are not clips."""
    clips, skipped = [], []
    for folder in sorted(p for p in (root / "face_aligned").iterdir() if p.is_dir()):
        match = NAME.match(folder.name)
        if not match:
            skipped.append(folder.name)
            continue
        label = label_of(match[2], DATASETS["CREMA-D"].classes, str(folder))
        clips.append((entry_path(root, f"face_aligned/{folder.name}", relative), label, int(match[1])))
    return clips, skipped


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], "crema-d", folds=len(TEST_ACTORS)).parse_args(argv)
    root = absolute(args.root)
    clips, skipped = scan(root, args.relative)
    report_skipped(skipped, "not <Actor>_<Sentence>_<EMO>_<Level>")
    finish(args, write_group_folds(args, clips, TEST_ACTORS), "CREMA-D")


if __name__ == "__main__":
    cli(main)
