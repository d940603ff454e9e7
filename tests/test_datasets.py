"""datasets.py: temporal sampling, exact eval clips, training items, seeding, the sampler and the loader."""

from __future__ import annotations

import argparse
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from support.clips import MEAN, STD, args_for, clip_dataset, entry, levels, write_frames, write_textured

import datasets
from annotations import DATASETS
from datasets import build_dataset, loaded_test_indices, seed_worker, train_indices, view_start

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
    ds = clip_dataset([entry(f, label=i) for i, f in enumerate(folders)], "test", sampling_rate=2,
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
    ds = clip_dataset([entry(folder, label=2)], "validation", sampling_rate=2, input_size=32, short_side_size=32)
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
    ds = clip_dataset([entry(folder)], "test", frame_ext="png", sampling_rate=2, input_size=16, short_side_size=16,
                     test_num_segment=2, test_num_crop=1)
    frame_of = [torch.round((levels(ds[c][0]) - 5) / 6).int().tolist() for c in range(2)]
    assert frame_of == [list(range(0, 32, 2)), list(range(8, 40, 2))]

    names = ["1.png", "10.png", "2.png", "20.png", "3.png"]  # lexicographic, not numeric: 1, 10, 2, 20, 3
    folder = write_frames(tmp_path / "lex", [10, 100, 20, 200, 30], names=names)
    clip = clip_dataset([entry(folder)], "test", frame_ext="png", sampling_rate=1, input_size=16, short_side_size=16,
                       test_num_segment=1, test_num_crop=1)[0][0]
    assert torch.round(levels(clip)).int().tolist() == [10, 100, 20, 200, 30] + [30] * 11


def test_one_segment_and_one_crop_do_not_divide_by_zero(tmp_path):
    folder = write_frames(tmp_path / "c", list(range(0, 200, 5)))
    ds = clip_dataset([entry(folder)], "test", frame_ext="png", sampling_rate=1, input_size=16, short_side_size=16,
                     test_num_segment=1, test_num_crop=1)
    assert len(ds) == 1 and ds[0][3:] == (0, 1)


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
    ds = clip_dataset([entry(folder, label=4)], "train", sampling_rate=2, input_size=24, short_side_size=32)
    torch.manual_seed(0)
    clip, label = ds[0]
    assert clip.dtype == torch.float32 and clip.shape == (3, 16, 24, 24) and label == 4
    assert clip.min() >= -2.2 - 5 and clip.max() <= 2.7 + 5  # ImageNet-normalised (erasing noise is N(0, 1))
    ds2 = clip_dataset([entry(folder, label=4)] * 3, "train", sampling_rate=2, input_size=24, short_side_size=32,
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
    ds = clip_dataset([entry(folder)], "train", sampling_rate=1, input_size=32, short_side_size=32, reprob=0)
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    clip = ds[0][0]
    assert torch.equal(clip, clip[:, :1].expand_as(clip))

    erasing = clip_dataset([entry(folder)], "train", sampling_rate=1, input_size=32, short_side_size=32, reprob=1)
    clip = erasing[0][0]
    changed = (clip != clip[:, :1]).any(dim=0)  # (T, H, W): where frames differ from frame 0
    rows, cols = changed.any(dim=(0, 2)).nonzero(), changed.any(dim=(0, 1)).nonzero()
    assert changed[1:].any(dim=(1, 2)).all()  # every frame has its own noise...
    box = torch.zeros_like(changed[0])
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    assert not (changed & ~box).any()  # ...inside one rectangle shared by all frames


def test_training_draws_differ_between_items_and_follow_the_seed(tmp_path):
    folder = write_textured(tmp_path / "c", 40, size=40)
    ds = clip_dataset([entry(folder)], "train", sampling_rate=1, input_size=24, short_side_size=32)

    def draw(seed):
        np.random.seed(seed)
        random.seed(seed)
        torch.manual_seed(seed)
        return ds[0][0]

    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))


def test_dataset_pickles_and_workers_get_different_numpy_seeds(tmp_path):
    folder = write_textured(tmp_path / "c", 200, size=32)
    ds = clip_dataset([entry(folder)] * 4, "train", sampling_rate=1, input_size=16, short_side_size=16)
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
    ds = clip_dataset([entry(folder)] * 3, "train", sampling_rate=1, input_size=24, short_side_size=32, seed=5)
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
    ds = clip_dataset([entry(tmp_path / "empty", source="train.csv:4")], "validation", skip_bad=True)
    bad = ds[0]
    assert bad.source == "train.csv:4" and "no *.jpg frames" in bad.error
    test = clip_dataset([entry(tmp_path / "empty")], "test", skip_bad=True)  # a test clip is never skipped
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

    args = argparse.Namespace(seed=0, num_workers=1, pin_mem=False)
    loader = datasets.build_loader(_BusErrorInWorker(), args, 1, device=torch.device("cpu"), sequential=True)
    with pytest.raises(datasets.SharedMemoryError, match=r"(?s)/dev/shm is \d+ MB.*--shm-size.*--num_workers"):
        list(loader)


def test_resumable_sampler_continues_the_epochs_order():
    sampler = datasets.ResumableSampler(range(10), num_replicas=2, rank=1, shuffle=True, seed=3)
    sampler.set_epoch(4)
    order = list(sampler)
    sampler.set_epoch(4, start=2)
    assert list(sampler) == order[2:] and len(sampler) == 3
    sampler.set_epoch(5)
    assert list(sampler) != order and len(sampler) == 5
