"""The manifest: one row per clip, shared by every corpus loader.

A loader returns a :class:`Manifest` with the valid rows and, separately, the rows that cannot be
processed (listed clip missing, unknown label, ...). Extraction writes the latter straight to the
errors table, so every clip a corpus lists ends in exactly one of features or errors.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa

from conclugen.config import MELD_EMOTIONS, MOSEI_EMOTIONS
from conclugen.errors import ConCluGenError

# Written by `conclugen synth` at a corpus root: MELD layout, synthetic label balance.
SYNTH_MARKER = "conclugen-synthetic.json"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_uri", pa.string(), nullable=False),
        pa.field("start_s", pa.float64()),  # null: from the start of the file
        pa.field("end_s", pa.float64()),  # null: to the end of the file
        pa.field("transcript", pa.string()),  # null: needs ASR
        pa.field("split", pa.string(), nullable=False),  # train | val | test | unlabeled
        pa.field("labels", pa.list_(pa.string())),  # canonical names; empty for unlabeled
        pa.field("intensities", pa.list_(pa.float32())),  # MOSEI (label_space order), else null
        pa.field("corpus", pa.string(), nullable=False),
        # null: the interval as labelled; else the labelled [start, end] before clamping (MOSEI's
        # negative starts, see conclugen.data.corpora.mosei)
        pa.field("clamped_from", pa.list_(pa.float64())),
    ]
)
SPLITS = ("train", "val", "test", "unlabeled")

# CAER's seven classes under the same names as MELD's (reference folder names: Anger, Disgust,
# Fear, Happy, Neutral, Sad, Surprise), in the folders' alphabetical order.
CAER_EMOTIONS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")

# Spelling variants seen in the corpora's folder names and CSVs → canonical emotion name.
EMOTION_SYNONYMS: dict[str, str] = {
    "anger": "anger",
    "angry": "anger",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "scared": "fear",
    "happy": "joy",
    "happiness": "joy",
    "joy": "joy",
    "neutral": "neutral",
    "sad": "sadness",
    "sadness": "sadness",
    "surprise": "surprise",
    "surprised": "surprise",
}


class MissingClipError(ConCluGenError, FileNotFoundError):
    """A clip the corpus lists is not in storage."""


class UnknownLabelError(ConCluGenError, ValueError):
    """A label outside the corpus's label space."""


class CorpusLayoutError(ConCluGenError, ValueError):
    """The corpus root does not have the expected layout (missing CSV, bad header, ...)."""


@dataclass
class Manifest:
    rows: list[dict[str, Any]]  # valid rows, MANIFEST_SCHEMA fields
    problems: list[dict[str, Any]]  # {clip_id, video_uri, stage: "manifest", error: "<Type>: message"}
    label_space: list[str]
    multilabel: bool
    corpus: str = ""
    notes: list[str] = field(default_factory=list)  # human-readable remarks (skipped files, ...)

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=MANIFEST_SCHEMA)

    def __len__(self) -> int:
        return len(self.rows)


def row(
    clip_id: str,
    video_uri: str,
    split: str,
    corpus: str,
    labels: list[str] | None = None,
    transcript: str | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
    intensities: list[float] | None = None,
    clamped_from: list[float] | None = None,
) -> dict[str, Any]:
    """One manifest row (MANIFEST_SCHEMA fields); an empty transcript becomes null (ASR fills it)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if transcript is not None and not transcript.strip():
        transcript = None  # empty text is no text: ASR fills it
    return {
        "clip_id": clip_id,
        "video_uri": video_uri,
        "start_s": None if start_s is None else float(start_s),
        "end_s": None if end_s is None else float(end_s),
        "transcript": transcript,
        "split": split,
        "labels": list(labels or []),
        "intensities": None if intensities is None else [float(v) for v in intensities],
        "corpus": corpus,
        "clamped_from": None if clamped_from is None else [float(v) for v in clamped_from],
    }


def problem(clip_id: str, video_uri: str, exc: BaseException) -> dict[str, Any]:
    """A row that cannot be processed, as extraction writes it to the errors table."""
    return {
        "clip_id": clip_id,
        "video_uri": video_uri,
        "stage": "manifest",
        "error": f"{type(exc).__name__}: {exc}",
    }


class DuplicateClipError(ConCluGenError, ValueError):
    """Two rows of a corpus with the same clip id (e.g. a line repeated in a CSV)."""


def drop_duplicates(manifest: Manifest) -> Manifest:
    """Keep the first row of each clip id; later ones become problems, so ids stay unique."""
    seen: set[str] = set()
    kept = []
    for r in manifest.rows:
        if r["clip_id"] in seen:
            manifest.problems.append(
                problem(
                    r["clip_id"], r["video_uri"], DuplicateClipError(f"clip id {r['clip_id']} listed twice")
                )
            )
            continue
        seen.add(r["clip_id"])
        kept.append(r)
    manifest.rows = kept
    return manifest


def canonical_emotion(name: str, space: tuple[str, ...] | list[str]) -> str:
    """Map a corpus's spelling (any case) to the canonical name in ``space``; raise when unknown."""
    key = name.strip().lower()
    canon = EMOTION_SYNONYMS.get(key, key)
    if canon in space:
        return canon
    if key in space:
        return key
    # MOSEI spells joy "happiness": accept the synonym chain both ways.
    if canon == "joy" and "happiness" in space:
        return "happiness"
    raise UnknownLabelError(f"unknown emotion {name!r} (known: {', '.join(space)})")


def stem(uri: str) -> str:
    """The file name without its extension."""
    return posixpath.splitext(posixpath.basename(uri.replace("\\", "/")))[0]


def _base(root: str) -> str:
    """The root as list_files spells the URIs under it (local roots are resolved to absolute)."""
    root = str(root)
    if root.startswith("s3://"):
        return root.rstrip("/")
    if root.startswith("file://"):
        return "file://" + str(Path(urlparse(root).path).expanduser().resolve())
    return str(Path(root).expanduser().resolve())


def relative(root: str, uri: str) -> str:
    """``uri`` (as list_files returns it) relative to ``root``, with '/' separators."""
    base = _base(root)
    if uri.startswith(base + "/"):
        return uri[len(base) + 1 :].replace("\\", "/")
    return uri


def is_video(uri: str) -> bool:
    """Whether ``uri`` names a video file (by extension)."""
    base = posixpath.basename(uri)
    # macOS resource forks ("._x.mp4") sit beside real clips in some archives: not videos.
    return uri.lower().endswith(VIDEO_SUFFIXES) and not base.startswith("._")


def decode_text(data: bytes) -> str:
    """Text files from the corpora come in mixed encodings: UTF-8 (with or without BOM), else
    Windows-1252, else Latin-1 (which never fails)."""
    for enc in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 read as Latin-1/Windows-1252 (MELD's CSVs hold 'â\\x80\\x99' for '’')."""
    if not any(
        "\x80" <= ch <= "\xff" or ch in "\u20ac\u201a\u201e\u2026\u2018\u2019\u201c\u201d" for ch in text
    ):
        return text
    for enc in ("latin-1", "cp1252"):
        try:
            fixed = text.encode(enc).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
        return fixed
    return text


__all__ = [
    "CAER_EMOTIONS",
    "MANIFEST_SCHEMA",
    "MELD_EMOTIONS",
    "MOSEI_EMOTIONS",
    "CorpusLayoutError",
    "Manifest",
    "MissingClipError",
    "UnknownLabelError",
    "canonical_emotion",
    "problem",
    "row",
]
