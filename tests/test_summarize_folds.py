"""summarize_folds.py: the per-fold UAR / WAR table and its mean ± std."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import summarize_folds

# MAE-DFER's DFEW folds 1-5 (the per-fold logs of MAE-DFER's README): their mean is the paper's 63.41 / 74.43.
DFEW_UAR = [62.59, 61.96, 64.00, 63.07, 65.42]
DFEW_WAR = [74.88, 72.49, 74.91, 74.05, 75.81]


def test_fold_table_reproduces_the_papers_dfew_mean(tmp_path):
    runs = []
    for fold, (uar, war) in enumerate(zip(DFEW_UAR, DFEW_WAR), 1):
        run = tmp_path / f"eval_split0{fold}_lr_1e-3_epoch_100"
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({"uar": uar / 100, "war": war / 100, "num_clips": 2341,
                                                      "epoch": 99}))
        runs.append(str(run))
    table = summarize_folds.main([*runs, "--out", str(tmp_path / "summary")])
    assert "| fold 3 | 64.00 | 74.91 | 2341 |" in table
    assert f"| mean ± std (5 folds) | 63.41 ± {np.std(DFEW_UAR, ddof=1):.2f} | 74.43 ± " in table
    assert (tmp_path / "summary.md").read_text() == table
    rows = list(csv.reader((tmp_path / "summary.csv").read_text().splitlines()))
    assert rows[0][:3] == ["fold", "uar", "war"] and rows[1][:3] == ["fold 1", "62.5900", "74.8800"]
    assert rows[-2][:3] == ["mean", "63.4080", "74.4280"] and rows[-1][0] == "std"


def test_a_fold_without_metrics_is_named(tmp_path):
    (tmp_path / "eval_split02").mkdir()
    with pytest.raises(FileNotFoundError, match=r"eval_split02/metrics\.json: no metrics\.json"):
        summarize_folds.read_folds([tmp_path / "eval_split02"])
