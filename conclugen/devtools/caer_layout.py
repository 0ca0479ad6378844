"""A synthetic corpus in CAER's layout, for measuring what ASR brings to corpora without
transcripts (benchmarks/asr_probe.py, tests).

``caer_layout(meld_root, out)`` re-links the labelled clips of a local synthetic MELD-layout
corpus (``conclugen synth``) into ``out/{train,validation,test}/{Class}/{NNNN}.mp4`` — CAER's
layout (:mod:`conclugen.data.corpora.caer`), which carries no transcripts — and returns the
clip-id map, so a caller can compare against the synthetic transcripts.

    python -m conclugen.devtools.caer_layout MELD_ROOT OUT
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from conclugen.config import Config
from conclugen.data.corpora import load_manifest

# manifest split → CAER's split folder
CAER_SPLIT_DIRS = {"train": "train", "val": "validation", "test": "test"}


def _link(src: Path, dest: Path) -> None:
    """A hard link (same bytes, no copy); a copy across file systems."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def caer_layout(meld_root: str, out: str, cfg: Config | None = None) -> dict[str, str]:
    """Write the CAER-layout view of the local MELD-layout corpus ``meld_root`` under ``out``
    (replacing what is there); returns {CAER clip_id: MELD clip_id}. Only labelled single-label
    rows of train/val/test are linked (an unlabeled pool has no class folder)."""
    manifest = load_manifest("meld", meld_root, cfg)
    root = Path(out)
    shutil.rmtree(root, ignore_errors=True)
    ids: dict[str, str] = {}
    counters: dict[tuple[str, str], int] = {}
    for r in sorted(manifest.rows, key=lambda r: r["clip_id"]):
        split_dir = CAER_SPLIT_DIRS.get(r["split"])
        if split_dir is None or len(r["labels"] or []) != 1:
            continue
        cls = str(r["labels"][0]).capitalize()
        n = counters.get((split_dir, cls), 0)
        counters[(split_dir, cls)] = n + 1
        src = Path(r["video_uri"].removeprefix("file://"))
        dest = root / split_dir / cls / f"{n:04d}{src.suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        _link(src, dest)
        ids[f"caer/{split_dir}/{cls}/{n:04d}"] = str(r["clip_id"])
    return ids


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m conclugen.devtools.caer_layout MELD_ROOT OUT")
        return 2
    print(f"{len(caer_layout(args[0], args[1]))} clips linked into {args[1]} (CAER layout)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
