"""`conclugen ablate`: the reference's ablation set, pretrained and probed at equal budget, one table.

Rows (the reference's released ablations and its video-only SimCLR baseline, see docs/method.md,
Linear probe):

=============================  ===================================  =====================
row                            losses                               modalities
=============================  ===================================  =====================
all_losses                     contrastive + clustering + recon.    all (config's)
contrastive_clustering         contrastive + clustering             all
contrastive_reconstruction     contrastive + reconstruction         all
contrastive                    contrastive                          all
contrastive_video_audio        contrastive                          video + audio
contrastive_video_text         contrastive                          video + text
reconstruction                 reconstruction                       all
simclr_video                   simclr (NT-Xent, augmented versions) video
memory_bank                    as all_losses, k-means on the bank   all (config's)
=============================  ===================================  =====================

``memory_bank`` *(ours)* is ``all_losses`` with ``losses.kmeans_schedule=memory_bank`` (one
k-means over every clip's fused cluster-head output per epoch instead of one per step; see
docs/method.md, Losses); the other rows keep the config's schedule (default ``every_step``), so
with the defaults the two rows differ only in the clustering schedule.

``simclr_video`` needs augmented versions in the feature store (``extract.augmentations`` > 0);
on a store without them the row is reported as ``skipped`` with that reason and the others run.

An active loss keeps the config's weight λ (1.0 when the config had set it to 0); the others
are set to 0. **Equal budget**: every row has the same epochs, batch, seed, optimiser and
schedule (the config's), and early stopping is switched off (``train.patience = train.epochs``)
*(ours)* so that no row trains for fewer epochs than another; each row is then probed on its
best-validation checkpoint. The baselines (raw backbone features, random heads — computed
once, with the first all-modality row's architecture) are added to the table.

Concurrency *(ours)*: each row is one Ray task (``num_cpus=1`` for its probe) that runs
:func:`conclugen.training.driver.run_pretrain` — a Ray Train ``TorchTrainer`` with ``train.workers``
workers of ``train.cpus_per_worker`` CPUs — and then :func:`conclugen.evaluation.evaluate.run_evaluate`.
Rows run at once as far as the cluster's CPUs allow: a row holds
``1 + max(workers, 1) × cpus_per_worker`` CPUs plus one CPU of headroom for the Ray Data tasks
that read its features (and ``workers`` GPUs when training on GPUs), so
``parallel = min(rows, CPUs // that, max_parallel)``. When only one fits the rows run one after
the other through the same code. A row that fails is reported in the table (status ``failed``)
and does not stop the others.

Layout under OUT (a local path): ``<row>/run`` (checkpoints), ``<row>/eval`` (probe reports and
a predict bundle), ``ablation.md``, ``ablation.csv``, ``ablation.json``; test figures with their 95%
bootstrap interval over test clips (:mod:`conclugen.evaluation.ablation_table`).

MLflow: one parent run ``ablation`` (the config as params, the table as artifacts, metrics
``<row>.test_f1_weighted`` / ``<row>.test_accuracy`` and their ``_low`` / ``_high`` bounds for
every row and baseline); each row's
pretraining run is its child and each row's evaluate run a child of that pretraining run. The
parent run ends FAILED when a row failed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conclugen import storage
from conclugen.config import Config
from conclugen.errors import ConCluGenError
from conclugen.evaluation.ablation_table import AblationResult, RowResult, log_table, write_tables

LOSSES = ("contrastive", "clustering", "reconstruction", "simclr")


@dataclass(frozen=True)
class AblationRow:
    name: str  # folder- and MLflow-safe
    losses: tuple[str, ...]
    modalities: tuple[str, ...] | None = None  # None: the config's modalities
    # other settings of the row: (section, field, value), e.g. ("losses", "kmeans_schedule", "memory_bank")
    settings: tuple[tuple[str, str, Any], ...] = ()

    def label(self) -> str:
        return " + ".join(self.losses)


ABLATIONS: tuple[AblationRow, ...] = (
    AblationRow("all_losses", ("contrastive", "clustering", "reconstruction")),
    AblationRow("contrastive_clustering", ("contrastive", "clustering")),
    AblationRow("contrastive_reconstruction", ("contrastive", "reconstruction")),
    AblationRow("contrastive", ("contrastive",)),
    AblationRow("contrastive_video_audio", ("contrastive",), ("video", "audio")),
    AblationRow("contrastive_video_text", ("contrastive",), ("video", "text")),
    AblationRow("reconstruction", ("reconstruction",)),
    AblationRow("simclr_video", ("simclr",), ("video",)),
    AblationRow("memory_bank", ("contrastive", "clustering", "reconstruction"),
                settings=(("losses", "kmeans_schedule", "memory_bank"),)),
)
# Rows that read the store's augmented versions (meta.augmentations > 0).
NEEDS_AUGMENTATIONS = frozenset({"simclr_video"})
SKIP_NO_AUGMENTATIONS = "needs augmented versions (extract.augmentations > 0); the store has none"
BASELINES = ("raw_features", "random_heads")


class AblationError(ConCluGenError, ValueError):
    """The ablation cannot start (unknown row, modality missing from the features, ...)."""


def row_config(base: Config, row: AblationRow, equal_budget: bool = True) -> Config:
    """The base config with this row's loss weights and modalities (validated again)."""
    data = base.model_dump()  # keeps SecretStr objects, so credentials survive the round trip
    for name in LOSSES:
        w = float(data["losses"][name])
        data["losses"][name] = (w if w > 0 else 1.0) if name in row.losses else 0.0
    if row.modalities is not None:
        data["model"]["modalities"] = list(row.modalities)
    for section, name, value in row.settings:
        data[section][name] = value
    if equal_budget:
        data["train"]["patience"] = data["train"]["epochs"]
    return Config.model_validate(data)


def plan_parallel(cfg: Config, resources: Mapping[str, float], n_rows: int, max_parallel: int = 0) -> int:
    """Rows at once: what the cluster's CPUs (and GPUs) fit, capped by ``max_parallel`` (0 = no cap)."""
    workers = max(cfg.train.workers, 1)
    per_row = 1.0 + workers * cfg.train.cpus_per_worker + 1.0
    fit = int(float(resources.get("CPU", 0.0)) // per_row)
    gpus = float(resources.get("GPU", 0.0))
    if cfg.train.use_gpu or (cfg.train.use_gpu is None and gpus > 0):
        fit = min(fit, int(gpus // workers))
    n = max(1, min(fit, n_rows))
    return min(n, max_parallel) if max_parallel > 0 else n


# ----------------------------------------------------------------------------- one row


def run_row(
    features_uri: str, out_dir: str, cfg: Config, row: AblationRow, parent_run_id: str | None,
    with_baselines: bool,
) -> list[RowResult]:
    """Pretrain + probe one row (the body of the Ray task). Returns the row's result and, when
    ``with_baselines``, the two baselines probed on the same features with this row's architecture."""
    from conclugen.evaluation.encoders import ENCODERS
    from conclugen.evaluation.evaluate import run_evaluate
    from conclugen.runtime import require_ray
    from conclugen.training.driver import run_pretrain

    t0 = time.perf_counter()
    mods = list(cfg.model.modalities)
    base = RowResult(row.name, list(row.losses), mods, "failed")
    try:
        require_ray("ablation row")  # inside its Ray task the worker is connected
        tags = {"conclugen.ablation": row.name, "conclugen.command": "ablate"}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        pre = run_pretrain(features_uri, storage.join(out_dir, row.name, "run"), cfg,
                           run_name=f"ablation/{row.name}", log_model=False, tags=tags,
                           lock_output=False)  # the row's own folder; a retried task may run on another node
        encoders = ENCODERS if with_baselines else ("conclugen",)
        ev = run_evaluate(features_uri, pre.best_checkpoint, cfg, storage.join(out_dir, row.name, "eval"),
                          encoders=encoders, run_name=f"evaluate/{row.name}", tags={"conclugen.ablation": row.name})
    except Exception as e:  # noqa: BLE001 - one failed row must not sink the table
        base.error = f"{type(e).__name__}: {e}"
        base.seconds = time.perf_counter() - t0
        return [base]
    base.status = "ok"
    base.set_metrics(ev.results["conclugen"], ev.intervals.get("conclugen"))
    base.epochs = pre.epochs_done
    base.checkpoint = pre.best_checkpoint
    base.pretrain_run_id = pre.mlflow_run_id
    base.evaluate_run_id = ev.mlflow_run_id
    base.seconds = time.perf_counter() - t0
    out = [base]
    if with_baselines:
        for name in BASELINES:
            b = RowResult(name, [], mods, "baseline", evaluate_run_id=ev.mlflow_run_id)
            b.set_metrics(ev.results[name], ev.intervals.get(name))
            out.append(b)
    return out


# ----------------------------------------------------------------------------- driver


def _row(name: str) -> AblationRow:
    return next(r for r in ABLATIONS if r.name == name)


def _skipped_rows(selected: Sequence[AblationRow], features_uri: str, base: Config) -> dict[str, str]:
    """Rows that cannot run on these features, with the reason (a store without augmented
    versions cannot train SimCLR)."""
    from conclugen.features.store import read_meta

    needs = [r.name for r in selected if r.name in NEEDS_AUGMENTATIONS]
    if not needs or read_meta(features_uri, base.storage).augmentations > 0:
        return {}
    return {name: SKIP_NO_AUGMENTATIONS for name in needs}


def _select(names: Sequence[str] | None) -> list[AblationRow]:
    if not names:
        return list(ABLATIONS)
    known = {r.name: r for r in ABLATIONS}
    bad = [n for n in names if n not in known]
    if bad:
        raise AblationError(f"unknown ablation rows {bad} (known: {', '.join(known)})")
    return [known[n] for n in names]


def _pinned(features_uri: str, out_dir: str, cfg: Config) -> tuple[str, str, str, Config]:
    """(features URI, output folder, tracking URI, base config) as absolute as a Ray task must see
    them: a relative workdir would resolve against the worker's directory, and the S3
    endpoint/credentials are the driver's."""
    from conclugen import tracking
    from conclugen.features.extract import resolved_storage

    if storage.is_s3(out_dir):
        raise AblationError("the ablation output must be a local folder (the rows' checkpoints may go to s3 "
                            "through --set, the table is written locally)")
    out = str(Path(out_dir).expanduser().resolve())
    if not storage.is_s3(features_uri) and not str(features_uri).startswith("file://"):
        features_uri = str(Path(features_uri).expanduser().resolve())
    uri = tracking.tracking_uri(cfg)
    base = cfg.model_copy(update={
        "workdir": str(Path(cfg.workdir).expanduser().resolve()),
        "tracking": cfg.tracking.model_copy(update={"uri": uri}),
        "storage": resolved_storage(cfg.storage),
    })
    return features_uri, out, uri, base


def _run_rows(
    selected: Sequence[AblationRow], cfgs: Mapping[str, Config], features_uri: str, out: str,
    parent: str | None, baseline_row: str | None, parallel: int, say: Any,
) -> dict[str, list[RowResult]]:
    """Run the rows as Ray tasks, at most ``parallel`` at once; a task that dies is a failed row."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=1)(run_row)
    results: dict[str, list[RowResult]] = {}
    pending: dict[Any, str] = {}
    queue = list(selected)
    while queue or pending:
        while queue and len(pending) < parallel:
            r = queue.pop(0)
            ref = task.remote(features_uri, out, cfgs[r.name], r, parent, r.name == baseline_row)
            pending[ref] = r.name
            say(f"ablation: started {r.name}")
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            name = pending.pop(ref)
            try:
                results[name] = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the task itself died (e.g. out of memory)
                row = next(x for x in selected if x.name == name)
                results[name] = [RowResult(name, list(row.losses), list(cfgs[name].model.modalities),
                                           "failed", error=f"{type(e).__name__}: {e}")]
            head = results[name][0]
            say(f"ablation: finished {name}: " + (f"test F1 (w) {head.f1_weighted:.4f}, accuracy "
                f"{head.accuracy:.4f} [{head.seconds:.0f} s]" if head.status == "ok" else f"FAILED {head.error}"))
    return results


def run_ablation(
    features_uri: str,
    out_dir: str,
    cfg: Config,
    *,
    rows: Sequence[str] | None = None,
    max_parallel: int = 0,
    equal_budget: bool = True,
    log_mlflow: bool = True,
    progress: Any = print,
) -> AblationResult:
    """Pretrain + probe each ablation row (all of :data:`ABLATIONS`, or the named ``rows``) on
    ``features_uri`` as concurrent Ray tasks; writes the table under ``out_dir`` and logs it to a
    parent MLflow run (FAILED when a row failed). Ray must be initialised by the caller (CLI / job /
    test fixture)."""
    import ray

    from conclugen import tracking
    from conclugen.training.driver import check_features

    say = progress or (lambda s: None)
    t0 = time.perf_counter()
    selected = _select(rows)
    features_uri, out, uri, base = _pinned(features_uri, out_dir, cfg)
    cfgs = {r.name: row_config(base, r, equal_budget) for r in selected}
    skipped = _skipped_rows(selected, features_uri, base)
    runnable = [r for r in selected if r.name not in skipped]
    for r in runnable:  # every row's modalities must be in the features: fail before any work
        check_features(features_uri, cfgs[r.name])
    Path(out).mkdir(parents=True, exist_ok=True)

    tags = {"conclugen.command": "ablate", "conclugen.features_uri": features_uri, "conclugen.out": out,
            "conclugen.rows": ",".join(r.name for r in selected), "conclugen.equal_budget": str(equal_budget)}
    opened = tracking.tracked_run(base, run_name="ablation", uri=uri, tags=tags) if log_mlflow else nullcontext()
    with opened as run:
        parent = run.run_id if run is not None else None
        # Baselines ride with the first row that sees every modality of the config.
        full = [r for r in runnable if cfgs[r.name].model.modalities == base.model.modalities]
        baseline_row = full[0].name if full else None
        parallel = plan_parallel(base, ray.cluster_resources(), len(runnable), max_parallel)
        say(f"ablation: {len(runnable)} rows, {parallel} at a time "
            f"({max(base.train.workers, 1)} Train worker(s) each), {base.train.epochs} epochs per row")
        for name, why in skipped.items():
            say(f"ablation: skipped {name}: {why}")

        results = _run_rows(runnable, cfgs, features_uri, out, parent, baseline_row, parallel, say)
        results |= {name: [RowResult(name, [*_row(name).losses], list(cfgs[name].model.modalities), "skipped",
                                     error=why)] for name, why in skipped.items()}
        table = [results[r.name][0] for r in selected]
        table += [x for r in selected for x in results[r.name][1:]]  # the baselines last
        result = AblationResult(out, table, parallel, time.perf_counter() - t0, parent, uri if parent else None,
                                confidence=base.probe.confidence)
        if baseline_row is None:
            result.notes.append("no row uses every modality of the config: baselines left out")
        files = write_tables(result, features_uri, base, equal_budget)
        if run is not None:
            log_table(uri, run.run_id, table, files)
            if any(r.status == "failed" for r in table):
                run.status = "FAILED"
        return result
