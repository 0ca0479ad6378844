"""CAER → manifest.

Layout: ``{train,validation,test}/{class}/{NNNN}.avi``. Class folders are matched
case-insensitively with synonyms (Anger/Angry, Disgust, Fear, Happy/Joy, Neutral, Sad/Sadness,
Surprise) onto the canonical names ``anger, disgust, fear, joy, neutral, sadness, surprise``.
Split folders: ``train``; ``validation`` (also ``val``, ``valid``, ``dev``) → ``val``; ``test``.
CAER has no transcripts: every row's transcript is null (ASR fills it). Video files in an unknown
class folder become problems (unknown label); files outside ``split/class/`` are ignored and noted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conclugen import storage
from conclugen.data.corpora.manifest import (
    CAER_EMOTIONS,
    CorpusLayoutError,
    Manifest,
    UnknownLabelError,
    canonical_emotion,
    is_video,
    problem,
    relative,
    row,
    stem,
)

if TYPE_CHECKING:
    from conclugen.config import Config

CAER_SPLITS = {
    "train": "train",
    "validation": "val",
    "val": "val",
    "valid": "val",
    "dev": "val",
    "test": "test",
}


def load_caer(root: str, cfg: Config) -> Manifest:
    """CAER under ``root`` → manifest (see the module docstring)."""
    files = [f for f in storage.list_files(root, cfg.storage) if is_video(f)]
    rows, problems, notes = [], [], []
    for uri in files:
        parts = relative(root, uri).split("/")
        if len(parts) < 3 or parts[-3].lower() not in CAER_SPLITS:
            notes.append(f"ignored (not split/class/clip): {uri}")
            continue
        split_dir, cls = parts[-3], parts[-2]
        split = CAER_SPLITS[split_dir.lower()]
        clip_id = f"caer/{split_dir}/{cls}/{stem(uri)}"
        try:
            label = canonical_emotion(cls, CAER_EMOTIONS)
        except UnknownLabelError as e:
            problems.append(problem(clip_id, uri, e))
            continue
        rows.append(row(clip_id, uri, split, "caer", labels=[label], transcript=None))
    if not rows and not problems:
        raise CorpusLayoutError(f"{root}: no clips in {{train,validation,test}}/<class>/ folders")
    return Manifest(rows, problems, list(CAER_EMOTIONS), multilabel=False, corpus="caer", notes=notes)
