"""UAR/WAR/F1 against sklearn, view merging, reports; optimiser groups and schedules of the recipe."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import timm
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score
from support.configs import SCRIPT_KWARGS
from timm.optim import create_optimizer_v2

import checkpoint as ckpt
import modeling_finetune  # noqa: F401  (registers the models)
from metrics import classification_metrics, merge_views, write_test_report


def test_metrics_match_sklearn_on_known_predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 300)
    preds = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 7, 300))
    stats = classification_metrics(labels, preds, 7)
    assert stats["uar"] == pytest.approx(balanced_accuracy_score(labels, preds))
    assert stats["war"] == pytest.approx((labels == preds).mean())
    assert stats["class_recall"] == pytest.approx(recall_score(labels, preds, average=None).tolist())
    for average in ("weighted", "micro", "macro"):
        assert stats[f"{average}_f1"] == pytest.approx(f1_score(labels, preds, average=average))
    assert np.array(stats["confusion_matrix"]).sum() == 300


def test_hand_computed_uar_war():
    # class 0: 2/2 right, class 1: 1/3 right, class 2: 0/1 right -> UAR (1 + 1/3 + 0)/3, WAR 3/6
    stats = classification_metrics([0, 0, 1, 1, 1, 2], [0, 0, 1, 0, 2, 1], 3)
    assert stats["uar"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert stats["war"] == pytest.approx(0.5)


def test_merge_averages_views_and_ignores_padding_duplicates():
    p = lambda *v: np.array(v, dtype=float)  # noqa: E731
    records = [("a", 1, 0, 0, p(0.2, 0.8)), ("b", 0, 0, 0, p(0.9, 0.1)), ("a", 1, 1, 0, p(0.6, 0.4)),
               ("a", 1, 0, 0, p(0.0, 1.0)),  # a padding duplicate of view (0, 0): the first one counts
               ("b", 0, 1, 0, p(0.7, 0.3))]
    merged = merge_views(records)
    assert list(merged) == ["a", "b"]
    label, probs, views = merged["a"]
    assert (label, views) == (1, 2) and probs == pytest.approx([0.4, 0.6])
    assert merged["b"][1] == pytest.approx([0.8, 0.2])


def test_test_report_files_agree_with_each_other(tmp_path):
    rng = np.random.default_rng(1)
    records = []
    for clip in range(12):
        for chunk in range(2):
            for crop in range(2):
                logits = rng.normal(size=3)
                records.append((f"clips/{clip:03d}", clip % 3, chunk, crop, np.exp(logits) / np.exp(logits).sum()))
    report = write_test_report(tmp_path, records, ("happy", "sad", "neutral"), header="last epoch model", epoch=9)
    rows = (tmp_path / "pred.csv").read_text().splitlines()
    assert rows[0] == "id,label,pred,happy,sad,neutral" and len(rows) == 13
    preds = [int(r.split(",")[2]) for r in rows[1:]]
    labels = [int(r.split(",")[1]) for r in rows[1:]]
    assert report["war"] == pytest.approx(np.mean(np.array(preds) == np.array(labels)))
    assert all(abs(sum(float(x) for x in r.split(",")[3:]) - 1) < 1e-5 for r in rows[1:])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["uar"] == report["uar"] and saved["num_views"] == 48 and saved["num_clips"] == 12
    log = (tmp_path / "log.txt").read_text().splitlines()
    assert log[0] == "Evaluation on the test set using last epoch model:"
    assert json.loads(log[1]) == {"Final Top-1 (last epoch)": report["top1"], "Final Top-5 (last epoch)": 100.0}
    assert log[2] == f"Final UAR: {100 * report['uar']:.2f}%, Final WAR: {100 * report['war']:.2f}%"
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000


def test_optimizer_groups_follow_the_layer_decay_rule_of_the_spec():
    depth = 3
    model = timm.create_model("vit_base_dim512_no_depth_patch16_160", fusion="add", **{**SCRIPT_KWARGS, "depth": depth})
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        if name.startswith("patch_embed"):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:  # lg_region_tokens, fc_norm, head and the whole CA branch train at full rate
            layer = depth + 1
        no_decay = param.ndim == 1 or name.endswith(".bias") or name in model.no_weight_decay()
        group = group_of[id(param)]
        assert group["lr_scale"] == pytest.approx(0.75 ** (depth + 1 - layer)), name
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert len(optimizer.param_groups) == 2 * (depth + 2)


def test_best_checkpoint_cannot_seed_training(tmp_path):
    model = timm.create_model("vit_base_dim512_no_depth_patch16_160", **{**SCRIPT_KWARGS, "depth": 1})
    ckpt.save_checkpoint_atomic({"model": model.state_dict(), "epoch": "best", "optimizer": {}}, tmp_path / "b.pth")
    args = argparse.Namespace(resume=str(tmp_path / "b.pth"), auto_resume=True, output_dir=str(tmp_path), eval=False)
    with pytest.raises(ckpt.CheckpointError, match="records no epoch"):
        ckpt.restore(model, args.resume, args.output_dir, args.auto_resume)
