"""Face and window crops from a decoded frame, converting as little of it as they need.

For yuv420p video (nearly all H.264/MPEG-4 files) crops are cut from the decoder's Y/U/V planes,
scaled with OpenCV, and only then converted to RGB (:class:`YuvPlanes`): a whole-frame RGB
conversion costs about as much as decoding. Face detection runs on the luma plane (the
detector's grey input). Other pixel formats, odd sizes and crops that leave the frame take the
RGB path (:func:`conclugen.data.faces.crop_face`, window frames pre-scaled to a shorter side of
``2 * window_size``).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from conclugen.data.faces import Box, FaceDetector, crop_face


class YuvPlanes:
    """The Y, U, V planes of a yuv420p frame (the common case), to crop and scale before the
    colour conversion: converting a whole HD frame to RGB costs more than decoding it."""

    def __init__(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        self.y, self.u, self.v = y, u, v
        self.h, self.w = y.shape

    @classmethod
    def of(cls, frame: Any) -> YuvPlanes | None:
        """The planes of a PyAV frame; None for frames the RGB path handles."""
        w, h = frame.width, frame.height
        if frame.format.name != "yuv420p" or w % 2 or h % 2:
            return None  # full-range, 4:2:2, odd sizes, ...: the RGB path handles them
        flat = frame.to_ndarray().reshape(-1)  # planes packed: Y (h*w), U, V (h/2 * w/2 each)
        q = (h // 2) * (w // 2)
        return cls(
            flat[: h * w].reshape(h, w),
            flat[h * w : h * w + q].reshape(h // 2, w // 2),
            flat[h * w + q : h * w + 2 * q].reshape(h // 2, w // 2),
        )

    def crop(self, box: Box | None, size: int, margin: float = 0.2) -> np.ndarray | None:
        """The square ``faces.crop_face`` takes (same geometry, to within one pixel for chroma
        alignment) as uint8 RGB [size, size, 3]; None when it leaves the frame or size is odd."""
        if size % 2:
            return None
        x0, y0, side = self._square(box, margin)
        if x0 < 0 or y0 < 0 or x0 + side > self.w or y0 + side > self.h or side < 2:
            return None  # crop_face pads by edge replication there
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        ys = cv2.resize(self.y[y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=interp)
        c0, c1, cs, half = y0 // 2, x0 // 2, side // 2, size // 2
        us = cv2.resize(self.u[c0 : c0 + cs, c1 : c1 + cs], (half, half), interpolation=interp)
        vs = cv2.resize(self.v[c0 : c0 + cs, c1 : c1 + cs], (half, half), interpolation=interp)
        i420 = np.concatenate([ys.reshape(-1), us.reshape(-1), vs.reshape(-1)]).reshape(size * 3 // 2, size)
        return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)

    def _square(self, box: Box | None, margin: float) -> tuple[int, int, int]:
        """(x0, y0, side) of crop_face's square, moved to even coordinates for the chroma planes."""
        h, w = self.h, self.w
        if box is None:
            side = min(h, w)
            x0, y0 = (w - side) // 2, (h - side) // 2
        else:
            x, y, bw, bh = (int(v) for v in box)
            x, y = min(max(x, -bw // 2), w - 1 - bw // 2), min(max(y, -bh // 2), h - 1 - bh // 2)
            side = max(1, int(round(max(bw, bh) * (1.0 + 2.0 * margin))))
            x0, y0 = int(round(x + bw / 2.0 - side / 2.0)), int(round(y + bh / 2.0 - side / 2.0))
        return x0 - x0 % 2, y0 - y0 % 2, side + side % 2


class FrameView:
    """One decoded frame, converted only as far as its crops need: the YUV planes when the frame
    is yuv420p, else a full RGB copy (face crops) or one pre-scaled for windows, each made once."""

    def __init__(self, frame: Any, window_size: int) -> None:
        self.frame = frame
        self.window_size = window_size
        self.planes = YuvPlanes.of(frame)
        self._rgb: np.ndarray | None = None
        self._small: tuple[np.ndarray, float] | None = None

    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            self._rgb = self.frame.to_ndarray(format="rgb24")
        return self._rgb

    def detect(self, detector: FaceDetector) -> Box | None:
        """The largest face; the cascade works on grey levels, and the luma plane is one, for free."""
        found = detector.detect(self.planes.y if self.planes is not None else self.rgb())
        return found[0] if found else None

    def face_crop(self, box: Box | None, size: int) -> np.ndarray:
        crop = self.planes.crop(box, size) if self.planes is not None else None
        return crop if crop is not None else crop_face(self.rgb(), box, size)

    def window_crop(self, box: Box | None) -> np.ndarray:
        size = self.window_size
        crop = self.planes.crop(box, size) if self.planes is not None else None
        if crop is not None:
            return crop
        small, scale = self._working_frame()
        sbox = None if box is None else tuple(int(round(v * scale)) for v in box)
        return crop_face(small, sbox, size)  # type: ignore[arg-type]

    def _working_frame(self) -> tuple[np.ndarray, float]:
        """RGB scaled to a shorter side of 2 * window_size (never up), and the scale applied."""
        if self._small is None:
            w, h = self.frame.width, self.frame.height
            target = 2 * self.window_size
            if min(w, h) <= target:
                self._small = (self.frame.to_ndarray(format="rgb24"), 1.0)
            else:
                scale = target / min(w, h)
                nw, nh = max(2, int(round(w * scale))), max(2, int(round(h * scale)))
                self._small = (self.frame.to_ndarray(format="rgb24", width=nw, height=nh), nw / w)
        return self._small
