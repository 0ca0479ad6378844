"""Offline face detection and cropping: OpenCV's Haar frontal-face cascade.

The cascade ships inside opencv-python-headless 4.x (``cv2.data.haarcascades``); 5.x dropped
it. Detection runs on a grayscale copy downscaled to at most ``max_side`` pixels, so it costs
a few milliseconds per frame on one core.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, w, h in the input frame's pixels

CASCADE_FILE = "haarcascade_frontalface_default.xml"


def _cascade_path() -> str:
    base = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not base:
        raise RuntimeError(
            "this OpenCV build ships no Haar cascades (cv2.data.haarcascades is missing); "
            "install opencv-python-headless 4.x (5.x dropped them)"
        )
    path = os.path.join(base, CASCADE_FILE)
    if not os.path.exists(path):
        raise RuntimeError(f"Haar cascade not found: {path}")
    return path


class FaceDetector:
    """Frontal faces in an RGB frame, as (x, y, w, h) boxes, largest first.

    ``min_size`` is the smallest face side in input pixels. ``max_side`` bounds the
    detection resolution (larger frames are downscaled first; smaller ones are not upscaled).
    Instances hold an OpenCV object: create one per process/actor, not per frame.
    """

    def __init__(
        self,
        min_size: int = 24,
        max_side: int = 320,
        scale_factor: float = 1.1,
        min_neighbors: int = 4,
    ) -> None:
        self.min_size = int(min_size)
        self.max_side = int(max_side)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self._cascade = cv2.CascadeClassifier(_cascade_path())
        if self._cascade.empty():
            raise RuntimeError(f"could not load the Haar cascade {CASCADE_FILE}")

    def detect(self, frame_rgb: np.ndarray) -> list[Box]:
        frame = np.asarray(frame_rgb)
        if frame.ndim == 3:
            gray = cv2.cvtColor(np.ascontiguousarray(frame[..., :3], dtype=np.uint8), cv2.COLOR_RGB2GRAY)
        elif frame.ndim == 2:
            gray = np.ascontiguousarray(frame, dtype=np.uint8)
        else:
            raise ValueError(f"expected an HxWx3 RGB or HxW gray frame, got shape {frame.shape}")
        h, w = gray.shape
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            gray = cv2.resize(
                gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
        # Histogram equalisation makes the cascade far less sensitive to lighting/skin tone.
        gray = cv2.equalizeHist(gray)
        min_px = max(8, int(round(self.min_size * scale)))
        if min(gray.shape) < min_px:
            return []
        found = self._cascade.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_px, min_px),
        )
        boxes: list[Box] = []
        for x, y, bw, bh in np.asarray(found).reshape(-1, 4):
            bx, by = int(round(x / scale)), int(round(y / scale))
            bw2, bh2 = int(round(bw / scale)), int(round(bh / scale))
            bw2, bh2 = min(bw2, w - bx), min(bh2, h - by)
            if bw2 > 0 and bh2 > 0:
                boxes.append((bx, by, bw2, bh2))
        boxes.sort(key=lambda b: (-b[2] * b[3], b[0], b[1]))  # largest first, ties stable
        return boxes


def crop_face(frame_rgb: np.ndarray, box: Box | None, size: int, margin: float = 0.2) -> np.ndarray:
    """A ``size``×``size`` uint8 RGB crop around ``box`` widened by ``margin`` on each side.

    The crop is square (the box's longer side, plus margins) and centred on the box; parts
    outside the frame are filled by edge replication. ``box=None`` takes the largest centred
    square of the frame instead (no face found).
    """
    frame = np.asarray(frame_rgb)
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=2)
    frame = np.ascontiguousarray(frame[..., :3])
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    h, w = frame.shape[:2]
    if box is None:
        side = min(h, w)
        x0, y0 = (w - side) // 2, (h - side) // 2
        crop = frame[y0 : y0 + side, x0 : x0 + side]
    else:
        x, y, bw, bh = (int(v) for v in box)
        # Keep the box centre inside the frame so the crop always overlaps it.
        x, y = min(max(x, -bw // 2), w - 1 - bw // 2), min(max(y, -bh // 2), h - 1 - bh // 2)
        side = max(1, int(round(max(bw, bh) * (1.0 + 2.0 * margin))))
        cx, cy = x + bw / 2.0, y + bh / 2.0
        x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
        x1, y1 = x0 + side, y0 + side
        pad_l, pad_t = max(0, -x0), max(0, -y0)
        pad_r, pad_b = max(0, x1 - w), max(0, y1 - h)
        crop = frame[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
        if pad_l or pad_t or pad_r or pad_b:
            crop = cv2.copyMakeBorder(crop, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_REPLICATE)
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    out = cv2.resize(crop, (int(size), int(size)), interpolation=interp)
    return np.ascontiguousarray(out, dtype=np.uint8)
