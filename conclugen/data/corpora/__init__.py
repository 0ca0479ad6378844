"""Corpus loaders: each turns a corpus root (local path or ``s3://``) into a :class:`Manifest`.

``load_manifest(name, root, cfg)`` with name in ``meld | caer | mosei | folder``. Rows that cannot
be processed (a listed clip that is missing, an unknown label, ...) are returned in
``Manifest.problems`` rather than raised, so extraction can write them to the errors table.
A root whose layout is wrong as a whole (no CSV, bad header, no folds file) raises
:class:`CorpusLayoutError`.
"""

from __future__ import annotations

from collections.abc import Callable

from conclugen.config import Config
from conclugen.data.corpora.caer import load_caer
from conclugen.data.corpora.folder import load_folder
from conclugen.data.corpora.manifest import (
    CAER_EMOTIONS,
    MANIFEST_SCHEMA,
    CorpusLayoutError,
    Manifest,
    MissingClipError,
    UnknownLabelError,
    drop_duplicates,
)
from conclugen.data.corpora.meld import load_meld
from conclugen.data.corpora.mosei import load_mosei

LOADERS: dict[str, Callable[[str, Config], Manifest]] = {
    "meld": load_meld,
    "caer": load_caer,
    "mosei": load_mosei,
    "folder": load_folder,
}
CORPORA = tuple(LOADERS)


def load_manifest(name: str, root: str, cfg: Config | None = None) -> Manifest:
    """Read the corpus ``name`` under ``root`` into a manifest (see the module docstring)."""
    loader = LOADERS.get(name.strip().lower())
    if loader is None:
        raise ValueError(f"unknown corpus {name!r}; expected one of {', '.join(CORPORA)}")
    return drop_duplicates(loader(str(root), cfg if cfg is not None else Config()))


__all__ = [
    "CAER_EMOTIONS",
    "CORPORA",
    "LOADERS",
    "MANIFEST_SCHEMA",
    "CorpusLayoutError",
    "Manifest",
    "MissingClipError",
    "UnknownLabelError",
    "load_manifest",
]
