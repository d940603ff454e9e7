"""demo_data: the real on-disk format, determinism, reuse, and that the class lies in the motion, not in a frame."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import demo_data
from demo_data import DEMO_CLASSES, make_demo_dataset

SMALL = dict(train_per_class=3, test_per_class=2, num_frames=8, size=32, seed=5)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("small") / "demo", **SMALL)


def read_list(root: Path, split: str) -> list[tuple[str, int]]:
    lines = (root / f"{split}.csv").read_text().splitlines()
    return [(path, int(label)) for path, label in (line.split(" ") for line in lines)]


def frame_files(root: Path, path: str) -> list[Path]:
    return sorted((root / path).glob("*.jpg"))


def test_csv_lines_are_in_the_real_format_and_balanced(small):
    seen = set()
    for split, per_class in (("train", SMALL["train_per_class"]), ("test", SMALL["test_per_class"])):
        raw = (small / f"{split}.csv").read_bytes()
        assert raw.endswith(b"\n") and b"\r" not in raw and b"\n\n" not in raw
        lines = raw.decode().splitlines(keepends=True)
        for no, line in enumerate(lines, 1):
            assert re.fullmatch(r"frames/\d{6} [0-4]\n", line), f"{split}.csv:{no}: {line!r}"
        entries = read_list(small, split)
        paths = [p for p, _ in entries]
        assert len(set(paths)) == len(paths) and not seen & set(paths)  # no duplicates, train and test disjoint
        seen |= set(paths)
        assert Counter(label for _, label in entries) == dict.fromkeys(range(len(DEMO_CLASSES)), per_class)
        assert all((small / p).is_dir() for p in paths)  # relative to the root, as the loader's --data_root expects
    assert DEMO_CLASSES == ("smile forming", "smile fading", "brows raising", "mouth opening", "neutral")


def test_frames_decode_at_the_configured_size_and_names_sort_temporally(small):
    lengths = []
    for path, _ in read_list(small, "train") + read_list(small, "test"):
        files = frame_files(small, path)
        lengths.append(len(files))
        assert [f.name for f in files] == [f"{t:05d}.jpg" for t in range(1, len(files) + 1)]
        for f in files[:: len(files) - 1]:
            with Image.open(f) as im:
                assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (SMALL["size"], SMALL["size"]))
    num_frames = SMALL["num_frames"]
    assert min(lengths) >= num_frames and max(lengths) <= num_frames + num_frames // 4
    assert len(set(lengths)) > 1  # lengths vary, so the loader's sampling is exercised


def test_smile_fading_is_smile_forming_reversed(small):
    """Each 'smile fading' clip holds exactly the frames of one 'smile forming' clip, in reverse order."""
    for split in ("train", "test"):
        entries = read_list(small, split)
        forming = {tuple(f.read_bytes() for f in frame_files(small, p)): p for p, label in entries if label == 0}
        fading = [tuple(f.read_bytes() for f in frame_files(small, p))[::-1] for p, label in entries if label == 1]
        assert sorted(fading) == sorted(forming)


def test_same_seed_same_bytes_other_seed_other_frames(small, tmp_path):
    again = make_demo_dataset(tmp_path / "again", **SMALL)
    other = make_demo_dataset(tmp_path / "other", **{**SMALL, "seed": SMALL["seed"] + 1})
    assert (again / "train.csv").read_bytes() == (small / "train.csv").read_bytes()
    for path, _ in read_list(small, "test")[:3]:
        first, last = frame_files(small, path)[0], frame_files(small, path)[-1]
        assert (again / path / first.name).read_bytes() == first.read_bytes()
        assert (again / path / last.name).read_bytes() == last.read_bytes()
        assert (other / path / first.name).read_bytes() != first.read_bytes()


def test_an_existing_dataset_is_reused_and_a_different_one_replaced(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", **SMALL)
    stamp = (root / "meta.json").stat().st_mtime_ns
    assert make_demo_dataset(root, **SMALL) == root and (root / "meta.json").stat().st_mtime_ns == stamp
    make_demo_dataset(root, **{**SMALL, "test_per_class": 1})
    assert len(read_list(root, "test")) == len(DEMO_CLASSES)
    assert len(list((root / "frames").iterdir())) == len(DEMO_CLASSES) * (SMALL["train_per_class"] + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary or old directories left behind
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a demo dataset")
    with pytest.raises(FileExistsError, match="mine"):
        make_demo_dataset(tmp_path / "mine", **SMALL)


def test_every_frame_has_the_same_expression_distribution_in_every_class():
    """Held parameters are drawn like moving ones, so a frame's expression says nothing about the class."""
    rng, num_frames, n = np.random.default_rng(0), 16, 20
    per_class = {label: np.concatenate([demo_data._expressions(rng, label, num_frames, n)[0] for _ in range(3000)])
                 for label in (0, 2, 3, 4)}
    # Quantiles in the two modes (start and end levels) and the mean; the median sits where the density is low.
    stats = {label: np.vstack([np.quantile(e, [0.1, 0.25, 0.75, 0.9], axis=0), e.mean(0)])
             for label, e in per_class.items()}
    for label in (2, 3, 4):
        np.testing.assert_allclose(stats[label], stats[0], atol=0.03)
    for label, moving in ((0, 0), (2, 1), (3, 2), (4, None)):
        expr, _ = demo_data._expressions(rng, label, num_frames, n)
        change = expr[num_frames - 1] - expr[n - num_frames]  # inside the part every 16-frame window sees
        for p in range(3):
            assert change[p] >= 0.5 if p == moving else np.ptp(expr[:, p]) == 0


# Learnability: a linear classifier on the motion image (mean of a 16-frame window minus its first frame, the CA
# branch's input) against the same classifier on one random frame of the window. Measured over seeds 0-7 (50 train /
# 30 test clips per class, 64 px): motion 5-class 0.48-0.57, 0 vs 1 0.70-0.95; one frame 5-class 0.16-0.26, 0 vs 1
# 0.47-0.52 (chance 0.2 and 0.5). The test uses seed 0 (0.49, 0.82, 0.23, 0.52).
PROBE = dict(train_per_class=50, test_per_class=30, num_frames=16, size=64, seed=0)


def probe_features(root: Path, split: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per clip: motion image and one random frame (grey, 16x16), and the labels."""
    motion, still, labels = [], [], []
    for path, label in read_list(root, split):
        files = frame_files(root, path)
        start = int(rng.integers(len(files) - PROBE["num_frames"] + 1))  # a random window, as the loader draws
        clip = np.stack([cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files[start:start + PROBE["num_frames"]]])
        clip = clip.astype(np.float32) / 255
        small = lambda im: cv2.resize(im, (16, 16), interpolation=cv2.INTER_AREA).ravel()  # noqa: E731
        motion.append(small(cv2.GaussianBlur(clip.mean(0) - clip[0], (0, 0), 2)))
        still.append(small(clip[rng.integers(len(clip))]))
        labels.append(label)
    return np.stack(motion), np.stack(still), np.array(labels)


def probe_accuracies(root: Path) -> dict[str, float]:
    rng = np.random.default_rng(0)
    (m_tr, s_tr, y_tr), (m_te, s_te, y_te) = probe_features(root, "train", rng), probe_features(root, "test", rng)
    pair_tr, pair_te = y_tr <= 1, y_te <= 1

    def score(x_tr, y_train, x_te, y_test) -> float:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=3000))
        return float(clf.fit(x_tr, y_train).score(x_te, y_test))

    return dict(motion=score(m_tr, y_tr, m_te, y_te),
                motion_01=score(m_tr[pair_tr], y_tr[pair_tr], m_te[pair_te], y_te[pair_te]),
                still=score(s_tr, y_tr, s_te, y_te),
                still_01=score(s_tr[pair_tr], y_tr[pair_tr], s_te[pair_te], y_te[pair_te]))


def test_the_class_is_learnable_from_motion_but_not_from_one_frame(tmp_path):
    acc = probe_accuracies(make_demo_dataset(tmp_path / "probe", **PROBE))
    assert acc["motion"] >= 0.38 and acc["motion_01"] >= 0.65, acc
    assert acc["still"] <= 0.32 and 0.38 <= acc["still_01"] <= 0.62, acc
