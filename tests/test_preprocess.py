"""preprocess/: each script on a fake tree of its documented layout writes the expected lines, labels and folds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from preprocess import crema_d, dfew, enterface, ferv39k, mafw, ravdess, reroot, voxceleb2

REPO = Path(__file__).resolve().parent.parent
_ENCODED = {ext: cv2.imencode(f".{ext}", np.full((8, 8, 3), 128, np.uint8))[1].tobytes() for ext in ("jpg", "png")}


def frames(folder: Path, n: int = 3, ext: str = "jpg") -> Path:
    """A clip folder of n tiny frames 00000.<ext>, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i:05d}.{ext}").write_bytes(_ENCODED[ext])
    return folder


def write_video(path: Path, n: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (32, 32))
    for t in range(n):
        writer.write(np.full((32, 32, 3), 3 * t % 256, np.uint8))
    writer.release()
    return path


def lines(path: Path) -> list[str]:
    text = path.read_text()
    assert text.endswith("\n") and "\r" not in text and "\n\n" not in text
    return text.splitlines()


def run(module, *argv) -> None:
    """Run a script's main in this process, with one worker."""
    module.main([*map(str, argv), "--workers", "1"])


# --- FERV39k -----------------------------------------------------------------------------------------------------

def make_ferv39k(root: Path) -> Path:
    """A FERV39k tree: 3 training and 4 test clips of 16 frames, with the official split files."""
    train = [("War/Fear/0120", "Fear"), ("Talkshow/Happy/0007", "Happy"), ("School/Neutral/0033", "Neutral")]
    test = [("Crime/Disgust/0001", "Disgust"), ("Action/Surprise/0002", "Surprise"), ("Argue/Sad/0003", "Sad"),
            ("Argue/Angry/0004", "Angry")]
    for clip, _ in train + test:
        frames(root / "2_ClipsforFaceCrop" / clip, 16)
    setups = root / "4_setups" / "All_scenes"
    setups.mkdir(parents=True)
    (setups / "train_All.csv").write_text("".join(f"{c} {e}\n" for c, e in train))
    (setups / "test_All.csv").write_text("".join(f"{c} {e}\n" for c, e in test))
    return root


def test_ferv39k_lists_follow_the_split_files_with_the_label_order(tmp_path, capsys):
    root = make_ferv39k(tmp_path / "FERV39k")
    out = tmp_path / "out"
    run(ferv39k, "--root", root, "--out", out)
    clips = root / "2_ClipsforFaceCrop"
    assert lines(out / "train.csv") == [f"{clips}/War/Fear/0120 6", f"{clips}/Talkshow/Happy/0007 0",
                                        f"{clips}/School/Neutral/0033 2"]
    assert lines(out / "test.csv") == [f"{clips}/Crime/Disgust/0001 5", f"{clips}/Action/Surprise/0002 4",
                                       f"{clips}/Argue/Sad/0003 1", f"{clips}/Argue/Angry/0004 3"]
    assert sorted(p.name for p in out.iterdir()) == ["test.csv", "train.csv"]
    report = capsys.readouterr().out
    assert "OK: 0 errors" in report and "Fear" in report and "short" not in report  # at rate 1, 16 frames do

    run(ferv39k, "--root", root, "--out", out, "--relative")
    assert lines(out / "train.csv")[0] == "2_ClipsforFaceCrop/War/Fear/0120 6"


def test_ferv39k_unknown_emotion_names_the_split_file_line(tmp_path):
    setups = tmp_path / "4_setups" / "All_scenes"
    setups.mkdir(parents=True)
    (setups / "train_All.csv").write_text("War/Fear/0120 Fear\nWar/Fear/0121 Scared\n")
    with pytest.raises(ValueError, match=r"train_All\.csv:2: unknown class 'Scared'"):
        run(ferv39k, "--root", tmp_path, "--out", tmp_path / "out")


# --- DFEW ----------------------------------------------------------------------------------------------------------

def make_dfew(root: Path, clips: dict[int, int]) -> None:
    """Clip id -> official label 1..7; fold k tests the ids with id % 5 == k - 1."""
    for clip in clips:
        frames(root / "Clip" / "jpg_256" / f"{clip:05d}")
    for k in range(1, 6):
        for part, keep in (("train", lambda i, k=k: i % 5 != k - 1), ("test", lambda i, k=k: i % 5 == k - 1)):
            folder = root / "EmoLabel_DataSplit" / f"{part}(single-labeled)"
            folder.mkdir(parents=True, exist_ok=True)
            rows = "".join(f"{i},{i * 7},{y}\n" for i, y in clips.items() if keep(i))
            (folder / f"set_{k}.csv").write_text("video_name,frames,label\n" + rows)


def test_dfew_writes_five_folds_labels_minus_one_and_val_as_test(tmp_path):
    root, out = tmp_path / "DFEW", tmp_path / "out"
    clips = {i: i % 7 + 1 for i in range(1, 21)}
    make_dfew(root, clips)
    run(dfew, "--root", root, "--out", out, "--relative")
    for k in range(1, 6):
        split = out / f"split0{k}"
        test = [f"Clip/jpg_256/{i:05d} {y - 1}" for i, y in clips.items() if i % 5 == k - 1]
        assert lines(split / "test.csv") == test
        assert lines(split / "train.csv") == [f"Clip/jpg_256/{i:05d} {y - 1}" for i, y in clips.items()
                                              if i % 5 != k - 1]
        assert (split / "val.csv").read_bytes() == (split / "test.csv").read_bytes()
    # The five test folds partition the clips.
    tests = [set(lines(out / f"split0{k}" / "test.csv")) for k in range(1, 6)]
    assert sum(map(len, tests)) == len(set().union(*tests)) == 20

    run(dfew, "--root", root, "--out", tmp_path / "one", "--fold", 3)
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["split03"]
    assert lines(tmp_path / "one" / "split03" / "test.csv")[0] == f"{root}/Clip/jpg_256/00002 2"


def test_dfew_reads_the_official_jpg_224_folder_name_too(tmp_path):
    root = tmp_path / "DFEW"
    make_dfew(root, {1: 1, 2: 2, 3: 3, 4: 4, 5: 5})
    (root / "Clip" / "jpg_256").rename(root / "Clip" / "jpg_224")
    run(dfew, "--root", root, "--out", tmp_path / "out", "--fold", 1, "--relative")
    assert lines(tmp_path / "out" / "split01" / "test.csv") == ["Clip/jpg_224/00005 4"]


# --- MAFW ----------------------------------------------------------------------------------------------------------

def test_mafw_lists_png_frame_folders_with_the_label_order(tmp_path, capsys):
    root, out = tmp_path / "MAFW", tmp_path / "out"
    names = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt", "anxiety",
             "helplessness", "disappointment"]
    ids = [19 + 7 * i for i in range(22)]
    for i in ids:
        frames(root / "data" / "frames" / f"{i:05d}", ext="png")
    for k in range(1, 6):
        split = root / "split" / "single" / "no_caption" / f"set_{k}"
        split.mkdir(parents=True)
        (split / "train.txt").write_text("".join(f"{i:05d}.mp4 {names[n % 11]}\n" for n, i in enumerate(ids)
                                                 if n % 5 != k - 1))
        (split / "test.txt").write_text("".join(f"{i:05d}.mp4 {names[n % 11]}\n" for n, i in enumerate(ids)
                                                if n % 5 == k - 1))
    run(mafw, "--root", root, "--out", out)
    assert lines(out / "split01" / "test.csv")[:3] == [f"{root}/data/frames/00019 0", f"{root}/data/frames/00054 5",
                                                       f"{root}/data/frames/00089 10"]
    assert not (out / "split01" / "val.csv").exists()
    report = capsys.readouterr().out
    assert "disappointment" in report and "3/3/3" in report and " 0 errors" in report  # it read the .png frames


# --- VoxCeleb2 -----------------------------------------------------------------------------------------------------

def test_voxceleb2_opens_every_video_and_lists_the_broken_ones_with_the_reason(tmp_path, capsys):
    root, out = tmp_path / "dev" / "mp4", tmp_path / "out"
    good = [write_video(root / "id00001" / "AbCdEfGhIjK" / "00001.mp4"),
            write_video(root / "id00001" / "AbCdEfGhIjK" / "00002.mp4"),
            write_video(root / "id00002" / "ZyXwVuTsRqP" / "00001.mp4")]
    (root / "id00002" / "ZyXwVuTsRqP" / "00002.mp4").write_bytes(b"\x00" * 4096)
    (root / "id00003" / "QwErTyUiOpA").mkdir(parents=True)
    (root / "id00003" / "QwErTyUiOpA" / "00001.mp4").write_bytes(b"")
    run(voxceleb2, "--root", root, "--out", out)
    assert lines(out / "info_clean.csv") == [f"{p} 0" for p in good]
    broken = lines(out / "broken.txt")
    assert [b.split(" ")[0] for b in broken] == [f"{root}/id00002/ZyXwVuTsRqP/00002.mp4",
                                                 f"{root}/id00003/QwErTyUiOpA/00001.mp4"]
    assert all(len(b.split(" ", 1)[1]) > 3 for b in broken)  # decord's reason follows the path
    assert "total 5, broken 2" in capsys.readouterr().out


# --- the datasets shipped only as lists ----------------------------------------------------------------------------

def test_crema_d_folds_by_actor_and_labels_from_the_emotion_code(tmp_path, capsys):
    root, out = tmp_path / "CREMA-D", tmp_path / "out"
    actors = [1001, 1018, 1019, 1040, 1055, 1072, 1073, 1091]
    names = [f"{a}_{s}_{e}_{lvl}" for a in actors for s, e, lvl in (("IEO", "ANG", "HI"), ("TIE", "NEU", "XX"),
                                                                     ("MTI", "SAD", "XX"))]
    for name in names:
        frames(root / "face_aligned" / name)
    (root / "face_aligned" / "README").mkdir()
    run(crema_d, "--root", root, "--out", out, "--relative")
    assert lines(out / "split01" / "test.csv") == [
        "face_aligned/1001_IEO_ANG_HI 0", "face_aligned/1001_MTI_SAD_XX 5", "face_aligned/1001_TIE_NEU_XX 4",
        "face_aligned/1018_IEO_ANG_HI 0", "face_aligned/1018_MTI_SAD_XX 5", "face_aligned/1018_TIE_NEU_XX 4"]
    assert_folds_partition(out, 5, total=len(names), group=lambda line: int(line.split("/")[1][:4]))
    assert "skipped 1 folders" in capsys.readouterr().out


def test_enterface_takes_the_subject_from_its_folder(tmp_path):
    root, out = tmp_path / "eNTERFACE", tmp_path / "out"
    clips = [(1, "anger", 1, "s1_an_1"), (10, "happiness", 3, "s10_ha_3"), (11, "fear", 2, "s12_fe_2"),
             (20, "surprise", 5, "s20_su_5"), (29, "sadness", 4, "s_3_sa_4"), (44, "disgust", 1, "s44_di_1"),
             (16, "surprise", 3, "s16_su_3avi")]
    for subject, emotion, sentence, name in clips:
        frames(root / "face_aligned" / f"subject_{subject}" / emotion / f"sentence_{sentence}" / name)
    run(enterface, "--root", root, "--out", out, "--relative")
    assert lines(out / "split02" / "test.csv") == ["face_aligned/subject_11/fear/sentence_2/s12_fe_2 2",
                                                   "face_aligned/subject_16/surprise/sentence_3/s16_su_3avi 5"]
    assert lines(out / "split05" / "test.csv") == ["face_aligned/subject_44/disgust/sentence_1/s44_di_1 1"]
    assert_folds_partition(out, 5, total=len(clips), group=lambda line: int(line.split("/")[1][8:]))


def test_ravdess_keeps_video_only_speech_and_folds_by_actor(tmp_path, capsys):
    root, out = tmp_path / "RAVDESS", tmp_path / "out"
    for actor in range(1, 25):
        frames(root / "face_aligned" / f"Actor_{actor:02d}" / f"02-01-{actor % 8 + 1:02d}-01-01-01-{actor:02d}")
    frames(root / "face_aligned" / "Actor_01" / "01-01-03-01-01-01-01")  # audio-video: not in the lists
    frames(root / "face_aligned" / "Actor_01" / "02-02-03-01-01-01-01")  # song: not in the lists
    run(ravdess, "--root", root, "--out", out)
    assert lines(out / "split01" / "test.csv") == [
        f"{root}/face_aligned/Actor_{a:02d}/02-01-{a % 8 + 1:02d}-01-01-01-{a:02d} {a % 8}" for a in range(1, 5)]
    assert_folds_partition(out, 6, total=24, group=lambda line: int(line.split(" ")[0][-2:]))
    assert "skipped 2 folders" in capsys.readouterr().out


def assert_folds_partition(out: Path, count: int, total: int, group) -> None:
    """Test folds are disjoint and cover every clip; each fold trains on the rest; no group on both sides."""
    folds = [(set(lines(out / f"split{k:02d}" / "train.csv")), set(lines(out / f"split{k:02d}" / "test.csv")))
             for k in range(1, count + 1)]
    assert sorted(p.name for p in out.iterdir()) == [f"split{k:02d}" for k in range(1, count + 1)]
    everything = set().union(*(test for _, test in folds))
    assert len(everything) == sum(len(test) for _, test in folds) == total
    for train, test in folds:
        assert train | test == everything and not train & test
        assert not {group(x) for x in train} & {group(x) for x in test}


# --- re-rooting and the command line -------------------------------------------------------------------------------

def test_reroot_rewrites_the_released_prefix_and_keeps_labels_and_order(tmp_path):
    released = tmp_path / "released"
    for k in (1, 2):
        (released / f"split0{k}").mkdir(parents=True)
        (released / f"split0{k}" / "test.csv").write_text(
            f"/mnt/data1/brain/AC/Dataset/DFEW/Clip/jpg_256/0000{k} {k}\n/mnt/data1/brain/AC/Dataset/DFEW/Clip/"
            f"jpg_256/0001{k} 6\n")
    csvs = sorted(released.glob("*/test.csv"))
    reroot.main([*map(str, csvs), "--new", "/data/dfew/Clip/jpg_256", "--out", str(tmp_path / "here")])
    assert lines(tmp_path / "here" / "split02" / "test.csv") == ["/data/dfew/Clip/jpg_256/00002 2",
                                                                  "/data/dfew/Clip/jpg_256/00012 6"]
    reroot.main([str(csvs[0]), "--old", "/mnt/data1/brain/AC/Dataset/DFEW", "--relative", "--in_place"])
    assert lines(csvs[0]) == ["Clip/jpg_256/00001 1", "Clip/jpg_256/00011 6"]
    with pytest.raises(SystemExit, match=r"test\.csv:1: Clip/jpg_256/00001 is not under /elsewhere"):
        reroot.main([str(csvs[0]), "--old", "/elsewhere", "--new", "/x", "--in_place"])


def test_scripts_run_from_the_repo_root_and_fail_on_a_bad_tree(tmp_path):
    root = tmp_path / "CREMA-D"
    frames(root / "face_aligned" / "1001_IEO_ANG_HI")
    (root / "face_aligned" / "1020_IEO_HAP_HI").mkdir()  # an empty clip folder: the final check fails
    done = subprocess.run([sys.executable, "-m", "preprocess.crema_d", "--root", str(root), "--out",
                           str(tmp_path / "out"), "--fold", "1", "--workers", "1"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 1, done.stderr
    assert f"split01/train.csv:1: error: {root}/face_aligned/1020_IEO_HAP_HI: no *.jpg frames" in done.stdout
    assert "FAILED: 1 errors" in done.stdout


def script(name: str, *argv, form: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run preprocess/<name>.py as a user types it: `python preprocess/<name>.py` or `python -m preprocess.<name>`."""
    command = [str(REPO / "preprocess" / f"{name}.py")] if form == "file" else ["-m", f"preprocess.{name}"]
    return subprocess.run([sys.executable, *command, *map(str, argv)], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("form", ["file", pytest.param("module", marks=pytest.mark.slow)])
def test_a_script_its_check_and_reroot_run_as_files_and_as_modules(tmp_path, form):
    # the file form from another folder too (the originals' "cd preprocess; python ferv39k.py"); -m from the root
    root = make_ferv39k(tmp_path / "FERV39k")
    out = tmp_path / "out"
    cwd = REPO / "preprocess" if form == "file" else REPO
    done = script("ferv39k", "--root", root, "--out", out, "--workers", "1", form=form, cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert "OK: 0 errors" in done.stdout
    assert lines(out / "train.csv")[0] == f"{root}/2_ClipsforFaceCrop/War/Fear/0120 6"

    done = script("check", out / "train.csv", out / "test.csv", "--data_set", "FERV39k", "--sampling_rate", "1",
                  "--workers", "1", form=form, cwd=tmp_path if form == "file" else REPO)
    assert done.returncode == 0, done.stderr
    assert "train.csv        3" in done.stdout and "OK: 0 errors" in done.stdout

    done = script("reroot", out / "test.csv", "--new", "/data/FERV39k", "--out", tmp_path / "rerooted", form=form,
                  cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert lines(tmp_path / "rerooted" / "test.csv")[0] == "/data/FERV39k/Crime/Disgust/0001 5"


@pytest.mark.slow
@pytest.mark.parametrize("form", ["file", "module"])
def test_every_script_starts_in_both_forms(form):
    names = sorted(p.stem for p in (REPO / "preprocess").glob("*.py") if not p.stem.startswith("_")
                   and p.stem != "common")
    assert len(names) == 10  # extract_faces included
    for name in names:
        done = script(name, "--help", form=form, cwd=REPO)
        assert done.returncode == 0 and "usage:" in done.stdout, f"{name}: {done.stderr}"
