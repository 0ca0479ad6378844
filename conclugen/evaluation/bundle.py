"""The predict bundle: what ``conclugen evaluate`` leaves for ``conclugen predict``.

The one owner of its layout — :func:`write_bundle` writes it, :func:`load_bundle` reads it::

    <evaluate out>/model/
      bundle.json     version, modalities, input_dims, label space, multi-label flag, corpus,
                      backbones (names and dims) and the extraction settings the features were
                      made with, the source checkpoint and features, the pretraining run id
      checkpoint.pt   the checkpoint's inference payload (model weights, config, input_dims —
                      no optimizer/scheduler state)
      probe.npz       the fitted probe of the "conclugen" encoder (a copy of <out>/conclugen/probe.npz)

The bundle copies the weights because Ray Train rotates checkpoints (``keep_checkpoints``): a
bundle that only pointed at a checkpoint folder could lose it on the next resume.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conclugen import storage
from conclugen.config import ExtractConfig
from conclugen.errors import ConCluGenError
from conclugen.evaluation.probe_model import ProbeModel
from conclugen.training.run_folder import inference_payload, model_from_payload, read_payload

if TYPE_CHECKING:
    from conclugen.config import StorageConfig
    from conclugen.features.store import FeatureMeta
    from conclugen.model.heads import ConCluGen

BUNDLE_DIR = "model"
BUNDLE_FILE = "bundle.json"
BUNDLE_CHECKPOINT = "checkpoint.pt"
BUNDLE_PROBE = "probe.npz"
BUNDLE_VERSION = 1
# ExtractConfig fields that size the work, not what is computed: taken from the predict config.
RESOURCE_FIELDS = ("decode_batch_size", "backbone_batch_size", "backbone_actors", "num_gpus_per_actor",
                   "backbone_stages", "backbone_threads", "decode_tasks", "s3_read_retries")


class BundleError(ConCluGenError, ValueError):
    """The model bundle is missing or incomplete."""


def _bundle_extract(meta: FeatureMeta, extract: ExtractConfig) -> ExtractConfig:
    """The extraction settings for predict: this config's decoding settings with the backbones the
    features were made with (from meta.json), so new clips go through the same models. Predict
    embeds the plain clip only (augmented versions are for training)."""
    data = json.loads(extract.model_dump_json())
    data["augmentations"] = 0
    for kind, b in meta.backbones.items():
        if kind in data["backbones"]:
            data["backbones"][kind] = b.name
    return ExtractConfig.model_validate(data)


def write_bundle(
    out_dir: str | Path,
    checkpoint_uri: str,
    meta: FeatureMeta,
    extract: ExtractConfig,
    *,
    features_uri: str,
    modalities: Sequence[str],
    input_dims: Mapping[str, int],
    probe_file: str | Path | None,
    pretrain_run_id: str | None,
    storage_cfg: StorageConfig | None = None,
) -> Path:
    """Write the bundle into the local folder ``out_dir/model``; returns that folder.

    ``probe_file``: the conclugen encoder's ``probe.npz`` (None when it was not probed: the
    bundle then cannot predict, and :func:`load_bundle` says so).
    """
    import torch

    folder = Path(out_dir) / BUNDLE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(inference_payload(checkpoint_uri, storage_cfg), folder / BUNDLE_CHECKPOINT)
    if probe_file is not None:
        shutil.copyfile(probe_file, folder / BUNDLE_PROBE)
    info = {
        "version": BUNDLE_VERSION,
        "checkpoint": BUNDLE_CHECKPOINT,
        "probe": BUNDLE_PROBE if probe_file is not None else None,
        "source_checkpoint": checkpoint_uri,
        "features_uri": str(features_uri),
        "modalities": list(modalities),
        "input_dims": dict(input_dims),
        "label_space": list(meta.label_space),
        "multilabel": bool(meta.multilabel),
        "corpus": meta.corpus,
        "backbones": {k: b.name for k, b in meta.backbones.items()},
        "backbone_dims": {k: int(b.dim) for k, b in meta.backbones.items()},
        "extract": json.loads(_bundle_extract(meta, extract).model_dump_json()),
        "pretrain_run_id": pretrain_run_id,
    }
    (folder / BUNDLE_FILE).write_text(json.dumps(info, indent=2))
    return folder


@dataclass
class Bundle:
    uri: str  # the bundle folder
    info: dict[str, Any]  # bundle.json
    payload: dict[str, Any]  # checkpoint.pt (model weights, config, input_dims)
    probe_bytes: bytes

    @property
    def label_space(self) -> list[str]:
        return list(self.info["label_space"])

    @property
    def multilabel(self) -> bool:
        return bool(self.info["multilabel"])

    def model(self) -> ConCluGen:
        """The pretrained heads, in eval mode on CPU."""
        return model_from_payload(self.payload)

    def probe(self) -> ProbeModel:
        return ProbeModel.from_bytes(self.probe_bytes)

    def extract_config(self, current: ExtractConfig) -> ExtractConfig:
        """The bundle's extraction settings with the resource settings of ``current``."""
        data = dict(self.info["extract"])
        cur = json.loads(current.model_dump_json())
        for k in RESOURCE_FIELDS:
            data[k] = cur[k]
        return ExtractConfig.model_validate(data)


def bundle_dir(model_uri: str, storage_cfg: StorageConfig | None = None) -> str:
    """The evaluate output folder → its ``model/`` bundle; a bundle folder as given."""
    model_uri = str(model_uri).rstrip("/")
    if storage.exists(storage.join(model_uri, BUNDLE_FILE), storage_cfg):
        return model_uri
    inner = storage.join(model_uri, BUNDLE_DIR)
    if storage.exists(storage.join(inner, BUNDLE_FILE), storage_cfg):
        return inner
    raise BundleError(f"{model_uri} holds no model bundle ({BUNDLE_FILE}): pass the output folder of "
                      "`conclugen evaluate` (or its model/ folder)")


def load_bundle(model_uri: str, storage_cfg: StorageConfig | None = None) -> Bundle:
    """The bundle at ``model_uri`` (an evaluate output folder or its ``model/``; local or s3://)."""
    d = bundle_dir(model_uri, storage_cfg)
    info = json.loads(storage.read_text(storage.join(d, BUNDLE_FILE), storage_cfg))
    if not info.get("probe"):
        raise BundleError(f"{d} has no fitted probe of the conclugen encoder (evaluate ran without it)")
    payload = read_payload(storage.join(d, info["checkpoint"]), storage_cfg)
    probe = storage.read_bytes(storage.join(d, info["probe"]), storage_cfg)
    return Bundle(uri=d, info=info, payload=payload, probe_bytes=probe)
