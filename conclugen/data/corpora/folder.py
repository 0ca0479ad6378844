"""Any tree of video files (VoxCeleb2-style pretraining data) → manifest.

Every video file under the root (by extension, see ``VIDEO_SUFFIXES``) is one clip of split
``unlabeled`` with no labels and a null transcript (ASR fills it). The clip id is the path
relative to the root, extension included, so ``a.mp4`` and ``a.avi`` stay distinct.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conclugen import storage
from conclugen.data.corpora.manifest import CorpusLayoutError, Manifest, is_video, relative, row

if TYPE_CHECKING:
    from conclugen.config import Config


def load_folder(root: str, cfg: Config) -> Manifest:
    """Every video file under ``root`` → an unlabeled manifest row."""
    files = storage.list_files(root, cfg.storage)
    videos = [f for f in files if is_video(f)]
    if not files:
        raise CorpusLayoutError(f"{root}: no files (missing or empty folder)")
    rows = [row(relative(root, uri), uri, "unlabeled", "folder") for uri in videos]
    notes = [f"{len(files) - len(videos)} non-video files ignored"] if len(files) > len(videos) else []
    return Manifest(rows, [], [], multilabel=False, corpus="folder", notes=notes)
