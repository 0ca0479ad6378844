"""The ablation's table: one :class:`RowResult` per row (and baseline), the markdown / CSV / JSON
files and the parent MLflow run's metrics. Test figures carry their 95% bootstrap interval over
test clips (docs/method.md, Linear probe: intervals)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conclugen.evaluation.intervals import format_interval
from conclugen.evaluation.metrics import HEADLINE

if TYPE_CHECKING:
    from conclugen.config import Config
    from conclugen.evaluation.intervals import Interval
    from conclugen.evaluation.probe import ProbeResult

TABLE_FILES = ("ablation.md", "ablation.csv", "ablation.json")
_CSV_COLUMNS = ["row", "status", "losses", "modalities", "accuracy", "accuracy_low", "accuracy_high",
                "f1_weighted", "f1_weighted_low", "f1_weighted_high", "precision_weighted", "recall_weighted",
                "epochs", "checkpoint", "pretrain_run_id", "evaluate_run_id", "seconds", "error"]


@dataclass
class RowResult:
    name: str
    losses: list[str]
    modalities: list[str]
    status: str  # ok | failed | skipped | baseline
    accuracy: float | None = None
    f1_weighted: float | None = None
    precision_weighted: float | None = None
    recall_weighted: float | None = None
    # test interval bounds (percentile bootstrap over test clips) of accuracy and F1 (w)
    accuracy_low: float | None = None
    accuracy_high: float | None = None
    f1_weighted_low: float | None = None
    f1_weighted_high: float | None = None
    epochs: int | None = None
    checkpoint: str | None = None
    pretrain_run_id: str | None = None
    evaluate_run_id: str | None = None
    seconds: float = 0.0
    error: str = ""  # failed: the error; skipped: why

    def set_metrics(self, res: ProbeResult, intervals: Mapping[str, Interval] | None = None) -> None:
        """The probe's test headline figures and (given) their interval bounds."""
        for k in HEADLINE:
            setattr(self, k, float(res.test_metrics[k]))
        for k in ("accuracy", "f1_weighted"):
            if intervals and k in intervals:
                setattr(self, f"{k}_low", intervals[k].low)
                setattr(self, f"{k}_high", intervals[k].high)

    def cell(self, metric: str) -> str:
        """``0.752 [0.65, 0.84]``, the value alone without bounds, or — without a value."""
        v, lo, hi = getattr(self, metric), getattr(self, f"{metric}_low"), getattr(self, f"{metric}_high")
        if v is None:
            return "—"
        return format_interval(v, lo, hi) if lo is not None and hi is not None else f"{v:.3f}"


@dataclass
class AblationResult:
    out_dir: str
    rows: list[RowResult]
    parallel: int
    seconds: float
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    notes: list[str] = field(default_factory=list)
    confidence: float = 0.95  # of the intervals (probe.confidence)

    def row(self, name: str) -> RowResult:
        return next(r for r in self.rows if r.name == name)

    def markdown(self) -> str:
        lines = ["| row | losses | modalities | test accuracy | test F1 (w) | epochs |",
                 "|---|---|---|---|---|---|"]
        for r in self.rows:
            losses = " + ".join(r.losses) if r.losses else "(none: baseline)"
            name = f"{r.name} ({r.status}: {r.error[:80]})" if r.status in ("failed", "skipped") else r.name
            lines.append(f"| {name} | {losses} | {'+'.join(r.modalities)} | {r.cell('accuracy')} | "
                         f"{r.cell('f1_weighted')} | {r.epochs if r.epochs is not None else '—'} |")
        lines += ["", f"Test figures: value [{self.confidence:.0%} interval], percentile bootstrap over the test clips."]
        return "\n".join(lines) + "\n"

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(_CSV_COLUMNS)
        for r in self.rows:
            d = asdict(r)
            d["row"], d["losses"], d["modalities"] = r.name, "+".join(r.losses), "+".join(r.modalities)
            w.writerow(["" if d[c] is None else (f"{d[c]:.6f}" if isinstance(d[c], float) else d[c])
                        for c in _CSV_COLUMNS])
        return buf.getvalue()

    def describe(self) -> str:
        lines = [f"ablation: {len([r for r in self.rows if r.status != 'baseline'])} rows, "
                 f"{self.parallel} at a time, {self.seconds:.0f} s", "", self.markdown().rstrip(), "",
                 f"table: {self.out_dir}/ablation.md, ablation.csv"]
        if self.mlflow_run_id:
            lines.append(f"MLflow run {self.mlflow_run_id} ({self.tracking_uri})")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def write_tables(result: AblationResult, features_uri: str, base: Config, equal_budget: bool) -> list[Path]:
    """ablation.md, ablation.csv and ablation.json under the result's folder."""
    out = Path(result.out_dir)
    (out / "ablation.md").write_text(result.markdown())
    (out / "ablation.csv").write_text(result.csv_text())
    (out / "ablation.json").write_text(json.dumps(
        {"features_uri": features_uri, "parallel": result.parallel, "seconds": result.seconds,
         "equal_budget": equal_budget, "epochs": base.train.epochs, "batch_size": base.train.batch_size,
         "seed": base.train.seed, "rows": [asdict(r) for r in result.rows], "mlflow_run_id": result.mlflow_run_id,
         "notes": result.notes},
        indent=2))
    return [out / name for name in TABLE_FILES]


def table_metrics(table: Sequence[RowResult]) -> dict[str, float]:
    """``<row>.test_f1_weighted`` / ``<row>.test_accuracy`` (and their ``_low`` / ``_high``) for
    every row and baseline that has them."""
    metrics: dict[str, Any] = {}
    for r in table:
        for k in ("f1_weighted", "accuracy"):
            for key in (k, f"{k}_low", f"{k}_high"):
                v = getattr(r, key)
                if v is not None:
                    metrics[f"{r.name}.test_{key}"] = v
    return metrics


def log_table(uri: str, run_id: str, table: Sequence[RowResult], files: Sequence[Path]) -> None:
    """:func:`table_metrics` on the parent run, the tables as its artifacts."""
    from conclugen import tracking

    tracking.log_metrics(uri, run_id, table_metrics(table), step=0)
    c = tracking.client(uri)
    for f in files:
        c.log_artifact(run_id, str(f))
