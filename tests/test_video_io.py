"""video_io.py: reading frame folders, single images and videos, and the errors that name the file."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from support.clips import (
    MEAN,
    STD,
    args_for,
    clip_dataset,
    entry,
    levels,
    smooth_frames,
    write_frames,
    write_textured,
    write_video,
)

from datasets import build_dataset
from video_io import FrameSource


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
        clip = clip_dataset([entry(path)], mode, input_size=16, short_side_size=16, reprob=0)[0][0]
        assert clip.shape == (3, 16, 16, 16)
        assert torch.equal(clip, clip[:, :1].expand_as(clip))


def test_video_entries_sample_the_video_frames(tmp_path):
    video = write_video(tmp_path / "clip.mp4", 20)
    import decord

    frames = decord.VideoReader(str(video)).get_batch(list(range(20))).asnumpy()
    ds = clip_dataset([entry(video)], "test", sampling_rate=1, input_size=16, short_side_size=16,
                     test_num_segment=2, test_num_crop=1)
    view1 = ds[1][0]  # frames 4..19
    expected = np.stack([np.asarray(Image.fromarray(f).resize((16, 16), Image.BILINEAR)) for f in frames[4:]])
    assert torch.equal(view1, (torch.from_numpy(expected).permute(3, 0, 1, 2).float() / 255 - MEAN) / STD)
    train = clip_dataset([entry(video)], "train", sampling_rate=1, input_size=16, short_side_size=16, aa=None,
                        reprob=0)
    clip, label = train[0]
    assert clip.shape == (3, 16, 16, 16) and label == 0
    # Flat frames stay ordered by their level whatever the crop and flip.
    assert (levels(clip).diff() > 0).all()


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
        clip_dataset([entry(folder)], mode, sampling_rate=1, input_size=16, short_side_size=16)[0]
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\x00" * 2048)
    with pytest.raises(OSError, match=r"x\.csv:1: .*broken\.mp4: cannot read the video"):
        clip_dataset([entry(video)], mode, input_size=16, short_side_size=16)[0]


def test_training_frames_are_pils_resize_to_within_2_levels_and_the_crop_resize_is_the_originals(tmp_path):
    folder = write_textured(tmp_path / "c", 6, size=57)
    cv2.imwrite(str(folder / "00006.jpg"), cv2.imread(str(folder / "00000.jpg"))[:50])  # another size: resized alone
    source = FrameSource(entry(folder), "jpg")
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
