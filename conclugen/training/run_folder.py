"""The run folder: the one owner of what a pretraining run leaves under RUN_URI.

Layout (local path or ``s3://`` prefix)::

    RUN_URI/
      checkpoint_<n>/checkpoint.pt   payload: model state, optimizer/scheduler state, config, dims
      checkpoint_<n>/info.json       epoch, score (lower is better), metrics, stopped_early
      conclugen/run.json             the MLflow run this folder logs to (resume reopens it)
      conclugen/error.json           why the workers stopped (non-finite loss), when they did
      conclugen/summary.json         the driver's result at the end
      conclugen/workers/rank<r>-epoch<e>-pid<p>.json   which process trained which epoch

``checkpoint_*`` folders are written by Ray Train under the ``RunConfig(name, storage_path)`` that
:func:`ray_storage` derives from RUN_URI; everything else reads them only through here. Workers
write their files through the driver's filesystem object (:func:`write_worker_record`,
:func:`write_worker_error`): they may not have its credentials in their environment.
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from conclugen import storage
from conclugen.errors import ConCluGenError
from conclugen.training.errors import PretrainError
from conclugen.training.retry_fs import retrying

if TYPE_CHECKING:
    import pyarrow.fs as pafs

    from conclugen.config import StorageConfig
    from conclugen.model.heads import ConCluGen

CHECKPOINT_FILE = "checkpoint.pt"
INFO_FILE = "info.json"
STATE_DIR = "conclugen"
CHECKPOINT_PREFIX = "checkpoint_"
ERROR_FILE = "error.json"
WORKERS_DIR = "workers"
# What inference needs of a payload (no optimizer / scheduler state).
INFERENCE_KEYS = ("model", "config", "input_dims", "meta", "epoch", "metrics", "mlflow_run_id")
# storage.resolve(RUN_URI): the driver's filesystem object and path, handed to the workers.
RunFs = tuple["pafs.FileSystem", str]


class CheckpointNotFoundError(ConCluGenError, FileNotFoundError):
    """No checkpoint where one was expected."""


def state_uri(run_uri: str, name: str) -> str:
    """``RUN_URI/conclugen/<name>`` (``run.json``, ``error.json``, ``summary.json``)."""
    return storage.join(run_uri, STATE_DIR, name)


def ray_storage(run_uri: str, cfg: StorageConfig | None = None) -> tuple[pafs.FileSystem | None, str, str]:
    """RUN_URI → (pyarrow filesystem or None, storage_path, name) for Ray Train's RunConfig, so
    that its ``checkpoint_*`` folders land directly under RUN_URI (and a re-run resumes them).
    On S3 the filesystem retries every call (:mod:`conclugen.training.retry_fs`)."""
    run_uri = str(run_uri).rstrip("/")
    if storage.is_s3(run_uri):
        fs, path = storage.resolve(run_uri, cfg)
        parent, name = posixpath.split(path)
        if not parent or not name:
            raise PretrainError(f"RUN_URI {run_uri} must name a folder inside a bucket (s3://bucket/run)")
        return retrying(fs, cfg), parent, name  # Ray Train's own writes ride out an outage too
    _, path = storage.resolve(run_uri)
    p = Path(path)
    return None, str(p.parent), p.name


def checkpoint_uri(run_uri: str, fs_path: str) -> str:
    """The URI of a checkpoint that Ray Train reports by its filesystem path under RUN_URI."""
    return storage.to_uri(run_uri, fs_path)


def run_fs_uri(run_fs: RunFs) -> str:
    """The URI of a :data:`RunFs` (workers have the filesystem object, not the driver's URI)."""
    fs, path = run_fs
    return f"s3://{path}" if fs.type_name == "s3" else path


def _write_state_json(run_fs: RunFs, name: str, data: Mapping[str, Any]) -> None:
    """``RUN_URI/conclugen/<name>`` as one whole object (no appends: S3 has none), retried
    through a storage outage like every other write (the default ``storage.retry_seconds``:
    the workers do not know the run's storage section here)."""
    fs, run_path = run_fs
    path = posixpath.join(run_path, STATE_DIR, name)
    uri = run_fs_uri((fs, path))

    def write() -> None:
        fs.create_dir(posixpath.dirname(path), recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(json.dumps(dict(data)).encode())

    storage.with_retries(write, f"writing {uri}", **storage.retry_policy(uri, None))


def upload_checkpoint(checkpoint: Any, dir_name: str) -> Any:
    """``checkpoint_upload_fn`` of ``ray.train.report``: the local checkpoint folder copied into
    RUN_URI file by file through Ray Train's storage filesystem (on S3 the retrying one of
    :func:`ray_storage`, whose failures surface here at each file's close — pyarrow's
    ``copy_files``, Ray's default, would drop them). Returns the persisted checkpoint."""
    import ray.train

    ctx = ray.train.get_context().get_storage()
    fs, dest = ctx.storage_filesystem, ctx.build_checkpoint_path_from_name(dir_name)
    root = Path(checkpoint.path)
    fs.create_dir(dest, recursive=True)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        target = posixpath.join(dest, f.relative_to(root).as_posix())
        fs.create_dir(posixpath.dirname(target), recursive=True)
        with open(f, "rb") as src, fs.open_output_stream(target) as out:
            shutil.copyfileobj(src, out, 8 << 20)
    return ray.train.Checkpoint(path=dest, filesystem=fs)


def write_worker_error(run_fs: RunFs, message: str, epoch: int | None, step: int | None) -> None:
    """Record why the workers stopped (a non-finite loss); the driver raises it after the fit."""
    _write_state_json(run_fs, ERROR_FILE, {"type": "nonfinite", "message": message, "epoch": epoch, "step": step})


def read_worker_error(run_uri: str, cfg: StorageConfig | None = None) -> dict[str, Any] | None:
    """What :func:`write_worker_error` recorded, or None."""
    uri = state_uri(run_uri, ERROR_FILE)
    if not storage.exists(uri, cfg):
        return None
    return json.loads(storage.read_text(uri, cfg))


def clear_worker_error(run_uri: str, cfg: StorageConfig | None = None) -> None:
    """Forget a previous attempt's error before training again."""
    uri = state_uri(run_uri, ERROR_FILE)
    if storage.exists(uri, cfg):
        storage.delete(uri, cfg)


def write_worker_record(run_fs: RunFs, rank: int, epoch: int, start_epoch: int) -> None:
    """Note that this process trains ``epoch`` as world rank ``rank`` (``start_epoch``: where it
    began, i.e. where a restarted worker group resumed). One object per rank, epoch and process,
    so a restarted epoch keeps the record of the attempt that died."""
    pid = os.getpid()
    record = {"rank": rank, "epoch": epoch, "start_epoch": start_epoch, "pid": pid,
              "host": socket.gethostname(), "node": _ray_node_id(), "time": time.time()}
    _write_state_json(run_fs, posixpath.join(WORKERS_DIR, f"rank{rank}-epoch{epoch}-pid{pid}.json"), record)


def _ray_node_id() -> str | None:
    """The Ray node this process runs on (one host may hold several simulated nodes), if any."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def worker_records(run_uri: str, cfg: StorageConfig | None = None) -> list[dict[str, Any]]:
    """Every :func:`write_worker_record` under RUN_URI, by rank, then in the order written."""
    out = []
    for f in storage.list_files(state_uri(run_uri, WORKERS_DIR), cfg, suffixes=(".json",)):
        try:
            out.append(json.loads(storage.read_text(f, cfg)))
        except (OSError, ValueError):  # an object being written
            continue
    return sorted(out, key=lambda r: (r.get("rank", -1), r.get("time", 0.0), r.get("epoch", -1)))


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
