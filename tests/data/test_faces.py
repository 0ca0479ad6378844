"""Face detector (OpenCV Haar cascade) on synthetic faces, and the crop helper."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conclugen.data.faces import FaceDetector, crop_face
from conclugen.data.synthetic import EMOTIONS, synthesize
from conclugen.data.synthetic.face import draw_background
from conclugen.data.synthetic.plan import FPS, SAMPLE_RATE, make_speakers
from conclugen.data.synthetic.render import render_frames
from conclugen.devtools.synthetic_tools import face_detection_rate


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def _synthetic_frames(n_speakers: int = 28, per: int = 3, seed: int = 11) -> list[np.ndarray]:
    """Rendered (not encoded) frames: varied identities, all seven expressions, head motion."""
    rng = np.random.default_rng(seed)
    frames = []
    for j, spk in enumerate(make_speakers(rng, n_speakers)):
        plan = dict(
            speaker=spk, face_emotion=EMOTIONS[j % 7], face_intensity=float(rng.uniform(0.5, 1.0)), index=j
        )
        n = per * 10
        frames += render_frames(plan, n, np.zeros(n * SAMPLE_RATE // FPS, np.float32), rng)[::10]
    return frames


def test_detects_most_synthetic_faces(detector: FaceDetector) -> None:
    frames = _synthetic_frames()
    found = [detector.detect(f) for f in frames]
    rate = np.mean([bool(b) for b in found])
    assert rate > 0.8, f"face detection rate {rate:.2f} on synthetic frames"
    for boxes, f in zip(found, frames, strict=True):
        areas = [w * h for _, _, w, h in boxes]
        assert areas == sorted(areas, reverse=True)  # largest first
        for x, y, w, h in boxes:
            assert 0 <= x and 0 <= y and x + w <= f.shape[1] and y + h <= f.shape[0]
            assert w >= 24 and h >= 24


def test_detects_faces_in_encoded_clips(tmp_path, detector: FaceDetector) -> None:
    """After H.264 coding, at the 1 fps-ish sampling extraction uses."""
    synthesize(str(tmp_path), clips=7, seed=2, workers=1)
    hit, total = face_detection_rate(str(tmp_path), max_clips=7, every=10, detector=detector)
    assert total >= 7 * 5
    assert hit / total > 0.75, f"{hit}/{total}"


def test_no_faces_in_blank_or_background_frames(detector: FaceDetector) -> None:
    for v in (0, 128, 255):
        assert detector.detect(np.full((160, 160, 3), v, np.uint8)) == []
    rng = np.random.default_rng(0)
    assert detector.detect(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)) == []
    # Cluttered backgrounds without a face: (almost) never a face.
    false = sum(bool(detector.detect(draw_background(np.random.default_rng(i)))) for i in range(40))
    assert false <= 2


def test_large_frames_are_downscaled_and_boxes_scaled_back(detector: FaceDetector) -> None:
    frames = [f for f in _synthetic_frames(6, 1, seed=3) if detector.detect(f)]
    assert frames
    f = frames[0]
    (x, y, w, h) = detector.detect(f)[0]
    big = cv2.resize(f, (640, 640), interpolation=cv2.INTER_LINEAR)  # detected at max_side 320
    boxes = detector.detect(big)
    assert boxes
    bx, by, bw, bh = boxes[0]
    # Same face, 4× the coordinates (one detection-grid step of slack).
    assert abs(bx / 4 - x) < 0.2 * w and abs(by / 4 - y) < 0.2 * h
    assert 0.75 < bw / (4 * w) < 1.33


def test_grayscale_input(detector: FaceDetector) -> None:
    f = next(f for f in _synthetic_frames(6, 1, seed=3) if detector.detect(f))
    assert detector.detect(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY))
    with pytest.raises(ValueError):
        detector.detect(np.zeros((2, 3, 4, 5), np.uint8))


def test_crop_centre_fallback_matches_numpy() -> None:
    frame = np.arange(60 * 100 * 3, dtype=np.uint32).reshape(60, 100, 3).astype(np.uint8)
    out = crop_face(frame, None, 60)
    assert out.dtype == np.uint8 and out.shape == (60, 60, 3)
    np.testing.assert_array_equal(out, frame[:, 20:80])  # centre square, no resampling
    tall = np.random.default_rng(0).integers(0, 256, (90, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(crop_face(tall, None, 40), tall[25:65])
    assert crop_face(tall, None, 17).shape == (17, 17, 3)


def test_crop_box_with_margin_matches_numpy() -> None:
    frame = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    # Box 20×20 at (60, 40), margin 0.25 → 30×30 square around its centre (70, 50).
    out = crop_face(frame, (60, 40, 20, 20), 30, margin=0.25)
    np.testing.assert_array_equal(out, frame[35:65, 55:85])
    # Non-square box: the square follows the longer side.
    out = crop_face(frame, (60, 40, 10, 20), 20, margin=0.0)
    np.testing.assert_array_equal(out, frame[40:60, 55:75])


def test_crop_at_the_border_replicates_edges() -> None:
    frame = np.random.default_rng(2).integers(0, 256, (50, 50, 3), dtype=np.uint8)
    out = crop_face(frame, (0, 0, 20, 20), 30, margin=0.25)  # square (-5,-5)…(25,25)
    assert out.shape == (30, 30, 3)
    np.testing.assert_array_equal(out[5:, 5:], frame[:25, :25])
    np.testing.assert_array_equal(out[:5, 5:], np.repeat(frame[:1, :25], 5, axis=0))
    np.testing.assert_array_equal(out[5:, :5], np.repeat(frame[:25, :1], 5, axis=1))
    # A box entirely off the frame still yields a crop of the right size.
    assert crop_face(frame, (500, 500, 20, 20), 16).shape == (16, 16, 3)
    # Gray and float inputs are accepted.
    assert crop_face(frame[..., 0], (10, 10, 20, 20), 8).shape == (8, 8, 3)
    assert crop_face(frame.astype(np.float32) * 2, None, 8).dtype == np.uint8
