"""Hyperparameter search: Ray Tune over ``tune_spaces/*.yaml``, one Ray Train pretraining per trial.

Search: ASHA (``time_attr`` = epochs done, ``max_t`` = ``train.epochs``) plus a model-based
searcher (Optuna TPE or HyperOpt) behind a ``ConcurrencyLimiter``. Concurrency is
``min(tune.max_concurrent, what the cluster's CPUs / GPUs fit)``: a trial holds
``tune.cpus_per_trial`` (fractional on a small machine) for itself plus ``train.workers`` Train
workers of ``train.cpus_per_worker`` CPUs (and one GPU each when ``tune.gpus_per_trial`` > 0).
Each trial is :func:`conclugen.search.trial.run_trial`; the search folder's layout is in
:mod:`conclugen.search.plan`, the end of the search in :mod:`conclugen.search.summary`.

MLflow: one parent run per search (the base config as params, the best config as tags
``best.<field>``, the artifact ``best_config.yaml``, metrics ``best_<metric>`` and trial counts)
and one child run per trial (tag ``mlflow.parentRunId``; the trial's full config as params plus
``sampled.<field>`` for the searched values; per-epoch training and probe metrics; the final
``objective``).

Resume: re-running with the same name restores the Tune experiment (finished trials are kept,
unfinished ones continue from their Ray Train checkpoints, errored ones are retried) and reopens
the same parent run. A trial whose worker died is retried by Ray Train (``train.max_failures``)
and, beyond that, by Tune (``FailureConfig(max_failures=train.max_failures)``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conclugen import storage, tracking
from conclugen.config import Config
from conclugen.errors import ConCluGenError
from conclugen.search.plan import (
    EXPERIMENT_DIR,
    STATE_FILE,
    objective_metric,
    plan_budget,
    plan_concurrency,
    search_uri,
    with_fixed,
)
from conclugen.search.space import Space, load_fixed, load_space, to_tune
from conclugen.search.summary import TuneSummary, summarise
from conclugen.search.trial import TrialContext, run_trial


class TuneError(ConCluGenError, RuntimeError):
    """The search cannot start or its inputs are inconsistent; the message says why."""


def make_searcher(cfg: Config, metric: str, mode: str, max_concurrent: int) -> Any:
    """Optuna TPE or HyperOpt (``tune.searcher``), seeded, behind a ``ConcurrencyLimiter``."""
    from ray.tune.search import ConcurrencyLimiter

    if cfg.tune.searcher == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        searcher = OptunaSearch(metric=metric, mode=mode, seed=cfg.train.seed)
    else:
        try:
            from ray.tune.search.hyperopt import HyperOptSearch
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise TuneError("tune.searcher=hyperopt needs the hyperopt package (pip install hyperopt)") from e
        searcher = HyperOptSearch(metric=metric, mode=mode, random_state_seed=cfg.train.seed)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def _tune_storage(search: str, cfg: Config) -> tuple[Any, str]:
    """(pyarrow filesystem or None, storage_path) for Tune's RunConfig."""
    if storage.is_s3(search):
        return storage.resolve(search, cfg.storage)
    return None, storage.resolve(search)[1]


def _make_tuner(trainable: Any, cfg: Config, space: Space, *, metric: str, mode: str, max_concurrent: int,
                search: str, resume: bool) -> Any:
    """A new Tuner (ASHA + the searcher), or the one saved under the search folder."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    fs, storage_path = _tune_storage(search, cfg)
    if resume:
        return tune.Tuner.restore(
            f"{storage_path.rstrip('/')}/{EXPERIMENT_DIR}", trainable, resume_unfinished=True,
            resume_errored=True, param_space=to_tune(space), storage_filesystem=fs,
        )
    scheduler = ASHAScheduler(
        time_attr="epochs_done", max_t=cfg.train.epochs, grace_period=cfg.tune.grace_period,
        reduction_factor=cfg.tune.reduction_factor,
    )
    return tune.Tuner(
        trainable,
        param_space=to_tune(space),
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, num_samples=cfg.tune.samples, scheduler=scheduler,
            search_alg=make_searcher(cfg, metric, mode, max_concurrent),  # limits concurrency
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT_DIR, storage_path=storage_path, storage_filesystem=fs,
            failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures),
            verbose=1,
        ),
    )


def _can_resume(search: str, cfg: Config) -> bool:
    from ray import tune

    fs, storage_path = _tune_storage(search, cfg)
    return bool(tune.Tuner.can_restore(f"{storage_path.rstrip('/')}/{EXPERIMENT_DIR}", storage_filesystem=fs))


def _search_config(cfg: Config, space_path: str | Path, samples: int) -> Config:
    """The base config of every trial: the space file's fixed values where the user set none."""
    cfg = with_fixed(cfg.model_copy(deep=True), load_fixed(space_path))
    cfg.tune.space, cfg.tune.samples = str(space_path), samples
    if cfg.train.use_gpu is None:
        # Explicit, so that concurrency planning and the trainers agree: a trial trains on GPUs
        # (one per Train worker, as train.fit places them) when tune.gpus_per_trial > 0.
        cfg.train.use_gpu = cfg.tune.gpus_per_trial > 0
    return cfg


def run_tune(
    features_uri: str,
    space_path: str | Path,
    cfg: Config,
    *,
    samples: int | None = None,
    name: str | None = None,
) -> TuneSummary:
    """Search ``space_path`` over pretraining runs on ``features_uri``; see the module docstring.

    ``samples`` defaults to ``cfg.tune.samples``; ``name`` defaults to ``<space>-<timestamp>``.
    Re-running with an existing ``name`` resumes that search (its original sample count holds).
    Ray must be started by the caller (the CLI does). Prints the search's budget first.
    """
    from ray import tune

    from conclugen.runtime import require_ray
    from conclugen.training.data import VAL_SPLITS, build_datasets
    from conclugen.training.driver import check_features

    t0 = time.perf_counter()
    space = load_space(space_path)
    name = name or f"{Path(space_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not name or "/" in name or name.startswith("."):
        raise TuneError(f"bad search name {name!r}: use a plain folder name")
    cfg = _search_config(cfg, space_path, int(samples or cfg.tune.samples))
    # Every sampled corner was checked against the config by load_space; the features are checked
    # here, before any cluster work, with the base config.
    meta, counts = check_features(features_uri, cfg)
    has_val = sum(counts.get(s, 0) for s in VAL_SPLITS) > 0
    metric, mode = objective_metric(cfg, has_val)
    if metric == "probe_f1" and (not meta.label_space or counts.get("train", 0) == 0):
        raise TuneError(f"{features_uri} has no labelled train split for the probe objective: "
                        "use --set tune.objective=val_loss")
    require_ray("tune")
    import ray

    max_concurrent = plan_concurrency(cfg, ray.cluster_resources())
    print(plan_budget(cfg, space, meta.dims, max_concurrent).describe(), flush=True)
    search = search_uri(cfg, name)
    resumed = _can_resume(search, cfg)
    tags = {"conclugen.command": "tune", "conclugen.search": name, "conclugen.search_uri": search,
            "conclugen.features_uri": str(features_uri), "conclugen.objective": f"{metric} ({mode})"}
    with tracking.tracked_run(cfg, run_name=name, tags=tags, state_uri=storage.join(search, STATE_FILE),
                              state_key="parent_run_id") as run:
        tracking.log_text(run.uri, run.run_id, Path(space_path).read_text(), "space.yaml")
        # The feature store is read once here, not once per trial (each read is a round of Ray
        # Data tasks); the modality columns are the same for every trial unless they are searched.
        shared = None if "model.modalities" in space else build_datasets(str(features_uri), cfg, has_val)
        ctx = TrialContext(cfg=cfg, features_uri=str(features_uri), search_uri=search, name=name, space=space,
                           parent_run_id=run.run_id, tracking_uri=run.uri, datasets=shared)
        trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), {"CPU": cfg.tune.cpus_per_trial})
        if resumed:
            print(f"[tune] resuming search {name} from {storage.join(search, EXPERIMENT_DIR)}", flush=True)
        tuner = _make_tuner(trainable, cfg, space, metric=metric, mode=mode, max_concurrent=max_concurrent,
                            search=search, resume=resumed)
        grid = tuner.fit()
        # Tune's Trial records (status, last result, error file): ResultGrid has no public view of them.
        return summarise(grid._experiment_analysis.trials, cfg, space, search_uri=search, name=name,
                         metric=metric, mode=mode, run=run, max_concurrent=max_concurrent, resumed=resumed, t0=t0)


__all__ = ["TuneError", "TuneSummary", "make_searcher", "run_tune"]
