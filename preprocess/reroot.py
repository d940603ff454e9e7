"""Rewrite the root of the paths in existing lists (e.g. the originals' released CSVs) to where the data lives here.

    python -m preprocess.reroot saved/data/dfew/org/split0*/*.csv --new /data/DFEW/Clip/jpg_256 --in_place
    python -m preprocess.reroot released/*.csv --old /mnt/data1/brain/AC/Dataset/FERV39k --new /data/FERV39k --out DIR

--old defaults to the folder every path lies under (printed); --relative writes the paths relative to it instead
(the loader then needs --data_root). Lines keep their order and labels.
"""

from __future__ import annotations

if not __package__:  # run as `python preprocess/<name>.py`: the repository root goes on sys.path
    import _bootstrap  # noqa: F401

import argparse
import os
from pathlib import Path

from annotations import parse_line


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv", nargs="+", type=Path)
    p.add_argument("--old", help="the prefix to replace (default: the common folder of all paths)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--new", help="the folder that replaces --old")
    target.add_argument("--relative", action="store_true", help="write paths relative to --old")
    output = p.add_mutually_exclusive_group(required=True)
    output.add_argument("--out", type=Path, help="write here, keeping the lists' relative layout")
    output.add_argument("--in_place", action="store_true", help="rewrite the lists themselves")
    return p


def read_paths(csv: Path) -> list[tuple[str, str]]:
    """(path, label text) of every non-blank line; ValueError naming file:line for a malformed one."""
    rows = []
    for number, line in enumerate(csv.read_text(encoding="utf-8").splitlines(), 1):
        if line:
            try:
                path, _ = parse_line(line, None)
            except ValueError as err:
                raise ValueError(f"{csv}:{number}: {err}") from None
            rows.append((path, line.split(" ")[1]))
    return rows


def reroot(path: str, old: str, new: str | None) -> str:
    """path with old replaced by new (None: relative to old); ValueError if it does not lie under old."""
    rel = os.path.relpath(path, old)
    if rel == ".." or rel.startswith("../") or os.path.isabs(rel):
        raise ValueError(f"{path} is not under {old}")
    return Path(rel).as_posix() if new is None else Path(new, rel).as_posix()


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    lists = {csv: read_paths(csv) for csv in args.csv}
    old = args.old or os.path.commonpath([os.path.dirname(p) for rows in lists.values() for p, _ in rows])
    print(f"old root: {old}")
    base = Path(os.path.commonpath([csv.resolve().parent for csv in lists]))
    for csv, rows in lists.items():
        lines = []
        for number, (path, label) in enumerate(rows, 1):
            try:
                lines.append(f"{reroot(path, old, None if args.relative else args.new)} {label}\n")
            except ValueError as err:
                raise SystemExit(f"{csv}:{number}: {err}") from None
        target = csv if args.in_place else args.out / csv.resolve().relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(lines), encoding="utf-8")
        print(f"wrote {target}: {len(lines)} entries")


if __name__ == "__main__":
    main()
