"""What a search will do before it starts: its folder, trial configs, objective, concurrency and
budget (trials × epochs × head sizes).

Layout under ``<workdir>/tune/<name>`` (a local path or ``s3://`` URI):

    ray_tune/              the Tune experiment (Tuner.restore resumes from it)
    trials/<trial_id>/     each trial's Ray Train run (checkpoints; run_pretrain's resume folder,
                           conclugen/trial.json: the processes that ran the trial)
    conclugen/search.json  the parent MLflow run id
    best_config.yaml       the best trial's full config (``conclugen pretrain --config`` reads it)
    summary.json, summary.md
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from conclugen import storage
from conclugen.config import Config, ConfigError, apply_overrides, format_errors
from conclugen.search.space import Space, as_overrides, edges

EXPERIMENT_DIR = "ray_tune"
TRIALS_DIR = "trials"
BEST_CONFIG = "best_config.yaml"
STATE_FILE = "conclugen/search.json"
# Config fields that size the heads (their parameter count).
_SIZE_FIELDS = ("model.modalities", "model.d", "model.p", "model.r", "model.k", "model.audio_geu_dim")


def search_uri(cfg: Config, name: str) -> str:
    """``<workdir>/tune/<name>`` (absolute when local)."""
    root = str(cfg.workdir)
    if not storage.is_s3(root):
        root = str(Path(storage.resolve(root)[1]).resolve())
    return storage.join(root, "tune", name)


def trial_run_uri(search: str, trial_id: str) -> str:
    """The trial's Ray Train run folder inside the search folder."""
    return storage.join(search, TRIALS_DIR, trial_id)


def trial_config(cfg: Config, params: Mapping[str, Any]) -> Config:
    """``cfg`` with a trial's sampled values (dotted fields) applied and validated.

    Goes through ``model_dump()`` (not the public dict) so that storage secrets survive."""
    data = cfg.model_dump()
    apply_overrides(data, as_overrides(params))
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, "sampled trial values")) from None


def _explicit(cfg: Config, field: str) -> bool:
    """Whether the config file, ``base`` or ``--set`` gave ``field`` (not a default)."""
    *path, leaf = field.split(".")
    section: BaseModel = cfg
    for part in path:
        section = getattr(section, part)
    return leaf in section.model_fields_set


def with_fixed(cfg: Config, fixed: Mapping[str, Any]) -> Config:
    """``cfg`` with a space file's ``fixed:`` values for the fields the user did not set: a value
    from the config file or ``--set`` wins over the space file (which wins over the defaults)."""
    todo = {k: v for k, v in fixed.items() if not _explicit(cfg, k)}
    return trial_config(cfg, todo) if todo else cfg


def objective_metric(cfg: Config, has_val: bool) -> tuple[str, str]:
    """(metric, mode) Tune optimises: the probe's F1 (max), else the (validation) SSL loss (min)."""
    if cfg.tune.objective == "probe_f1":
        return "probe_f1", "max"
    return ("val_loss" if has_val else "loss"), "min"


def plan_concurrency(cfg: Config, resources: Mapping[str, float]) -> int:
    """How many trials run at once: ``tune.max_concurrent`` capped by what the cluster fits —
    each trial holds ``tune.cpus_per_trial`` + ``train.workers`` × ``train.cpus_per_worker``
    CPUs, and ``train.workers`` GPUs when trials train on GPUs."""
    workers = max(cfg.train.workers, 1)
    per_trial_cpu = cfg.tune.cpus_per_trial + workers * cfg.train.cpus_per_worker
    fit = int(float(resources.get("CPU", 0)) // per_trial_cpu) if per_trial_cpu > 0 else cfg.tune.max_concurrent
    if cfg.tune.gpus_per_trial > 0:
        fit = min(fit, int(float(resources.get("GPU", 0)) // workers))
    return max(1, min(cfg.tune.max_concurrent, fit))


@dataclass(frozen=True)
class Budget:
    """What a search costs at most: ``trials`` × ≤ ``epochs`` epochs (ASHA stops some earlier),
    heads of ``min_params``–``max_params`` parameters, ``concurrent`` trials at a time."""

    trials: int
    epochs: int
    min_params: int
    max_params: int
    concurrent: int

    def describe(self) -> str:
        low, high = _count(self.min_params), _count(self.max_params)
        size = low if low == high else f"{low}–{high}"
        return (f"tune: {self.trials} trials × ≤{self.epochs} epochs, heads {size} params, "
                f"{self.concurrent} at a time")


def _count(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def heads_params(cfg: Config, input_dims: Mapping[str, int]) -> int:
    """Parameter count of the heads ``cfg.model`` builds for ``input_dims`` (built on the meta
    device: no memory is allocated, whatever the sizes)."""
    import torch

    from conclugen.model.heads import ConCluGen

    with torch.device("meta"):
        model = ConCluGen.from_config(cfg.model, input_dims)
    return sum(p.numel() for p in model.parameters())


def plan_budget(cfg: Config, space: Space, input_dims: Mapping[str, int], concurrent: int) -> Budget:
    """The search's :class:`Budget`: the head sizes at every corner of the searched size fields
    (parameter counts grow with each size, so the extremes are at the corners)."""
    sized = [k for k in _SIZE_FIELDS if k in space]
    counts = [
        heads_params(trial_config(cfg, dict(zip(sized, corner, strict=True))), input_dims)
        for corner in itertools.product(*(_extremes(*space[k]) for k in sized))
    ]
    epochs = max(int(v) for v in edges(*space["train.epochs"])) if "train.epochs" in space else cfg.train.epochs
    return Budget(trials=cfg.tune.samples, epochs=epochs, min_params=min(counts), max_params=max(counts),
                  concurrent=concurrent)


def _extremes(dist: str, args: list[Any]) -> list[Any]:
    values = edges(dist, args)
    if dist != "choice" or not all(isinstance(v, int | float) for v in values):
        return values
    return sorted({min(values), max(values)})
