"""The end of a search: one :class:`TrialSummary` per trial, the best trial and its config, the
summary files, and the final state of every MLflow run.

A trial's fate comes from Tune's record of it and from its run folder, both final once
``Tuner.fit`` has returned: ``error.json`` (the workers stopped on a non-finite loss) →
"non-finite loss"; Tune status ERROR → "error"; ``summary.json`` (run_pretrain finished) →
"completed"; Tune status TERMINATED otherwise → "stopped (ASHA)". Its MLflow run is then set to
FINISHED (completed), KILLED (stopped) or FAILED (error, non-finite loss) by the driver alone,
after the trial's processes have exited: a trial process that Tune tears down mid-epoch may end
its run FAILED on the way out (its pretraining thread sees the Train run vanish), and would
otherwise race the driver.

Intervals: when a trial's last report carries ``<metric>_low`` / ``<metric>_high`` (the probe's
bootstrap interval over the validation clips, see docs/method.md, Linear probe: intervals), the
table and the description show the objective as ``0.752 [0.65, 0.84]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from conclugen import storage, tracking
from conclugen.config import Config
from conclugen.evaluation.intervals import format_interval
from conclugen.search.plan import BEST_CONFIG, trial_config, trial_run_uri
from conclugen.search.space import Space, trial_params
from conclugen.search.trial import child_run_id, numeric, read_attempts, wait_for_exit
from conclugen.training.run_folder import state_uri

COMPLETED, STOPPED, ERROR, NONFINITE = "completed", "stopped (ASHA)", "error", "non-finite loss"
# A settled trial's MLflow run status.
RUN_STATUS = {COMPLETED: "FINISHED", STOPPED: "KILLED", ERROR: "FAILED", NONFINITE: "FAILED"}
# Tune's own result keys that are not training metrics (left out of the summary).
_TUNE_KEYS = {
    "time_this_iter_s", "done", "training_iteration", "trial_id", "date", "timestamp", "time_total_s",
    "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
    "checkpoint_dir_name", "should_checkpoint", "experiment_tag",
}
# Metrics of the best trial not copied to the parent run as best_<metric>.
_NOT_BEST = {"epoch", "lr", "next_lr", "epoch_s", "samples_per_s", "score", "probe_best_epoch"}


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

    def objective_text(self, metric: str) -> str:
        """The objective, with its interval when the last report has ``<metric>_low`` / ``_high``."""
        if self.objective is None:
            return ""
        lo, hi = self.metrics.get(f"{metric}_low"), self.metrics.get(f"{metric}_high")
        return format_interval(self.objective, lo, hi) if lo is not None and hi is not None else f"{self.objective:.4f}"


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
        bounded = any(f"{self.metric}_low" in t.metrics for t in self.trials)
        head = ["trial", *short, self.metric + (" [interval]" if bounded else ""), "epochs", "status"]
        rows = []
        for t in self.trials:
            mark = " ★" if self.best is not None and t.trial_id == self.best.trial_id else ""
            vals = [_fmt(t.params.get(k)) for k in keys]
            rows.append([t.trial_id + mark, *vals, t.objective_text(self.metric), str(t.epochs), t.status])
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
        return "\n".join(lines)

    def describe(self) -> str:
        parts = [f"{len(self.trials)} trials (" + ", ".join(f"{v} {k}" for k, v in sorted(self.counts().items())) + ")"]
        if self.best is not None and self.best.objective is not None:
            parts.append(f"best {self.metric} {self.best.objective_text(self.metric)} ({self.best.trial_id})")
        if self.best_config_path:
            parts.append(f"best config {self.best_config_path}")
        if self.parent_run_id:
            parts.append(f"MLflow parent run {self.parent_run_id}")
        return f"tune {self.name}: " + ", ".join(parts) + f" [{self.wall_s:.0f} s]"

    def counts(self) -> dict[str, int]:
        """Trials per status."""
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


# ----------------------------------------------------------------------------- trials


def trial_status(tune_status: str, run_uri: str, cfg: Config) -> str:
    """A trial's fate from Tune's status and its run folder (see the module docstring)."""
    if storage.exists(state_uri(run_uri, "error.json"), cfg.storage):
        return NONFINITE
    if tune_status == "ERROR":
        return ERROR
    if storage.exists(state_uri(run_uri, "summary.json"), cfg.storage):
        return COMPLETED  # ran all epochs or stopped by patience
    if tune_status == "TERMINATED":
        return STOPPED
    return tune_status.lower()


def summarise_trial(tr: Any, cfg: Config, space: Space, search_uri: str, metric: str) -> TrialSummary:
    """The summary of one of Tune's ``Trial`` records."""
    run_uri = trial_run_uri(search_uri, tr.trial_id)
    m = {k: v for k, v in numeric(tr.last_result or {}).items() if k not in _TUNE_KEYS}
    err = str(tr.error_file or "error")[:500] if tr.status == "ERROR" else None
    return TrialSummary(
        trial_id=tr.trial_id, params=trial_params(tr.config or {}, space), objective=m.get(metric),
        status=trial_status(tr.status, run_uri, cfg), epochs=int(m.get("epochs_done", 0)), run_uri=run_uri,
        mlflow_run_id=child_run_id(run_uri, cfg), metrics=m, error=err,
    )


def pick_best(trials: list[TrialSummary], mode: str) -> TrialSummary | None:
    """The best among trials that trained to their end (ASHA-stopped ones were scored earlier in
    training), falling back to any trial with an objective; the shorter one on a tie."""
    sign = 1.0 if mode == "max" else -1.0
    scored = [t for t in trials if t.objective is not None]
    pool = [t for t in scored if t.status == COMPLETED] or scored
    return max(pool, key=lambda t: (sign * t.objective, -t.epochs)) if pool else None


def write_best_config(cfg: Config, best: TrialSummary, search_uri: str, name: str, metric: str) -> str:
    """``best_config.yaml``: the best trial's full config, for ``conclugen pretrain --config``."""
    text = (f"# Best config of search {name!r} (trial {best.trial_id}, {metric} {best.objective:.4f}).\n"
            f"# Use: conclugen pretrain FEATURES --out RUN --config THIS_FILE\n"
            + trial_config(cfg, best.params).to_yaml())
    path = storage.join(search_uri, BEST_CONFIG)
    storage.write_text(path, text, cfg.storage)
    return path


def summarise(trials_of_tune: list[Any], cfg: Config, space: Space, *, search_uri: str, name: str,
              metric: str, mode: str, run: tracking.TrackedRun, max_concurrent: int, resumed: bool,
              t0: float) -> TuneSummary:
    """Summarise Tune's trial records; write best_config.yaml, summary.json and summary.md;
    settle every trial's MLflow run and log the outcome to the search's parent ``run``."""
    trials = [summarise_trial(tr, cfg, space, search_uri, metric)
              for tr in sorted(trials_of_tune, key=lambda t: t.trial_id)]
    best = pick_best(trials, mode)
    best_path = write_best_config(cfg, best, search_uri, name, metric) if best is not None else None
    summary = TuneSummary(
        name=name, search_uri=search_uri, metric=metric, mode=mode, trials=trials, best=best,
        best_config_path=best_path, parent_run_id=run.run_id, tracking_uri=run.uri,
        max_concurrent=max_concurrent, resumed=resumed, wall_s=time.perf_counter() - t0,
    )
    storage.write_text(storage.join(search_uri, "summary.json"),
                       json.dumps(asdict(summary), indent=2, default=str), cfg.storage)
    storage.write_text(storage.join(search_uri, "summary.md"), summary.table() + "\n", cfg.storage)
    settle_trial_runs(run.uri, trials, cfg)
    log_to_parent(run.uri, run.run_id, summary, cfg)
    return summary


# ----------------------------------------------------------------------------- MLflow


def settle_trial_runs(uri: str, trials: list[TrialSummary], cfg: Config, exit_timeout_s: float = 60.0) -> None:
    """Each trial's MLflow run gets its final objective, its status tag and its final state
    (:data:`RUN_STATUS`), once no process of the trial can still write to it."""
    alive = wait_for_exit([a for t in trials for a in read_attempts(t.run_uri, cfg)], exit_timeout_s)
    if alive:
        print(f"[tune] warning: {alive} trial process(es) still running after {exit_timeout_s:.0f} s", flush=True)
    for t in trials:
        if not t.mlflow_run_id:
            continue
        try:
            if t.objective is not None:
                tracking.log_metrics(uri, t.mlflow_run_id, {"objective": t.objective}, step=max(t.epochs - 1, 0))
            tracking.set_tags(uri, t.mlflow_run_id, {"conclugen.trial_status": t.status})
            current = tracking.client(uri).get_run(t.mlflow_run_id).info.status
            # Unsettled trials (a search interrupted) keep what they have, unless still RUNNING.
            wanted = RUN_STATUS.get(t.status, "FAILED" if current == "RUNNING" else current)
            if current != wanted:
                tracking.end_run(uri, t.mlflow_run_id, wanted)
        except Exception as e:  # noqa: BLE001 - one trial's tracking must not lose the summary
            print(f"[tune] warning: MLflow update of trial {t.trial_id} failed: {e}", flush=True)


def log_to_parent(uri: str, parent: str, summary: TuneSummary, cfg: Config) -> None:
    """Trial counts, the summary table and the best trial (metrics, tags, config) on the parent run."""
    counts = summary.counts()
    metrics: dict[str, float] = {"trials_total": float(len(summary.trials))}
    for key, st in (("trials_completed", COMPLETED), ("trials_stopped", STOPPED),
                    ("trials_failed", ERROR), ("trials_nonfinite", NONFINITE)):
        metrics[key] = float(counts.get(st, 0))
    metrics["search_wall_s"] = summary.wall_s
    tracking.log_metrics(uri, parent, metrics, step=0)
    tracking.log_text(uri, parent, summary.table() + "\n", "summary.md")
    best = summary.best
    if best is None or summary.best_config_path is None:
        return
    tracking.log_metrics(uri, parent, {f"best_{k}": v for k, v in best.metrics.items() if k not in _NOT_BEST}, step=0)
    tags: Mapping[str, Any] = {"best.trial_id": best.trial_id, "best.objective": best.objective,
                               "best.mlflow_run_id": best.mlflow_run_id or "",
                               "best.config_path": summary.best_config_path,
                               **{f"best.{k}": v for k, v in best.params.items()}}
    tracking.set_tags(uri, parent, tags)
    tracking.log_text(uri, parent, storage.read_text(summary.best_config_path, cfg.storage), BEST_CONFIG)
