"""Validated settings for every command.

One pydantic model per section, loaded from YAML and overridden by dotted ``--set section.key=value``
pairs. Unknown keys and bad values stop with an error that names the field. The defaults reproduce
docs/method.md (the reference implementation's values); choices that are ours are marked *(ours)*.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from conclugen.errors import ConCluGenError

MODALITIES = ("video", "audio", "text")
# StorageConfig fields that hold credentials: never logged, never written (see Config.public_dict).
SECRET_FIELDS = ("access_key_id", "secret_access_key", "session_token")
MELD_EMOTIONS = ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust")
MOSEI_EMOTIONS = ("happiness", "sadness", "anger", "fear", "disgust", "surprise")


class ConfigError(ConCluGenError, ValueError):
    """A config file or override is wrong; the message names the field."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(Section):
    """Object storage. Empty fields fall back to the standard AWS environment variables
    (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION)."""

    s3_endpoint: str | None = None
    s3_region: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    # Transient errors (connection refused/reset, timeouts, 5xx) are retried with exponential
    # backoff (0.2 s doubling, at most 5 s apart) for up to `retry_seconds` in all and at most
    # `retries` retries, so an object store that is down for a while (a restart) is waited out;
    # permanent ones (credentials, permissions, no such bucket) fail at once. See storage.py.
    retries: int = Field(30, ge=0, le=1000)
    retry_seconds: float = Field(60.0, ge=0)


class CorpusConfig(Section):
    name: Literal["meld", "caer", "mosei", "folder"] = "meld"
    # MOSEI: file listing the standard folds (JSON {"train": [...], "valid": [...], "test": [...]}).
    folds_file: str | None = None
    # Longer clips are cut to this many seconds (ours), so one clip cannot stall a worker.
    max_clip_seconds: float = Field(60.0, gt=0)


class BackbonesConfig(Section):
    """Each backbone is ``offline:<name>`` (weights shipped in a package), ``hf:<hub id>``, or a
    local / ``s3://`` path to a saved model. The embedded defaults work offline; cluster configs
    name the reference's models by hub id."""

    image: str = "offline:image"
    video3d: str = "offline:video3d"
    audio: str = "offline:audio"
    text: str = "offline:minilm"
    # runs only for clips without a transcript that have audio; "offline:none" switches it off
    asr: str = "offline:pocketsphinx"


class ExtractConfig(Section):
    backbones: BackbonesConfig = BackbonesConfig()
    face_fps: float = Field(1.0, gt=0)
    face_size: int = Field(180, ge=16)
    window_frames: int = Field(16, ge=1)
    window_fps: float = Field(16.0, gt=0)
    window_size: int = Field(112, ge=16)
    audio_sample_rate: int = Field(16000, ge=8000)
    n_mels: int = Field(128, ge=8)
    face_detector: Literal["haar", "none"] = "haar"
    # Batch sizes (clips per batch) for each Ray Data stage.
    decode_batch_size: int = Field(4, ge=1)
    backbone_batch_size: int = Field(8, ge=1)
    # Actor pool size per backbone stage; GPUs per actor when GPUs exist (0 = CPU).
    backbone_actors: int = Field(1, ge=1)
    num_gpus_per_actor: float = Field(0.0, ge=0)
    # "fused": one actor pool holds every backbone; "separate": one actor pool per backbone.
    backbone_stages: Literal["fused", "separate"] = "fused"
    # torch threads (and CPUs reserved) per backbone actor; 0 = 1 CPU, torch's choice of threads
    backbone_threads: int = Field(0, ge=0)
    # concurrent decode tasks; 0 = as many as Ray's free CPUs allow, at most one per core on a
    # one-node cluster that declares more CPUs than cores (features/decode_stage.decode_concurrency)
    decode_tasks: int = Field(0, ge=0)
    # Retries of one clip read; None = the storage section's policy (storage.retries /
    # storage.retry_seconds). A read that still fails because the storage is unreachable stops
    # the run (a rerun resumes); other read errors become that clip's errors row.
    s3_read_retries: int | None = Field(None, ge=0)
    # Augmented versions stored per clip besides the plain one (reference: 10; 0 = none). See
    # docs/method.md, Backbones and features, and conclugen/features/versions.py.
    augmentations: int = Field(0, ge=0, le=64)
    # Feature/error shards are cut at about this many MB of vectors (small corpora: one or a few
    # files; `conclugen compact` merges the small shards of many runs). See docs/architecture.md.
    shard_mb: float = Field(128.0, gt=0)
    # Manifest rows per Ray Data read task (decoupled from decode_batch_size, the clips decoded
    # per batch inside a task); 0 = automatic (enough tasks to keep every CPU busy, at most 256
    # clips each).
    task_clips: int = Field(0, ge=0)


class ModelConfig(Section):
    modalities: list[Literal["video", "audio", "text"]] = ["video", "audio", "text"]
    d: int = Field(4096, ge=2, description="representation size D")
    p: int = Field(512, ge=2, description="projection size P")
    r: int = Field(512, ge=2, description="decoder hidden size R")
    audio_geu_dim: int = Field(1024, ge=2)
    k: int = Field(128, ge=2, description="number of clusters K (ours: 128 within the searched set)")
    sync_batchnorm: bool = True
    # "standardize" (ours): the heads standardise each backbone feature per dimension with the
    # mean/std of the pretraining rows (kept in the model); "none": raw features, as the reference
    # (whose backbones give similarly scaled, nonnegative features). See docs/method.md, Heads.
    input_norm: Literal["standardize", "none"] = "standardize"

    @field_validator("modalities")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or not v:
            raise ValueError("modalities must be distinct and non-empty")
        return v


class LossesConfig(Section):
    contrastive: float = Field(1.0, ge=0)
    clustering: float = Field(1.0, ge=0)
    reconstruction: float = Field(1.0, ge=0)
    margin: float = 0.001
    cluster_margin: float = 0.001
    mode: Literal["joint", "individual"] = "joint"
    kmeans_iters: int = Field(100, ge=1)
    kmeans_tol: float = Field(1e-4, ge=0)
    kmeans_start_epoch: int = Field(0, ge=0)
    queue_batches: int = Field(20, ge=0, description="past batches kept for k-means (reset each epoch)")
    # "every_step": refit from scratch each step (reference); "warm": refit every N steps from the
    # previous centroids, assignment only in between (ours).
    # "memory_bank" (ours, DeepCluster-v2 style): a bank of every training clip's fused
    # cluster-head output, clustered once at each epoch start; the epoch trains against those
    # pseudo-labels (docs/method.md, Losses).
    kmeans_schedule: Literal["every_step", "warm", "memory_bank"] = "every_step"
    kmeans_refit_every: int = Field(10, ge=1)
    # Video-only SimCLR baseline (NT-Xent between two augmented versions of a clip's video
    # features); needs "video" in model.modalities and a store extracted with
    # extract.augmentations ≥ 1 (checked by training.driver.check_features). Counts as one active
    # loss in the weighted mean. Temperature: the reference's SimCLRModel default
    # (src/models/simclr/simclr_classification_model.py, simclr_temperature=0.07).
    simclr: float = Field(0.0, ge=0)
    simclr_temperature: float = Field(0.07, gt=0)

    @model_validator(mode="after")
    def _clustering_needs_contrastive(self) -> LossesConfig:
        if self.clustering > 0 and self.contrastive == 0:
            raise ValueError("losses.clustering > 0 needs losses.contrastive > 0 (docs/method.md, Losses)")
        if self.contrastive == self.clustering == self.reconstruction == self.simclr == 0:
            raise ValueError("at least one loss weight must be > 0")
        return self


class TrainConfig(Section):
    workers: int = Field(2, ge=0)
    use_gpu: bool | None = None  # None = when the cluster has GPUs
    cpus_per_worker: float = Field(1.0, gt=0)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=2, description="global batch, split over workers")
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(1e-3, ge=0)
    warmup_epochs: int = Field(5, ge=0)
    warmup_start_factor: float = Field(0.1, gt=0, le=1)
    restart_t0: int = Field(20, ge=1)
    restart_t_mult: int = Field(2, ge=1)
    eta_min: float = Field(1e-6, ge=0)
    restart_decay: float = Field(0.75, gt=0, le=1)
    # Streaming stores (too big to cache): "global" = every rank reads its own (seed, epoch)-chosen
    # row groups and shuffles them in windows of shuffle_window_mb of vectors (two windows in
    # memory per worker); "local" = Ray Data's streaming split with a 4-batch local buffer.
    # See docs/method.md, Pretraining (ours).
    shuffle: Literal["global", "local"] = "global"
    shuffle_window_mb: float = Field(512.0, gt=0)
    seed: int = 127
    patience: int = Field(15, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    max_failures: int = Field(3, ge=0)
    # Extra Ray resources each Train worker needs besides its CPUs/GPU (e.g. {"trainer_slot": 1}
    # to place one worker per node that advertises one slot; a "CPU" key replaces the
    # cpus_per_worker request, which still sets the torch threads) *(ours)*.
    worker_resources: dict[str, float] = Field(default_factory=dict)


class ProbeConfig(Section):
    # "reference": the authors' class weights / pos_weight, LR schedule, raw features;
    # "balanced": inverse-frequency weights from the data, standardised features (ours).
    protocol: Literal["reference", "balanced"] = "reference"
    # 95% intervals: bootstrap resamples over test clips.
    bootstrap: int = Field(1000, ge=0)
    confidence: float = Field(0.95, gt=0, lt=1)
    lr: float = Field(0.00967, gt=0)
    weight_decay: float = Field(0.004, ge=0)
    batch_size: int = Field(4096, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    epochs: int = Field(200, ge=1)
    patience: int = Field(15, ge=1)
    threshold: float = Field(0.5, gt=0, lt=1)
    seed: int = 127


class TuneConfig(Section):
    space: str = "tune_spaces/quick.yaml"
    samples: int = Field(8, ge=1)
    objective: Literal["probe_f1", "val_loss"] = "probe_f1"
    searcher: Literal["optuna", "hyperopt"] = "optuna"
    grace_period: int = Field(2, ge=1)
    reduction_factor: int = Field(2, ge=2)
    probe_every: int = Field(1, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent: int = Field(2, ge=1)


class TrackingConfig(Section):
    # None: MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db
    uri: str | None = None
    experiment: str = "conclugen"
    # MLflow Model Registry name for the video → emotion pyfunc logged by `evaluate`.
    model_name: str = "conclugen"


class Config(Section):
    workdir: str = "work"
    ray_address: str | None = None  # None: start a local cluster (or join RAY_ADDRESS)
    storage: StorageConfig = StorageConfig()
    corpus: CorpusConfig = CorpusConfig()
    extract: ExtractConfig = ExtractConfig()
    model: ModelConfig = ModelConfig()
    losses: LossesConfig = LossesConfig()
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig = ProbeConfig()
    tune: TuneConfig = TuneConfig()
    tracking: TrackingConfig = TrackingConfig()

    def tracking_uri(self) -> str:
        if self.tracking.uri:
            return self.tracking.uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{Path(self.workdir).resolve() / 'mlflow.db'}"

    def public_dict(self) -> dict[str, Any]:
        """The config as plain data without any secret (for logs, MLflow params, checkpoints,
        echo): the storage credentials are dropped, never written even masked. The one place
        secrets are stripped."""
        data = json.loads(self.model_dump_json())  # SecretStr dumps as '**********'
        for secret in SECRET_FIELDS:
            data["storage"].pop(secret, None)
        return data

    def flat_params(self) -> dict[str, str]:
        """Dotted key → value strings, secrets removed: what MLflow records as params."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)

        walk("", self.public_dict())
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.public_dict(), sort_keys=False)


def format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"  {field}: {msg}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a","b","c"], value parsed as YAML, so 3, 0.1, true, [a, b] work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults ← ``base`` ← YAML file ← overrides, validated once at the end."""
    data: dict[str, Any] = json.loads(json.dumps(dict(base or {})))
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
        _deep_update(data, loaded)
        source = str(p)
    overrides = list(overrides)
    if overrides:
        apply_overrides(data, overrides)
        source += " + --set"
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source)) from None


def _deep_update(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v
