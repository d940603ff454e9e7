"""annotations.py: the dataset table and annotation parsing."""

from __future__ import annotations

import pytest

from annotations import DATASETS, read_annotations


def test_dataset_table_holds_the_label_orders_of_the_releases():
    assert {k: len(v.classes) for k, v in DATASETS.items()} == {
        "FERV39k": 7, "DFEW": 7, "MAFW": 11, "RAVDESS": 8, "CREMA-D": 6, "ENTERFACE": 6, "DEMO": 5}
    seven = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
    assert DATASETS["FERV39k"].classes == DATASETS["DFEW"].classes == seven
    assert DATASETS["MAFW"].classes == ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
                                        "contempt", "anxiety", "helplessness", "disappointment")
    assert DATASETS["RAVDESS"].classes == ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust",
                                           "surprised")
    assert DATASETS["CREMA-D"].classes == ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
    assert DATASETS["ENTERFACE"].classes == ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
    assert DATASETS["DEMO"].classes == ("smile forming", "smile fading", "brows raising", "mouth opening", "neutral")
    assert [k for k, v in DATASETS.items() if v.frame_ext != "jpg"] == ["MAFW"]
    assert DATASETS["MAFW"].frame_ext == "png"
    assert {k: v.val_file for k, v in DATASETS.items()} == {k: "val.csv" if k == "DFEW" else "test.csv"
                                                            for k in DATASETS}


def test_read_annotations_keeps_the_written_id_and_resolves_the_path(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("frames/00001 3\n/abs/00002 0\n\nframes/00003 6\n")
    rows = read_annotations(csv, 7, data_root="/data/dfew")
    assert [(r.clip_id, r.path, r.label) for r in rows] == [
        ("frames/00001", "/data/dfew/frames/00001", 3), ("/abs/00002", "/abs/00002", 0),
        ("frames/00003", "/data/dfew/frames/00003", 6)]
    assert rows[2].source == f"{csv}:4"
    assert read_annotations(csv, 7)[0].path == "frames/00001"


@pytest.mark.parametrize("line, message", [
    ("frames/00001", "expected '<path> <label>'"),
    ("frames/00001  2", "expected '<path> <label>'"),
    ("frames/00001 2 3", "expected '<path> <label>'"),
    ("frames/00001 two", "label 'two' is not an integer"),
    ("frames/00001 2.0", "label '2.0' is not an integer"),
    ("frames/00001 7", "label 7 is outside 0..6"),
    ("frames/00001 -1", "label -1 is outside 0..6"),
])
def test_read_annotations_names_file_and_line_of_a_bad_line(tmp_path, line, message):
    csv = tmp_path / "test.csv"
    csv.write_text(f"frames/00000 1\n{line}\n")
    with pytest.raises(ValueError, match=rf"test\.csv:2: {message}".replace("(", r"\(").replace(")", r"\)")):
        read_annotations(csv, 7)
