"""run_inference.py end to end on a moving real face with a tiny checkpoint in our fine-tuning's format, and its
documented errors."""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

import checkpoint as ckpt
import engine_inference as ei
import run_class_finetuning as rcf
import run_inference as ri
from annotations import DATASETS
from datasets import loaded_test_indices
from demo_data import make_demo_dataset, make_face_video, make_scene_video

CLASSES = list(DATASETS["DEMO"].classes)


def tiny_finetune_args(output_dir, *extra: str) -> argparse.Namespace:
    """The --demo configuration shrunk to 32 px and one LGI block (as tests/test_run_class_finetuning.py)."""
    parser = rcf.get_args_parser()
    parser.set_defaults(**rcf.DEMO_DEFAULTS)
    return parser.parse_args(["--output_dir", str(output_dir), "--input_size", "32", "--short_side_size", "32",
                              "--depth", "1", "--lg_region_size", "2", "1", "2", "--num_workers", "0",
                              "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint written by the fine-tuning's own saver (weights + the args Namespace), without training."""
    out = tmp_path_factory.mktemp("ckpt")
    args = tiny_finetune_args(out)
    torch.manual_seed(0)
    model = rcf.create_model(args)
    with torch.no_grad():  # a head that prefers some classes, so that probabilities are not all equal
        model.head.weight.normal_(0, 0.5)
        model.head.bias.copy_(torch.linspace(-1, 1, len(CLASSES)))
    return ckpt.save_model(args.output_dir, 0, model=model,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1), args=args)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "portrait.mp4"
    make_face_video(path, seconds=2.0, size=(256, 144))
    return path


def run(*argv: str) -> list[dict]:
    return ri.main(ri.get_args_parser().parse_args(list(argv)))


def test_timeline_summary_plot_and_annotated_video_of_a_moving_face(checkpoint, video, tmp_path):
    (result,) = run("--checkpoint", str(checkpoint), "--video", str(video), "--out", str(tmp_path), "--render")
    out = tmp_path / "portrait"
    table = pd.read_csv(out / "timeline.csv")
    assert list(table.columns) == ["window", "start_frame", "end_frame", "start_s", "end_s", "face_frames",
                                   *CLASSES, "top_class"]
    probs = table[CLASSES].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert (table["top_class"] == np.array(CLASSES)[probs.argmax(axis=1)]).all()
    # 50 frames, 16-frame windows at rate 1, stride 8: starts 0, 8, ..., 32 and the last full window at 34.
    assert table["start_frame"].tolist() == [0, 8, 16, 24, 32, 34] and table["end_frame"].iloc[-1] == 49
    assert table["end_s"].iloc[-1] == pytest.approx(2.0) and (table["face_frames"] == 16).all()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 50 and summary["fps"] == pytest.approx(25)
    assert summary["faces"]["detection_rate"] == 1.0 and summary["faces"]["frames_without_face"] == []
    clip = np.array([summary["probabilities"][c] for c in CLASSES])
    assert np.allclose(clip, probs.mean(axis=0), atol=1e-5) and summary["prediction"] == CLASSES[clip.argmax()]
    model = summary["model"]
    assert model["model"] == "vit_tiny_dim128_no_depth_patch16_64" and model["fusion"] == "add"
    assert model["nb_classes"] == 5 and model["classes"] == CLASSES and len(model["sha256"]) == 64
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result["seconds"]) == {"decode", "detect", "crop", "predict"}
    capture = cv2.VideoCapture(str(out / "annotated.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 50
    assert (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (256, 144)


def test_a_tilting_moving_face_gives_a_timeline_without_gaps(checkpoint, tmp_path):
    """The portrait's head on a real background, crossing the frame, growing and turning from -35° to 35°: the
    default detector finds it in every frame (the Haar cascade, kept as --face haar, loses it when it tilts)."""
    t = np.linspace(0, 1, 40)
    poses = np.stack([70 + 120 * t, 70 + 10 * np.sin(6 * t), 38 + 12 * t, -35 + 70 * t], axis=1)
    video = tmp_path / "tilt.mp4"
    truth = make_scene_video(video, poses, size=(256, 144))
    (result,) = run("--checkpoint", str(checkpoint), "--video", str(video), "--out", str(tmp_path), "--align", "eyes")
    summary = json.loads((tmp_path / "tilt" / "summary.json").read_text())
    assert summary["faces"]["detection_rate"] == 1.0 and summary["faces"]["times_without_face_s"] == []
    assert result["predicted"].all() and not np.isnan(result["probs"]).any()
    centres = (result["boxes"][:, :2] + result["boxes"][:, 2:]) / 2
    assert np.abs(centres - (truth[:, :2] + truth[:, 2:]) / 2).max() < 12  # the crops follow the face
    assert result["angles"][0] > 15 and result["angles"][-1] < -15  # --align eyes turns them upright
    (haar,) = run("--checkpoint", str(checkpoint), "--video", str(video), "--out", str(tmp_path / "haar"),
                  "--face", "haar", "--min_face_frames", "1")
    assert haar["found"].mean() < 0.9


def test_windows_cover_the_video_at_the_sampling_rate():
    windows = ei.plan_windows(100, 16, 4, 30)
    assert windows[:, 0].tolist() == [0, 30, 36] and windows[-1, -1] == 96
    assert (np.diff(windows, axis=1) == 4).all()
    # The default stride is a multiple of the rate: every window samples the frames 0, 4, 8, ...
    assert ei.default_stride(16, 4) == 32 and ei.default_stride(16, 1) == 8
    assert set(np.unique(ei.plan_windows(200, 16, 4, ei.default_stride(16, 4))) % 4) == {0}
    short = ei.plan_windows(10, 16, 4, 30)
    assert short.tolist() == [loaded_test_indices(10, 16, 4)[:16].tolist()] == [[0, 4, 8] + [8] * 13]


def test_a_video_shorter_than_a_window_is_padded_and_says_so(checkpoint, tmp_path, caplog):
    short = tmp_path / "short.mp4"
    make_face_video(short, seconds=0.4, size=(256, 144))
    (result,) = run("--checkpoint", str(checkpoint), "--video", str(short), "--out", str(tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / "short" / "summary.json").read_text())
    assert summary["windows"]["count"] == 1 and "fewer than one window" in summary["notes"][0]
    assert "last sampled frame is repeated" in caplog.text
    assert result["windows"].tolist() == [list(range(10)) + [9] * 6]


def plain_video(path, size=(64, 64), frames=20):
    """A video of flat colours: no face in it (or, for --face none, a stand-in for a face crop)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), (40 + 5 * i, 90, 140), np.uint8))
    writer.release()
    return path


def test_face_none_uses_whole_frames(checkpoint, tmp_path):
    cropped = plain_video(tmp_path / "crop.mp4")
    (result,) = run("--checkpoint", str(checkpoint), "--video", str(cropped), "--out", str(tmp_path), "--face",
                    "none")
    assert result["found"].all() and result["boxes"][0].tolist() == pytest.approx([-12.8, -12.8, 76.8, 76.8])


# --------------------------------------------------------------------------------------------------------------
# Errors

def test_missing_empty_and_unreadable_videos(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.mp4: no such video file"):
        run("--checkpoint", str(checkpoint), "--video", str(tmp_path / "nope.mp4"))
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(ei.VideoError, match=r"empty\.mp4: the file is empty \(0 bytes\)"):
        run("--checkpoint", str(checkpoint), "--video", str(empty))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    with pytest.raises(ei.VideoError, match=r"garbage\.mp4: cannot read the video"):
        run("--checkpoint", str(checkpoint), "--video", str(garbage))


def test_a_video_without_a_face_is_an_error(checkpoint, tmp_path):
    path = plain_video(tmp_path / "wall.mp4", size=(160, 90))
    with pytest.raises(ei.NoFaceError, match=r"wall\.mp4: no face found in any of the 20 frames examined"):
        run("--checkpoint", str(checkpoint), "--video", str(path), "--out", str(tmp_path))


def test_one_bad_video_among_several_is_reported_after_the_others(checkpoint, tmp_path):
    good = plain_video(tmp_path / "good.mp4")
    with pytest.raises(ei.VideoError, match=r"1 of 2 videos failed:\n  .*missing\.mp4: no such video file"):
        run("--checkpoint", str(checkpoint), "--video", str(tmp_path / "missing.mp4"), "--video", str(good),
            "--out", str(tmp_path), "--face", "none")
    assert (tmp_path / "good" / "timeline.csv").is_file()


def test_flags_that_contradict_the_checkpoint(checkpoint, video, tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="--nb_classes 7 does not match the checkpoint, which was "
                                                    "trained with nb_classes 5"):
        run("--checkpoint", str(checkpoint), "--video", str(video), "--nb_classes", "7")
    with pytest.raises(ckpt.CheckpointError, match="--model vit_base_dim512_no_depth_patch16_160 does not match"):
        run("--checkpoint", str(checkpoint), "--video", str(video), "--model", "vit_base_dim512_no_depth_patch16_160")


def test_a_bare_state_dict_needs_flags_that_fit_it(checkpoint, video, tmp_path):
    bare = tmp_path / "bare.pth"
    torch.save({"model": ckpt.load_checkpoint(checkpoint)["model"]}, bare)
    model_flags = ["--model", "vit_tiny_dim128_no_depth_patch16_64", "--depth", "1", "--input_size", "32",
                   "--lg_region_size", "2", "1", "2", "--sampling_rate", "1"]
    with pytest.raises(ckpt.CheckpointError, match=r"shape: head.weight checkpoint \[5, 128\], model \[7, 128\]"):
        run("--checkpoint", str(bare), "--video", str(video), "--data_set", "DFEW", *model_flags)
    (result,) = run("--checkpoint", str(bare), "--video", str(video), "--out", str(tmp_path), "--data_set", "DEMO",
                    *model_flags)
    summary = json.loads((tmp_path / "portrait" / "summary.json").read_text())
    assert summary["model"]["fusion"] == "add"  # inferred from the CA branch's weights
    assert np.allclose(np.nansum(result["probs"], axis=1), 1)


@pytest.mark.slow
def test_fine_tune_then_predict_end_to_end(tmp_path):
    """Our own fine-tuning (one epoch on generated clips) writes the checkpoint that run_inference reads."""
    data = make_demo_dataset(tmp_path / "data", train_per_class=4, test_per_class=2, num_frames=16, size=32, seed=3)
    rcf.main(tiny_finetune_args(tmp_path / "ft", "--data_path", str(data), "--data_root", str(data), "--epochs",
                                "1", "--warmup_epochs", "1", "--batch_size", "4", "--disable_eval_during_finetuning"))
    path = tmp_path / "talk.mp4"
    make_face_video(path, seconds=4.0, size=(480, 270))
    (result,) = run("--checkpoint", str(tmp_path / "ft" / "checkpoint-0.pth"), "--video", str(path), "--out",
                    str(tmp_path / "out"), "--render", "--stride", "4")
    assert result["found"].all() and np.allclose(result["probs"].sum(axis=1), 1)
    assert len(pd.read_csv(tmp_path / "out" / "talk" / "timeline.csv")) == 22
    assert (tmp_path / "out" / "talk" / "annotated.mp4").stat().st_size > 0


def test_video_dir_lists_the_video_files(tmp_path):
    for name in ("b.mp4", "a.MOV", "notes.txt"):
        (tmp_path / name).touch()
    args = ri.get_args_parser().parse_args(["--video_dir", str(tmp_path), "--video", "x.mp4"])
    assert [p.name for p in ri.list_videos(args)] == ["x.mp4", "a.MOV", "b.mp4"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no video files"):
        ri.list_videos(ri.get_args_parser().parse_args(["--video_dir", str(tmp_path / "empty")]))
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
        ri.list_videos(ri.get_args_parser().parse_args(["--video_dir", str(tmp_path / "nowhere")]))
