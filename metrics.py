"""Evaluation metrics of the DFER protocol and the files that report them.

UAR (unweighted average recall, the mean of per-class recalls) and WAR (weighted average recall, i.e.
accuracy) are the field's headline numbers; F1 scores and the confusion matrix complete the report.
"""

from __future__ import annotations

import csv
import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score


def classification_metrics(labels: Sequence[int], preds: Sequence[int], num_classes: int) -> dict:
    """UAR, WAR, per-class recall, weighted / micro / macro F1 (fractions) and the confusion matrix."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    matrix = confusion_matrix(labels, preds, labels=list(range(num_classes)))
    support = matrix.sum(axis=1)
    present = support > 0
    recall = np.divide(np.diag(matrix), support, out=np.zeros(num_classes), where=present)
    return {
        "uar": float(recall[present].mean()) if present.any() else 0.0,
        "war": float(np.trace(matrix) / max(matrix.sum(), 1)),
        "class_recall": recall.tolist(),
        "weighted_f1": float(f1_score(labels, preds, average="weighted", zero_division=0)),
        "micro_f1": float(f1_score(labels, preds, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
        "confusion_matrix": matrix.tolist(),
    }


def merge_views(records: Iterable[tuple[str, int, int, int, np.ndarray]],
                order: Sequence[str] | None = None) -> OrderedDict:
    """Average the softmax probabilities of each clip's test views.

    records: (clip id, label, chunk, crop, probabilities). A repeated (chunk, crop) of a clip — the padding a
    distributed sampler adds — is counted once. Returns id -> (label, mean probabilities, number of views), in
    order of first appearance, or in `order` (every clip id, each once).
    """
    views: OrderedDict[str, dict] = OrderedDict()
    labels: dict[str, int] = {}
    for clip_id, label, chunk, crop, probs in records:
        views.setdefault(clip_id, {}).setdefault((chunk, crop), probs)
        labels[clip_id] = label
    if order is not None:
        if sorted(order) != sorted(views):
            raise ValueError(f"the order names {len(order)} clips, the test views {len(views)} other ones")
        views = OrderedDict((clip_id, views[clip_id]) for clip_id in order)
    return OrderedDict((clip_id, (labels[clip_id], np.mean(list(v.values()), axis=0), len(v)))
                       for clip_id, v in views.items())


def topk_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Percentage of clips whose label is among the k most probable classes."""
    topk = np.argsort(-probs, axis=1)[:, :k]
    return float(100 * (topk == labels[:, None]).any(axis=1).mean())


def write_predictions(path: str | Path, merged: OrderedDict, class_names: Sequence[str]) -> None:
    """pred.csv: the originals' `id,label,pred` columns, then one probability column per class name."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "pred", *class_names])
        for clip_id, (label, probs, _) in merged.items():
            writer.writerow([clip_id, label, int(np.argmax(probs)), *(f"{p:.6f}" for p in probs)])


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path,
                          title: str = "") -> None:
    """Row-normalised confusion matrix (recall per true class) with counts, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, dtype=float)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.55 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, f"{rows[i, j]:.2f}\n({int(matrix[i, j])})", ha="center", va="center", fontsize=7,
                    color="white" if rows[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="recall")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_summary(report: dict, output_dir: str | Path) -> str:
    """A readable summary of a test report: UAR / WAR, the confusion matrix with class names, where files are."""
    names = report["class_names"]
    width = max(7, *(len(n) for n in names))
    lines = [f"UAR {100 * report['uar']:.2f}%  WAR {100 * report['war']:.2f}%  ({report['num_clips']} clips, "
             f"{report['num_views']} views)", "confusion matrix (rows: true, columns: predicted):",
             " " * width + " " + " ".join(f"{n[:width]:>{width}}" for n in names)]
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"{name:>{width}} " + " ".join(f"{v:>{width}d}" for v in row))
    lines.append(f"outputs in {output_dir}: pred.csv, metrics.json, confusion_matrix.png, log.txt")
    return "\n".join(lines)


def write_test_report(output_dir: str | Path, records: Sequence[tuple[str, int, int, int, np.ndarray]],
                      class_names: Sequence[str], header: str | None = None, checkpoint: str | None = None,
                      epoch: int | str | None = None, order: Sequence[str] | None = None) -> dict:
    """Merge the test views and write pred.csv, metrics.json, confusion_matrix.png and the originals' log.txt lines.

    `header` is the model description of a run that trained (e.g. "last epoch model"); None for --eval. `order`:
    the clip ids in pred.csv's order (default: first appearance in `records`).
    """
    output_dir = Path(output_dir)
    merged = merge_views(records, order)
    labels = np.array([label for label, _, _ in merged.values()])
    probs = np.stack([p for _, p, _ in merged.values()])
    stats = classification_metrics(labels, probs.argmax(axis=1), len(class_names))
    top1, top5 = topk_accuracy(labels, probs, 1), topk_accuracy(labels, probs, min(5, len(class_names)))
    report = {**stats, "class_names": list(class_names), "top1": top1, "top5": top5, "num_clips": len(merged),
              "num_views": sum(n for _, _, n in merged.values()), "checkpoint": checkpoint, "epoch": epoch}
    write_predictions(output_dir / "pred.csv", merged, class_names)
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_confusion_matrix(stats["confusion_matrix"], class_names, output_dir / "confusion_matrix.png",
                          title=f"UAR {100 * stats['uar']:.2f}%  WAR {100 * stats['war']:.2f}%")
    suffix = f" ({header.split(' model')[0]})" if header else ""
    lines = [f"Evaluation on the test set using {header}:"] if header else []
    lines += [json.dumps({f"Final Top-1{suffix}": top1, f"Final Top-5{suffix}": top5}),
              f"Final UAR: {100 * stats['uar']:.2f}%, Final WAR: {100 * stats['war']:.2f}%",
              "Final Confusion Matrix:", str(np.array(stats["confusion_matrix"])),
              f"Final Class Accuracies: {[round(100 * r, 2) for r in stats['class_recall']]}",
              f"Final Weighted F1: {stats['weighted_f1']:.4f}, Final Micro F1: {stats['micro_f1']:.4f}, "
              f"Final Macro F1: {stats['macro_f1']:.4f}"]
    with open(output_dir / "log.txt", "a") as f:
        f.write("\n".join(lines) + "\n")
    return report
