"""3D video backbones, applied per 16-frame window and averaged over a clip's windows.

``embed(clips)`` takes one uint8 array ``[W, T, H, W, 3]`` per clip (RGB windows) and returns
float32 ``[B, dim]``: the mean of the per-window vectors (zeros for a clip with no window).

- ``offline:video3d`` = ``offline:seeded-c3d``: no registry package ships pretrained 3D video
  weights that run beside torch 2.13 without torchvision (see the extraction README), so the
  offline default is a small seeded 3D CNN, **untrained** (``trained=False`` in meta.json), 128-d.
- ``hf:<id>``: AutoImageProcessor + AutoModel for video models such as VideoMAE
  (MCG-NJU/videomae-base-finetuned-kinetics → 768-d, mean over tokens).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from conclugen.features.backbones.image import seeded_init, unit_rgb_64
from conclugen.features.backbones.pooling import StackBackbone, pool_output
from conclugen.features.backbones.registry import hf_parts

WINDOW_CHUNK = 8  # windows per forward pass


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
