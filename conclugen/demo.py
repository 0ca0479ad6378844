"""`conclugen demo`: the whole pipeline on the embedded defaults, offline, on one machine.

synth → extract → pretrain → evaluate, each step printing its progress and a summary. It follows
the paper's protocol at toy scale: the heads are pretrained without labels on an unlabeled pool
(as VoxCeleb2 is in the paper) plus the labelled corpus's train split, then a linear probe is
trained on stratified fractions of the train labels, several seeds each, against raw backbone
features and random heads (the label-efficiency table, with intervals). The demo's sizes are
ours: small heads, few epochs and ~420 clips so that it finishes in minutes on 2 cores.
Re-running reuses what is already there (extraction and pretraining resume; a finished run is
not repeated).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conclugen.config import Config

if TYPE_CHECKING:
    from conclugen.evaluation.label_efficiency import LabelEfficiencyResult

# Demo-sized settings (ours), applied under any --config/--set the user gives.
DEMO_BASE: dict[str, Any] = {
    "workdir": "work/demo",
    "model": {"d": 256, "p": 64, "r": 128, "k": 16},
    "losses": {"queue_batches": 4},
    "train": {"epochs": 15, "batch_size": 32, "workers": 2, "lr": 1e-3, "warmup_epochs": 2,
              "restart_t0": 5, "patience": 8},
    "probe": {"epochs": 200, "batch_size": 256},
}
# Labelled clips (train 196 / dev 28 / test 56) and the unlabeled pool: 420 clips to extract,
# the cost that dominates the demo. The labelled fractions of the 196 train clips (5% = 10
# clips, at least one per emotion) and the seeds per fraction of the label-efficiency table.
DEMO_CLIPS, DEMO_POOL = 280, 140
DEMO_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.25, 1.0)
DEMO_SEEDS = 5


def _step(n: int, title: str) -> float:
    print(f"\n=== {n}/4 {title} ===", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"(took {time.perf_counter() - t0:.1f} s)", flush=True)


def reading(le: LabelEfficiencyResult, encoder: str = "conclugen", baseline: str = "raw_features") -> str:
    """One line on the label-efficiency table: at each fraction, whether ``encoder`` is above,
    below or overlapping the interval of ``baseline`` (a conservative reading: the two share the
    subsets and test clips, which a paired comparison would exploit)."""
    parts = []
    for f in le.fractions:
        a, b = le.interval(encoder, f), le.interval(baseline, f)
        verdict = "above" if a.low > b.high else "below" if a.high < b.low else "intervals overlap"
        parts.append(f"{f * 100:g}%: {a.value:.3f} vs {b.value:.3f} ({verdict})")
    return f"{encoder} vs {baseline}, test F1 (w) by labelled fraction — " + "; ".join(parts)


def run_demo(
    cfg: Config,
    clips: int = DEMO_CLIPS,
    seed: int = 0,
    *,
    unlabeled: int = DEMO_POOL,
    fractions: Sequence[float] = DEMO_FRACTIONS,
    seeds: int = DEMO_SEEDS,
) -> None:
    from conclugen import runtime

    work = Path(cfg.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus_dir, features_dir, run_dir, eval_dir = (work / n for n in ("corpus", "features", "run", "eval"))
    t_all = time.perf_counter()

    t0 = _step(1, f"synthesise {clips} labelled clips + an unlabeled pool of {unlabeled} → {corpus_dir}")
    from conclugen.data.synthetic import synthesize
    from conclugen.data.synthetic.pool import load_synthetic

    print(synthesize(str(corpus_dir), clips=clips, seed=seed, storage_cfg=cfg.storage,
                     unlabeled=unlabeled).describe())
    _done(t0)

    runtime.ensure_ray(cfg)

    t0 = _step(2, f"extract features (Ray Data), labelled splits and pool in one store → {features_dir}")
    from conclugen.features.extract import run_extract

    manifest = load_synthetic(str(corpus_dir), cfg)
    run_extract(str(corpus_dir), "meld", str(features_dir), cfg, manifest=manifest)  # prints its summary
    _done(t0)

    t0 = _step(3, f"pretrain ConCluGen heads without labels on pool + train split (Ray Train, "
                  f"{cfg.train.workers} workers) → {run_dir}")
    from conclugen.training.driver import run_pretrain

    pre = run_pretrain(str(features_dir), str(run_dir), cfg, run_name="demo")
    print(pre.describe())
    _done(t0)

    t0 = _step(4, f"evaluate: linear probe on {', '.join(f'{f * 100:g}%' for f in fractions)} of the train "
                  f"labels, {seeds} seeds, with baselines → {eval_dir}")
    from conclugen.evaluation.evaluate import run_evaluate

    ev = run_evaluate(str(features_dir), str(run_dir), cfg, str(eval_dir), run_name="demo-evaluate",
                      label_fractions=fractions, seeds=seeds)
    print(ev.describe())
    _done(t0)

    print(f"\nDemo finished in {time.perf_counter() - t_all:.0f} s. Work directory: {work}")
    print("Test-set results, all train labels (higher is better):")
    print(ev.table_markdown.rstrip())
    if ev.label_efficiency is not None:
        print()
        print(ev.label_efficiency.table_markdown.rstrip())
        print(reading(ev.label_efficiency))
    print(f"\nBrowse the runs: .venv/bin/conclugen ui --set workdir={cfg.workdir}  "
          "→ http://127.0.0.1:5000")
