"""One registry from a backbone spec string to a loaded, frozen model.

Spec forms (``ExtractConfig.backbones``):

- ``offline:<name>``  weights that ship inside an installed package (or a seeded stand-in,
  marked ``trained=False``); see :data:`OFFLINE`.
- ``hf:<hub id | local dir | s3://prefix>``  a transformers model through ``from_pretrained``.
  Local dirs and ``s3://`` prefixes (downloaded to a local cache first) go through the very same
  code path as hub ids, which is how the tests exercise it offline.
- a bare local path or ``s3://`` URI: same as ``hf:<that>``.

Every backbone has ``kind`` (image | video3d | audio | text | asr), ``name`` (the spec), ``dim``,
``trained`` and ``embed(items) -> float32 [B, dim]`` (``transcribe`` for ASR). Models are frozen
(``eval()``, ``inference_mode``) and load on CPU unless ``device`` names a GPU.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from conclugen import storage
from conclugen.errors import ConCluGenError

KINDS = ("image", "video3d", "audio", "text", "asr")


class BackboneError(ConCluGenError, ValueError):
    """A backbone spec cannot be resolved or loaded; the message names the spec."""


class Backbone:
    """Base class. Subclasses set ``dim``/``trained`` and implement ``embed``."""

    kind: str = ""
    dim: int = 0
    trained: bool = True
    # audio backbones: "mel" (computes its own spectrogram, which augmentation masks) or
    # "waveform" (takes the samples); "" for the other kinds
    input_form: str = ""

    def __init__(self, name: str, device: str = "cpu") -> None:
        self.name = name
        self.device = device
        self.details: dict[str, Any] = {}

    def embed(self, items: Sequence[Any]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_device(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """A processor's tensors, moved to this backbone's device."""
        return {k: v.to(self.device) for k, v in inputs.items()}

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "dim": int(self.dim), "trained": bool(self.trained),
                "details": dict(self.details)}


class NoBackbone(Backbone):
    """``offline:none``: the modality is not computed (ASR off: clips without text get a gap)."""

    dim = 0
    trained = False

    def __init__(self, name: str, kind: str, device: str = "cpu") -> None:
        super().__init__(name, device)
        self.kind = kind

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        return np.zeros((len(items), 0), np.float32)

    def transcribe(self, waves: Sequence[np.ndarray], sample_rate: int = 16000) -> list[str | None]:
        return [None] * len(waves)


# offline name -> (kind, "module:attr"): a Backbone class (or factory) called with (name, device, cfg).
OFFLINE: dict[str, tuple[str, str]] = {
    "image": ("image", "conclugen.features.backbones.image:FerMiniXception"),
    "fer-mini-xception": ("image", "conclugen.features.backbones.image:FerMiniXception"),
    "seeded-image": ("image", "conclugen.features.backbones.image:SeededImage"),
    "video3d": ("video3d", "conclugen.features.backbones.video:InflatedMiniXception"),
    "seeded-c3d": ("video3d", "conclugen.features.backbones.video:SeededC3D"),
    "inflated-mini-xception": ("video3d", "conclugen.features.backbones.video:InflatedMiniXception"),
    "audio": ("audio", "conclugen.features.backbones.audio:SpeechEmbedding"),
    "speech-embedding": ("audio", "conclugen.features.backbones.audio:SpeechEmbedding"),
    "seeded-audio": ("audio", "conclugen.features.backbones.audio:SeededAudio"),
    "minilm": ("text", "conclugen.features.backbones.text:minilm"),
    "pocketsphinx": ("asr", "conclugen.features.backbones.asr:PocketSphinxASR"),
    "none": ("", ""),
}

# transformers loaders per kind for hf: specs
HF: dict[str, str] = {
    "image": "conclugen.features.backbones.image:HFImage",
    "video3d": "conclugen.features.backbones.video:HFVideo",
    "audio": "conclugen.features.backbones.audio:HFAudio",
    "text": "conclugen.features.backbones.text:HFText",
    "asr": "conclugen.features.backbones.asr:HFASR",
}


def _import(target: str) -> Callable[..., Backbone]:
    import importlib

    mod, attr = target.split(":")
    return getattr(importlib.import_module(mod), attr)


def parse_spec(spec: str) -> tuple[str, str]:
    """``offline:x`` → ("offline", "x"); ``hf:id`` / path / s3 → ("hf", "id-or-path")."""
    spec = str(spec).strip()
    if spec.startswith("offline:"):
        return "offline", spec[len("offline:") :]
    if spec.startswith("hf:"):
        return "hf", spec[len("hf:") :]
    if storage.is_s3(spec) or spec.startswith("file://") or os.path.isabs(spec) or spec.startswith("."):
        return "hf", spec
    raise BackboneError(f"backbone spec {spec!r}: use offline:<name>, hf:<hub id or path>, or a path/s3:// URI")


def cache_dir() -> Path:
    """Where s3:// model prefixes are copied before ``from_pretrained`` (CONCLUGEN_MODEL_CACHE)."""
    base = os.environ.get("CONCLUGEN_MODEL_CACHE") or os.path.join(tempfile.gettempdir(), "conclugen-models")
    return Path(base)


def resolve_model_dir(target: str, storage_cfg: Any = None) -> str:
    """A hub id stays a hub id; a local dir is used as is; an s3:// prefix is downloaded (once,
    keyed by URI) into the cache and its local path returned."""
    if target.startswith("file://"):
        target = target[len("file://") :]
    if not storage.is_s3(target):
        return target
    files = storage.list_files(target, storage_cfg)
    if not files:
        raise BackboneError(f"no model files under {target}")
    key = hashlib.sha256(target.rstrip("/").encode()).hexdigest()[:16]
    local = cache_dir() / key
    marker = local / ".complete"
    if marker.exists():
        return str(local)
    cache_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=cache_dir()))
    prefix = target.rstrip("/") + "/"
    for f in files:
        rel = f[len(prefix) :]
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(storage.read_bytes(f, storage_cfg))
    (tmp / ".complete").write_text(target)
    try:
        os.replace(tmp, local)  # atomic: concurrent actors race, one wins
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        if not marker.exists():
            raise
    return str(local)


def load_backbone(kind: str, spec: str, device: str = "cpu", cfg: Any = None, storage_cfg: Any = None) -> Backbone:
    """Resolve ``spec`` for ``kind`` and load it (frozen). ``cfg`` is the ExtractConfig."""
    if kind not in KINDS:
        raise BackboneError(f"unknown backbone kind {kind!r} (one of {KINDS})")
    source, target = parse_spec(spec)
    if source == "offline":
        if target not in OFFLINE:
            raise BackboneError(f"unknown offline backbone {spec!r} (have {', '.join(sorted(OFFLINE))})")
        okind, factory = OFFLINE[target]
        if target == "none":
            return NoBackbone(spec, kind, device)
        if okind != kind:
            raise BackboneError(f"{spec} is a {okind} backbone, not {kind}")
        return _import(factory)(spec, device, cfg)
    local = resolve_model_dir(target, storage_cfg)
    try:
        return _import(HF[kind])(spec, local, device, cfg)
    except BackboneError:
        raise
    except Exception as e:  # from_pretrained raises many types; name the spec once
        raise BackboneError(f"cannot load {kind} backbone {spec}: {type(e).__name__}: {e}") from e


def input_form(kind: str, spec: str) -> str:
    """The ``input_form`` of the backbone class ``spec`` names, without loading any weights."""
    source, target = parse_spec(spec)
    if source == "offline":
        factory = OFFLINE.get(target, ("", ""))[1]
        return str(getattr(_import(factory), "input_form", "")) if factory else ""
    return str(getattr(_import(HF[kind]), "input_form", "")) if kind in HF else ""


def hf_parts(path: str, device: str, processor: str, model: str = "AutoModel") -> tuple[Any, Any, Any]:
    """(config, processor, model) of a transformers checkpoint: ``processor`` and ``model`` name
    transformers auto classes; the model is frozen (``eval()``) on ``device``."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    proc = getattr(transformers, processor).from_pretrained(path)
    net = getattr(transformers, model).from_pretrained(path).eval().to(device)
    return config, proc, net


def torch_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, max(1, size))]
