"""Benchmark: linear-probe F1 of the offline 3D video backbones — mini-XCEPTION inflated to 3D
(``offline:inflated-mini-xception``, I3D-style) against the seeded, untrained 3D CNN
(``offline:seeded-c3d``) — on a synthetic corpus (F1, not time).

    python benchmarks/video3d_probe.py --out /tmp/v3d                            # 280 clips, as the demo's
    python benchmarks/video3d_probe.py --out /tmp/v3d --corpus work/demo/corpus  # reuse a synthetic corpus
    python benchmarks/video3d_probe.py --out /tmp/v3d-q --quick                  # 42 clips, to check it runs

1. ``synthesize`` a labelled corpus (MELD layout, train 70% / dev 10% / test 20%) unless
   ``--corpus`` names one; extract its labelled clips (a pool, if any, is left out) twice, into
   ``OUT/features-<backbone>``, with only ``extract.backbones.video3d`` differing. The other backbones are the offline defaults
   (``offline:image``, ``offline:audio``, ``offline:minilm``) unless ``--set`` changes them.
2. Per store, the linear probe (``label_efficiency`` at 100% of the train labels, ``--seeds``
   probe seeds, two-level bootstrap seeds × test clips) on three inputs: the ``video3d`` block
   alone (the columns of ``video`` after the image ones), the video modality (image ⊕ video3d)
   and all modalities. Protocol ``balanced`` by default (standardised features, so the two
   backbones' different feature scales do not decide the comparison); ``--protocol reference``
   for the authors' raw-feature probe.
3. Prints (and writes ``OUT/video3d_probe.md``) F1 (w) and accuracy with intervals per backbone
   and input, the ratio inflated / seeded measured in the same run, and each backbone's
   parameters and FLOPs per 16-frame window (``torch.utils.flop_counter``; counted, not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

BACKBONES = {"inflated": "offline:inflated-mini-xception", "seeded": "offline:seeded-c3d"}
INPUTS = ("video3d", "video", "all")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/conclugen-video3d-probe")
    ap.add_argument("--corpus", default="", help="an existing synthetic corpus (MELD layout) to extract")
    ap.add_argument("--clips", type=int, default=280, help="labelled clips to synthesise (without --corpus)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=5, help="probe seeds")
    ap.add_argument("--protocol", default="balanced", choices=("balanced", "reference"))
    ap.add_argument("--quick", action="store_true", help="42 clips, 2 seeds, a short probe")
    ap.add_argument("--set", dest="set_", action="append", default=[], help="config overrides (key=value)")
    a = ap.parse_args()
    if a.quick:
        a.clips, a.seeds = 42, 2
    return a


def make_config(a: argparse.Namespace):
    from conclugen.config import load_config
    from conclugen.demo import DEMO_BASE

    sets = [f"workdir={a.out}/work", f"probe.protocol={a.protocol}"]
    if a.quick:
        sets += ["probe.epochs=30", "probe.bootstrap=100"]
    return load_config(None, [*sets, *a.set_], base=DEMO_BASE)  # the demo's probe settings


def corpus_root(a: argparse.Namespace) -> str:
    from conclugen.data.synthetic import synthesize

    Path(a.out).mkdir(parents=True, exist_ok=True)
    if a.corpus:
        return a.corpus
    corpus = Path(a.out) / "corpus"
    marker = corpus / "conclugen-synthetic.json"
    wanted = {"clips": a.clips, "seed": a.seed}
    if not marker.is_file() or {k: json.loads(marker.read_text()).get(k) for k in wanted} != wanted:
        if (Path(a.out) / "features-inflated").exists() or (Path(a.out) / "features-seeded").exists():
            raise SystemExit(f"{a.out} holds features of another corpus: use a fresh --out")
        print(synthesize(str(corpus), clips=a.clips, seed=a.seed).describe(), flush=True)
    return str(corpus)


def extract(root: str, name: str, cfg, a: argparse.Namespace) -> str:
    """The corpus's feature store with ``video3d`` = BACKBONES[name] (resumes when there)."""
    from conclugen.data.corpora.meld import load_meld
    from conclugen.features.extract import run_extract

    backbones = cfg.extract.backbones.model_copy(update={"video3d": BACKBONES[name]})
    ecfg = cfg.model_copy(update={"extract": cfg.extract.model_copy(update={"backbones": backbones})})
    out = str(Path(a.out) / f"features-{name}")
    # the labelled clips only: the probe reads no unlabeled pool rows
    print(run_extract(root, "meld", out, ecfg, manifest=load_meld(root, ecfg)).describe(), flush=True)
    return out


def probe(features: str, cfg, out_dir: Path, seeds: int):
    """label_efficiency at 100% labels on the three inputs of one store."""
    from conclugen.evaluation.encoders import ConcatEncoder, raw_features_encoder
    from conclugen.evaluation.label_efficiency import label_efficiency
    from conclugen.features import store as F

    meta = F.read_meta(features)
    arrays = F.load_arrays(features, list(meta.dims))
    d_image = meta.backbones["image"].dim
    encoders = {
        "video3d": ConcatEncoder(("video",), lambda f: {"video": np.asarray(f["video"])[:, d_image:]}),
        "video": raw_features_encoder(["video"]),
        "all": raw_features_encoder(list(meta.dims)),
    }
    return label_efficiency(encoders, arrays, label_space=list(meta.label_space), multilabel=bool(meta.multilabel),
                            corpus=meta.corpus, cfg=cfg, out_dir=out_dir, fractions=[1.0], seeds=seeds), meta


def cost(spec: str) -> tuple[int, float]:
    """(parameters, GFLOPs per 16-frame 112-px window) of a video3d backbone, counted."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from conclugen.features.backbones import load_backbone

    b = load_backbone("video3d", spec)
    window = np.zeros((1, 16, 112, 112, 3), np.uint8)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        b.item_vectors(window)
    return sum(p.numel() for p in b.model.parameters()), fc.get_total_flops() / 1e9


def report(results: dict, metas: dict, costs: dict, a: argparse.Namespace, n_test: int) -> str:
    def cell(name: str, inp: str, metric: str) -> str:
        iv = results[name].interval(inp, 1.0, metric)
        return f"{iv.value:.3f} [{iv.low:.3f}, {iv.high:.3f}]"

    lines = [f"# video3d probe (benchmarks/video3d_probe.py{' --quick' if a.quick else ''})", "",
             f"corpus: {a.corpus or f'{a.clips} synthetic clips, seed {a.seed}'}; {n_test} test clips; "
             f"probe protocol {a.protocol}, 100% train labels × {a.seeds} seeds, intervals seeds × test clips "
             f"bootstrap; other backbones: "
             + ", ".join(f"{k} {v.name}" for k, v in metas["seeded"].backbones.items() if k != "video3d"), "",
             "| input | backbone | F1 (w) | accuracy |", "|---|---|---|---|"]
    for inp in INPUTS:
        for name in BACKBONES:
            lines.append(f"| {inp} | {BACKBONES[name]} | {cell(name, inp, 'f1_weighted')} | "
                         f"{cell(name, inp, 'accuracy')} |")
    lines += ["", "| input | F1 (w) ratio inflated / seeded |", "|---|---|"]
    for inp in INPUTS:
        ratio = results["inflated"].interval(inp, 1.0).value / max(results["seeded"].interval(inp, 1.0).value, 1e-9)
        lines.append(f"| {inp} | {ratio:.2f} |")
    lines += ["", "| backbone | trained | params | GFLOPs / 16-frame window |", "|---|---|---|---|"]
    for name, spec in BACKBONES.items():
        params, gflops = costs[name]
        lines.append(f"| {spec} | {metas[name].backbones['video3d'].trained} | {params:,} | {gflops:.3f} |")
    return "\n".join(lines)


def main() -> None:
    a = parse_args()
    from conclugen import runtime

    cfg = make_config(a)
    if cfg.ray_address or os.environ.get("RAY_ADDRESS"):
        runtime.ensure_ray(cfg)
    else:  # a cluster of our own, even while other local Ray instances run (ray.init would join one)
        runtime.start_local_ray(address="local")
    root = corpus_root(a)  # makes OUT
    results, metas = {}, {}
    for name in BACKBONES:
        features = extract(root, name, cfg, a)
        results[name], metas[name] = probe(features, cfg, Path(a.out) / f"probe-{name}", a.seeds)
    from conclugen.features import store as F

    n_test = int(np.sum(F.load_arrays(str(Path(a.out) / "features-seeded"), ["text"])["split"] == "test"))
    costs = {name: cost(spec) for name, spec in BACKBONES.items()}
    text = report(results, metas, costs, a, n_test)
    (Path(a.out) / "video3d_probe.md").write_text(text + "\n")
    print("\n" + text + f"\nwritten: {Path(a.out) / 'video3d_probe.md'}")


if __name__ == "__main__":
    main()
