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


# MAE-DFER-CA's FERV39k variants (its README table, UAR / WAR) as the launcher's one-variable changes, with the
# trainable parameter counts of their logs (MAE-DFER-CA `saved/` logs); FUSION=none is plain MAE-DFER.
CA_VARIANTS = {
    "add": ({}, "add", [2, 5, 10], 114_324_610, "_fusion_add"),
    "add, regions 4x5x10": ({"LG_REGION_SIZE": "4 5 10"}, "add", [4, 5, 10], 114_322_562,
                            "_fusion_add_region_size4510"),
    "add(pos)": ({"FUSION": "pos"}, "pos", [2, 5, 10], 118_588_040, "_fusion_pos"),
    "cat": ({"FUSION": "cat"}, "cat", [2, 5, 10], 114_328_194, "_fusion_cat"),
    "MAE-DFER": ({"FUSION": "none"}, "none", [2, 5, 10], 84_878_343, ""),
}


def launcher_command_line(tmp_path: Path, variables: dict) -> list[str]:
    """The flags the FERV39k launcher gives run_class_finetuning.py, caught by a stand-in torchrun."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "torchrun").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n')
    (bin_dir / "torchrun").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("FUSION", "LG_REGION_SIZE", "OUTPUT_DIR")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", ARGS_FILE=str(tmp_path / "args"),
               OUTPUT_ROOT=str(tmp_path / "out"), **variables)
    run = subprocess.run(["bash", str(ROOT / LAUNCHERS["FERV39k"][0])], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    argv = (tmp_path / "args").read_text().splitlines()
    return argv[argv.index("run_class_finetuning.py") + 1:]


@pytest.mark.parametrize("variant", list(CA_VARIANTS))
def test_each_ca_variant_of_the_ferv39k_launcher_is_one_variable(variant, tmp_path):
    import run_class_finetuning as rcf

    variables, fusion, regions, _, suffix = CA_VARIANTS[variant]
    args = rcf.get_args_parser().parse_args(launcher_command_line(tmp_path, variables))
    assert args.fusion == fusion and args.lg_region_size == regions
    assert args.output_dir.endswith(f"region_server164{suffix}")  # every variant in its own folder
    # the rest is the original recipe
    assert (args.model, args.depth, args.batch_size, args.lr, args.epochs, args.sampling_rate, args.data_set) == (
        "vit_base_dim512_no_depth_patch16_160", 16, 40, 1e-3, 100, 1, "FERV39k")


@pytest.mark.slow
def test_the_ca_variants_build_the_models_of_the_ca_logs(tmp_path):
    import run_class_finetuning as rcf

    for variant, (variables, _, _, n_parameters, _) in CA_VARIANTS.items():
        model = rcf.create_model(rcf.get_args_parser().parse_args(launcher_command_line(tmp_path, variables)))
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n_parameters, variant
        del model


@pytest.mark.slow
def test_the_readme_commands_evaluate_released_checkpoints(tmp_path):
    """README, Released checkpoints: `FINETUNE= bash <launcher> [--folds k] --eval --resume CKPT` tests the file in
    the recipe's configuration; a CA-fork checkpoint (no fusion recorded) with the variant's variable."""
    import argparse

    import torch

    import run_class_finetuning as rcf

    data = tmp_path / "data"
    fake_dataset(data, 7, "jpg", ("train.csv", "val.csv", "test.csv"))
    env = {**os.environ, "NPROC_PER_NODE": "1", "FINETUNE": "", "OUTPUT_ROOT": str(tmp_path / "out"),
           "DATA_ROOT": str(data), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    shrink = ["--data_path", str(data), "--depth", "1", "--batch_size", "2", "--num_workers", "0", "--device", "cpu"]
    # the DFEW launcher passes no --fusion (read off the weights); the FERV39k one passes the variant's
    for data_set, fusion, variables, found in (("DFEW", "none", {}, "read off"),
                                               ("FERV39k", "cat", {"FUSION": "cat"}, "as given, agrees with")):
        script = LAUNCHERS[data_set][0]
        argv = ["--model", "vit_base_dim512_no_depth_patch16_160", "--nb_classes", "7", "--input_size", "160",
                "--lg_region_size", "2", "5", "10", "--lg_classify_token_type", "region", "--depth", "1",
                "--fusion", fusion]
        model = rcf.create_model(rcf.get_args_parser().parse_args(argv))
        checkpoint = tmp_path / data_set / "checkpoint-99.pth"  # as the authors' (a Namespace without --fusion)
        checkpoint.parent.mkdir()
        torch.save({"model": model.state_dict(), "epoch": 99, "args": argparse.Namespace(data_set=data_set)},
                   checkpoint)
        folds = ["--folds", "1"] if data_set == "DFEW" else []
        run = subprocess.run(["bash", str(ROOT / script), *folds, "--eval", "--resume", str(checkpoint), *shrink],
                             env={**env, **variables}, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert f"--fusion {fusion}: {found} the weights of {checkpoint}" in run.stdout + run.stderr
        (metrics_file,) = (tmp_path / "out" / data_set.lower()).rglob("metrics.json")
        metrics = json.loads(metrics_file.read_text())
        assert metrics["num_clips"] == 7 and metrics["checkpoint"] == str(checkpoint)


def test_the_launchers_write_out_the_full_size_configuration(tmp_path):
    """models.FULL_SIZE (what inference and the benchmarks take) is the model each launcher's flags build."""
    import run_class_finetuning as rcf
    from models import FULL_SIZE

    args = rcf.get_args_parser().parse_args(launcher_command_line(tmp_path, {}))
    assert {name: getattr(args, name) for name in FULL_SIZE} == FULL_SIZE
    for data_set in ("DFEW", "MAFW"):
        text = (ROOT / LAUNCHERS[data_set][0]).read_text()
        for name, value in FULL_SIZE.items():
            written = " ".join(map(str, value)) if isinstance(value, list) else str(value)
            assert f"--{name} {written}" in text, (data_set, name)


def test_the_pretraining_launcher_writes_out_the_full_size_configuration():
    from models import FULL_SIZE_PRETRAIN

    text = (ROOT / "scripts/voxceleb2/pretrain_local_global_attn_depth16_region_size2510_with_diff_target_102.sh"
            ).read_text()
    model, *rest = FULL_SIZE_PRETRAIN.items()
    assert f"MODEL={model[1]}\n" in text and '--model "$MODEL"' in text
    for name, value in rest:
        written = " ".join(map(str, value)) if isinstance(value, list) else str(value)
        assert f"--{name} {written}" in text, name
