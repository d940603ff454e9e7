"""data_check / preprocess.check: each planted problem is reported at its file and line; the training-start check."""

from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np
import pytest
from test_preprocess import frames, write_video

import run_class_finetuning as rcf
import training
from data_check import FAST_SAMPLE, DataCheckError, check_annotations, check_lists
from preprocess import check
from run_class_finetuning import data_lists


def found(report) -> set[tuple[str, str, str]]:
    """(severity, kind, where) of every problem, where relative to the test's folder."""
    return {(p.severity, p.kind, p.where.rsplit("/", 2)[-2] + "/" + p.where.rsplit("/", 1)[-1])
            for p in report.problems}


@pytest.fixture
def planted(tmp_path):
    """A fold folder whose train.csv plants one problem per line (see the comments), and its test.csv."""
    frames(tmp_path / "good", 80)
    (tmp_path / "empty").mkdir()
    frames(tmp_path / "empty", 2, ext="png")  # frames of another extension than the dataset's
    frames(tmp_path / "short", 3)
    order = tmp_path / "order"
    frames(order, 0)
    for i in range(1, 71):  # not zero-padded: sorted, 19.jpg comes before 2.jpg
        (order / f"{i}.jpg").write_bytes((tmp_path / "good" / "00000.jpg").read_bytes())
    frames(tmp_path / "corrupt", 70)
    (tmp_path / "corrupt" / "00005.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 2048)
    write_video(tmp_path / "video.mp4", 70)
    frames(tmp_path / "in_test", 80)
    split = tmp_path / "split01"
    split.mkdir()
    (split / "train.csv").write_text("\n".join([
        "good 0",  # 1
        "gone 1",  # 2 missing
        "empty 2",  # 3 no *.jpg frames
        "short 3",  # 4 3 frames < 16 x 4
        "order 4",  # 5 1.jpg .. 70.jpg
        "corrupt 5",  # 6 frame 5 does not decode (--decode)
        "broken.mp4 6",  # 7 not a video
        "good 9",  # 8 outside 0..6
        "good two",  # 9 not an integer
        "good",  # 10 malformed
        "",  # 11 blank
        "good 0",  # 12 duplicate of line 1
        "in_test 1",  # 13 also in test.csv
        "video.mp4 2",  # 14 fine
    ]) + "\n")
    (split / "test.csv").write_text("in_test 1\n")
    return tmp_path


EXPECTED = {
    ("error", "missing", "split01/train.csv:2"), ("error", "empty", "split01/train.csv:3"),
    ("warning", "short", "split01/train.csv:4"), ("error", "order", "split01/train.csv:5"),
    ("error", "video", "split01/train.csv:7"), ("error", "label", "split01/train.csv:8"),
    ("error", "label", "split01/train.csv:9"), ("error", "malformed", "split01/train.csv:10"),
    ("warning", "blank", "split01/train.csv:11"), ("error", "duplicate", "split01/train.csv:12"),
    ("error", "overlap", "split01/train.csv:13"), ("warning", "class", "split01/test.csv")}


def test_every_planted_problem_is_reported_at_its_line(planted):
    csvs = [planted / "split01" / "train.csv", planted / "split01" / "test.csv"]
    report = check_annotations(csvs, 7, str(planted), class_names=None)
    assert found(report) == EXPECTED  # the corrupt frame is not the first one: only decoding finds it
    decoded = check_annotations(csvs, 7, str(planted), decode=True, workers=2)
    assert found(decoded) == EXPECTED | {("error", "decode", "split01/train.csv:6")}
    messages = {p.where.rsplit(":", 1)[1]: p.message for p in decoded.problems if "train" in p.where}
    assert messages["3"].endswith("no *.jpg frames in the folder (it holds 2 .png files)")
    assert "(1 distinct of 16 in training)" in messages["4"]
    assert "18.jpg, 19.jpg, 2.jpg" in messages["5"]
    assert "00005.jpg: the image does not decode" in messages["6"]
    assert messages["8"] == "label 9 is outside 0..6" and messages["12"] == "good is already listed at line 1"
    summary = decoded.to_json()["files"][str(csvs[0])]
    assert summary["entries"] == 10 and summary["classes"]["0"] == 2
    assert summary["frames"] == {"min": 3, "median": 70, "max": 80} and summary["sizes"] == {"8x8": 6, "32x32": 1}


def test_folds_that_do_not_partition_the_data(tmp_path):
    for name in "abcd":
        frames(tmp_path / name, 64)
    for fold, train, test in (("split01", "cd", "ab"), ("split02", "a", "bc")):
        (tmp_path / fold).mkdir()
        (tmp_path / fold / "train.csv").write_text("".join(f"{c} 0\n" for c in train))
        (tmp_path / fold / "test.csv").write_text("".join(f"{c} 0\n" for c in test))
    report = check_annotations(sorted(tmp_path.glob("split*/*.csv")), 1, str(tmp_path), deep=False)
    messages = {p.where.removeprefix(str(tmp_path)): p.message.replace(str(tmp_path), "") for p in report.problems}
    assert messages == {
        "/split02/test.csv:1": "b is in two test folds (also /split01/test.csv:2)",
        "/split02": "1 clips of the other folds are in neither train nor test here, e.g. /d",
        "": "1 clips are in no test fold, e.g. /d: the folds do not cover the data"}
    kinds = [(p.kind, p.where.removeprefix(str(tmp_path))) for p in report.problems]
    assert sorted(kinds) == [("partition", ""), ("partition", "/split02"), ("partition", "/split02/test.csv:1")]


def test_a_clip_with_two_labels_in_two_lists(tmp_path):
    frames(tmp_path / "a", 64)
    (tmp_path / "train.csv").write_text("a 1\n")
    (tmp_path / "val.csv").write_text("a 2\n")
    report = check_annotations([tmp_path / "train.csv", tmp_path / "val.csv"], 3, str(tmp_path))
    assert {(p.kind, p.where.rsplit("/", 1)[1]) for p in report.errors} == {("label", "val.csv:1"),
                                                                             ("overlap", "train.csv:1")}


def test_fast_check_raises_with_every_error_and_opens_nothing(planted):
    with pytest.raises(DataCheckError) as err:
        check_lists([planted / "split01" / "train.csv", planted / "split01" / "test.csv"], 7, str(planted))
    listed = [line.split(": error")[0].rsplit("/", 1)[-1] for line in str(err.value).splitlines()[1:]]
    assert listed == ["train.csv:2", "train.csv:8", "train.csv:9", "train.csv:10", "train.csv:12", "train.csv:13"]
    # Unlabelled (pretraining) lists: any integer label.
    (planted / "vox.csv").write_text(f"{planted}/video.mp4 0\n{planted}/good 12\n")
    assert check_lists([planted / "vox.csv"], None).errors == []


def test_check_command_exit_status_table_and_json(planted, capsys):
    root = planted / "saved" / "data" / "dfew" / "org" / "split01"
    root.mkdir(parents=True)
    (root / "train.csv").write_text(f"{planted}/good 5\n{planted}/video.mp4 1\n")
    with pytest.raises(SystemExit) as done:
        check.main([str(root / "train.csv"), "--workers", "1"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "Disgust" in out and "frames min/median/max" in out and "70/75/80" in out and "OK: 0 errors" in out
    with pytest.raises(SystemExit) as done:
        check.main([str(planted / "split01" / "train.csv"), "--data_root", str(planted), "--data_set", "DFEW",
                    "--json", "--workers", "1"])
    assert done.value.code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 8 and report["warnings"] == 3  # short, blank, and 8x8 frames for DFEW (256x256)
    assert {p["kind"] for p in report["problems"] if p["severity"] == "warning"} == {"short", "blank", "frame_size"}
    assert {p["where"].rsplit("/", 1)[1] for p in report["problems"]} >= {"train.csv:2", "train.csv:10"}


def test_fine_tuning_stops_on_a_bad_list_naming_file_and_line(tmp_path):
    frames(tmp_path / "a", 64)
    (tmp_path / "train.csv").write_text("a 0\nb 1\n")
    (tmp_path / "test.csv").write_text("a 7\n")
    args = argparse.Namespace(data_path=str(tmp_path), data_root=str(tmp_path), data_set="FERV39k", nb_classes=7,
                              eval=False, disable_eval_during_finetuning=False)
    with pytest.raises(SystemExit, match=r"(?s)test\.csv:1: error: label 7 is outside 0\.\.6.*train\.csv:2: error: "
                                         rf"{tmp_path}/b: no such file or folder"):
        training.check_data(data_lists(args), args.nb_classes, args.data_root)
    (tmp_path / "test.csv").write_text("a 6\n")
    with pytest.raises(SystemExit, match=r"train\.csv:2"):
        training.check_data(data_lists(args), args.nb_classes, args.data_root)
    evaluating = argparse.Namespace(**{**vars(args), "eval": True})
    training.check_data(data_lists(evaluating), args.nb_classes, args.data_root)  # --eval reads test.csv only


def test_list_level_problems(tmp_path):
    frames(tmp_path / "a", 64)
    (tmp_path / "crlf.csv").write_bytes(b"a 0\r\n")
    (tmp_path / "spaces.csv").write_text("a 0\n   \n")
    (tmp_path / "empty.csv").write_text("\n")
    report = check_annotations([tmp_path / n for n in ("crlf.csv", "spaces.csv", "empty.csv", "gone.csv")], 1,
                               str(tmp_path))
    assert {(p.severity, p.kind, p.where.rsplit("/", 1)[1]) for p in report.problems} == {
        ("warning", "format", "crlf.csv"), ("error", "malformed", "spaces.csv:2"), ("warning", "blank", "empty.csv:1"),
        ("error", "empty_list", "empty.csv"), ("error", "file", "gone.csv")}


# --- data other than the released checkpoints were trained on (warnings only) -----------------------------------

def sized_frames(folder, n: int, size: int, ext: str = "jpg"):
    folder.mkdir(parents=True, exist_ok=True)
    encoded = cv2.imencode(f".{ext}", np.full((size, size, 3), 100, np.uint8))[1].tobytes()
    for i in range(n):
        (folder / f"{i:05d}.{ext}").write_bytes(encoded)


def dfew_fold(root, counts: list[int], size: int, split: str = "split01") -> list:
    """A DFEW fold (train.csv, val.csv = test.csv) of clips with these frame counts, frames size x size."""
    fold = root / split
    fold.mkdir(parents=True)
    lines = []
    for i, n in enumerate(counts):
        sized_frames(root / "Clip" / f"{i + 1:05d}", n, size)
        lines.append(f"Clip/{i + 1:05d} {i % 7}\n")
    half = len(lines) // 2
    (fold / "train.csv").write_text("".join(lines[:half]))
    (fold / "test.csv").write_text("".join(lines[half:]))
    (fold / "val.csv").write_text("".join(lines[half:]))
    return [fold / "train.csv", fold / "test.csv"]


def layout_warnings(report) -> dict[tuple[str, str], str]:
    assert not report.errors and all(p.severity == "warning" for p in report.problems)
    return {(p.kind, p.where.rsplit("/", 1)[1]): p.message for p in report.problems
            if p.kind in ("variant", "frame_size")}


def test_time_normalised_16_frame_clips_and_another_frame_size_are_warned_about(tmp_path):
    csvs = dfew_fold(tmp_path, [16] * 21 + [40], 64)  # nearly all 16 frames (the clip_224x224_16f variant), 64 px
    report = check_annotations(csvs, 7, str(tmp_path), data_set="DFEW", sampling_rate=1)
    warned = layout_warnings(report)
    assert set(warned) == {("variant", "train.csv"), ("variant", "test.csv"), ("frame_size", "train.csv"),
                           ("frame_size", "test.csv")}
    trained_on = ("The released checkpoints were trained on DFEW's face frames as distributed: Clip/jpg_256 (the "
                  "official jpg_224 folder, renamed), 256x256, every frame of each clip")
    assert warned[("variant", "train.csv")] == (
        f"11 of 11 clips examined have exactly 16 frames (e.g. {tmp_path}/Clip/00001): a time-normalised variant, "
        f"as DFEW's clip_224x224_16f? {trained_on}")
    assert warned[("variant", "test.csv")].startswith("10 of 11 clips examined have exactly 16 frames")
    assert warned[("frame_size", "test.csv")] == (
        f"frames of 64x64 in 11 of 11 clips examined (e.g. {tmp_path}/Clip/00012), not the 256x256 of DFEW's "
        f"distributed face frames: extracted or resized by yourself? {trained_on}")
    assert "FAILED" not in report.format() and "OK: 0 errors, 4 warnings" in report.format()


def test_the_distributed_layout_and_other_datasets_raise_no_layout_warning(tmp_path):
    counts = [16 if i % 3 else 30 + i for i in range(24)]  # 2/3 of the clips with 16 frames: not "nearly all"
    csvs = dfew_fold(tmp_path / "dfew", counts, 256)
    assert layout_warnings(check_annotations(csvs, 7, str(tmp_path / "dfew"), data_set="DFEW")) == {}
    csvs = dfew_fold(tmp_path / "demo", [16] * 22, 64)  # the demo's 16-frame clips: no distributed layout to compare
    assert layout_warnings(check_annotations(csvs, 7, str(tmp_path / "demo"), data_set="DEMO")) == {}
    few = dfew_fold(tmp_path / "few", [16] * 8, 64)  # fewer clips than the 16-frame warning needs
    assert set(layout_warnings(check_annotations(few, 7, str(tmp_path / "few"), data_set="DFEW"))) == {
        ("frame_size", "train.csv"), ("frame_size", "test.csv")}


def test_the_fast_check_samples_a_few_clips_per_list_for_them(tmp_path):
    csvs = dfew_fold(tmp_path, [16] * 400, 64)
    start = time.perf_counter()
    warned = layout_warnings(check_lists(csvs, 7, str(tmp_path), data_set="DFEW"))
    assert time.perf_counter() - start < 10
    assert warned[("variant", "train.csv")].startswith(
        f"{FAST_SAMPLE} of {FAST_SAMPLE} clips examined (a sample of the list) have exactly 16 frames")
    assert ("frame_size", "test.csv") in warned


def test_fine_tuning_start_up_names_the_layout_warnings(tmp_path, caplog):
    dfew_fold(tmp_path, [16] * 24, 32)
    argv = ["--data_set", "DFEW", "--nb_classes", "7", "--data_path", str(tmp_path / "split01"), "--data_root",
            str(tmp_path), "--output_dir", str(tmp_path / "out"), "--model", "vit_tiny_dim128_no_depth_patch16_64",
            "--depth", "1", "--input_size", "32", "--short_side_size", "32", "--lg_region_size", "2", "1", "2",
            "--lg_classify_token_type", "region", "--sampling_rate", "1", "--test_num_segment", "2",
            "--test_num_crop", "2", "--batch_size", "4", "--num_workers", "0", "--device", "cpu", "--eval"]
    with caplog.at_level("WARNING"):
        rcf.main(rcf.get_args_parser().parse_args(argv))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data check: ")]
    assert any("test.csv: warning: 12 of 12 clips examined have exactly 16 frames" in m for m in lines), lines
    assert any("test.csv: warning: frames of 32x32 in 12 of 12 clips examined" in m for m in lines), lines
    assert (tmp_path / "out" / "metrics.json").is_file()  # warnings only: the run goes on
