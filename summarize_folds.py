"""The k-fold table the papers report: UAR and WAR of each fold's test, and their mean ± std, as Markdown and CSV.

    python summarize_folds.py RUN_DIR [RUN_DIR ...] --out saved/model/finetuning/dfew/.../summary

Each RUN_DIR is a fold's --output_dir holding the metrics.json of its final test (the DFEW / MAFW launchers call
this after their folds). The std is the sample standard deviation over folds (ddof 1; 0 for one fold).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np


def fold_name(run_dir: Path) -> str:
    """'fold 3' for the launchers' eval_split03_... folders, else the folder's name."""
    match = re.search(r"split0*(\d+)", run_dir.name)
    return f"fold {match.group(1)}" if match else run_dir.name


def read_folds(run_dirs: list[str | Path]) -> list[dict]:
    """One row per run: fold, UAR and WAR in percent, number of test clips, and the model tested."""
    rows = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no metrics.json (has the fold's final test run?)")
        metrics = json.loads(path.read_text())
        rows.append({"fold": fold_name(run_dir), "uar": 100 * metrics["uar"], "war": 100 * metrics["war"],
                     "clips": metrics["num_clips"], "epoch": metrics.get("epoch"), "run": str(run_dir)})
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def to_markdown(rows: list[dict]) -> str:
    lines = ["| fold | UAR (%) | WAR (%) | test clips |", "|---|---|---|---|"]
    lines += [f"| {r['fold']} | {r['uar']:.2f} | {r['war']:.2f} | {r['clips']} |" for r in rows]
    (uar, uar_std), (war, war_std) = mean_std([r["uar"] for r in rows]), mean_std([r["war"] for r in rows])
    lines.append(f"| mean ± std ({len(rows)} folds) | {uar:.2f} ± {uar_std:.2f} | {war:.2f} ± {war_std:.2f} | |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fold", "uar", "war", "test_clips", "epoch", "run"])
        for r in rows:
            writer.writerow([r["fold"], f"{r['uar']:.4f}", f"{r['war']:.4f}", r["clips"], r["epoch"], r["run"]])
        (uar, uar_std), (war, war_std) = mean_std([r["uar"] for r in rows]), mean_std([r["war"] for r in rows])
        writer.writerow(["mean", f"{uar:.4f}", f"{war:.4f}", "", "", ""])
        writer.writerow(["std", f"{uar_std:.4f}", f"{war_std:.4f}", "", "", ""])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", help="the folds' output folders (with metrics.json)")
    parser.add_argument("--out", default=None, help="write OUT.md and OUT.csv (default: summary.* beside the runs)")
    args = parser.parse_args(argv)
    rows = read_folds(args.run_dirs)
    out = Path(args.out) if args.out else Path(args.run_dirs[0]).parent / "summary"
    table = to_markdown(rows)
    out.with_name(out.name + ".md").write_text(table)
    write_csv(rows, out.with_name(out.name + ".csv"))
    print(table + f"written to {out}.md and {out}.csv")
    return table


if __name__ == "__main__":
    main()
