"""`conclugen demo`: the whole pipeline on the embedded defaults, offline, on one machine.

synth → extract → pretrain → evaluate (with baselines), each step printing its progress and
a summary, ending with the results table and where to open the MLflow UI. The demo's sizes are
ours: small heads and few epochs so that it finishes in minutes on 2 cores.
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
    "probe": {"epochs": 100, "batch_size": 256},
}


def _step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def run_demo(cfg: Config, clips: int = 70, seed: int = 0) -> None:
    work = Path(cfg.workdir)
    work.mkdir(parents=True, exist_ok=True)
    corpus_dir = work / "corpus"

    t0 = _step(f"1/1 synthesise {clips} clips → {corpus_dir}")
    from conclugen.corpora.synthetic import synthesize

    summary = synthesize(str(corpus_dir), clips=clips, seed=seed, storage_cfg=cfg.storage)
    print(summary.describe())
    print(f"(synth took {time.perf_counter() - t0:.1f} s)")
    print(f"\nDemo finished. Work directory: {work.resolve()}")
