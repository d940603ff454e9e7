"""Face detection on a real photograph in motion, main-face tracking, box smoothing and cropping."""

from __future__ import annotations

import decord
import numpy as np
import pytest

import faces
from demo_data import make_face_video


def contains(outer: np.ndarray, inner: np.ndarray) -> bool:
    return bool((outer[:2] <= inner[:2]).all() and (outer[2:] >= inner[2:]).all())


@pytest.fixture(scope="module")
def portrait_video(tmp_path_factory):
    """2 s of matplotlib's portrait drifting, zooming and changing brightness, and the face core's true boxes."""
    path = tmp_path_factory.mktemp("video") / "portrait.mp4"
    core = make_face_video(path, seconds=2.0, size=(320, 180))
    return path, core


def test_haar_finds_the_face_in_every_frame_and_the_crop_contains_it(portrait_video):
    path, core = portrait_video
    frames = decord.VideoReader(str(path), num_threads=1).get_batch(list(range(len(core)))).asnumpy()
    detector = faces.HaarFaceDetector()
    detections = [detector(frame) for frame in frames]
    boxes = faces.main_track(detections)
    assert not np.isnan(boxes).any(), "a frame without the face"
    for box, truth in zip(boxes, core):
        assert faces.iou(box, truth) > 0.3
    crops = [faces.crop_box(b, 1.4) for b in faces.smooth_boxes(boxes, 2)]
    assert all(contains(c, t) for c, t in zip(crops, core))
    image = faces.crop(frames[0], crops[0], 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def test_no_face_in_a_plain_frame():
    ramp = np.broadcast_to(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (180, 320, 3)).copy()
    assert faces.HaarFaceDetector()(ramp).shape == (0, 4)


def test_whole_frame_detector_for_cropped_input():
    assert faces.WholeFrame()(np.zeros((40, 30, 3), np.uint8)).tolist() == [[0, 0, 30, 40]]


def box(x, y, side):
    return np.array([x, y, x + side, y + side], dtype=float)


def test_main_track_keeps_the_large_lasting_face_and_drops_the_others():
    detections = []
    for i in range(10):
        found = [box(100 + 2 * i, 50, 80)] if i != 4 else []  # the main face, missed in frame 4
        if i == 2:
            found.append(box(10, 10, 120))  # a larger one-off false detection
        if 5 <= i <= 7:
            found.append(box(250, 40, 40))  # a smaller second face for a while
        detections.append(np.array(found).reshape(-1, 4))
    track = faces.main_track(detections)
    assert np.isnan(track[4]).all()
    for i in (0, 2, 5, 9):
        assert track[i].tolist() == box(100 + 2 * i, 50, 80).tolist()
    assert np.isnan(faces.main_track([np.zeros((0, 4))] * 3)).all()


def test_smoothing_keeps_still_boxes_reduces_jitter_and_keeps_gaps():
    jitter = np.array([box(100 + (5 if i % 2 else -5), 50, 80) for i in range(20)])
    jitter[7] = np.nan
    smooth = faces.smooth_boxes(jitter, 2)
    assert np.isnan(smooth[7]).all() and not np.isnan(np.delete(smooth, 7, axis=0)).any()
    assert np.abs(smooth[10:18, 0] - 100).max() < 5
    assert np.allclose(np.delete(smooth[:, 2] - smooth[:, 0], 7), 80)
    still = np.array([box(30, 40, 50)] * 6)
    assert np.allclose(faces.smooth_boxes(still, 3), still)


def test_fill_missing_interpolates_and_holds_the_ends():
    boxes = np.full((5, 4), np.nan)
    boxes[1], boxes[3] = box(0, 0, 10), box(20, 0, 10)
    filled = faces.fill_missing(boxes)
    assert filled[0].tolist() == boxes[1].tolist() and filled[4].tolist() == boxes[3].tolist()
    assert filled[2].tolist() == box(10, 0, 10).tolist()
    with pytest.raises(ValueError, match="no frame"):
        faces.fill_missing(np.full((3, 4), np.nan))


def test_crop_is_square_around_the_box_and_black_beyond_the_frame():
    frame = np.full((100, 100, 3), 200, np.uint8)
    square = faces.crop_box(np.array([40.0, 30.0, 60.0, 70.0]), 1.5)
    assert square.tolist() == [20.0, 20.0, 80.0, 80.0]
    out = faces.crop(frame, np.array([-50.0, -50.0, 50.0, 50.0]), 20)
    assert out.shape == (20, 20, 3)
    assert out[:8, :8].max() == 0 and out[12:, 12:].min() == 200
