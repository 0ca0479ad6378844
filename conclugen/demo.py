"""`conclugen demo`: the whole pipeline on the embedded defaults, offline, on one machine.

synth → extract → pretrain → evaluate (with baselines), each step printing its progress and
a summary, ending with the results table and where to open the MLflow UI. The demo's sizes are
ours: small heads and few epochs so that it finishes in minutes on 2 cores. Re-running reuses
what is already there (extraction and pretraining resume; a finished run is not repeated).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conclugen.config import Config

# Demo-sized settings (ours), applied under any --config/--set the user gives.
DEMO_BASE: dict[str, Any] = {
    "workdir": "work/demo",
    "model": {"d": 256, "p": 64, "r": 128, "k": 16},
    "losses": {"queue_batches": 4},
    "train": {"epochs": 15, "batch_size": 32, "workers": 2, "lr": 1e-3, "warmup_epochs": 2,
              "restart_t0": 5, "patience": 8},
    "probe": {"epochs": 200, "batch_size": 256},
}


def _step(n: int, title: str) -> float:
    print(f"\n=== {n}/4 {title} ===", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"(took {time.perf_counter() - t0:.1f} s)", flush=True)


def run_demo(cfg: Config, clips: int = 350, seed: int = 0) -> None:
    from conclugen import runtime

    work = Path(cfg.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus_dir, features_dir, run_dir, eval_dir = (work / n for n in ("corpus", "features", "run", "eval"))
    t_all = time.perf_counter()

    t0 = _step(1, f"synthesise {clips} clips → {corpus_dir}")
    from conclugen.data.synthetic import synthesize

    print(synthesize(str(corpus_dir), clips=clips, seed=seed, storage_cfg=cfg.storage).describe())
    _done(t0)

    runtime.ensure_ray(cfg)

    t0 = _step(2, f"extract features (Ray Data) → {features_dir}")
    from conclugen.features.extract import run_extract

    run_extract(str(corpus_dir), "meld", str(features_dir), cfg)  # prints its own summary
    _done(t0)

    t0 = _step(3, f"pretrain ConCluGen heads (Ray Train, {cfg.train.workers} workers) → {run_dir}")
    from conclugen.training.driver import run_pretrain

    pre = run_pretrain(str(features_dir), str(run_dir), cfg, run_name="demo")
    print(pre.describe())
    _done(t0)

    t0 = _step(4, f"evaluate: linear probe with baselines → {eval_dir}")
    from conclugen.evaluation.evaluate import run_evaluate

    ev = run_evaluate(str(features_dir), str(run_dir), cfg, str(eval_dir), run_name="demo-evaluate")
    print(ev.describe())
    _done(t0)

    print(f"\nDemo finished in {time.perf_counter() - t_all:.0f} s. Work directory: {work}")
    print("Test-set weighted F1 (higher is better):")
    print(ev.table_markdown.rstrip())
    print(f"\nBrowse the runs: .venv/bin/conclugen ui --set workdir={cfg.workdir}  "
          "→ http://127.0.0.1:5000")
