"""MELD (MELD.Raw) → manifest.

Layout: ``{train,dev,test}_sent_emo.csv`` at the root with the header
``Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime``
and one clip per utterance, ``dia{Dialogue_ID}_utt{Utterance_ID}.mp4``, in
``train/train_splits``, ``dev/dev_splits_complete`` and ``test/output_repeated_splits_test``
(the same folders directly under the root, as the release's inner tarballs unpack, are accepted).

Each clip file is already cut to its utterance, so rows decode the whole file (start_s/end_s
null). StartTime/EndTime (``hh:mm:ss,mmm``) locate the utterance in the episode; they are parsed
and checked, and a clip whose times cannot be parsed is still used (the file is the clip).
Listed clips that are missing become problems, as do unknown emotions. The CSVs' text is read
as UTF-8 with a Windows-1252 / Latin-1 fallback, and UTF-8 mis-decoded as Latin-1 (mojibake such
as "â\\x80\\x99") is repaired.
"""

from __future__ import annotations

import csv
import io
import re
from typing import TYPE_CHECKING

from conclugen import storage
from conclugen.config import MELD_EMOTIONS
from conclugen.data.corpora.manifest import (
    SYNTH_MARKER,
    CorpusLayoutError,
    Manifest,
    MissingClipError,
    canonical_emotion,
    decode_text,
    fix_mojibake,
    problem,
    relative,
    row,
)

if TYPE_CHECKING:
    from conclugen.config import Config

MELD_COLUMNS = (
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
)
# split name in the manifest → (CSV, clip folder candidates relative to the root)
MELD_SPLITS = {
    "train": ("train_sent_emo.csv", ("train/train_splits", "train_splits")),
    "val": ("dev_sent_emo.csv", ("dev/dev_splits_complete", "dev_splits_complete")),
    "test": ("test_sent_emo.csv", ("test/output_repeated_splits_test", "output_repeated_splits_test")),
}

_TIME = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})(?:[,.](\d{1,3}))?\s*$")


def parse_meld_time(text: str) -> float:
    """``hh:mm:ss,mmm`` (SRT style; a '.' separator or no milliseconds also accepted) → seconds."""
    m = _TIME.match(text or "")
    if not m:
        raise ValueError(f"bad MELD time {text!r} (expected hh:mm:ss,mmm)")
    h, mi, s, ms = m.groups()
    frac = int(ms.ljust(3, "0")) / 1000.0 if ms else 0.0
    return int(h) * 3600 + int(mi) * 60 + int(s) + frac


def read_meld_csv(data: bytes, name: str = "csv") -> list[dict[str, str]]:
    """The records of one MELD CSV; raises CorpusLayoutError when its header lacks a column."""
    text = decode_text(data)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in MELD_COLUMNS if c not in header]
    if missing:
        raise CorpusLayoutError(
            f"{name}: header lacks {', '.join(missing)} (got {', '.join(header) or 'nothing'})"
        )
    reader.fieldnames = header
    return [{k: (v if v is not None else "") for k, v in r.items() if k is not None} for r in reader]


def load_meld(root: str, cfg: Config) -> Manifest:
    """MELD.Raw under ``root`` → manifest (see the module docstring)."""
    scfg = cfg.storage
    files = storage.list_files(root, scfg)
    by_rel = {relative(root, f): f for f in files}
    rows, problems, notes = [], [], []
    found_any = False
    for split, (csv_name, folders) in MELD_SPLITS.items():
        csv_uri = storage.join(root, csv_name)
        if csv_name not in by_rel:
            notes.append(f"{csv_name} not found: no {split} rows")
            continue
        found_any = True
        records = read_meld_csv(storage.read_bytes(by_rel[csv_name], scfg), csv_uri)
        folder = next((f for f in folders if any(r.startswith(f + "/") for r in by_rel)), folders[0])
        for rec in records:
            dia, utt = rec["Dialogue_ID"].strip(), rec["Utterance_ID"].strip()
            name = f"dia{dia}_utt{utt}.mp4"
            clip_id = f"meld/{split}/dia{dia}_utt{utt}"
            rel = f"{folder}/{name}"
            uri = by_rel.get(rel, storage.join(root, *rel.split("/")))
            if rel not in by_rel:
                problems.append(
                    problem(clip_id, uri, MissingClipError(f"listed in {csv_name} but not found: {uri}"))
                )
                continue
            try:
                label = canonical_emotion(rec["Emotion"], MELD_EMOTIONS)
            except ValueError as e:
                problems.append(problem(clip_id, uri, e))
                continue
            try:
                t0, t1 = parse_meld_time(rec["StartTime"]), parse_meld_time(rec["EndTime"])
                if t1 < t0:
                    notes.append(f"{clip_id}: EndTime before StartTime")
            except ValueError as e:
                notes.append(f"{clip_id}: {e}")
            rows.append(
                row(
                    clip_id,
                    uri,
                    split,
                    "meld",
                    labels=[label],
                    transcript=fix_mojibake(rec["Utterance"]).strip(),
                )
            )
    if not found_any:
        raise CorpusLayoutError(f"{root}: no MELD CSV ({', '.join(v[0] for v in MELD_SPLITS.values())})")
    corpus = "meld"
    # A corpus written by `conclugen synth` has MELD's layout but not MELD's label balance.
    if storage.exists(storage.join(root, SYNTH_MARKER), scfg):
        corpus = "synthetic"
        for r in rows:
            r["corpus"] = corpus
        notes.append(f"{root}: synthetic corpus ({SYNTH_MARKER}) in MELD's layout")
    return Manifest(rows, problems, list(MELD_EMOTIONS), multilabel=False, corpus=corpus, notes=notes)
