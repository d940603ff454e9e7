"""eNTERFACE'05 (docs/DATASETS.md): train.csv and test.csv of the 5 subject-independent folds of the originals.

    python -m preprocess.enterface --root /data/eNTERFACE [--fold k] [--out saved/data/enterface] [--relative]

Lists every face-frame folder <root>/face_aligned/subject_<s>/<emotion>/sentence_<j>/<clip> (label from the
emotion folder, subject from the subject folder: clip names are irregular, e.g. subject_11 holds s12_* clips),
sorted; fold k tests subjects 1-10 (there is no subject 6), 11-19, 20-28, 29-37, 38-44.
"""

from __future__ import annotations

if not __package__:  # run as `python preprocess/<name>.py`: the repository root goes on sys.path
    import _bootstrap  # noqa: F401

import re
from pathlib import Path

from datasets import DATASETS
from preprocess.common import absolute, cli, entry_path, finish, label_of, parser, report_skipped, write_group_folds

TEST_SUBJECTS = [range(1, 11), range(11, 20), range(20, 29), range(29, 38), range(38, 45)]
SUBJECT = re.compile(r"^subject_(\d+)$")


def scan(root: Path, relative: bool) -> tuple[list[tuple[str, int, int]], list[str]]:
    """(entry path, label, subject) of every clip folder, and the folders that do not follow the layout."""
    base = root / "face_aligned"
    clips, skipped = [], []
    for folder in sorted(p for p in base.glob("*/*/*/*") if p.is_dir()):
        rel = folder.relative_to(base)
        subject, emotion, sentence = rel.parts[:3]
        match = SUBJECT.match(subject)
        if not match or not sentence.startswith("sentence_"):
            skipped.append(rel.as_posix())
            continue
        label = label_of(emotion, DATASETS["ENTERFACE"].classes, str(folder))
        clips.append((entry_path(root, f"face_aligned/{rel.as_posix()}", relative), label, int(match[1])))
    return clips, skipped


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], "enterface", folds=len(TEST_SUBJECTS)).parse_args(argv)
    root = absolute(args.root)
    clips, skipped = scan(root, args.relative)
    report_skipped(skipped, "not subject_<s>/<emotion>/sentence_<j>/<clip>")
    finish(args, write_group_folds(args, clips, TEST_SUBJECTS), "ENTERFACE")


if __name__ == "__main__":
    cli(main)
