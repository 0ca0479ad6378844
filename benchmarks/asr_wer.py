"""Word error rate of the offline ASR (``offline:pocketsphinx``) on the synthetic corpus's speech
against its transcripts (a measurement of accuracy, not of time).

    python benchmarks/asr_wer.py --out /tmp/asr-wer              # 50 clips (synthesised, reused)
    python benchmarks/asr_wer.py --corpus /tmp/demo/corpus       # an existing synthetic corpus
    python benchmarks/asr_wer.py --out /tmp/asr-wer-q --quick    # 8 clips, to check it runs

Each clip goes through the extraction's own decoding (``decode_clip``: mono audio at
``extract.audio_sample_rate``) and the ASR backbone's ``transcribe``, as in the backbone actors;
the WER (:mod:`conclugen.evaluation.wer`) is corpus-level over the manifest transcripts. The
speech is espeak-ng's when it is installed; with the numpy fallback voice (no words, only
vowel-like syllables) the WER is meaningless and the script stops unless ``--allow-numpy``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/conclugen-asr-wer", help="where the synthesised corpus goes")
    ap.add_argument("--corpus", default="", help="an existing local synthetic corpus (MELD layout) to reuse")
    ap.add_argument("--clips", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--asr", default="offline:pocketsphinx", help="the ASR backbone spec")
    ap.add_argument("--allow-numpy", action="store_true", help="run even without espeak-ng (WER meaningless)")
    ap.add_argument("--examples", type=int, default=5, help="reference / hypothesis pairs to print")
    ap.add_argument("--quick", action="store_true", help="8 clips")
    a = ap.parse_args()
    if a.quick:
        a.clips = 8
    return a


def corpus_root(a: argparse.Namespace) -> Path:
    """The corpus to read: ``--corpus``, else OUT/corpus (synthesised unless it matches)."""
    from conclugen.data.synthetic import synthesize

    if a.corpus:
        return Path(a.corpus)
    root = Path(a.out) / "corpus"
    marker = root / "conclugen-synthetic.json"
    wanted = {"clips": a.clips, "seed": a.seed}
    if not marker.is_file() or {k: json.loads(marker.read_text()).get(k) for k in wanted} != wanted:
        print(synthesize(str(root), clips=a.clips, seed=a.seed).describe(), flush=True)
    return root


def main() -> int:
    a = parse_args()
    from conclugen import storage
    from conclugen.config import Config
    from conclugen.data.corpora import load_manifest
    from conclugen.data.media.decode import decode_clip
    from conclugen.evaluation.wer import corpus_wer
    from conclugen.features.backbones import load_backbone

    root = corpus_root(a)
    marker = root / "conclugen-synthetic.json"
    voice = json.loads(marker.read_text()).get("voice") if marker.is_file() else "unknown"
    if voice != "espeak-ng" and not a.allow_numpy:
        print(f"{root}: voice {voice!r}, not espeak-ng: the WER would be meaningless (install espeak-ng)")
        return 1
    cfg = Config()
    ecfg = cfg.extract.model_copy(update={"face_detector": "none"})  # only the audio is used
    rows = [r for r in load_manifest("meld", str(root), cfg).rows if r["transcript"]][: a.clips]
    asr = load_backbone("asr", a.asr, "cpu", ecfg)
    pairs = []
    for r in rows:
        clip = decode_clip(storage.read_bytes(r["video_uri"], cfg.storage), ecfg, r["start_s"], r["end_s"])
        pairs.append((r["transcript"], asr.transcribe([clip.audio if clip.has_audio else None])[0]))
    result = corpus_wer(pairs)
    for ref, hyp in pairs[: a.examples]:
        print(f"  ref: {ref}\n  hyp: {hyp}")
    print(f"{a.asr} on {root} (voice {voice}): {result.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
