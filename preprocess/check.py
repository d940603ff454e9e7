"""Check annotation lists before training: every problem, with file and line; exit status 1 if any is an error.

    python -m preprocess.check saved/data/dfew/org/split0*/*.csv [--data_root R] [--num_frames 16 --sampling_rate 4]
                               [--decode] [--workers 2] [--json]

The dataset (class names, label range, frame extension) is --data_set, or read from a saved/data/<dataset>/ path.
"""

from __future__ import annotations

if not __package__:  # run as `python preprocess/<name>.py`: the repository root goes on sys.path
    import _bootstrap  # noqa: F401

import argparse
import json
import os
import sys
from pathlib import Path

from annotations import DATASETS
from data_check import check_annotations
from preprocess.common import DATASET_DIRS


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv", nargs="+", type=Path, help="annotation lists (train.csv, test.csv, ...)")
    p.add_argument("--data_root", default=None, help="resolve relative paths against this folder (as the loader)")
    p.add_argument("--data_set", choices=list(DATASETS), help="default: from a saved/data/<dataset>/ path")
    p.add_argument("--nb_classes", type=int, help="default: the dataset's class count")
    p.add_argument("--frame_ext", help="default: the dataset's (png for MAFW, else jpg)")
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--sampling_rate", type=int, default=4)
    p.add_argument("--decode", action="store_true", help="decode every frame (slower)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def infer_dataset(paths: list[Path]) -> str | None:
    """The --data_set of lists under saved/data/<dataset>/ (None if unlabelled or not recognisable)."""
    for path in paths:
        for part in path.resolve().parts:
            if part.lower() in DATASET_DIRS:
                return DATASET_DIRS[part.lower()]
    return None


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    data_set = args.data_set or infer_dataset(args.csv)
    if data_set and not args.data_set:
        print(f"dataset {data_set}, from the lists' path (--data_set to override)", file=sys.stderr)
    info = DATASETS.get(data_set) if data_set else None
    nb_classes = args.nb_classes or (len(info.classes) if info else None)
    if nb_classes is None:
        print("no --data_set or --nb_classes: labels are checked to be integers only", file=sys.stderr)
    report = check_annotations(
        args.csv, nb_classes, args.data_root, class_names=info.classes if info else None,
        frame_ext=args.frame_ext or (info.frame_ext if info else "jpg"), num_frames=args.num_frames,
        sampling_rate=args.sampling_rate, decode=args.decode, workers=args.workers, progress=sys.stderr.isatty(),
        data_set=data_set)
    print(json.dumps(report.to_json(), indent=1) if args.json else report.format())
    sys.exit(1 if report.errors else 0)


if __name__ == "__main__":
    main()
