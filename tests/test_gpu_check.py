"""benchmarks/gpu_check.sh end to end on the CPU (--cpu: every part at tiny size), so that the GPU check a lent GPU
runs once is known to work up to what only a GPU can show (its tests marked `gpu` are skipped here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["env", "finetune_steps", "data_path", "eval_compile", "pretrain_step"]


@pytest.mark.slow
def test_gpu_check_runs_every_part_on_the_cpu_and_writes_one_report(tmp_path):
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path), "--cpu"], cwd=ROOT, capture_output=True,
                         text=True, timeout=1200, env={**os.environ, "PYTHON": sys.executable})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.md"]  # the report only
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(report["parts"]) == PARTS
    assert {name: part["status"] for name, part in report["parts"].items()} == dict.fromkeys(PARTS, "ok"), {
        name: part.get("error") for name, part in report["parts"].items()}
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert [line.split(":")[0][3:] for line in markdown.splitlines() if line.startswith("## ")] == PARTS
    parts = {name: part["result"] for name, part in report["parts"].items()}

    assert parts["env"]["torch"] and parts["env"]["cuda_available"] is False
    rows = parts["finetune_steps"]["rows"]
    assert [(r["fusion"], r["variant"]) for r in rows] == [
        (f, v) for v in ("bf16", "fp16 + GradScaler", "bf16 channels_last") for f in ("none", "add")]
    assert all("error" not in r and r["clips_per_s"] > 0 for r in rows), rows
    assert parts["finetune_steps"]["gflops_per_step_none"] > 0
    data_rows = {r["row"]: r["rate"]["median"] for r in parts["data_path"]["rows"]}
    assert all(rate > 0 for rate in data_rows.values()), parts["data_path"]
    assert {"loader, 2 workers, --augment_on workers", "loader, 2 workers, --augment_on device"} <= set(data_rows)
    assert report["data_bound"]["loader_clips_per_s"] == round(data_rows["loader, 2 workers, --augment_on device"], 1)
    assert isinstance(report["data_bound"]["data_bound"], bool)
    compiled = {r["variant"]: r for r in parts["eval_compile"]["rows"]}
    assert set(compiled) == {"eager", "static + pad"} and compiled["eager"]["eval_graphs"] == 0
    assert compiled["static + pad"]["eval_graphs"] == 1  # the full and the padded last batch share one graph
    assert parts["pretrain_step"]["clips_per_s"] > 0 and parts["pretrain_step"]["gflops_per_step"] > 0
