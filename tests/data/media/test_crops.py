"""Face and window crops cut from YUV planes match faces.crop_face on the RGB frame."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from conclugen.data.faces import crop_face
from conclugen.data.media import encode_clip
from conclugen.data.media.crops import YuvPlanes


@pytest.mark.parametrize("box", [None, (200, 100, 90, 110), (5, 5, 60, 60), (600, 300, 50, 50)])
def test_yuv_fast_crop_matches_rgb_crop_face(box: tuple[int, int, int, int] | None) -> None:
    """Window and face crops are cut from the decoder's YUV planes before colour conversion; they
    must match faces.crop_face on the RGB frame (boxes near the edge take the RGB path)."""
    yy, xx = np.mgrid[0:360, 0:640]
    blob = 200 * np.exp(-(((xx - 250) / 60.0) ** 2 + ((yy - 150) / 50.0) ** 2))
    img = np.dstack([(xx * 255 // 640), (yy * 255 // 360), blob]).astype(np.uint8)
    frame = next(av.open(io.BytesIO(encode_clip(img[None], 10))).decode(video=0))
    planes = YuvPlanes.of(frame)
    assert planes is not None
    rgb = frame.to_ndarray(format="rgb24")
    for size in (112, 180):
        fast = planes.crop(box, size)
        if fast is None:  # crop leaves the frame: the caller falls back to crop_face
            assert box is not None and box[0] < 40 or box[0] + box[2] > 600
            continue
        want = crop_face(rgb, box, size)
        diff = np.abs(fast.astype(int) - want.astype(int))
        assert diff.mean() < 2 and np.percentile(diff, 99) < 8, (diff.mean(), diff.max())
