"""What every preparation script shares: arguments, output locations, writing lists, folds and the final check.

Lists are written in the originals' format (docs/DATASETS.md): `<path> <label>`, one space, no header, LF, one
line per clip in the order of the official split file. Paths are absolute (as the originals') or, with
--relative, relative to --root (give the loader --data_root ROOT).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path

from annotations import DATASETS
from data_check import check_annotations

SAVED = Path(__file__).resolve().parent.parent / "saved" / "data"
# Output folder name under saved/data (the originals') -> --data_set name; None: unlabelled (pretraining).
DATASET_DIRS: dict[str, str | None] = {"ferv39k": "FERV39k", "dfew": "DFEW", "mafw": "MAFW", "crema-d": "CREMA-D",
                                       "enterface": "ENTERFACE", "ravdess": "RAVDESS", "demo": "DEMO",
                                       "voxceleb2": None}


def parser(description: str, out: str, folds: int = 0, sampling_rate: int = 4) -> argparse.ArgumentParser:
    """The common flags: --root, --out (default saved/data/<out>), --relative, --fold k (if folds), check flags."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--root", required=True, type=Path, help="the dataset as distributed (layouts: docs/DATASETS.md)")
    p.add_argument("--out", type=Path, default=SAVED / out, help="output folder (default: %(default)s)")
    p.add_argument("--relative", action="store_true", help="write paths relative to --root (loader: --data_root)")
    if folds:
        p.add_argument("--fold", type=int, choices=range(1, folds + 1), help="only this fold (default: all)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the check")
    p.add_argument("--no_check", action="store_true", help="do not check the written lists")
    p.add_argument("--num_frames", type=int, default=16, help="clip length the check measures against")
    p.add_argument("--sampling_rate", type=int, default=sampling_rate, help="as fine-tuning's (check only)")
    return p


def cli(main: Callable[[], None]) -> None:
    """Run a script's main: a bad tree or split file ends it with its message (file and line), not a traceback."""
    try:
        main()
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")


def absolute(root: Path) -> Path:
    """--root made absolute without resolving symlinks (the written paths keep the user's spelling)."""
    return Path(os.path.abspath(root))


def entry_path(root: Path, relative_path: str, relative: bool) -> str:
    """What a list line holds for the clip at root/relative_path."""
    return relative_path if relative else (root / relative_path).as_posix()


def label_of(name: str, classes: Sequence[str], where: str) -> int:
    """Index of a class name in the dataset's label order; ValueError naming where it was read otherwise."""
    if name not in classes:
        raise ValueError(f"{where}: unknown class {name!r}; expected one of {', '.join(classes)}")
    return classes.index(name)


def read_named_split(path: Path, classes: Sequence[str], expected: str) -> list[tuple[str, int]]:
    """(clip name, label) of each `<clip> <class name>` line of an official split file (blank lines skipped)."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected '{expected}', got {line!r}")
        rows.append((parts[0], label_of(parts[1], classes, f"{path}:{number}")))
    return rows


def write_list(path: Path, rows: Iterable[tuple[str, int]]) -> Path:
    """Write `<path> <label>` lines. A repeated path is written once, as the originals' dict did (but said here);
    the same path with two labels, or a path the format cannot hold (a space), is an error."""
    labels: dict[str, int] = {}
    total = 0
    for clip, label in rows:
        total += 1
        if " " in clip or "\n" in clip:
            raise ValueError(f"{clip!r}: paths with spaces cannot be written in the space-separated format")
        if labels.setdefault(clip, label) != label:
            raise ValueError(f"{clip}: listed with labels {labels[clip]} and {label} in the split files")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{clip} {label}\n" for clip, label in labels.items()), encoding="utf-8")
    note = f" ({total - len(labels)} repeated lines of the split file written once)" if total > len(labels) else ""
    print(f"wrote {path}: {len(labels)} entries{note}")
    return path


def selected_folds(args: argparse.Namespace, count: int) -> list[int]:
    """--fold k, or all folds 1..count."""
    return [args.fold] if args.fold else list(range(1, count + 1))


def fold_dir(out: Path, fold: int) -> Path:
    return out / f"split{fold:02d}"


def write_group_folds(args: argparse.Namespace, clips: Sequence[tuple[str, int, int]],
                      test_groups: Sequence[Collection[int]]) -> list[Path]:
    """Subject-independent folds: fold k tests the clips (path, label, group) whose group is in test_groups[k-1]
    and trains on all the others."""
    if not clips:
        raise ValueError(f"{args.root}: no clip folders found (--root is the folder that holds face_aligned/)")
    written = []
    for k in selected_folds(args, len(test_groups)):
        test = test_groups[k - 1]
        written.append(write_list(fold_dir(args.out, k) / "train.csv", ((p, y) for p, y, g in clips if g not in test)))
        written.append(write_list(fold_dir(args.out, k) / "test.csv", ((p, y) for p, y, g in clips if g in test)))
    return written


def finish(args: argparse.Namespace, written: list[Path], data_set: str | None, deep: bool = True) -> None:
    """Check what was written (unless --no_check), print the report, exit 1 if it found an error."""
    if args.no_check:
        return
    info = DATASETS[data_set] if data_set else None
    report = check_annotations(
        written, len(info.classes) if info else None, str(absolute(args.root)) if args.relative else None,
        class_names=info.classes if info else None, frame_ext=info.frame_ext if info else "jpg",
        num_frames=args.num_frames, sampling_rate=args.sampling_rate, deep=deep, workers=args.workers,
        progress=sys.stderr.isatty(), data_set=data_set)
    print(report.format())
    if report.errors:
        sys.exit(1)


def report_skipped(skipped: Sequence[str], why: str) -> None:
    """Say which folders a scan left out, and why (never silently)."""
    if skipped:
        shown = ", ".join(skipped[:5]) + (f", … ({len(skipped) - 5} more)" if len(skipped) > 5 else "")
        print(f"skipped {len(skipped)} folders ({why}): {shown}")
