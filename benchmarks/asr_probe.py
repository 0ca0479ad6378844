"""Linear-probe F1 on a corpus without transcripts, with ASR text (``offline:pocketsphinx``) vs
without text (``offline:none``: a zero text vector and the gap ``text``); F1, not time.

    python benchmarks/asr_probe.py --out /tmp/asr-probe             # 210 clips
    python benchmarks/asr_probe.py --out /tmp/asr-probe-q --quick   # 28 clips, to check it runs

1. ``synthesize`` a labelled corpus (MELD layout, espeak-ng speech; reused when it matches) and
   re-link it into CAER's layout, which has no transcripts
   (:func:`conclugen.devtools.caer_layout.caer_layout`).
2. Extract that CAER-layout corpus twice with the default offline backbones, once per ASR spec
   (``run_extract``; each store resumes).
3. Probe each store's raw backbone features (``raw_features_encoder`` through
   ``evaluate_representations``, the same probe and bootstrap intervals as ``conclugen
   evaluate``): all modalities, and the text vector alone.
4. Print the weighted F1 of each with its interval over test clips, and the ratio ASR / none
   (the baseline measured in the same run); writes OUT/asr_probe.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ASR_SPECS = {"asr": "offline:pocketsphinx", "no_text": "offline:none"}
ENCODINGS = {"video+audio+text": ("video", "audio", "text"), "text": ("text",)}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/conclugen-asr-probe")
    ap.add_argument("--clips", type=int, default=210, help="labelled clips (train 70%% / dev 10%% / test 20%%)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="28 clips, 20 probe epochs, 100 bootstrap resamples")
    ap.add_argument("--set", dest="set_", action="append", default=[], help="config overrides (key=value)")
    a = ap.parse_args()
    if a.quick:
        a.clips = 28
    return a


def make_corpus(a: argparse.Namespace) -> str:
    """OUT/corpus (MELD layout, synthesised unless it matches) → OUT/caer (CAER layout)."""
    from conclugen.data.synthetic import synthesize
    from conclugen.devtools.caer_layout import caer_layout

    meld, caer = Path(a.out) / "corpus", Path(a.out) / "caer"
    marker = meld / "conclugen-synthetic.json"
    wanted = {"clips": a.clips, "seed": a.seed, "voice": "espeak-ng"}
    if not marker.is_file() or {k: json.loads(marker.read_text()).get(k) for k in wanted} != wanted:
        for name in ("features_asr", "features_no_text"):  # stores of another corpus under the same ids
            shutil.rmtree(Path(a.out) / name, ignore_errors=True)
        print(synthesize(str(meld), clips=a.clips, seed=a.seed, voice="espeak-ng").describe(), flush=True)
    caer_layout(str(meld), str(caer))
    return str(caer)


def transcript_sources(features: str) -> dict[str, int]:
    from collections import Counter

    from conclugen.features import store as F

    table = F.read_table(F.features_uri(features), columns=["transcript_source"])
    return dict(Counter(table.column("transcript_source").to_pylist()))


def probe(features: str, out: Path, cfg) -> dict:
    """{encoding name: ProbeResult} of the raw features of ``features``."""
    from conclugen.evaluation.compare import evaluate_representations
    from conclugen.evaluation.encoders import raw_features_encoder
    from conclugen.features import store as F

    meta = F.read_meta(features)
    arrays = F.load_arrays(features, list(ENCODINGS["video+audio+text"]), splits=("train", "val", "test"))
    encoders = {name: raw_features_encoder(mods) for name, mods in ENCODINGS.items()}
    return evaluate_representations(encoders, arrays, label_space=list(meta.label_space),
                                    multilabel=bool(meta.multilabel), corpus=meta.corpus, cfg=cfg, out_dir=out,
                                    # PCA maps: t-SNE of the no-text store's all-zero text vectors crashed
                                    # (a segfault in sklearn's quad tree on NaN coordinates)
                                    map_method="pca")


def report(results: dict[str, dict], sources: dict[str, dict], a: argparse.Namespace) -> str:
    lines = [f"# ASR vs no text on a CAER-layout corpus (benchmarks/asr_probe.py{' --quick' if a.quick else ''})",
             "", f"{a.clips} synthetic clips (seed {a.seed}), CAER layout (no transcripts); linear probe on raw "
             "backbone features; weighted F1 on the test split with its bootstrap interval.", "",
             "| features | " + " | ".join(f"{k} (`{ASR_SPECS[k]}`)" for k in ASR_SPECS) + " | ratio asr / no_text |",
             "|---" * (len(ASR_SPECS) + 2) + "|"]
    for enc in ENCODINGS:
        ivs = {k: results[k][enc].test_intervals["f1_weighted"] for k in ASR_SPECS}
        base = ivs["no_text"].value
        ratio = f"{ivs['asr'].value / base:.2f}" if base > 0 else "n/a (no_text F1 is 0)"
        lines.append(f"| {enc} | " + " | ".join(str(ivs[k]) for k in ASR_SPECS) + f" | {ratio} |")
    n_test = results["asr"]["text"].n_test
    lines += ["", f"test clips: {n_test}; transcript sources per store: "
              + "; ".join(f"{k}: {v}" for k, v in sources.items())]
    return "\n".join(lines)


def main() -> None:
    a = parse_args()
    from conclugen import runtime
    from conclugen.config import load_config
    from conclugen.features.extract import run_extract

    sets = [f"workdir={a.out}/work", *(["probe.epochs=20", "probe.bootstrap=100"] if a.quick else [])]
    cfg = load_config(None, [*sets, *a.set_])
    Path(a.out).mkdir(parents=True, exist_ok=True)
    caer = make_corpus(a)
    if cfg.ray_address or os.environ.get("RAY_ADDRESS"):
        runtime.ensure_ray(cfg)
    else:  # a cluster of our own even when another one runs on this machine (ray.init would join it)
        runtime.start_local_ray(address="local")
    results, sources = {}, {}
    for name, spec in ASR_SPECS.items():
        backbones = cfg.extract.backbones.model_copy(update={"asr": spec})
        ecfg = cfg.model_copy(update={"extract": cfg.extract.model_copy(update={"backbones": backbones})})
        features = str(Path(a.out) / f"features_{name}")
        print(run_extract(caer, "caer", features, ecfg).describe(), flush=True)
        sources[name] = transcript_sources(features)
        results[name] = probe(features, Path(a.out) / f"probe_{name}", ecfg)
    text = report(results, sources, a)
    (Path(a.out) / "asr_probe.md").write_text(text + "\n")
    print("\n" + text + f"\nwritten: {Path(a.out) / 'asr_probe.md'}")


if __name__ == "__main__":
    main()
