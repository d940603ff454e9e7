"""preprocess/extract_faces.py on trees of real-face videos, and the two-command preparation of RAVDESS, CREMA-D and
eNTERFACE'05 from their distributed video layouts."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from demo_data import make_scene_video
from preprocess import crema_d, enterface, extract_faces, ravdess

REPO = Path(__file__).resolve().parent.parent
SIZE = (192, 108)
FRAMES = 12


def poses(n: int = FRAMES, *, angle: float = 0.0, start_x: float = 96, speed: float = 2.0,
          height: float = 40.0) -> np.ndarray:
    """A face moving right `speed` px a frame, tilting from 0 to `angle` degrees and scaling by ±10 %."""
    t = np.arange(n)
    return np.stack([start_x + speed * t, np.full(n, 54.0), height * (1 + 0.1 * np.sin(t / 3)),
                     angle * t / max(n - 1, 1)], axis=1)


def face_video(path: Path, pose: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_scene_video(path, pose, size=SIZE)


def read_report(out: Path) -> dict[str, dict]:
    with (out / "extract_report.csv").open(newline="") as f:
        return {Path(row["video"]).name: row for row in csv.DictReader(f)}


def extract(root: Path, out: Path, *extra: str) -> list[dict]:
    return extract_faces.main(["--root", str(root), "--out", str(out), "--size", "48", "--workers", "1", *extra])


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A tilting, moving face; a wall without a face; a face that walks out of the frame."""
    root = tmp_path_factory.mktemp("videos")
    face_video(root / "talk" / "tilt.mp4", poses(angle=30))
    face_video(root / "wall.mp4", np.full((FRAMES, 4), np.nan))
    face_video(root / "talk" / "leaves.mp4", poses(start_x=150, speed=12))
    return root


def test_crops_of_every_frame_and_a_report_of_missing_faces(videos, tmp_path):
    out = tmp_path / "faces"
    extract(videos, out)
    crops = sorted((out / "talk" / "tilt").iterdir())
    assert [p.name for p in crops] == [f"{i:05d}.jpg" for i in range(1, FRAMES + 1)]
    assert cv2.imread(str(crops[0])).shape == (48, 48, 3)
    assert not (out / "wall").exists()
    report = read_report(out)
    assert list(report) == ["leaves.mp4", "tilt.mp4", "wall.mp4"]  # the order of the sorted paths
    assert report["tilt.mp4"] == {"video": str(videos / "talk" / "tilt.mp4"), "frames": str(FRAMES),
                                  "face_frames": str(FRAMES), "reason": ""}
    assert report["wall.mp4"]["face_frames"] == "0" and report["wall.mp4"]["reason"] == "no face"
    left = report["leaves.mp4"]
    assert 0 < int(left["face_frames"]) < FRAMES and left["reason"].startswith("face missed in")
    assert len(list((out / "talk" / "leaves").iterdir())) == FRAMES  # the held box keeps the frame count


def test_crop_centres_follow_the_face(videos, tmp_path):
    """The crop of the first and last frame of the tilting face, turned upright by the eyes, shows the face: its
    centre is skin, not sky."""
    out = tmp_path / "faces"
    extract(videos, out, "--glob", "talk/tilt.mp4", "--align", "eyes")
    for name in ("00001.jpg", f"{FRAMES:05d}.jpg"):
        crop = cv2.imread(str(out / "talk" / "tilt" / name))
        centre = crop[18:30, 18:30].reshape(-1, 3).mean(axis=0)
        assert centre[2] > centre[0] + 20, f"{name}: the crop's centre {centre} is not a face's (red > blue)"


def test_a_rerun_skips_what_is_done_and_finishes_an_interrupted_extraction(videos, tmp_path, capsys):
    out = tmp_path / "faces"
    extract(videos, out)
    done = out / "talk" / "tilt" / "00001.jpg"
    stamp = done.stat().st_mtime_ns
    # An interruption: one video's folder never got its final name, its temporary one is half written.
    (out / "talk" / "leaves").rename(out / "talk" / ".leaves.partial")
    (out / "talk" / ".leaves.partial" / "00003.jpg").unlink()
    capsys.readouterr()
    extract(videos, out)
    assert f"3 videos under {videos}: 2 done already, 1 to extract" in capsys.readouterr().out
    assert done.stat().st_mtime_ns == stamp
    assert len(list((out / "talk" / "leaves").iterdir())) == FRAMES
    assert not (out / "talk" / ".leaves.partial").exists()
    assert set(read_report(out)) == {"wall.mp4", "leaves.mp4", "tilt.mp4"}


@pytest.mark.slow
def test_workers_give_the_same_crops_as_one_process(videos, tmp_path):
    """The command line with 2 worker processes (bounded in time) writes what one process writes."""
    one, two = tmp_path / "one", tmp_path / "two"
    extract(videos, one)
    subprocess.run([sys.executable, "-m", "preprocess.extract_faces", "--root", str(videos), "--out", str(two),
                    "--size", "48", "--workers", "2"], cwd=REPO, check=True, timeout=300, capture_output=True)
    assert read_report(one) == read_report(two)
    for crop in sorted(one.rglob("*.jpg")):
        assert crop.read_bytes() == (two / crop.relative_to(one)).read_bytes()


def test_bad_roots_and_unreadable_videos(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
        extract(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no video files"):
        extract(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "garbage.mp4").write_bytes(b"not a video" * 100)
    extract(tmp_path / "bad", tmp_path / "out")
    assert read_report(tmp_path / "out")["garbage.mp4"]["reason"].startswith("cannot read: ")


# --- the three datasets distributed as video: extraction, then the list script ------------------------------------

def test_ravdess_in_two_commands(tmp_path, capsys):
    root = tmp_path / "RAVDESS"
    clips = {"Actor_01/02-01-03-01-01-01-01": 2, "Actor_05/02-01-08-02-02-01-05": 7,
             "Actor_24/02-01-01-01-01-02-24": 0}
    for i, clip in enumerate(clips):
        face_video(root / f"{clip}.mp4", poses(angle=10 * i))
    face_video(root / "Actor_01" / "01-01-03-01-01-01-01.mp4", poses())  # audio-video: not in the lists
    extract(root, root / "face_aligned")
    ravdess.main(["--root", str(root), "--out", str(tmp_path / "lists"), "--fold", "1", "--workers", "1"])
    faces = root / "face_aligned"
    assert lines(tmp_path / "lists" / "split01" / "test.csv") == [f"{faces}/Actor_01/02-01-03-01-01-01-01 2"]
    assert lines(tmp_path / "lists" / "split01" / "train.csv") == [f"{faces}/Actor_05/02-01-08-02-02-01-05 7",
                                                                    f"{faces}/Actor_24/02-01-01-01-01-02-24 0"]
    assert "OK: 0 errors" in capsys.readouterr().out


def test_crema_d_in_two_commands(tmp_path, capsys):
    root = tmp_path / "CREMA-D"
    for name in ("1001_DFA_ANG_XX", "1019_IEO_HAP_HI"):
        face_video(root / "VideoFlash" / f"{name}.flv", poses())
    extract(root / "VideoFlash", root / "face_aligned")
    crema_d.main(["--root", str(root), "--out", str(tmp_path / "lists"), "--fold", "1", "--workers", "1"])
    faces = root / "face_aligned"
    assert lines(tmp_path / "lists" / "split01" / "test.csv") == [f"{faces}/1001_DFA_ANG_XX 0"]
    assert lines(tmp_path / "lists" / "split01" / "train.csv") == [f"{faces}/1019_IEO_HAP_HI 3"]
    assert "OK: 0 errors" in capsys.readouterr().out


def test_enterface_in_two_commands(tmp_path, capsys):
    """The distributed folders have spaces ('subject 1/anger/sentence 1/s1_an_1.avi'); the crops' have '_'."""
    root = tmp_path / "eNTERFACE"
    distributed = root / "enterface database"
    for video in ("subject 1/anger/sentence 1/s1_an_1.avi", "subject 12/happiness/sentence 3/s12_ha_3.avi"):
        face_video(distributed / video, poses())
    extract(distributed, root / "face_aligned")
    enterface.main(["--root", str(root), "--out", str(tmp_path / "lists"), "--fold", "1", "--workers", "1"])
    faces = root / "face_aligned"
    assert lines(tmp_path / "lists" / "split01" / "test.csv") == [f"{faces}/subject_1/anger/sentence_1/s1_an_1 0"]
    assert lines(tmp_path / "lists" / "split01" / "train.csv") == [
        f"{faces}/subject_12/happiness/sentence_3/s12_ha_3 3"]
    assert "OK: 0 errors" in capsys.readouterr().out
