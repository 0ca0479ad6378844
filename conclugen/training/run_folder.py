"""The run folder: the one owner of what a pretraining run leaves under RUN_URI.

Layout (local path or ``s3://`` prefix)::

    RUN_URI/
      checkpoint_<n>/checkpoint.pt   payload: model state, optimizer/scheduler state, config, dims
      checkpoint_<n>/info.json       epoch, score (lower is better), metrics, stopped_early
      conclugen/run.json             the MLflow run this folder logs to (resume reopens it)
      conclugen/error.json           why the workers stopped (non-finite loss), when they did
      conclugen/summary.json         the driver's result at the end

``checkpoint_*`` folders are written by Ray Train (``RunConfig(name, storage_path)`` derived from
RUN_URI, see :mod:`conclugen.training.driver`); everything else reads them only through here.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from conclugen import storage
from conclugen.errors import ConCluGenError

if TYPE_CHECKING:
    from conclugen.config import StorageConfig
    from conclugen.model.heads import ConCluGen

CHECKPOINT_FILE = "checkpoint.pt"
INFO_FILE = "info.json"
STATE_DIR = "conclugen"
CHECKPOINT_PREFIX = "checkpoint_"
# What inference needs of a payload (no optimizer / scheduler state).
INFERENCE_KEYS = ("model", "config", "input_dims", "meta", "epoch", "metrics", "mlflow_run_id")


class CheckpointNotFoundError(ConCluGenError, FileNotFoundError):
    """No checkpoint where one was expected."""


def state_uri(run_uri: str, name: str) -> str:
    """``RUN_URI/conclugen/<name>`` (``run.json``, ``error.json``, ``summary.json``)."""
    return storage.join(run_uri, STATE_DIR, name)


def save_checkpoint_dir(directory: str | Path, payload: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    """Write one checkpoint folder (the format every reader here expects)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(dict(payload), directory / CHECKPOINT_FILE)
    (directory / INFO_FILE).write_text(json.dumps(dict(info), indent=2, sort_keys=True))


def read_payload(uri: str, cfg: StorageConfig | None = None) -> dict[str, Any]:
    """The payload of a checkpoint folder or of its ``checkpoint.pt``."""
    if not uri.endswith(".pt"):
        uri = storage.join(uri, CHECKPOINT_FILE)
    data = storage.read_bytes(uri, cfg)
    # weights_only: the payload holds only tensors and plain Python values (config as a dict).
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def inference_payload(uri: str, cfg: StorageConfig | None = None) -> dict[str, Any]:
    """The payload without optimizer/scheduler state: what inference needs."""
    payload = read_payload(uri, cfg)
    return {k: payload[k] for k in INFERENCE_KEYS if k in payload}


def find_checkpoints(run_uri: str, cfg: StorageConfig | None = None) -> list[dict[str, Any]]:
    """The checkpoints under RUN_URI: their info.json dicts plus ``uri``, sorted by epoch."""
    out = []
    for f in storage.list_files(run_uri, cfg, suffixes=(INFO_FILE,)):
        if posixpath.basename(f) != INFO_FILE:
            continue
        folder = f[: -len(INFO_FILE) - 1]
        if not posixpath.basename(folder).startswith(CHECKPOINT_PREFIX):
            continue
        try:
            info = json.loads(storage.read_text(f, cfg))
        except (OSError, ValueError):
            continue
        info["uri"] = folder
        out.append(info)
    return sorted(out, key=lambda i: i.get("epoch", -1))


def best_checkpoint(run_uri: str, cfg: StorageConfig | None = None) -> str | None:
    """The checkpoint with the lowest finite score (the later one on a tie), else the last one."""
    ckpts = find_checkpoints(run_uri, cfg)
    scored = [c for c in ckpts if c.get("score") is not None and math.isfinite(c["score"])]
    if not scored:
        return ckpts[-1]["uri"] if ckpts else None
    return min(scored, key=lambda c: (c["score"], -c["epoch"]))["uri"]


def resolve_checkpoint(uri: str, cfg: StorageConfig | None = None) -> str:
    """A checkpoint folder (or its checkpoint.pt) as given; a run folder → its best checkpoint."""
    uri = str(uri).rstrip("/")
    if uri.endswith(".pt") or storage.exists(storage.join(uri, CHECKPOINT_FILE), cfg):
        return uri
    best = best_checkpoint(uri, cfg)
    if best is None:
        raise CheckpointNotFoundError(
            f"no checkpoint at {uri} (neither a checkpoint folder nor a run folder holding one)")
    return best


def model_from_payload(payload: Mapping[str, Any]) -> ConCluGen:
    """The heads a payload describes, with its weights, in eval mode on CPU."""
    from conclugen.config import ModelConfig
    from conclugen.model.heads import ConCluGen

    model_cfg = ModelConfig.model_validate(payload["config"]["model"])
    model = ConCluGen.from_config(model_cfg, payload["input_dims"])
    model.load_state_dict(payload["model"])
    return model.eval()


def load_checkpoint(uri: str, cfg: StorageConfig | None = None) -> tuple[ConCluGen, dict[str, Any]]:
    """(model in eval mode on CPU, info) from a checkpoint folder, its checkpoint.pt, or a RUN_URI
    (then its best checkpoint). ``info`` has epoch, config (public dict), input_dims, meta,
    metrics, modalities and the resolved ``uri``."""
    uri = resolve_checkpoint(str(uri), cfg)
    payload = read_payload(uri, cfg)
    model = model_from_payload(payload)
    info = {k: v for k, v in payload.items() if k not in ("model", "optimizer", "scheduler")}
    info["uri"] = uri
    info["modalities"] = list(model.modalities)
    return model, info
