"""What run_inference.py writes for one video: timeline.csv, summary.json, timeline.png and the annotated mp4."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd


def missing_ranges(examined: np.ndarray, found: np.ndarray, fps: float) -> list[list[float]]:
    """Runs of consecutive examined frames without a face, as [first, last] times in seconds."""
    runs, first = [], None
    for i, ok in enumerate([*found.tolist(), True]):
        if not ok and first is None:
            first = i
        elif ok and first is not None:
            runs.append([round(examined[first] / fps, 3), round(examined[i - 1] / fps, 3)])
            first = None
    return runs


def timeline_table(result: dict, classes: list[str]) -> pd.DataFrame:
    """One row per window: frames, times, faces found, per-class probabilities (empty if not predicted), top class."""
    windows, fps = result["windows"], result["fps"]
    table = pd.DataFrame({
        "window": np.arange(len(windows)), "start_frame": windows[:, 0], "end_frame": windows[:, -1],
        "start_s": np.round(windows[:, 0] / fps, 3), "end_s": np.round((windows[:, -1] + 1) / fps, 3),
        "face_frames": result["face_frames"]})
    for k, name in enumerate(classes):
        table[name] = result["probs"][:, k]
    top = np.nanargmax(np.where(result["predicted"][:, None], result["probs"], 0), axis=1)
    table["top_class"] = np.where(result["predicted"], np.array(classes, dtype=object)[top], "")
    return table


def write_outputs(result: dict, out_dir: Path, identity: dict, render: bool = False) -> dict:
    """Write the files of one video into out_dir; returns the summary (also summary.json)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = identity["classes"]
    table = timeline_table(result, classes)
    table.to_csv(out_dir / "timeline.csv", index=False, float_format="%.6f")
    clip_probs = result["probs"][result["predicted"]].mean(axis=0)
    missing = result["examined"][~result["found"]]
    fps = result["fps"]
    summary = {
        "video": result["video"], "frames": result["frames"], "fps": fps,
        "duration_s": round(result["frames"] / fps, 3), "width": result["width"], "height": result["height"],
        "prediction": classes[int(clip_probs.argmax())],
        "probabilities": {name: float(p) for name, p in zip(classes, clip_probs)},
        "windows": {"count": len(table), "predicted": int(result["predicted"].sum()),
                    "frames_per_window": int(result["windows"].shape[1]),
                    "min_face_frames": result["min_face_frames"],
                    "aggregation": "mean of the predicted windows' probabilities"},
        "faces": {"frames_examined": len(result["examined"]), "frames_with_face": int(result["found"].sum()),
                  "detection_rate": float(result["found"].mean()), "frames_without_face": missing.tolist(),
                  "times_without_face_s": missing_ranges(result["examined"], result["found"], fps)},
        "notes": result["notes"], "seconds": {k: round(v, 3) for k, v in result["seconds"].items()},
        "model": identity,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_timeline(table, classes, summary, out_dir / "timeline.png")
    if render:
        render_video(result, table, classes, out_dir / "annotated.mp4")
    return summary


def describe(summary: dict, out_dir: Path) -> str:
    probs = ", ".join(f"{k} {v:.2f}" for k, v in sorted(summary["probabilities"].items(), key=lambda kv: -kv[1]))
    faces = summary["faces"]
    return (f"{summary['video']}: {summary['prediction']} ({probs}); {summary['windows']['predicted']} of "
            f"{summary['windows']['count']} windows predicted, face in {faces['frames_with_face']} of "
            f"{faces['frames_examined']} frames examined\n  outputs in {out_dir}")


def plot_timeline(table: pd.DataFrame, classes: list[str], summary: dict, path: Path) -> None:
    """Class probabilities over time (window centres), windows without a face shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = (table["start_s"] + table["end_s"]) / 2
    fig, ax = plt.subplots(figsize=(10, 4), layout="constrained")
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20").colors
    for k, name in enumerate(classes):
        ax.plot(centre, table[name], marker="o", markersize=3, lw=1.8, color=colours[k], label=name)
    for _, row in table[table["top_class"] == ""].iterrows():
        ax.axvspan(row["start_s"], row["end_s"], color="0.85", zorder=0)
    ax.set(xlim=(0, summary["duration_s"]), ylim=(0, 1), xlabel="time (s), window centres",
           ylabel="probability")
    ax.set_title(f"{Path(summary['video']).name}: {summary['prediction']} "
                 f"({summary['probabilities'][summary['prediction']]:.2f} over the clip)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render_video(result: dict, table: pd.DataFrame, classes: list[str], path: Path) -> None:
    """The video with the crop box, the current top class and a probability bar per class."""
    import decord

    reader = decord.VideoReader(result["video"], num_threads=1)
    frames = np.arange(result["frames"])
    boxes = np.stack([np.interp(frames, result["examined"], result["boxes"][:, j]) for j in range(4)], axis=1)
    centres = result["windows"].mean(axis=1)
    predicted = np.flatnonzero(result["predicted"])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), result["fps"],
                             (result["width"], result["height"]))
    scale = max(result["height"] / 480, 0.5)
    thick = max(int(2 * scale), 1)
    panel_bottom = int((8 + 18 * len(classes)) * scale)
    for start in range(0, len(frames), 64):
        chunk = frames[start:start + 64]
        for f, frame in zip(chunk, reader.get_batch(chunk.tolist()).asnumpy()):
            image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            w = predicted[np.abs(centres[predicted] - f).argmin()]  # the predicted window centred nearest
            probs = result["probs"][w]
            x0, y0, x1, y1 = boxes[f].round().astype(int)
            cv2.rectangle(image, (x0, y0), (x1, y1), (0, 220, 0), thick)
            label_y = y0 - 8 if y0 - 8 > panel_bottom + 20 * scale else max(y0, int(panel_bottom)) + int(28 * scale)
            label, origin = f"{table['top_class'][w]} {probs.max():.2f}", (max(x0, 0) + 4, label_y)
            (text_w, text_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, thick)
            cv2.rectangle(image, (origin[0] - 3, origin[1] - text_h - 5), (origin[0] + text_w + 3, origin[1] + 5),
                          (0, 0, 0), -1)
            cv2.putText(image, label, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, (0, 230, 0), thick, cv2.LINE_AA)
            panel = image[:panel_bottom, :int(230 * scale)]
            panel[:] = panel // 3  # darken behind the bars so the labels read on any background
            for k, (name, p) in enumerate(zip(classes, probs)):
                y = int((16 + 18 * k) * scale)
                cv2.rectangle(image, (int(8 * scale), y - int(11 * scale)),
                              (int((8 + 100 * p) * scale), y + int(3 * scale)), (0, 180, 255), -1)
                cv2.putText(image, f"{name} {p:.2f}", (int(112 * scale), y), cv2.FONT_HERSHEY_SIMPLEX,
                            0.45 * scale, (255, 255, 255), 1, cv2.LINE_AA)
            writer.write(image)
    writer.release()
