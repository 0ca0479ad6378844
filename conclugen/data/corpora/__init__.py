"""Corpus loaders: each turns a corpus root (local path or ``s3://``) into a :class:`Manifest`.

``load_manifest(name, root, cfg)`` with name in ``meld | caer | mosei | folder``. Rows that cannot
be processed (a listed clip that is missing, an unknown label, ...) are returned in
``Manifest.problems`` rather than raised, so extraction can write them to the errors table.
A root whose layout is wrong as a whole (no CSV, bad header, no folds file) raises
:class:`CorpusLayoutError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conclugen.data.corpora.manifest import (
    CAER_EMOTIONS,
    MANIFEST_SCHEMA,
    CorpusLayoutError,
    Manifest,
    MissingClipError,
    UnknownLabelError,
    drop_duplicates,
)

if TYPE_CHECKING:
    from conclugen.config import Config

CORPORA = ("meld", "caer", "mosei", "folder")


def load_manifest(name: str, root: str, cfg: Config | None = None) -> Manifest:
    """Read the corpus ``name`` under ``root`` into a manifest (see the module docstring)."""
    if cfg is None:
        from conclugen.config import Config

        cfg = Config()
    key = name.strip().lower()
    if key == "meld":
        from conclugen.data.corpora.meld import load_meld as loader
    elif key == "caer":
        from conclugen.data.corpora.caer import load_caer as loader
    elif key == "mosei":
        from conclugen.data.corpora.mosei import load_mosei as loader
    elif key == "folder":
        from conclugen.data.corpora.folder import load_folder as loader
    else:
        raise ValueError(f"unknown corpus {name!r}; expected one of {', '.join(CORPORA)}")
    return drop_duplicates(loader(str(root), cfg))


__all__ = [
    "CAER_EMOTIONS",
    "CORPORA",
    "MANIFEST_SCHEMA",
    "CorpusLayoutError",
    "Manifest",
    "MissingClipError",
    "UnknownLabelError",
    "load_manifest",
]
