"""Face detection on a real photograph in motion, main-face tracking, box smoothing and cropping."""

from __future__ import annotations

import cv2
import decord
import numpy as np
import pytest

import faces
from demo_data import background_photo, face_photo, face_scene, make_face_video


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


def tilting_scene(n: int = 24, size: tuple[int, int] = (320, 180)):
    """Frames of the portrait's head on a real background, moving, growing from 35 to 65 px (eyes to mouth) and
    turning from -40° to 40°, with the face core's box in each."""
    photo, scene = face_photo(), cv2.resize(background_photo(), size, interpolation=cv2.INTER_AREA)
    t = np.arange(n) / (n - 1)
    for x, y, height, angle in zip(80 + 184 * t, 90 + 20 * np.sin(6 * t), 35 + 30 * t, -40 + 80 * t):
        yield face_scene(photo, scene, (x, y), height, angle)


def test_dnn_finds_a_tilting_moving_small_face_in_every_frame():
    detector = faces.DnnFaceDetector()
    for frame, truth in tilting_scene():
        boxes = detector(frame)
        assert len(boxes) == 1 and faces.iou(boxes[0], truth) > 0.5, (boxes, truth)


def test_dnn_finds_no_face_in_real_photographs_without_one():
    detector = faces.DnnFaceDetector()
    for name in ("china.jpg", "flower.jpg"):
        photo = background_photo(name)
        for frame in (photo, photo[:, ::-1], photo[::-1]):
            assert detector(np.ascontiguousarray(frame)).shape == (0, 4)


def test_a_missing_weights_package_is_named(monkeypatch):
    monkeypatch.setattr(faces, "RES10_PACKAGE", "no_such_detector_package")
    with pytest.raises(OSError, match="needs the 'no_such_detector_package' package, which ships its weights"):
        faces.DnnFaceDetector()
    assert set(faces.DETECTORS) == {"dnn", "haar", "none"}


def test_eye_alignment_measures_the_roll_and_the_turned_crop_is_upright():
    photo, scene = face_photo(), cv2.resize(background_photo(), (640, 360), interpolation=cv2.INTER_AREA)
    detector, aligner = faces.DnnFaceDetector(), faces.EyeAligner()
    for angle in (-30, -15, 15, 30):
        frame, _ = face_scene(photo, scene, (320, 180), 90, angle)
        (box,) = detector(frame)
        roll = aligner(frame, box)
        assert abs(roll + angle) < 8, (angle, roll)  # the scene turns counter-clockwise: a roll of -angle
        upright = faces.crop(frame, faces.crop_box(box, 1.0), 200, roll)
        assert abs(aligner(upright, np.array([0.0, 0.0, 200.0, 200.0]))) < 8


def test_a_turned_crop_turns_counter_clockwise():
    image = np.zeros((40, 40, 3), np.uint8)
    image[5:15, 20:35] = 255  # a bar in the upper right quarter
    turned = faces.crop(image, np.array([0.0, 0.0, 40.0, 40.0]), 40, 90.0)
    assert np.abs(turned.astype(int) - np.rot90(image)).mean() < 5  # np.rot90 turns counter-clockwise
    assert np.abs(turned.astype(int) - np.rot90(image, -1)).mean() > 20
    assert faces.crop(image, np.array([0.0, 0.0, 40.0, 40.0]), 40, 0.0).tolist() == image.tolist()


def test_smooth_angles_averages_fills_and_defaults_to_upright():
    angles = np.array([10.0, np.nan, 20.0, np.nan, np.nan, np.nan, 30.0])
    smooth = faces.smooth_angles(angles, 1)
    assert smooth[0] == 10 and smooth[1] == 15 and smooth[2] == 20 and smooth[6] == 30
    assert 20 < smooth[4] < 30 and not np.isnan(smooth).any()
    assert faces.smooth_angles(np.full(4, np.nan), 2).tolist() == [0.0] * 4


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
