"""The dataset launchers are thin torchrun calls that run against a correctly laid out (tiny, fake) dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = {
    "FERV39k": ("scripts/ferv39k/finetune_local_global_attn_depth16_region_size2510_with_diff_target_164.sh", 7),
    "DFEW": ("scripts/dfew/finetune_local_global_attn_depth16_region_size2510_with_diff_target_164.sh", 7),
    "MAFW": ("scripts/mafw/finetune_local_global_attn_depth16_region_size2510_with_diff_target_164.sh", 11),
}


def fake_dataset(root: Path, num_classes: int, ext: str, files: tuple[str, ...]) -> None:
    """One tiny clip per class and split, frame folders with relative paths, in the real CSV format."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        lines = []
        for label in range(num_classes):
            clip = root / "clips" / f"{split}{label:02d}"
            clip.mkdir(parents=True)
            for t in range(18):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(clip / f"{t:05d}.{ext}")
            lines.append(f"clips/{split}{label:02d} {label}\n")
        for name in files:
            if name.startswith(split) or (split == "test" and name == "val.csv"):
                (root / name).write_text("".join(lines))


@pytest.mark.slow
@pytest.mark.parametrize("data_set", list(LAUNCHERS))
def test_launcher_runs_the_original_recipe_on_a_laid_out_dataset(data_set, tmp_path):
    script, num_classes = LAUNCHERS[data_set]
    data = tmp_path / "data"
    files = ("train.csv", "val.csv", "test.csv") if data_set == "DFEW" else ("train.csv", "test.csv")
    fake_dataset(data, num_classes, "png" if data_set == "MAFW" else "jpg", files)
    env = {**os.environ, "NPROC_PER_NODE": "1", "FINETUNE": "", "OUTPUT_ROOT": str(tmp_path / "out"),
           "OUTPUT_DIR": str(tmp_path / "out" / "ferv39k"), "DATA_ROOT": str(data), "SPLITS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # The recipe's flags stay as written; the extra ones only shrink the run (later flags win in argparse).
    run = subprocess.run(["bash", str(ROOT / script), "--data_path", str(data), "--depth", "1", "--epochs", "1",
                          "--batch_size", "2", "--num_workers", "0", "--device", "cpu"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (metrics_file,) = (tmp_path / "out").rglob("metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["num_clips"] == num_classes and metrics["num_views"] == 4 * num_classes
    assert len(metrics["class_names"]) == num_classes
    log = (metrics_file.parent / "log.txt").read_text()
    assert "Evaluation on the test set using last epoch model:" in log
    assert (metrics_file.parent / "nohup.out").is_file()


@pytest.mark.slow
def test_k_fold_launcher_runs_the_folds_skips_finished_ones_and_writes_the_table(tmp_path):
    script, num_classes = LAUNCHERS["DFEW"]
    data = tmp_path / "data"
    fake_dataset(data, num_classes, "jpg", ("train.csv", "val.csv", "test.csv"))
    env = {**os.environ, "NPROC_PER_NODE": "1", "FINETUNE": "", "OUTPUT_ROOT": str(tmp_path / "out"),
           "DATA_ROOT": str(data), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = ["bash", str(ROOT / script), "--folds", "1", "2", "--data_path", str(data), "--depth", "1",
               "--epochs", "1", "--batch_size", "2", "--num_workers", "0", "--device", "cpu",
               "--disable_eval_during_finetuning"]
    run = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    runs = sorted((tmp_path / "out").rglob("metrics.json"))
    assert [p.parent.name.split("_")[1] for p in runs] == ["split01", "split02"]
    (summary,) = (tmp_path / "out").rglob("summary_*.md")
    assert summary.name == "summary_eval_lr_1e-3_epoch_100_size160_sr4_classify_token_type_region_server164.md"
    assert "| fold 1 |" in summary.read_text() and "mean ± std (2 folds)" in summary.read_text()
    again = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "fold 1: finished" in again.stdout and "fold 2: finished" in again.stdout
    assert "epoch 0" not in again.stderr  # nothing trained again
