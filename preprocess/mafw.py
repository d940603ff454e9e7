"""MAFW (docs/DATASETS.md): train.csv and test.csv of each single-label 5-fold split (no captions).

    python -m preprocess.mafw --root /data/MAFW [--fold k] [--out saved/data/mafw/single] [--relative]

Reads <root>/split/single/no_caption/set_<k>/{train,test}.txt (`<NNNNN>.mp4 <emotion>`) and lists the PNG face
frames <root>/data/frames/<NNNNN>, in split-file order, into <out>/split0<k>/.
"""

from __future__ import annotations

if not __package__:  # run as `python preprocess/<name>.py`: the repository root goes on sys.path
    import _bootstrap  # noqa: F401

from pathlib import Path

from datasets import DATASETS
from preprocess.common import (
    absolute,
    cli,
    entry_path,
    finish,
    fold_dir,
    parser,
    read_named_split,
    selected_folds,
    write_list,
)


def read_split(path: Path, root: Path, relative: bool) -> list[tuple[str, int]]:
    """(entry path, label) of each line of an official split file."""
    rows = read_named_split(path, DATASETS["MAFW"].classes, "<NNNNN>.mp4 <emotion>")
    return [(entry_path(root, f"data/frames/{name.split('.')[0]}", relative), label) for name, label in rows]


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], "mafw/single", folds=5).parse_args(argv)
    root = absolute(args.root)
    written = []
    for k in selected_folds(args, 5):
        split = root / "split" / "single" / "no_caption" / f"set_{k}"
        for part in ("train", "test"):
            written.append(write_list(fold_dir(args.out, k) / f"{part}.csv",
                                      read_split(split / f"{part}.txt", root, args.relative)))
    finish(args, written, "MAFW")


if __name__ == "__main__":
    cli(main)
