"""FERV39k (docs/DATASETS.md): train.csv and test.csv of the All-scenes setup from the official split files.

    python -m preprocess.ferv39k --root /data/FERV39k [--out saved/data/ferv39k/all_scenes] [--relative]

Reads <root>/4_setups/All_scenes/{train_All,test_All}.csv (`<Scene>/<Emotion>/<NNNN> <Emotion>`, space-separated)
and lists <root>/2_ClipsforFaceCrop/<Scene>/<Emotion>/<NNNN>, in split-file order. No val.csv: validation reads
test.csv, as in the originals.
"""

from __future__ import annotations

if not __package__:  # run as `python preprocess/<name>.py`: the repository root goes on sys.path
    import _bootstrap  # noqa: F401

from pathlib import Path

from datasets import DATASETS
from preprocess.common import absolute, cli, entry_path, finish, parser, read_named_split, write_list

SPLITS = {"train.csv": "train_All.csv", "test.csv": "test_All.csv"}


def read_split(path: Path, root: Path, relative: bool) -> list[tuple[str, int]]:
    """(entry path, label) of each line of an official split file."""
    rows = read_named_split(path, DATASETS["FERV39k"].classes, "<Scene>/<Emotion>/<NNNN> <Emotion>")
    return [(entry_path(root, f"2_ClipsforFaceCrop/{clip}", relative), label) for clip, label in rows]


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], "ferv39k/all_scenes", sampling_rate=1).parse_args(argv)
    root = absolute(args.root)
    written = [write_list(args.out / name, read_split(root / "4_setups" / "All_scenes" / split, root, args.relative))
               for name, split in SPLITS.items()]
    finish(args, written, "FERV39k")


if __name__ == "__main__":
    cli(main)
