"""Benchmark: label efficiency of the pretrained heads against raw features and random heads, with
the ablation rows, on a synthetic corpus of a few thousand clips (F1, not time).

    python benchmarks/label_efficiency.py --out /tmp/le             # 1050 labelled + 2100 pool clips
    python benchmarks/label_efficiency.py --out /tmp/le-q --quick   # tiny, to check it runs

The paper's protocol at synthetic scale:

1. ``synthesize`` a labelled corpus (MELD layout) and an unlabeled pool from the same generative
   process (reused when already there); real extraction of every clip into one feature store
   (``conclugen.data.synthetic.pool.load_synthetic``; resumes).
2. Two variants of the heads on the same store: ``standardize`` (``model.input_norm``, the
   default: each feature dimension standardised with the mean and std of the pretraining rows
   before the heads) and ``none`` (raw features, as the reference). The offline backbones'
   scales differ by ~1000× (audio values reach ±50, video and text stay below ~2), so without
   standardisation the reconstruction loss is mostly the audio's and the heads' inputs are
   unbalanced.
3. Per variant: the heads of every ablation row (``conclugen.evaluation.ablation``: all losses,
   contrastive + clustering, contrastive + reconstruction, contrastive only on all / video+audio /
   video+text, reconstruction only) pretrained at equal budget on pool + train split (labels
   unused); then one label-efficiency study (``run_evaluate(label_fractions=…)``): a linear probe
   on stratified fractions of the train labels, several seeds each, for every row's heads and the
   two baselines, with intervals over seeds × test clips.
4. Writes ``OUT/label_efficiency.md`` (per variant: the last epoch's loss terms, the
   label-efficiency table, F1 ratios heads / raw features per fraction, the full-label ablation
   table) and leaves the plots at ``OUT/<variant>/eval/label_efficiency/label_efficiency.png``.

The default size is meant for a quiet machine and takes long on 2 cores (3,150 clips to
synthesise and extract, then per variant 7 pretraining runs and 9 encoders × 5 fractions × 5
seeds probes); re-running reuses the corpus, the features and finished runs. On the synthetic
corpus the heads' advantage at small fractions needs ~900+ pretraining clips (found with the
demo's head sizes); below that they tie raw features at best.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROWS = ("contrastive_clustering", "contrastive_reconstruction", "contrastive", "contrastive_video_audio",
        "contrastive_video_text", "reconstruction")
MAIN_ROW = "all_losses"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/conclugen-label-efficiency")
    ap.add_argument("--clips", type=int, default=1050, help="labelled clips (train 70%% / dev 10%% / test 20%%)")
    ap.add_argument("--unlabeled", type=int, default=2100, help="unlabeled pool clips")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--fractions", default="0.01,0.05,0.1,0.25,1.0")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--variants", default="standardize,none", help="model.input_norm values to compare")
    ap.add_argument("--rows", default=",".join(ROWS), help="ablation rows besides all_losses ('' for none)")
    ap.add_argument("--features", default="", help="an existing feature store of such a corpus + pool to reuse "
                    "(skips synthesis and extraction; --clips/--unlabeled then only label the report)")
    ap.add_argument("--quick", action="store_true", help="70 + 35 clips, 2 epochs, tiny heads, 2 fractions")
    ap.add_argument("--set", dest="set_", action="append", default=[], help="config overrides (key=value)")
    a = ap.parse_args()
    if a.quick:
        a.clips, a.unlabeled, a.epochs, a.fractions, a.seeds = 70, 35, 2, "0.25,1.0", 2
        a.rows = "contrastive"
    return a


def make_config(a: argparse.Namespace):
    from conclugen.config import load_config
    from conclugen.demo import DEMO_BASE

    sets = [f"workdir={a.out}/work", f"train.epochs={a.epochs}", "train.batch_size=64", "train.workers=2"]
    if a.quick:
        sets += ["model.d=32", "model.p=16", "model.r=16", "model.k=4", "model.audio_geu_dim=16",
                 "train.batch_size=16", "train.workers=1", "losses.queue_batches=2", "probe.epochs=30",
                 "probe.bootstrap=100"]
    return load_config(None, [*sets, *a.set_], base=DEMO_BASE)  # the demo's head sizes unless --set


def build_store(a: argparse.Namespace, cfg) -> str:
    """Synthesise (unless there) and extract (resumes) corpus + pool into OUT/features."""
    from conclugen.data.synthetic import synthesize
    from conclugen.data.synthetic.pool import load_synthetic
    from conclugen.features.extract import run_extract

    corpus, features = Path(a.out) / "corpus", str(Path(a.out) / "features")
    marker = corpus / "conclugen-synthetic.json"
    wanted = {"clips": a.clips, "unlabeled": a.unlabeled, "seed": a.seed}
    if not marker.is_file() or {k: json.loads(marker.read_text()).get(k) for k in wanted} != wanted:
        # other clips under the same ids: features and runs of the old corpus must go too
        for stale in (corpus, Path(features), *(Path(a.out) / n for n in ("standardize", "none"))):
            shutil.rmtree(stale, ignore_errors=True)
        print(synthesize(str(corpus), clips=a.clips, seed=a.seed, unlabeled=a.unlabeled).describe(), flush=True)
    run_extract(str(corpus), "meld", features, cfg, manifest=load_synthetic(str(corpus), cfg))
    return features


PRETRAIN_SPLITS = ["train", "unlabeled"]  # the rows pretraining reads (training/data.py)


def feature_scales(features: str) -> dict[str, float]:
    """Each modality's mean square over the pretraining rows (the scale gap between backbones)."""
    from conclugen.features import store as F

    dims = F.read_meta(features).dims
    arr = F.load_arrays(features, list(dims), splits=PRETRAIN_SPLITS)
    return {m: float(np.mean(arr[m] ** 2)) for m in dims}


def run_variant(features: str, out: Path, cfg, a: argparse.Namespace) -> dict:
    """Pretrain the main row and the ablation rows, then one label-efficiency study over all of them."""
    from conclugen.evaluation.ablation import ABLATIONS, row_config, run_ablation
    from conclugen.evaluation.evaluate import run_evaluate
    from conclugen.training.driver import run_pretrain

    main_cfg = row_config(cfg, next(r for r in ABLATIONS if r.name == MAIN_ROW))
    pre = run_pretrain(features, str(out / MAIN_ROW / "run"), main_cfg, run_name=f"bench/{out.name}/{MAIN_ROW}")
    print(pre.describe(), flush=True)
    rows = [r for r in a.rows.split(",") if r]
    abl = run_ablation(features, str(out / "ablation"), cfg, rows=rows) if rows else None
    also = {r.name: r.checkpoint for r in (abl.rows if abl else []) if r.status == "ok" and r.checkpoint}
    fractions = [float(f) for f in a.fractions.split(",")]
    ev = run_evaluate(features, pre.best_checkpoint, main_cfg, str(out / "eval"), run_name=f"bench/{out.name}",
                      also=also, label_fractions=fractions, seeds=a.seeds)
    return {"pretrain": pre, "ablation": abl, "evaluate": ev}


def ratios(le, fractions: list[float]) -> str:
    """Heads' F1 over raw features' F1 per fraction (the baseline measured in the same run)."""
    cells = [f"{le.interval('conclugen', f).value / max(le.interval('raw_features', f).value, 1e-9):.2f}"
             for f in fractions]
    head = "| F1 (w) ratio | " + " | ".join(f"{f * 100:g}%" for f in fractions) + " |"
    rule = "|---" * (len(fractions) + 1) + "|"
    return "\n".join([head, rule, "| conclugen / raw_features | " + " | ".join(cells) + " |"])


def report(results: dict[str, dict], scales: dict[str, float], a: argparse.Namespace) -> str:
    fractions = [float(f) for f in a.fractions.split(",")]
    lines = [f"# Label efficiency (benchmarks/label_efficiency.py{' --quick' if a.quick else ''})", "",
             f"{a.clips} labelled clips (70/10/20 train/dev/test) + {a.unlabeled} unlabeled pool clips, "
             f"seed {a.seed}; pretraining on pool + train split, {a.epochs} epochs, equal budget per row; "
             f"probe on {a.fractions} of the train labels × {a.seeds} seeds.", "",
             "Backbone feature scale (mean square, pretraining rows): "
             + ", ".join(f"{m} {v:.3g}" for m, v in scales.items()), ""]
    for variant, r in results.items():
        pre, abl, ev = r["pretrain"], r["ablation"], r["evaluate"]
        terms = ", ".join(f"{k} {v:.4g}" for k, v in sorted(pre.metrics.items())
                          if k in ("contrastive", "clustering", "reconstruction", "loss"))
        lines += [f"## {variant}", "", f"Last epoch's training losses ({MAIN_ROW}): {terms}", ""]
        if ev.label_efficiency is not None:
            le = ev.label_efficiency
            lines += [le.table_markdown.rstrip(), "", ratios(le, fractions), "",
                      f"Plot: {Path(ev.out_dir) / 'label_efficiency' / 'label_efficiency.png'}", ""]
        if abl is not None:
            lines += ["Ablation rows, all train labels:", "", abl.markdown().rstrip(), ""]
    return "\n".join(lines)


def main() -> None:
    a = parse_args()
    from conclugen import runtime

    cfg = make_config(a)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    runtime.ensure_ray(cfg)
    stored = a.features or build_store(a, cfg)
    scales = feature_scales(stored)
    results = {}
    for variant in a.variants.split(","):
        if variant not in ("standardize", "none"):
            raise SystemExit(f"unknown variant {variant!r} (standardize | none)")
        vcfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"input_norm": variant})})
        results[f"model.input_norm={variant}"] = run_variant(stored, Path(a.out) / variant, vcfg, a)
    text = report(results, scales, a)
    (Path(a.out) / "label_efficiency.md").write_text(text + "\n")
    print("\n" + text + f"\nwritten: {Path(a.out) / 'label_efficiency.md'}")


if __name__ == "__main__":
    main()
