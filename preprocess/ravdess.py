"""RAVDESS (docs/DATASETS.md): train.csv and test.csv of the 6 actor-independent folds of the originals' lists.

    python -m preprocess.ravdess --root /data/RAVDESS [--fold k] [--out saved/data/ravdess] [--relative]

Lists the face-frame folders <root>/face_aligned/Actor_<AA>/<MM-VV-EE-II-SS-RR-AA> of the video-only speech clips
(modality 02, vocal channel 01: the originals' 1,440), label = emotion code EE - 1, sorted; fold k tests actors
4k-3 .. 4k.
"""

from __future__ import annotations

if not __package__:  # run as `python preprocess/<name>.py`: the repository root goes on sys.path
    import _bootstrap  # noqa: F401

import re
from pathlib import Path

from preprocess.common import absolute, cli, entry_path, finish, parser, report_skipped, write_group_folds

TEST_ACTORS = [range(4 * k + 1, 4 * k + 5) for k in range(6)]
NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-\d{2}-\d{2}-\d{2}-(\d{2})$")


def scan(root: Path, relative: bool) -> tuple[list[tuple[str, int, int]], list[str]]:
    """(entry path, label, actor) of every video-only speech clip, and the folders left out."""
    base = root / "face_aligned"
    clips, skipped = [], []
    for folder in sorted(p for p in base.glob("Actor_*/*") if p.is_dir()):
        match = NAME.match(folder.name)
        # The originals' lists hold no audio-video (01) or audio-only (03) modality and no song (vocal channel 02).
        if not match or match[1] != "02" or match[2] != "01" or not 1 <= int(match[3]) <= 8:
            skipped.append(folder.relative_to(base).as_posix())
            continue
        rel = folder.relative_to(root).as_posix()
        clips.append((entry_path(root, rel, relative), int(match[3]) - 1, int(match[4])))
    return clips, skipped


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], "ravdess", folds=len(TEST_ACTORS)).parse_args(argv)
    root = absolute(args.root)
    clips, skipped = scan(root, args.relative)
    report_skipped(skipped, "not video-only speech MM-VV-EE-II-SS-RR-AA, MM 02, VV 01, EE 01..08")
    finish(args, write_group_folds(args, clips, TEST_ACTORS), "RAVDESS")


if __name__ == "__main__":
    cli(main)
