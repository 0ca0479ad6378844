"""Hyperparameter search: Ray Tune over ``tune_spaces/*.yaml``, one Ray Train pretraining per trial.

Shape (Ray 2.60, Train V2): ``Tuner(TorchTrainer)`` is not supported any more, so each Tune trial
is a *function* trainable (:func:`_trial`) that runs :func:`conclugen.training.pretrain.run_pretrain` — and so
a ``TorchTrainer(...).fit()`` — in a background thread. A Ray Train ``UserCallback``
(:class:`_ForwardReports`, running in the Train controller) forwards every epoch's rank-0 metrics
and checkpoint path to the trial through a Ray queue; the trial computes the objective (the
validation linear-probe weighted F1 on that epoch's checkpoint, every ``tune.probe_every``
epochs, or the SSL validation loss) and calls ``ray.tune.report`` itself, so ASHA acts on the
objective per epoch. The controller waits for the trial's acknowledgement, so the probe of epoch
``e`` is what ASHA sees at epoch ``e`` and the checkpoint cannot be rotated away before it is read.

Search: ASHA (``time_attr`` = epochs done, ``max_t`` = ``train.epochs``) plus a model-based
searcher (Optuna TPE or HyperOpt) behind a ``ConcurrencyLimiter``. Concurrency is
``min(tune.max_concurrent, what the cluster's CPUs / GPUs fit)``: a trial holds
``tune.cpus_per_trial`` (fractional on a small machine) for itself plus ``train.workers`` Train
workers of ``train.cpus_per_worker`` CPUs (and one GPU each when ``tune.gpus_per_trial`` > 0).

Layout under ``<workdir>/tune/<name>`` (a local path or ``s3://`` URI):

    ray_tune/            the Tune experiment (Tuner.restore resumes from it)
    trials/<trial_id>/   each trial's Ray Train run (checkpoints; run_pretrain's resume folder)
    conclugen/search.json  the parent MLflow run id
    best_config.yaml     the best trial's full config (``conclugen pretrain --config`` reads it)
    summary.json, summary.md

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

import json
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from conclugen import storage
from conclugen.config import Config, ConfigError, apply_overrides
from conclugen.errors import ConCluGenError
from conclugen.search.space import as_overrides, load_space, to_tune

EXPERIMENT_DIR = "ray_tune"
TRIALS_DIR = "trials"
BEST_CONFIG = "best_config.yaml"
STATE_FILE = "conclugen/search.json"
_DONE = "__conclugen_trial_done__"
# Tune's own result keys that are not training metrics (left out of the summary).
_TUNE_KEYS = {
    "time_this_iter_s", "done", "training_iteration", "trial_id", "date", "timestamp", "time_total_s",
    "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
    "checkpoint_dir_name", "should_checkpoint", "experiment_tag",
}


class TuneError(ConCluGenError, RuntimeError):
    """The search cannot start or its inputs are inconsistent; the message says why."""


@dataclass
class TrialSummary:
    trial_id: str
    params: dict[str, Any]  # the sampled values actually used (quantised)
    objective: float | None  # the objective at the trial's last report
    status: str  # completed | stopped (ASHA) | non-finite loss | error | pending | running
    epochs: int  # epochs done
    run_uri: str
    mlflow_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the last report
    error: str | None = None


@dataclass
class TuneSummary:
    name: str
    search_uri: str
    metric: str  # "probe_f1" (max) or "val_loss"/"loss" (min)
    mode: str
    trials: list[TrialSummary]
    best: TrialSummary | None
    best_config_path: str | None
    parent_run_id: str | None
    tracking_uri: str | None
    max_concurrent: int
    resumed: bool
    wall_s: float

    def table(self) -> str:
        """Markdown table: trial, sampled params, objective, epochs, status (best marked ★)."""
        keys = sorted({k for t in self.trials for k in t.params})
        short = [k.split(".")[-1] for k in keys]
        head = ["trial", *short, self.metric, "epochs", "status"]
        rows = []
        for t in self.trials:
            mark = " ★" if self.best is not None and t.trial_id == self.best.trial_id else ""
            vals = [_fmt(t.params.get(k)) for k in keys]
            obj = "" if t.objective is None else f"{t.objective:.4f}"
            rows.append([t.trial_id + mark, *vals, obj, str(t.epochs), t.status])
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
        return "\n".join(lines)

    def describe(self) -> str:
        counts: dict[str, int] = {}
        for t in self.trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        parts = [f"{len(self.trials)} trials (" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")"]
        if self.best is not None and self.best.objective is not None:
            parts.append(f"best {self.metric} {self.best.objective:.4f} ({self.best.trial_id})")
        if self.best_config_path:
            parts.append(f"best config {self.best_config_path}")
        if self.parent_run_id:
            parts.append(f"MLflow parent run {self.parent_run_id}")
        return f"tune {self.name}: " + ", ".join(parts) + f" [{self.wall_s:.0f} s]"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


# ----------------------------------------------------------------------------- configs


def trial_config(cfg: Config, params: Mapping[str, Any]) -> Config:
    """``cfg`` with a trial's sampled values (dotted fields) applied and validated.

    Goes through ``model_dump()`` (not the public dict) so that storage secrets survive."""
    data = cfg.model_dump()
    apply_overrides(data, as_overrides(params))
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        from conclugen.config import format_errors

        raise ConfigError(format_errors(e, "sampled trial values")) from None


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Tune may hand dotted keys back nested ({"losses": {"clustering": …}}): flatten with '.'."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten_params(v, key))
        else:
            out[key] = v
    return out


def quantize(params: Mapping[str, Any], space: Mapping[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    """Round q-distributions to their grid: Optuna drops the quantisation of ``qloguniform``
    (it cannot combine ``log`` and ``step``), so the trial applies it. Idempotent."""
    out = dict(params)
    for name, (dist, args) in space.items():
        if name in out and dist in ("quniform", "qloguniform"):
            low, high, q = args
            v = round(float(out[name]) / q) * q
            v = min(max(v, low), high)
            out[name] = float(f"{v:.12g}")  # no float noise in params and YAML
        elif name in out and hasattr(out[name], "item"):  # numpy scalar → Python
            out[name] = out[name].item()
    return out


def objective_metric(cfg: Config, has_val: bool) -> tuple[str, str]:
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


# ----------------------------------------------------------------------------- per-trial work


def _mailbox_class() -> Any:
    import asyncio

    import ray

    class _Mailbox:
        """One small async actor per trial carrying reports from the Train controller to the
        trial and acknowledgements back (one actor instead of two ray.util.queue.Queue actors:
        every actor is a process, and a 2-core machine feels each)."""

        def __init__(self) -> None:
            self.items: asyncio.Queue = asyncio.Queue()
            self.acks: asyncio.Queue = asyncio.Queue()

        async def put(self, item: Any) -> None:
            await self.items.put(item)

        async def get(self) -> Any:
            return await self.items.get()

        async def ack(self) -> None:
            await self.acks.put(True)

        async def wait_ack(self) -> bool:
            return await self.acks.get()

    return ray.remote(num_cpus=0)(_Mailbox)


def _make_forward_callback(mailbox: Any) -> Any:
    from ray.train import UserCallback

    class _ForwardReports(UserCallback):
        """Runs in the Ray Train controller: hands each report (rank 0's metrics and the persisted
        checkpoint path) to the Tune trial and waits until the trial has dealt with it."""

        def __init__(self) -> None:
            self.mailbox = mailbox

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            import ray

            item = {"metrics": dict(metrics[0]), "checkpoint": checkpoint.path if checkpoint else None}
            ray.get(self.mailbox.put.remote(item))
            ray.get(self.mailbox.wait_ack.remote())

    return _ForwardReports()


@dataclass
class _TrialContext:
    cfg: Config
    features_uri: str
    search_uri: str
    name: str
    space: dict[str, tuple[str, list[Any]]]
    parent_run_id: str | None
    tracking_uri: str
    datasets: dict[str, Any] | None = None  # read once by the driver, shared by all trials
    pid_dir: str | None = None  # tests: trials and Train workers write their pids here


class _Prober:
    """Linear probe on a checkpoint's frozen representations: train split → fit, val → select
    and score (the test split is never read during the search)."""

    def __init__(self, ctx: _TrialContext, cfg: Config) -> None:
        from conclugen.evaluation.probe import ProbeData, class_weights_for
        from conclugen.features.store import load_arrays, read_meta

        self.cfg = cfg
        meta = read_meta(ctx.features_uri, cfg.storage)
        self.label_space, self.multilabel = list(meta.label_space), bool(meta.multilabel)
        arrays = load_arrays(ctx.features_uri, cfg.model.modalities, splits=("train", "val"), cfg=cfg.storage)
        split = arrays["split"]
        self.rows = {s: [i for i, x in enumerate(split) if x == s] for s in ("train", "val")}
        self.feats = {m: arrays[m] for m in cfg.model.modalities}
        self.labels = [list(x or []) for x in arrays["labels"]]
        train_labels = [self.labels[i] for i in self.rows["train"]]
        if not self.multilabel:
            train_labels = [r for r in train_labels if r]
        self.weights = class_weights_for(meta.corpus, self.label_space, train_labels, self.multilabel)
        self.ProbeData = ProbeData

    def __call__(self, checkpoint_uri: str) -> dict[str, float]:
        import numpy as np
        import torch

        from conclugen.evaluation.probe import fit_probe
        from conclugen.training.run_folder import load_checkpoint

        model, _ = load_checkpoint(checkpoint_uri, self.cfg.storage)
        with torch.no_grad():
            reps = model.represent({m: torch.from_numpy(v) for m, v in self.feats.items()})
        X = torch.cat([reps[m] for m in model.modalities], dim=1).numpy()
        data = {s: self.ProbeData(X[idx], [self.labels[i] for i in idx]) for s, idx in self.rows.items()}
        empty = self.ProbeData(np.zeros((0, X.shape[1]), np.float32), [])
        res = fit_probe(data["train"], data["val"], empty, label_space=self.label_space,
                        multilabel=self.multilabel, cfg=self.cfg.probe, class_weights=self.weights)
        v = res.val_metrics
        return {"probe_f1": float(v["f1_weighted"]), "probe_accuracy": float(v["accuracy"]),
                "probe_best_epoch": float(res.best_epoch)}


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))}


def _trial(config: dict[str, Any], ctx: _TrialContext) -> None:
    """One Tune trial: pretrain with the sampled values, report each epoch (and the probe)."""
    import ray
    from ray import tune

    from conclugen import tracking
    from conclugen.training.pretrain import NonFiniteLossError, _to_uri, run_pretrain

    trial_id = tune.get_context().get_trial_id()
    if ctx.pid_dir:
        Path(ctx.pid_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(ctx.pid_dir, f"trial-{trial_id}.pids"), "a") as f:
            f.write(f"{os.getpid()}\n")
    params = quantize(flatten_params(config), ctx.space)
    cfg = trial_config(ctx.cfg, params)
    run_uri = storage.join(ctx.search_uri, TRIALS_DIR, trial_id)
    mailbox = _mailbox_class().remote()
    callback = _make_forward_callback(mailbox)
    tags = {"conclugen.search": ctx.name, "conclugen.trial_id": trial_id,
            "conclugen.trial_params": json.dumps(params, sort_keys=True)}
    if ctx.parent_run_id:
        tags["mlflow.parentRunId"] = ctx.parent_run_id
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = run_pretrain(ctx.features_uri, run_uri, cfg, run_name=f"{ctx.name}/{trial_id}",
                                         log_model=False, tags=tags, callbacks=[callback],
                                         datasets=ctx.datasets, pid_dir=ctx.pid_dir)
        except BaseException as e:  # noqa: BLE001 - re-raised in the trial thread below
            box["error"] = e
        finally:
            ray.get(mailbox.put.remote(_DONE))

    thread = threading.Thread(target=work, name=f"pretrain-{trial_id}", daemon=True)
    thread.start()

    probe = cfg.tune.objective == "probe_f1"
    prober: _Prober | None = None
    last_probe: dict[str, float] = {}
    child: str | None = None
    final: dict[str, Any] | None = None  # the last epoch's report, held back (see below)
    last: dict[str, Any] | None = None
    while True:
        item = ray.get(mailbox.get.remote())
        if item == _DONE:
            break
        try:
            metrics = _numeric(item["metrics"])
            epoch = int(metrics.get("epoch", 0))
            out = {**metrics, "epochs_done": float(epoch + 1)}
            ckpt = _to_uri(run_uri, item["checkpoint"]) if item["checkpoint"] else None
            if child is None:
                child = _child_run_id(run_uri, cfg, ctx, params)
            probed = False
            if probe and ckpt and (epoch % cfg.tune.probe_every == 0 or epoch + 1 >= cfg.train.epochs):
                prober = prober or _Prober(ctx, cfg)
                last_probe = prober(ckpt)
                probed = True
                if child:
                    tracking.log_metrics(ctx.tracking_uri, child, last_probe, step=epoch)
            out.update(last_probe)
            last = {"out": out, "ckpt": ckpt, "probed": probed}
        finally:
            ray.get(mailbox.ack.remote())
        if epoch + 1 >= cfg.train.epochs:
            # ASHA stops any trial that reaches max_t at once, which would kill run_pretrain
            # before it closes its run: the last epoch is reported after training has ended.
            final = out
        else:
            tune.report(out)
    thread.join()
    if isinstance(box.get("error"), NonFiniteLossError):
        # Deterministic: retrying cannot help. The trial ends without an objective; the summary
        # reads the reason from the run's error.json.
        print(f"[tune] trial {trial_id}: {box['error']}", flush=True)
        return
    if "error" in box:
        raise box["error"]
    if final is None and last is not None and probe and not last["probed"] and last["ckpt"]:
        # Stopped early (patience) between probe epochs: probe the last checkpoint so the final
        # report carries the objective of the trained model.
        prober = prober or _Prober(ctx, cfg)
        last_probe = prober(last["ckpt"])
        epoch = int(last["out"].get("epoch", 0))
        if child:
            tracking.log_metrics(ctx.tracking_uri, child, last_probe, step=epoch)
        final = {**last["out"], **last_probe}
    if final is not None:
        tune.report(final)


def _child_run_id(run_uri: str, cfg: Config, ctx: _TrialContext, params: Mapping[str, Any]) -> str | None:
    """The trial's MLflow run (opened by run_pretrain); logs the sampled values as params."""
    from conclugen import tracking

    try:
        state = json.loads(storage.read_text(storage.join(run_uri, "conclugen", "run.json"), cfg.storage))
        run_id = state["mlflow_run_id"]
        from mlflow.entities import Param

        tracking.client(ctx.tracking_uri).log_batch(
            run_id, params=[Param(f"sampled.{k}", str(v)) for k, v in sorted(params.items())]
        )
        return run_id
    except Exception as e:  # noqa: BLE001 - tracking must not kill the trial
        print(f"[tune] warning: could not reach the trial's MLflow run: {type(e).__name__}: {e}", flush=True)
        return None


# ----------------------------------------------------------------------------- the search


def _search_uri(cfg: Config, name: str) -> str:
    root = str(cfg.workdir)
    if not storage.is_s3(root):
        root = str(Path(storage.resolve(root)[1]).resolve())
    return storage.join(root, "tune", name)


def _tune_storage(search_uri: str, cfg: Config) -> tuple[Any, str]:
    """(pyarrow filesystem or None, storage_path) for Tune's RunConfig."""
    if storage.is_s3(search_uri):
        fs, path = storage.resolve(search_uri, cfg.storage)
        return fs, path
    return None, storage.resolve(search_uri)[1]


def _make_searcher(cfg: Config, metric: str, mode: str, max_concurrent: int) -> Any:
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


def _open_parent(cfg: Config, search_uri: str, name: str, tags: Mapping[str, str]) -> tuple[str, str, bool]:
    """(tracking uri, parent run id, reopened) — the same parent run when the search resumes."""
    from conclugen import tracking

    uri = tracking.tracking_uri(cfg)
    state_uri = storage.join(search_uri, STATE_FILE)
    if storage.exists(state_uri, cfg.storage):
        state = json.loads(storage.read_text(state_uri, cfg.storage))
        if state.get("tracking_uri") == uri and tracking.reopen_run(uri, state["parent_run_id"]):
            return uri, state["parent_run_id"], True
    run_id = tracking.start_run(cfg, run_name=name, tags=dict(tags), uri=uri)
    storage.write_text(state_uri, json.dumps({"parent_run_id": run_id, "tracking_uri": uri}), cfg.storage)
    return uri, run_id, False


def run_tune(
    features_uri: str,
    space_path: str | Path,
    cfg: Config,
    *,
    samples: int | None = None,
    name: str | None = None,
    _pid_dir: str | None = None,
) -> TuneSummary:
    """Search ``space_path`` over pretraining runs on ``features_uri``; see the module docstring.

    ``samples`` defaults to ``cfg.tune.samples``; ``name`` defaults to ``<space>-<timestamp>``.
    Re-running with an existing ``name`` resumes that search (its original sample count holds).
    Ray is started (or joined) when not initialised yet. ``_pid_dir`` (tests): each trial appends
    its process id to ``trial-<id>.pids`` there, and Train workers write ``rank<N>.json``.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from conclugen import tracking
    from conclugen.training.pretrain import VAL_SPLITS, _datasets, check_features, ensure_ray

    t0 = time.perf_counter()
    space = load_space(space_path)
    samples = int(samples or cfg.tune.samples)
    name = name or f"{Path(space_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not name or "/" in name or name.startswith("."):
        raise TuneError(f"bad search name {name!r}: use a plain folder name")
    cfg = cfg.model_copy(deep=True)
    cfg.tune.space, cfg.tune.samples = str(space_path), samples
    if cfg.train.use_gpu is None:
        # Explicit, so that concurrency planning and the trainers agree: a trial trains on GPUs
        # (one per Train worker, as train.fit places them) when tune.gpus_per_trial > 0.
        cfg.train.use_gpu = cfg.tune.gpus_per_trial > 0
    # Every sampled corner was checked against the config by load_space; the features are checked
    # here, before any cluster work, with the base config.
    meta, counts = check_features(features_uri, cfg)
    has_val = sum(counts.get(s, 0) for s in VAL_SPLITS) > 0
    metric, mode = objective_metric(cfg, has_val)
    if cfg.tune.objective == "probe_f1":
        if not meta.label_space or counts.get("train", 0) == 0:
            raise TuneError(f"{features_uri} has no labelled train split for the probe objective: "
                            "use --set tune.objective=val_loss")
    ensure_ray(cfg)
    import ray

    max_concurrent = plan_concurrency(cfg, ray.cluster_resources())
    search_uri = _search_uri(cfg, name)
    fs, storage_path = _tune_storage(search_uri, cfg)
    exp_path = storage.join(search_uri, EXPERIMENT_DIR)
    exp_fs_path = f"{storage_path.rstrip('/')}/{EXPERIMENT_DIR}"
    resumed = bool(tune.Tuner.can_restore(exp_path if fs is None else exp_fs_path, storage_filesystem=fs))

    uri, parent, _ = _open_parent(cfg, search_uri, name, {
        "conclugen.command": "tune", "conclugen.search": name, "conclugen.search_uri": search_uri,
        "conclugen.features_uri": str(features_uri), "conclugen.objective": f"{metric} ({mode})",
    })
    tracking.log_text(uri, parent, Path(space_path).read_text(), "space.yaml")
    status = "FAILED"
    try:
        # The feature store is read once here, not once per trial (each read is a round of Ray
        # Data tasks); the modality columns are the same for every trial unless they are searched.
        shared = None if "model.modalities" in space else _datasets(str(features_uri), cfg, has_val)
        ctx = _TrialContext(cfg=cfg, features_uri=str(features_uri), search_uri=search_uri, name=name,
                            space=space, parent_run_id=parent, tracking_uri=uri, datasets=shared,
                            pid_dir=_pid_dir)
        trainable = tune.with_resources(
            tune.with_parameters(_trial, ctx=ctx), {"CPU": cfg.tune.cpus_per_trial}
        )
        param_space = to_tune(space)
        if resumed:
            print(f"[tune] resuming search {name} from {exp_path}", flush=True)
            tuner = tune.Tuner.restore(
                exp_path if fs is None else exp_fs_path, trainable, resume_unfinished=True,
                resume_errored=True, param_space=param_space, storage_filesystem=fs,
            )
        else:
            scheduler = ASHAScheduler(
                time_attr="epochs_done", max_t=cfg.train.epochs, grace_period=cfg.tune.grace_period,
                reduction_factor=cfg.tune.reduction_factor,
            )
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric=metric, mode=mode, num_samples=samples, scheduler=scheduler,
                    search_alg=_make_searcher(cfg, metric, mode, max_concurrent),  # limits concurrency
                ),
                run_config=tune.RunConfig(
                    name=EXPERIMENT_DIR, storage_path=storage_path, storage_filesystem=fs,
                    failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures),
                    verbose=1,
                ),
            )
        grid = tuner.fit()
        summary = _summarise(grid, cfg, space, search_uri, name, metric, mode, uri, parent,
                             max_concurrent, resumed, t0)
        status = "FINISHED"
        return summary
    finally:
        try:
            tracking.end_run(uri, parent, status)
        except Exception:  # noqa: BLE001 - never hide the real error
            pass


def _trial_status(tr: Any, run_uri: str, cfg: Config) -> str:
    if storage.exists(storage.join(run_uri, "conclugen", "error.json"), cfg.storage):
        return "non-finite loss"
    if tr.status == "ERROR":
        return "error"
    if storage.exists(storage.join(run_uri, "conclugen", "summary.json"), cfg.storage):
        return "completed"  # ran all epochs or stopped by patience
    if tr.status == "TERMINATED":
        return "stopped (ASHA)"
    return tr.status.lower()


def _summarise(grid: Any, cfg: Config, space: Mapping[str, Any], search_uri: str, name: str, metric: str,
               mode: str, uri: str, parent: str, max_concurrent: int, resumed: bool, t0: float) -> TuneSummary:
    from conclugen import tracking

    trials: list[TrialSummary] = []
    for tr in sorted(grid._experiment_analysis.trials, key=lambda t: t.trial_id):
        run_uri = storage.join(search_uri, TRIALS_DIR, tr.trial_id)
        last = tr.last_result or {}
        m = {k: v for k, v in _numeric(last).items() if k not in _TUNE_KEYS}
        params = quantize(flatten_params(tr.config or {}), space)
        child = None
        state_uri = storage.join(run_uri, "conclugen", "run.json")
        if storage.exists(state_uri, cfg.storage):
            child = json.loads(storage.read_text(state_uri, cfg.storage)).get("mlflow_run_id")
        err = None
        if tr.status == "ERROR":
            err = str(getattr(tr, "error_msg", None) or getattr(tr, "error_file", "") or "error")[:500]
        trials.append(TrialSummary(
            trial_id=tr.trial_id, params=params, objective=m.get(metric), status=_trial_status(tr, run_uri, cfg),
            epochs=int(m.get("epochs_done", 0)), run_uri=run_uri, mlflow_run_id=child, metrics=m, error=err,
        ))

    # The best among trials that trained to their end (ASHA-stopped ones were scored earlier in
    # training), falling back to any trial with an objective.
    sign = 1.0 if mode == "max" else -1.0
    scored = [t for t in trials if t.objective is not None]
    pool = [t for t in scored if t.status == "completed"] or scored
    best = max(pool, key=lambda t: (sign * t.objective, -t.epochs)) if pool else None

    best_path = None
    if best is not None:
        best_cfg = trial_config(cfg, best.params)
        text = (f"# Best config of search {name!r} (trial {best.trial_id}, {metric} {best.objective:.4f}).\n"
                f"# Use: conclugen pretrain FEATURES --out RUN --config THIS_FILE\n" + best_cfg.to_yaml())
        best_path = storage.join(search_uri, BEST_CONFIG)
        storage.write_text(best_path, text, cfg.storage)

    summary = TuneSummary(
        name=name, search_uri=search_uri, metric=metric, mode=mode, trials=trials, best=best,
        best_config_path=best_path, parent_run_id=parent, tracking_uri=uri, max_concurrent=max_concurrent,
        resumed=resumed, wall_s=time.perf_counter() - t0,
    )
    storage.write_text(storage.join(search_uri, "summary.json"),
                       json.dumps(asdict(summary), indent=2, default=str), cfg.storage)
    storage.write_text(storage.join(search_uri, "summary.md"), summary.table() + "\n", cfg.storage)

    # MLflow: children get the final objective and their status; the parent the best trial.
    for t in trials:
        if not t.mlflow_run_id:
            continue
        try:
            if t.objective is not None:
                tracking.log_metrics(uri, t.mlflow_run_id, {"objective": t.objective}, step=max(t.epochs - 1, 0))
            tracking.set_tags(uri, t.mlflow_run_id, {"conclugen.trial_status": t.status})
            run = tracking.client(uri).get_run(t.mlflow_run_id)
            if run.info.status == "RUNNING":  # killed by ASHA (or crashed) before run_pretrain closed it
                tracking.end_run(uri, t.mlflow_run_id, "KILLED" if t.status == "stopped (ASHA)" else "FAILED")
        except Exception as e:  # noqa: BLE001
            print(f"[tune] warning: MLflow update of trial {t.trial_id} failed: {e}", flush=True)
    counts: dict[str, float] = {"trials_total": float(len(trials))}
    for key, st in (("trials_completed", "completed"), ("trials_stopped", "stopped (ASHA)"),
                    ("trials_failed", "error"), ("trials_nonfinite", "non-finite loss")):
        counts[key] = float(sum(t.status == st for t in trials))
    counts["search_wall_s"] = summary.wall_s
    tracking.log_metrics(uri, parent, counts, step=0)
    tracking.log_text(uri, parent, summary.table() + "\n", "summary.md")
    if best is not None:
        noise = {"epoch", "lr", "next_lr", "epoch_s", "samples_per_s", "score", "probe_best_epoch"}
        tracking.log_metrics(uri, parent, {f"best_{k}": v for k, v in best.metrics.items() if k not in noise}, step=0)
        tracking.set_tags(uri, parent, {"best.trial_id": best.trial_id, "best.objective": best.objective,
                                        "best.mlflow_run_id": best.mlflow_run_id or "",
                                        "best.config_path": best_path,
                                        **{f"best.{k}": v for k, v in best.params.items()}})
        tracking.log_text(uri, parent, storage.read_text(best_path, cfg.storage), BEST_CONFIG)
    return summary


__all__ = ["TuneError", "TrialSummary", "TuneSummary", "run_tune", "trial_config", "plan_concurrency",
           "quantize", "flatten_params", "objective_metric"]

