"""datasets.py: the dataset table, annotation parsing, temporal sampling, exact eval clips, training augmentation."""

from __future__ import annotations

import argparse
import pickle
import random

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import datasets
import video_augment
from datasets import (
    DATASETS,
    Annotation,
    ClipDataset,
    build_dataset,
    loaded_test_indices,
    read_annotations,
    seed_worker,
    train_indices,
    view_start,
)
from video_augment import VideoRandAugment

MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None, None]
STD = torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None, None]


def write_frames(folder, values, size=48, ext="png", names=None):
    """One flat-colour frame per value (frame identity = its level), or `names` for the files."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(values):
        name = names[i] if names else f"{i:05d}.{ext}"
        cv2.imwrite(str(folder / name), np.full((size, size, 3), v, np.uint8))
    return folder


def write_textured(folder, n, size=48, ext="jpg", seed=0):
    """Frames with texture and colour (so resizing and augmentation have something to change)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (0, 0), 2)
    for t in range(n):
        cv2.imwrite(str(folder / f"{t:05d}.{ext}"), np.roll(base, t, axis=1))
    return folder


def write_video(path, n, size=32):  # decord misreads some mp4v sizes (48x48), so 32
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (size, size))
    for t in range(n):
        writer.write(np.full((size, size, 3), 10 * t + 5, np.uint8))
    writer.release()
    return path


def levels(clip):
    """Per-frame mean pixel level (0..255) of a normalised (3, T, H, W) clip."""
    return ((clip * STD + MEAN) * 255).mean(dim=(0, 2, 3))


def entry(path, label=0, source="x.csv:1"):
    return Annotation(str(path), str(path), label, source)


def args_for(data_path, data_set="DFEW", **kw):
    base = dict(data_path=str(data_path), data_root=None, data_set=data_set, nb_classes=len(DATASETS[data_set].classes),
                num_frames=16, sampling_rate=2, input_size=32, short_side_size=32, test_num_segment=2,
                test_num_crop=2, aa="rand-m7-n4-mstd0.5-inc1", train_interpolation="bicubic", reprob=0.25,
                remode="pixel", recount=1, num_sample=1, num_segments=1)
    return argparse.Namespace(**{**base, **kw})


# --- the table ---------------------------------------------------------------------------------------------------

def test_dataset_table_holds_the_label_orders_of_data_md():
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


# --- annotations -------------------------------------------------------------------------------------------------

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


# --- temporal sampling -------------------------------------------------------------------------------------------

def test_train_indices_long_clip_rate_4_spreads_16_points_over_64_frames():
    for seed in range(20):
        np.random.seed(seed)
        idx = train_indices(300, 16, 4)
        start = idx[0]
        assert 0 <= start <= 300 - 65
        assert (idx - start).tolist() == [0, 4, 8, 12, 17, 21, 25, 29, 34, 38, 42, 46, 51, 55, 59, 63]


def test_train_indices_short_clip_is_spread_and_padded_with_the_last_frame():
    assert train_indices(40, 16, 4).tolist() == [0, 4, 8, 13, 17, 22, 26, 31, 35, 39] + [39] * 6
    assert train_indices(64, 16, 4).tolist() == np.linspace(0, 64, 16).clip(0, 63).astype(int).tolist()
    assert train_indices(3, 16, 4).tolist() == [2] * 16  # fewer frames than the rate: copies of the last one


def test_train_indices_rate_1_takes_16_consecutive_frames_of_a_random_window():
    starts = set()
    for seed in range(30):
        np.random.seed(seed)
        idx = train_indices(50, 16, 1)
        assert (idx - idx[0]).tolist() == list(range(16)) and idx[-1] <= 48
        starts.add(int(idx[0]))
    assert len(starts) > 5


def test_train_indices_draw_from_numpys_global_rng():
    np.random.seed(3)
    a = train_indices(500, 16, 4)
    np.random.seed(3)
    assert np.array_equal(a, train_indices(500, 16, 4))


def test_test_indices_and_view_starts():
    assert loaded_test_indices(50, 16, 4).tolist() == list(range(0, 50, 4)) + [48] * 3
    assert loaded_test_indices(100, 16, 4).tolist() == list(range(0, 100, 4))
    assert loaded_test_indices(1, 16, 4).tolist() == [0] * 16
    assert [view_start(25, c, 2) for c in range(2)] == [0, 9]  # first and last 16 of 25
    assert [view_start(25, c, 3) for c in range(3)] == [0, 4, 9]
    assert [view_start(16, c, 2) for c in range(2)] == [0, 0]
    assert view_start(25, 0, 1) == 0  # the original divides by zero here


# --- evaluation clips: exactly the original's numbers --------------------------------------------------------------

def pil_reference(files, size):
    """The original's eval clip: PIL open/convert/resize, ToTensor (/255), ImageNet normalisation."""
    frames = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files])
    clip = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255
    return (clip - MEAN) / STD


def test_test_views_equal_a_direct_pil_computation_and_follow_the_index_layout(tmp_path):
    folders = [write_textured(tmp_path / f"c{i}", n, size=50 + i, seed=i) for i, n in enumerate((45, 20))]
    ds = ClipDataset([entry(f, label=i) for i, f in enumerate(folders)], "test", sampling_rate=2,
                     input_size=32, short_side_size=32, test_num_segment=2, test_num_crop=2)
    assert len(ds) == 2 * 2  # an item per temporal view: its 2 spatial crops are both the whole frame
    for index in range(len(ds)):
        clip, label, clip_id, chunk, num_crops = ds[index]
        video = index % 2
        assert (chunk, num_crops, label, clip_id) == (index // 2, 2, video, str(folders[video]))
        files = sorted(folders[video].glob("*.jpg"))
        loaded = [files[i] for i in loaded_test_indices(len(files), 16, 2)]
        start = 0 if chunk == 0 else len(loaded) - 16  # S=2: the first and the last 16 sampled frames
        expected = pil_reference(loaded[start:start + 16], 32)
        assert clip.dtype == torch.float32 and clip.shape == (3, 16, 32, 32)
        assert torch.equal(clip, expected)


def first_met_by_the_original(num_clips: int, views: int, world_size: int) -> list[int]:
    """The original's pred.csv order, from torch's own sampler: every view an item (view * N + clip), rank 0's
    items read first, then rank 1's, ...; each clip listed where it first appears."""
    order = {}
    for rank in range(world_size):
        sampler = torch.utils.data.DistributedSampler(range(num_clips * views), num_replicas=world_size, rank=rank,
                                                      shuffle=False)
        for index in sampler:
            order.setdefault(index % num_clips)
    return list(order)


@pytest.mark.parametrize("num_clips,views,world_size", [(7, 4, 1), (7, 4, 3), (12, 4, 8), (5, 1, 8), (2341, 4, 3),
                                                        (9, 4, 6), (1, 4, 2)])
def test_the_test_order_is_the_one_the_original_merge_meets(num_clips, views, world_size):
    order = datasets.original_test_order(num_clips, views, world_size)
    assert order == first_met_by_the_original(num_clips, views, world_size)
    assert sorted(order) == list(range(num_clips))
    if world_size == 1:
        assert order == list(range(num_clips))


def test_validation_clip_equals_pil_on_the_train_sampler_window(tmp_path):
    folder = write_textured(tmp_path / "c", 70, size=40)
    ds = ClipDataset([entry(folder, label=2)], "validation", sampling_rate=2, input_size=32, short_side_size=32)
    np.random.seed(11)
    clip, label, clip_id = ds[0]
    np.random.seed(11)
    files = sorted(folder.glob("*.jpg"))
    expected = pil_reference([files[i] for i in train_indices(70, 16, 2)], 32)
    assert (label, clip_id) == (2, str(folder))
    assert torch.equal(clip, expected)


def test_test_views_pick_the_sampled_frames_in_lexicographic_order(tmp_path):
    # 40 frames at rate 2 -> 20 loaded; view 0 = loaded 0..15 (frames 0..30), view 1 = loaded 4..19 (8..38).
    folder = write_frames(tmp_path / "c", [5 + 6 * k for k in range(40)])
    ds = ClipDataset([entry(folder)], "test", frame_ext="png", sampling_rate=2, input_size=16, short_side_size=16,
                     test_num_segment=2, test_num_crop=1)
    frame_of = [torch.round((levels(ds[c][0]) - 5) / 6).int().tolist() for c in range(2)]
    assert frame_of == [list(range(0, 32, 2)), list(range(8, 40, 2))]

    names = ["1.png", "10.png", "2.png", "20.png", "3.png"]  # lexicographic, not numeric: 1, 10, 2, 20, 3
    folder = write_frames(tmp_path / "lex", [10, 100, 20, 200, 30], names=names)
    clip = ClipDataset([entry(folder)], "test", frame_ext="png", sampling_rate=1, input_size=16, short_side_size=16,
                       test_num_segment=1, test_num_crop=1)[0][0]
    assert torch.round(levels(clip)).int().tolist() == [10, 100, 20, 200, 30] + [30] * 11


def test_one_segment_and_one_crop_do_not_divide_by_zero(tmp_path):
    folder = write_frames(tmp_path / "c", list(range(0, 200, 5)))
    ds = ClipDataset([entry(folder)], "test", frame_ext="png", sampling_rate=1, input_size=16, short_side_size=16,
                     test_num_segment=1, test_num_crop=1)
    assert len(ds) == 1 and ds[0][3:] == (0, 1)


# --- entries: png, single images, videos ---------------------------------------------------------------------------

def test_mafw_reads_png_frames_and_ignores_other_files(tmp_path):
    folder = write_frames(tmp_path / "clip", [40, 80, 120], ext="png")
    cv2.imwrite(str(folder / "zz.jpg"), np.zeros((48, 48, 3), np.uint8))
    (tmp_path / "test.csv").write_text(f"{folder} 6\n")
    ds, nb = build_dataset(False, True, args_for(tmp_path, "MAFW", test_num_segment=1, test_num_crop=1,
                                                 sampling_rate=1))
    clip, label = ds[0][:2]
    assert nb == 11 and label == 6
    assert torch.round(levels(clip)).int().tolist() == [40, 80, 120] + [120] * 13
    (folder / "zz.jpg").unlink()
    with pytest.raises(ValueError, match=r"test\.csv:1: .*no \*\.jpg frames"):
        build_dataset(False, True, args_for(tmp_path, "DFEW"))[0][0]


def test_single_image_entry_is_repeated(tmp_path):
    path = tmp_path / "face.jpg"
    cv2.imwrite(str(path), np.full((40, 40, 3), 90, np.uint8))
    for mode in ("train", "validation", "test"):
        clip = ClipDataset([entry(path)], mode, input_size=16, short_side_size=16, reprob=0)[0][0]
        assert clip.shape == (3, 16, 16, 16)
        assert torch.equal(clip, clip[:, :1].expand_as(clip))


def test_video_entries_sample_the_video_frames(tmp_path):
    video = write_video(tmp_path / "clip.mp4", 20)
    import decord

    frames = decord.VideoReader(str(video)).get_batch(list(range(20))).asnumpy()
    ds = ClipDataset([entry(video)], "test", sampling_rate=1, input_size=16, short_side_size=16,
                     test_num_segment=2, test_num_crop=1)
    view1 = ds[1][0]  # frames 4..19
    expected = np.stack([np.asarray(Image.fromarray(f).resize((16, 16), Image.BILINEAR)) for f in frames[4:]])
    assert torch.equal(view1, (torch.from_numpy(expected).permute(3, 0, 1, 2).float() / 255 - MEAN) / STD)
    train = ClipDataset([entry(video)], "train", sampling_rate=1, input_size=16, short_side_size=16, aa=None,
                        reprob=0)
    clip, label = train[0]
    assert clip.shape == (3, 16, 16, 16) and label == 0
    # Flat frames stay ordered by their level whatever the crop and flip.
    assert (levels(clip).diff() > 0).all()


# --- errors --------------------------------------------------------------------------------------------------------

def test_missing_path_names_csv_line_and_path(tmp_path):
    good = write_frames(tmp_path / "good", [50] * 4)
    (tmp_path / "train.csv").write_text(f"{good} 1\n{tmp_path / 'gone'} 2\n")
    ds = build_dataset(True, False, args_for(tmp_path, "MAFW"))[0]
    ds[0]
    with pytest.raises(FileNotFoundError, match=rf"train\.csv:2: {tmp_path / 'gone'}: no such file or folder"):
        ds[1]


def test_empty_folder_names_csv_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "test.csv").write_text("empty 3\n")
    ds = build_dataset(False, True, args_for(tmp_path, "FERV39k", data_root=str(tmp_path)))[0]
    with pytest.raises(ValueError, match=r"test\.csv:1: .*empty: no \*\.jpg frames"):
        ds[0]


@pytest.mark.parametrize("mode", ["train", "validation", "test"])
def test_unreadable_image_and_video_name_the_file(tmp_path, mode):
    folder = write_frames(tmp_path / "c", [50] * 3, ext="jpg")
    (folder / "00001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match=r"00001\.jpg"):
        ClipDataset([entry(folder)], mode, sampling_rate=1, input_size=16, short_side_size=16)[0]
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\x00" * 2048)
    with pytest.raises(OSError, match=r"x\.csv:1: .*broken\.mp4: cannot read the video"):
        ClipDataset([entry(video)], mode, input_size=16, short_side_size=16)[0]


def test_build_dataset_checks_data_set_and_nb_classes(tmp_path):
    (tmp_path / "train.csv").write_text("a 0\n")
    with pytest.raises(ValueError, match="--nb_classes 8 does not match DFEW, which has 7 classes"):
        build_dataset(True, False, args_for(tmp_path, "DFEW", nb_classes=8))
    args = args_for(tmp_path, "DFEW")
    args.data_set = "Kinetics-400"  # the original parser's default
    with pytest.raises(ValueError, match="--data_set Kinetics-400: not a fine-tuning dataset"):
        build_dataset(True, False, args)


def test_build_dataset_reads_the_right_files(tmp_path):
    for name, label in (("train.csv", 0), ("val.csv", 1), ("test.csv", 2)):
        folder = write_frames(tmp_path / name[:-4], [60] * 2, ext="jpg")
        (tmp_path / name).write_text(f"{folder.name} {label}\n")
    for data_set, val_label in (("DFEW", 1), ("FERV39k", 2), ("RAVDESS", 2)):
        args = args_for(tmp_path, data_set, data_root=str(tmp_path), input_size=16, short_side_size=16)
        train, nb = build_dataset(True, False, args)
        val = build_dataset(False, False, args)[0]
        test = build_dataset(False, True, args)[0]
        assert nb == len(DATASETS[data_set].classes)
        assert (train.mode, val.mode, test.mode) == ("train", "validation", "test")
        assert train[0][1] == 0 and val[0][1:] == (val_label, "val" if val_label == 1 else "test")
        assert len(test) == 2 and test[1][1:] == (2, "test", 1, 2)


# --- training ------------------------------------------------------------------------------------------------------

def test_train_item_shape_normalisation_and_views(tmp_path):
    folder = write_textured(tmp_path / "c", 30, size=40)
    ds = ClipDataset([entry(folder, label=4)], "train", sampling_rate=2, input_size=24, short_side_size=32)
    torch.manual_seed(0)
    clip, label = ds[0]
    assert clip.dtype == torch.float32 and clip.shape == (3, 16, 24, 24) and label == 4
    assert clip.min() >= -2.2 - 5 and clip.max() <= 2.7 + 5  # ImageNet-normalised (erasing noise is N(0, 1))
    ds2 = ClipDataset([entry(folder, label=4)] * 3, "train", sampling_rate=2, input_size=24, short_side_size=32,
                      num_sample=2)
    views, labels = ds2[0]
    assert len(views) == 2 and labels == [4, 4] and not torch.equal(views[0], views[1])
    batch, targets = ds2.collate([ds2[0], ds2[1]])
    assert batch.shape == (4, 3, 16, 24, 24) and targets.tolist() == [4, 4, 4, 4]
    assert ds.collate is None


@pytest.mark.parametrize("seed", range(12))
def test_augmentation_is_the_same_on_every_frame(tmp_path, seed):
    folder = tmp_path / "static"
    write_textured(folder, 1, size=40)
    for t in range(1, 20):  # a static clip: distinct files, identical pixels
        (folder / f"{t:05d}.jpg").write_bytes((folder / "00000.jpg").read_bytes())
    ds = ClipDataset([entry(folder)], "train", sampling_rate=1, input_size=32, short_side_size=32, reprob=0)
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    clip = ds[0][0]
    assert torch.equal(clip, clip[:, :1].expand_as(clip))

    erasing = ClipDataset([entry(folder)], "train", sampling_rate=1, input_size=32, short_side_size=32, reprob=1)
    clip = erasing[0][0]
    changed = (clip != clip[:, :1]).any(dim=0)  # (T, H, W): where frames differ from frame 0
    rows, cols = changed.any(dim=(0, 2)).nonzero(), changed.any(dim=(0, 1)).nonzero()
    assert changed[1:].any(dim=(1, 2)).all()  # every frame has its own noise...
    box = torch.zeros_like(changed[0])
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    assert not (changed & ~box).any()  # ...inside one rectangle shared by all frames


def test_training_draws_differ_between_items_and_follow_the_seed(tmp_path):
    folder = write_textured(tmp_path / "c", 40, size=40)
    ds = ClipDataset([entry(folder)], "train", sampling_rate=1, input_size=24, short_side_size=32)

    def draw(seed):
        np.random.seed(seed)
        random.seed(seed)
        torch.manual_seed(seed)
        return ds[0][0]

    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))


def test_training_frames_are_pils_resize_to_within_2_levels_and_the_crop_resize_is_the_originals(tmp_path):
    folder = write_textured(tmp_path / "c", 6, size=57)
    cv2.imwrite(str(folder / "00006.jpg"), cv2.imread(str(folder / "00000.jpg"))[:50])  # another size: resized alone
    source = datasets.FrameSource(entry(folder), "jpg")
    indices = np.array([0, 0, 3, 6, 6])
    frames, inverse = source.resized(indices, 32)
    assert frames.shape == (3, 32, 32, 3) and inverse.tolist() == [0, 0, 1, 2, 2]
    assert np.abs(frames.astype(int) - source.pil(np.array([0, 3, 6]), 32)).max() <= 2
    crops = smooth_frames(2, 40).astype(np.float32)
    for h, w, size in ((40, 40, 40), (13, 29, 32), (40, 17, 24), (7, 7, 40)):
        expected = torch.nn.functional.interpolate(torch.from_numpy(crops[:, :h, :w]).permute(3, 0, 1, 2),
                                                   size=(size, size), mode="bilinear", align_corners=False)
        ours = np.stack([cv2.resize(c[:h, :w], (size, size), interpolation=cv2.INTER_LINEAR) for c in crops])
        assert torch.allclose(torch.from_numpy(ours).permute(3, 0, 1, 2), expected, atol=1e-2, rtol=0)  # of 255


def smooth_frames(num=3, size=40):
    rng = np.random.default_rng(1)
    base = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (0, 0), 3)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
    return np.stack([np.roll(base, t, axis=0) for t in range(num)])


def test_rand_augment_ops_match_timm_per_frame():
    """Colour ops are timm's exactly; affine ops are PIL's geometry with OpenCV's bicubic (a few levels apart)."""
    frames = smooth_frames()
    augment = VideoRandAugment("rand-m7-n4-mstd0.5-inc1", 40, "bicubic")
    assert len(augment.ops) == 15
    random.seed(0)
    for op in augment.ops:
        for _ in range(3):
            drawn = augment._drawers[augment.ops.index(op)](None)
            if drawn is None:
                continue
            level_args, kwargs = drawn
            ours = augment._apply(op, level_args, dict(kwargs), frames)
            theirs = np.stack([np.asarray(op.aug_fn(Image.fromarray(f), *level_args, **kwargs)) for f in frames])
            diff = np.abs(ours.astype(int) - theirs)
            if op.name in video_augment._TRANSLATIONS:
                assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, op.name
            elif op.name in video_augment._AFFINE_OPS:
                assert diff.max() <= 8 and diff.mean() < 1.0, op.name
            else:
                assert np.array_equal(ours, theirs), op.name


@pytest.mark.parametrize("shift", [17.3, -33.71, 0.0, 5.0, -0.25, 0.5, 47.9, -60.2, 75.0])
def test_translations_are_pils(shift):
    frames = smooth_frames(3, 48)[:, :, :40].copy()  # not square: W 40, H 48
    frames[:, 10:20, 10:20] = 200  # a flat patch: exact levels must not be truncated to the one below
    for axis, matrix in ((2, (1, 0, shift, 0, 1, 0)), (1, (1, 0, 0, 0, 1, shift))):
        theirs = np.stack([np.asarray(Image.fromarray(f).transform((40, 48), Image.AFFINE, matrix, Image.BICUBIC,
                                                                   fillcolor=(128, 127, 126))) for f in frames])
        diff = np.abs(video_augment.translate_frames(frames, shift, axis, (128, 127, 126)).astype(int) - theirs)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_autocontrast_and_equalize_equal_pils_on_any_histogram():
    rng = np.random.default_rng(0)
    two_levels = np.where(rng.random((4, 24, 24, 3)) < 0.3, 90, 200).astype(np.uint8)
    narrow = rng.integers(100, 111, (4, 24, 24, 3)).astype(np.uint8)
    mixed = np.concatenate([np.full((4, 24, 24, 1), 77), rng.integers(0, 256, (4, 24, 24, 1)),
                            rng.integers(250, 256, (4, 24, 24, 1))], axis=3).astype(np.uint8)
    skewed = np.minimum(rng.exponential(20, (4, 24, 24, 3)), 255).astype(np.uint8)
    for frames in (smooth_frames(4, 24), two_levels, narrow, mixed, skewed, np.full((2, 8, 8, 3), 5, np.uint8)):
        for ours, theirs in ((video_augment.autocontrast, ImageOps.autocontrast),
                             (video_augment.equalize, ImageOps.equalize)):
            expected = np.stack([np.asarray(theirs(Image.fromarray(f))) for f in frames])
            assert np.array_equal(ours(frames), expected), theirs.__name__


def test_rand_augment_draws_like_timm():
    """Per clip: ops picked by numpy with replacement, each applied with p 0.5 and magnitude ~ N(7, 0.5)."""
    augment = VideoRandAugment("rand-m7-n4-mstd0.5-inc1", 160, "bicubic")
    assert augment.num_layers == 4 and augment.choice_weights is None
    assert {op.name for op in augment.ops} == {
        "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
        "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
        "TranslateXRel", "TranslateYRel"}
    rotate = augment._drawers[[op.name for op in augment.ops].index("Rotate")]
    random.seed(0)
    angles = [d[0][0] for d in (rotate(None) for _ in range(4000)) if d is not None]
    assert 0.45 < len(angles) / 4000 < 0.55
    assert abs(np.mean(np.abs(angles)) - 21) < 0.3 and max(np.abs(angles)) <= 30  # 3 degrees per magnitude unit
    assert augment.ops[0].kwargs == {"fillcolor": (128, 128, 128), "resample": Image.BICUBIC}


def test_dataset_pickles_and_workers_get_different_numpy_seeds(tmp_path):
    folder = write_textured(tmp_path / "c", 200, size=32)
    ds = ClipDataset([entry(folder)] * 4, "train", sampling_rate=1, input_size=16, short_side_size=16)
    pickle.loads(pickle.dumps(ds))
    starts = []

    class Starts(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return int(train_indices(10_000, 16, 1)[0]), random.random()

    loader = torch.utils.data.DataLoader(Starts(), batch_size=1, num_workers=2, worker_init_fn=seed_worker)
    starts = [(int(a), float(b)) for a, b in loader]
    assert len({s for s, _ in starts}) == 4 and len({r for _, r in starts}) == 4
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, worker_init_fn=seed_worker)
    clips, _ = next(iter(loader))
    assert clips.shape == (2, 3, 16, 16, 16)


def test_seeded_items_depend_on_seed_epoch_and_index_only(tmp_path):
    """What makes a resumed run see the same clips: no dependence on earlier draws, the worker, or the loader."""
    folder = write_textured(tmp_path / "c", 40, size=40)
    ds = ClipDataset([entry(folder)] * 3, "train", sampling_rate=1, input_size=24, short_side_size=32, seed=5)
    first = ds[1][0]
    np.random.rand(3), random.random(), torch.rand(3)
    assert torch.equal(ds[1][0], first) and not torch.equal(ds[2][0], first)
    state = torch.get_rng_state()
    ds[0]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone (num_workers 0)
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], first)
    ds.set_epoch(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, worker_init_fn=seed_worker)
    assert torch.equal(next(iter(loader))[0][1], first)


def test_skip_bad_returns_the_unreadable_entry_instead_of_raising(tmp_path):
    (tmp_path / "empty").mkdir()
    ds = ClipDataset([entry(tmp_path / "empty", source="train.csv:4")], "validation", skip_bad=True)
    bad = ds[0]
    assert bad.source == "train.csv:4" and "no *.jpg frames" in bad.error
    test = ClipDataset([entry(tmp_path / "empty")], "test", skip_bad=True)  # a test clip is never skipped
    with pytest.raises(ValueError, match="no"):
        test[0]


class _BusErrorInWorker(torch.utils.data.Dataset):
    """Item 1 kills its worker with SIGBUS, as the kernel does when /dev/shm is full."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        if index == 1:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGBUS)
        return torch.zeros(2)


def test_a_worker_killed_for_lack_of_shared_memory_stops_saying_what_and_how_to_fix_it():
    import argparse

    args = argparse.Namespace(seed=0, num_workers=1, pin_mem=False)
    loader = datasets.build_loader(_BusErrorInWorker(), args, 1, device=torch.device("cpu"), sequential=True)
    with pytest.raises(datasets.SharedMemoryError, match=r"(?s)/dev/shm is \d+ MB.*--shm-size.*--num_workers"):
        list(loader)
