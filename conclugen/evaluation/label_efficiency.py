"""Label efficiency: the linear probe trained on stratified fractions of the training labels,
repeated over seeds, for each encoder (see docs/method.md, Linear probe: label efficiency).

The method claims that self-supervised heads need fewer labels; this measures it. Per encoder,
labelled fraction f and seed k (``seed_k = probe.seed + k``):

- **Subset**: a stratified draw of ``round(f · n_train)`` training clips with at least one clip
  per stratum (:func:`stratified_fraction`). Single-label strata are the classes. Multi-label
  (MOSEI) strata are each clip's **rarest** label in the training split (clips with no label form
  their own stratum), and every label present in the training split keeps at least one positive
  clip *(ours)*. The subset is drawn once per (f, k) and shared by every encoder, so encoders are
  compared on the same clips. ``f = 1`` is the whole training split for every seed (only the
  probe's seed varies).
- **Probe**: as the comparison fits it (:func:`conclugen.evaluation.compare.encoded_splits`, then
  :func:`conclugen.evaluation.probe.fit_probe` under ``probe.protocol``) with ``probe.seed =
  seed_k`` and the protocol's class weights computed from the subset's labels; the validation
  split stays whole for selection and early stopping, the whole test split gives the figures
  *(ours: only training labels are reduced)*.
- **Interval** of the mean over seeds: a two-level percentile bootstrap, seeds × test clips
  (:func:`conclugen.evaluation.intervals.seeds_intervals`), ``probe.bootstrap`` resamples at
  ``probe.confidence``.

Files under ``out_dir``: ``label_efficiency.md`` (mean [interval] per fraction and encoder),
``label_efficiency.csv`` (per-seed figures), ``label_efficiency.json`` (the summary) and
``label_efficiency.png`` (F1 against the labelled fraction, log x axis, one line and band per
encoder).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from conclugen.config import Config
from conclugen.evaluation.compare import encoded_splits
from conclugen.evaluation.encoders import Encoder
from conclugen.evaluation.intervals import Interval, probe_targets, seeds_intervals
from conclugen.evaluation.metrics import HEADLINE
from conclugen.evaluation.plots import plot_label_efficiency
from conclugen.evaluation.probe import fit_probe
from conclugen.evaluation.probe_data import ProbeError, drop_unlabeled

DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)
METRICS = (*HEADLINE, "f1_macro")
CSV_COLUMNS = ("encoder", "fraction", "seed", "n_train", *METRICS, "best_epoch")
FILES = {"table": "label_efficiency.md", "csv": "label_efficiency.csv", "json": "label_efficiency.json",
         "plot": "label_efficiency.png"}


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """Sorted distinct fractions, each in (0, 1]."""
    out = sorted({float(f) for f in fractions})
    bad = [f for f in out if not 0.0 < f <= 1.0]
    if bad or not out:
        raise ProbeError(f"label fractions must lie in (0, 1], got {list(fractions)}")
    return out


def stratum_keys(labels: Sequence[Sequence[str]], label_space: Sequence[str], multilabel: bool) -> list[str]:
    """Each row's stratum: its label (single-label) or its rarest label in these rows ("" for none)."""
    if not multilabel:
        return [row[0] if row else "" for row in labels]
    counts = {lab: 0 for lab in label_space}
    for row in labels:
        for lab in row:
            counts[lab] = counts.get(lab, 0) + 1
    return [min(row, key=lambda lab: (counts[lab], lab)) if row else "" for row in labels]


def _allocate(sizes: Mapping[str, int], fraction: float) -> dict[str, int]:
    """Clips per stratum: ``fraction`` of each (at least 1), the total brought to
    ``round(fraction · n)`` by largest remainders."""
    quota = {k: fraction * n for k, n in sizes.items()}
    take = {k: min(n, max(1, int(np.floor(quota[k])))) for k, n in sizes.items()}
    missing = int(round(fraction * sum(sizes.values()))) - sum(take.values())
    rest = sorted((k for k in sizes if take[k] < sizes[k]), key=lambda k: (-(quota[k] - np.floor(quota[k])), k))
    for k in rest[: max(missing, 0)]:
        take[k] += 1
    return take


def stratified_fraction(
    labels: Sequence[Sequence[str]], label_space: Sequence[str], fraction: float, seed: int,
    multilabel: bool = False,
) -> np.ndarray:
    """Sorted row indices of a seeded, stratified ``fraction`` of the rows (see the module
    docstring); ``fraction = 1`` gives every row."""
    n = len(labels)
    if fraction >= 1.0:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    keys = np.asarray(stratum_keys(labels, label_space, multilabel), dtype=object)
    strata = {k: np.flatnonzero(keys == k) for k in sorted(set(keys.tolist()))}
    take = _allocate({k: len(v) for k, v in strata.items()}, fraction)
    chosen = [rng.permutation(idx)[: take[k]] for k, idx in strata.items()]
    picked = set(np.concatenate(chosen).tolist()) if chosen else set()
    if multilabel:  # a label that is never a clip's rarest still gets one positive clip
        for lab in label_space:
            with_lab = [i for i, row in enumerate(labels) if lab in row]
            if with_lab and not any(i in picked for i in with_lab):
                picked.add(int(rng.choice(with_lab)))
    return np.asarray(sorted(picked), dtype=np.int64)


@dataclass
class LabelEfficiencyResult:
    fractions: list[float]
    encoders: list[str]
    seeds: list[int]
    per_seed: list[dict[str, Any]]  # the rows of label_efficiency.csv
    summary: dict[str, dict[float, dict[str, Interval]]]  # encoder → fraction → metric → interval
    n_train: dict[float, int]  # training clips per fraction (the seeds' median)
    table_markdown: str = ""
    files: dict[str, str] = field(default_factory=dict)

    def interval(self, encoder: str, fraction: float, metric: str = "f1_weighted") -> Interval:
        return self.summary[encoder][float(fraction)][metric]

    def describe(self) -> str:
        where = f"\nfiles: {Path(self.files['table']).parent}" if self.files else ""
        return self.table_markdown.rstrip() + where


def _subsets(train_labels: list[list[str]], label_space: list[str], multilabel: bool, fractions: list[float],
             seeds: list[int]) -> dict[tuple[float, int], np.ndarray]:
    """One training subset per (fraction, seed), shared by every encoder; the draw's seed mixes
    the seed with the fraction's position, so fractions are drawn independently."""
    def draw_seed(s: int, j: int) -> int:
        return int(np.random.SeedSequence([s, j]).generate_state(1)[0])

    return {(f, s): stratified_fraction(train_labels, label_space, f, draw_seed(s, j), multilabel)
            for j, f in enumerate(fractions) for s in seeds}


def _summarise(preds: Mapping[tuple[str, float], list[np.ndarray]], y_true: np.ndarray, label_space: list[str],
               multilabel: bool, cfg: Config) -> dict[str, dict[float, dict[str, Interval]]]:
    out: dict[str, dict[float, dict[str, Interval]]] = {}
    for (enc, f), ps in preds.items():
        out.setdefault(enc, {})[f] = seeds_intervals(
            y_true, ps, label_space, multilabel, metrics=METRICS, resamples=cfg.probe.bootstrap,
            confidence=cfg.probe.confidence, seed=cfg.probe.seed)
    return out


def label_efficiency(
    encoders: Mapping[str, Encoder],
    arrays: Mapping[str, Any],
    *,
    label_space: list[str],
    multilabel: bool,
    corpus: str,
    cfg: Config,
    out_dir: str | Path | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: int = 5,
    progress: Callable[[str], None] | None = None,
) -> LabelEfficiencyResult:
    """Probe every encoder on each stratified labelled ``fraction`` of the train split, ``seeds``
    times; write the table, CSV, JSON and plot under ``out_dir`` (when given)."""
    fracs = check_fractions(fractions)
    if seeds < 1:
        raise ProbeError(f"label efficiency needs at least one seed, got {seeds}")
    seed_list = [cfg.probe.seed + k for k in range(seeds)]
    notes: list[str] = []
    per_seed: list[dict[str, Any]] = []
    preds: dict[tuple[str, float], list[np.ndarray]] = {}
    subsets: dict[tuple[float, int], np.ndarray] | None = None
    y_true = np.zeros(0)
    for name, encode in encoders.items():
        data = encoded_splits(name, encode, arrays)  # as the comparison probes it (augmented versions too)
        train = data["train"] if multilabel else drop_unlabeled(data["train"], "train", notes)
        if subsets is None:
            subsets = _subsets(train.labels, label_space, multilabel, fracs, seed_list)
        for (f, s), idx in subsets.items():
            # class weights: the protocol's, from the subset's labels (fit_probe with corpus)
            res = fit_probe(train.subset(idx), data["val"], data["test"], label_space=label_space,
                            multilabel=multilabel, cfg=cfg.probe.model_copy(update={"seed": s}), corpus=corpus)
            y_true, y_pred = probe_targets(res)
            preds.setdefault((name, f), []).append(y_pred)
            per_seed.append({"encoder": name, "fraction": f, "seed": s, "n_train": res.n_train,
                             **{k: float(res.test_metrics[k]) for k in METRICS}, "best_epoch": res.best_epoch})
            if progress:
                progress(f"label efficiency: {name} {f:g} seed {s}: n_train {res.n_train}, "
                         f"test F1 (w) {res.test_metrics['f1_weighted']:.3f}")
    summary = _summarise(preds, y_true, label_space, multilabel, cfg)
    n_train = {f: int(np.median([r["n_train"] for r in per_seed if r["fraction"] == f])) for f in fracs}
    result = LabelEfficiencyResult(fracs, list(encoders), seed_list, per_seed, summary, n_train)
    result.table_markdown = markdown_table(result, cfg.probe.confidence, len(y_true))
    if out_dir is not None:
        result.files = write_label_efficiency(result, out_dir)
    return result


def _pct(f: float) -> str:
    return f"{f * 100:g}%"


def markdown_table(result: LabelEfficiencyResult, confidence: float = 0.95, n_test: int = 0) -> str:
    """Test F1 (w) and accuracy: mean over seeds [interval], one row per encoder, one column per fraction."""
    head = "| encoder | " + " | ".join(f"{_pct(f)} (n={result.n_train[f]})" for f in result.fractions) + " |"
    rule = "|---" * (len(result.fractions) + 1) + "|"
    lines: list[str] = []
    for metric, title in (("f1_weighted", "test F1 (w)"), ("accuracy", "test accuracy")):
        lines += [f"Label efficiency, {title}: mean over {len(result.seeds)} seeds [{confidence:.0%} interval]", "",
                  head, rule]
        for enc in result.encoders:
            lines.append(f"| {enc} | " + " | ".join(str(result.interval(enc, f, metric)) for f in result.fractions)
                         + " |")
        lines.append("")
    lines.append(f"Intervals: two-level percentile bootstrap over seeds and the {n_test} test clips; "
                 "n = labelled training clips.")
    return "\n".join(lines) + "\n"


def write_label_efficiency(result: LabelEfficiencyResult, out_dir: str | Path) -> dict[str, str]:
    """label_efficiency.md / .csv / .json / .png under ``out_dir``; returns their paths by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}
    paths["table"].write_text(result.table_markdown)
    with paths["csv"].open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        for row in result.per_seed:
            w.writerow({k: f"{v:.6f}" if isinstance(v, float) and k in METRICS else v for k, v in row.items()})
    summary = {enc: {f"{f:g}": {m: iv.as_dict() for m, iv in by_m.items()} for f, by_m in by_f.items()}
               for enc, by_f in result.summary.items()}
    paths["json"].write_text(json.dumps({"fractions": result.fractions, "seeds": result.seeds,
                                         "n_train": {f"{f:g}": n for f, n in result.n_train.items()},
                                         "summary": summary}, indent=2))
    curves = {enc: [result.interval(enc, f) for f in result.fractions] for enc in result.encoders}
    plot_label_efficiency(result.fractions, curves, paths["plot"], ylabel="test F1 (weighted)",
                          title=f"Label efficiency ({len(result.seeds)} seeds)")
    return {k: str(p) for k, p in paths.items()}


def mlflow_metrics(result: LabelEfficiencyResult) -> dict[str, float]:
    """``label_efficiency.<encoder>.<pct>.<metric>`` and its ``_low`` / ``_high`` bounds."""
    out: dict[str, float] = {}
    for enc, by_f in result.summary.items():
        for f, by_m in by_f.items():
            for m in ("f1_weighted", "accuracy"):
                key = f"label_efficiency.{enc}.{f * 100:g}pct.{m}"
                iv = by_m[m]
                out |= {key: iv.value, f"{key}_low": iv.low, f"{key}_high": iv.high}
    return out


def log_label_efficiency(uri: str, run_id: str, result: LabelEfficiencyResult, *, artifacts: bool = True) -> None:
    """The summary metrics on the run ``run_id`` and (``artifacts``) the files under
    ``label_efficiency/`` (``run_evaluate`` passes False: its run logs the whole out folder)."""
    from conclugen import tracking

    tracking.log_metrics(uri, run_id, mlflow_metrics(result), step=0)
    if artifacts:
        c = tracking.client(uri)
        for p in result.files.values():
            c.log_artifact(run_id, p, artifact_path="label_efficiency")
