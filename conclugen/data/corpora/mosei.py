"""CMU-MOSEI → manifest: one row per labelled segment of a full video.

Inputs, all found under the root (any depth) unless named in the config:

* **Labels**, either the SDK's computational sequence ``CMU_MOSEI_Labels.csd`` (HDF5: group
  ``/<name>/data/<video_id>/`` with ``features`` [N, 7] = sentiment, happy, sad, anger, surprise,
  disgust, fear and ``intervals`` [N, 2] = start, end seconds) — the first ``*.csd`` whose name
  contains "label", else any ``*.csd`` — or a CSV whose name contains "label" with the header
  ``video_id,segment,start,end,sentiment,happy,sad,anger,surprise,disgust,fear``.
* **Full videos** ``<video_id>.<ext>`` anywhere under the root (``Raw/Videos/Full/Combined``).
* **Segmented transcripts**: ``*.txt`` lines ``video_id___segment___start___end___text``.
* **Folds**: ``cfg.corpus.folds_file`` or a ``*fold*.json`` under the root:
  ``{"train": [ids], "valid": [ids], "test": [ids]}`` (``val``/``dev`` and the SDK's
  ``standard_{train,valid,test}_fold`` keys are accepted too).

Segments are numbered per video in order of start time for the HDF5 form (the CSV names them);
the clip id is ``mosei/<video_id>[<segment>]``. A transcript is matched to a segment by its
interval (both ends within 50 ms, else the best overlap above 50% IoU, else — CSV form — the same
segment number); unmatched segments get a null transcript (ASR). Labels are multi-label: an
emotion is present when its intensity is > 0; ``intensities`` holds the six values in the label
space's order (happiness, sadness, anger, fear, disgust, surprise). Problems: the video file is
missing, the video is in no fold, the interval is empty (after clamping), an intensity is not
finite.

**Clamping.** The released labels hold segments that start before the video (e.g. −0.4875 s).
Their start is clamped to 0 and the row's ``clamped_from`` keeps the labelled ``[start, end]``
(null for rows used as labelled); ``Manifest.notes`` counts them. Ends are not clamped here: the
loader does not open the videos, so their durations are unknown at manifest time; an end past
the video's end is cut at decode time instead (:func:`conclugen.data.media.decode_clip` ends a
segment at the last frame). A segment whose end is at or before 0 is empty after clamping and
stays a :class:`BadSegmentError` problem.
"""

from __future__ import annotations

import csv
import io
import json
import math
import posixpath
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from conclugen import storage
from conclugen.config import MOSEI_EMOTIONS
from conclugen.data.corpora.manifest import (
    CorpusLayoutError,
    Manifest,
    MissingClipError,
    decode_text,
    is_video,
    problem,
    row,
    stem,
)
from conclugen.errors import ConCluGenError

if TYPE_CHECKING:
    from conclugen.config import Config, StorageConfig

Transcript = tuple[str, str, float, float, str]  # video_id, segment, start, end, text

# Column order of the SDK's labels (after sentiment) → canonical name.
SDK_EMOTION_ORDER = ("happiness", "sadness", "anger", "surprise", "disgust", "fear")
LABEL_CSV_COLUMNS = (
    "video_id",
    "segment",
    "start",
    "end",
    "sentiment",
    "happy",
    "sad",
    "anger",
    "surprise",
    "disgust",
    "fear",
)
FOLD_KEYS = {
    "train": "train",
    "standard_train_fold": "train",
    "valid": "val",
    "val": "val",
    "dev": "val",
    "validation": "val",
    "standard_valid_fold": "val",
    "test": "test",
    "standard_test_fold": "test",
}


class NotInFoldsError(ConCluGenError, LookupError):
    """A labelled video that none of the folds lists."""


class BadSegmentError(ConCluGenError, ValueError):
    """A segment whose interval or intensities cannot be used."""


def _segment(video_id: str, seg: str, start: float, end: float, values: list[float]) -> dict[str, Any]:
    """values: [sentiment, happy, sad, anger, surprise, disgust, fear] as in the SDK."""
    by_name = dict(zip(SDK_EMOTION_ORDER, values[1:7], strict=True))
    return {
        "video_id": video_id,
        "segment": seg,
        "start": float(start),
        "end": float(end),
        "sentiment": float(values[0]),
        "intensities": [float(by_name[n]) for n in MOSEI_EMOTIONS],
    }


def read_labels_csd(data: bytes) -> list[dict[str, Any]]:
    """Segments of the SDK's labels computational sequence (HDF5 bytes), numbered by start time."""
    import h5py
    import numpy as np

    out: list[dict[str, Any]] = []
    with h5py.File(io.BytesIO(data), "r") as f:
        tops = [k for k in f if isinstance(f[k], h5py.Group) and "data" in f[k]]
        if not tops:
            raise CorpusLayoutError("labels .csd has no /<name>/data group")
        data_group = f[tops[0]]["data"]
        for vid in data_group:
            g = data_group[vid]
            feats = np.asarray(g["features"], dtype=np.float64)
            ivals = np.asarray(g["intervals"], dtype=np.float64)
            if feats.ndim != 2 or feats.shape[1] < 7 or ivals.shape != (feats.shape[0], 2):
                raise CorpusLayoutError(
                    f"labels .csd: {vid} has features {feats.shape}, intervals {ivals.shape}"
                )
            order = np.lexsort((ivals[:, 1], ivals[:, 0]))
            for k, i in enumerate(order):
                out.append(_segment(str(vid), str(k), ivals[i, 0], ivals[i, 1], feats[i, :7].tolist()))
    return out


def read_labels_csv(data: bytes, name: str = "labels csv") -> list[dict[str, Any]]:
    """Segments of a labels CSV with the LABEL_CSV_COLUMNS header."""
    reader = csv.DictReader(io.StringIO(decode_text(data), newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in LABEL_CSV_COLUMNS if c not in header]
    if missing:
        raise CorpusLayoutError(f"{name}: header lacks {', '.join(missing)}")
    reader.fieldnames = header
    out = []
    for r in reader:
        values = [float(r[c]) for c in LABEL_CSV_COLUMNS[4:]]
        out.append(
            _segment(r["video_id"].strip(), r["segment"].strip(), float(r["start"]), float(r["end"]), values)
        )
    return out


def parse_transcript_lines(text: str) -> list[Transcript]:
    """``video_id___segment___start___end___text`` lines → tuples; other lines are skipped."""
    out = []
    for line in text.splitlines():
        parts = line.split("___", 4)
        if len(parts) != 5:
            continue
        try:
            out.append(
                (parts[0].strip(), parts[1].strip(), float(parts[2]), float(parts[3]), parts[4].strip())
            )
        except ValueError:
            continue
    return out


def read_folds(data: bytes) -> dict[str, str]:
    """video id → split (train | val | test) from a folds JSON."""
    raw = json.loads(decode_text(data))
    if not isinstance(raw, dict):
        raise CorpusLayoutError("folds file must hold an object {train: [...], valid: [...], test: [...]}")
    out: dict[str, str] = {}
    for key, ids in raw.items():
        split = FOLD_KEYS.get(str(key).lower())
        if split is None:
            continue
        for vid in ids:
            out[str(vid)] = split
    if not out:
        raise CorpusLayoutError(f"folds file has none of the keys {sorted(FOLD_KEYS)}")
    return out


def _match_transcript(seg: dict[str, Any], candidates: list[Transcript], by_number: bool) -> str | None:
    s0, s1 = seg["start"], seg["end"]
    best, best_iou = None, 0.5
    for _, _num, t0, t1, text in candidates:
        if abs(t0 - s0) <= 0.05 and abs(t1 - s1) <= 0.05:
            return text
        inter = max(0.0, min(s1, t1) - max(s0, t0))
        union = max(s1, t1) - min(s0, t0)
        iou = inter / union if union > 0 else 0.0
        if iou > best_iou:
            best, best_iou = text, iou
    if best is None and by_number:
        best = next((c[4] for c in candidates if c[1] == seg["segment"]), None)
    return best


def _find(files: list[str], suffix: str, must: str | None) -> str | None:
    hits = [
        f
        for f in files
        if f.lower().endswith(suffix) and (must is None or must in posixpath.basename(f).lower())
    ]
    return hits[0] if hits else None


def load_mosei(root: str, cfg: Config) -> Manifest:
    """CMU-MOSEI under ``root`` → manifest (see the module docstring)."""
    scfg = cfg.storage
    files = storage.list_files(root, scfg)
    labels_uri, segments, by_number = _read_labels(root, files, scfg)
    folds_uri = cfg.corpus.folds_file or _find(files, ".json", "fold")
    if folds_uri is None:
        raise CorpusLayoutError(
            f"{root}: no folds file (set corpus.folds_file or put a *fold*.json in the root)"
        )
    folds = read_folds(storage.read_bytes(folds_uri, scfg))
    transcripts = _read_transcripts(files, scfg)
    videos = {stem(f): f for f in files if is_video(f)}
    rows, problems = [], []
    for seg in segments:
        vid = seg["video_id"]
        clip_id = f"mosei/{vid}[{seg['segment']}]"
        uri = videos.get(vid, storage.join(root, f"{vid}.mp4"))
        try:
            if vid not in videos:
                raise MissingClipError(f"no video file for {vid} under {root}")
            if vid not in folds:
                raise NotInFoldsError(f"video {vid} is in no fold of {folds_uri}")
            start, end, clamped_from = clamp_interval(seg)
        except (MissingClipError, NotInFoldsError, BadSegmentError) as e:
            problems.append(problem(clip_id, uri, e))
            continue
        labels = [name for name, v in zip(MOSEI_EMOTIONS, seg["intensities"], strict=True) if v > 0]
        rows.append(
            row(
                clip_id,
                uri,
                folds[vid],
                "mosei",
                labels=labels,
                transcript=_match_transcript(seg, transcripts.get(vid, []), by_number),
                start_s=start,
                end_s=end,
                intensities=seg["intensities"],
                clamped_from=clamped_from,
            )
        )
    notes = [f"labels from {labels_uri}", f"folds from {folds_uri}"]
    n_clamped = sum(r["clamped_from"] is not None for r in rows)
    if n_clamped:
        notes.append(f"{n_clamped} segments start before their video: start clamped to 0 (see clamped_from)")
    return Manifest(rows, problems, list(MOSEI_EMOTIONS), multilabel=True, corpus="mosei", notes=notes)


def clamp_interval(seg: dict[str, Any]) -> tuple[float, float, list[float] | None]:
    """(start, end, clamped_from) of a labelled segment: a negative start becomes 0 and
    ``clamped_from`` the labelled [start, end] (None when nothing changed). Raises
    :class:`BadSegmentError`, naming the segment, for an interval that is empty after clamping
    or an intensity or start that is not finite."""
    start, end = seg["start"], seg["end"]
    ok = math.isfinite(start) and all(math.isfinite(v) for v in seg["intensities"])
    if not ok or not end > max(0.0, start):
        empty = " (empty after clamping the start to 0)" if ok and start < 0 else ""
        raise BadSegmentError(
            f"segment {seg['video_id']}[{seg['segment']}]: interval [{start}, {end}]{empty} "
            f"intensities {seg['intensities']}"
        )
    return max(0.0, start), end, ([start, end] if start < 0 else None)


def _read_labels(root: str, files: list[str], scfg: StorageConfig) -> tuple[str, list[dict[str, Any]], bool]:
    """(labels URI, segments, whether transcripts may match by segment number: the CSV form)."""
    labels_uri = _find(files, ".csd", "label") or _find(files, ".csd", None)
    if labels_uri is not None:
        return labels_uri, read_labels_csd(storage.read_bytes(labels_uri, scfg)), False
    labels_uri = _find(files, ".csv", "label")
    if labels_uri is None:
        raise CorpusLayoutError(f"{root}: no labels (CMU_MOSEI_Labels.csd or a *label*.csv)")
    return labels_uri, read_labels_csv(storage.read_bytes(labels_uri, scfg), labels_uri), True


def _read_transcripts(files: list[str], scfg: StorageConfig) -> dict[str, list[Transcript]]:
    """Segmented transcript lines of every ``*.txt`` file, by video id."""
    transcripts: dict[str, list[Transcript]] = defaultdict(list)
    txt = [f for f in files if f.lower().endswith(".txt")]
    # One small file per video (3,837 in the release): read them concurrently, since from S3
    # each is a round trip.
    with ThreadPoolExecutor(max_workers=16) as pool:
        for data in pool.map(lambda f: storage.read_bytes(f, scfg), txt):
            for line in parse_transcript_lines(decode_text(data)):
                transcripts[line[0]].append(line)
    return transcripts
