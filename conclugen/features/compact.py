"""Rewriting a store's shards: the duplicate check after an extraction, and ``conclugen compact``.

:func:`dedupe_store` keeps every clip in exactly one row: a clip repeated in features/ (or in
errors/) stays in one shard, and a clip in both keeps its features row. Shards that lose rows are
rewritten under their new :func:`~conclugen.features.store.shard_name`, then the old file is
deleted (an interruption in between leaves a duplicate the next check removes). Only the clip_id
columns are scanned (Arrow kernels), so the common case, no duplicate, is cheap at 1M clips.

:func:`compact_store` merges many small shards of features/ and errors/ into files of about
``extract.shard_mb`` MB (many runs, resumes and retries each leave their own shards). It is safe
to interrupt, and a reader never sees a clip twice:

1. ``compact.json`` (the plan, state ``writing``) lists the shards to replace; the new files are
   written as ``<name>.compacting`` (no reader or resume scan picks that suffix up);
2. the plan's state becomes ``swapping`` with the new names;
3. the old shards are deleted, then the new files renamed into place (in between a reader sees
   fewer rows, never a clip twice), then the plan is removed.

A rerun (of compact, or an extraction into the store) first finishes an interrupted swap
(:func:`recover`: state ``swapping``) or rolls back an interrupted write (deletes the
``.compacting`` files and the plan).
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from conclugen import storage
from conclugen.config import Config, StorageConfig
from conclugen.features.store import (
    ERRORS_DIR,
    FEATURES_DIR,
    META_FILE,
    FeatureStoreError,
    shard_ids,
    shard_name,
    write_parquet,
)

log = logging.getLogger(__name__)

PLAN_FILE = "compact.json"
PENDING_SUFFIX = ".compacting"
MB = 1024**2


def _name(uri: str) -> str:
    return posixpath.basename(uri.rstrip("/"))


def _read(uri: str, cfg: StorageConfig | None) -> pa.Table:
    fs, path = storage.resolve(uri, cfg)
    with fs.open_input_file(path) as fh:
        return pq.read_table(fh)


# ------------------------------------------------------------------------------ duplicates


def _repeated(shards: dict[str, pa.Array], banned: pa.Array) -> set[str]:
    """clip_ids to act on: in more than one row of these shards, or in ``banned``."""
    if not shards:
        return set()
    ids = pa.concat_arrays(list(shards.values()))
    counts = pc.value_counts(ids)
    out = set(counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist())
    return out | set(pc.unique(ids.filter(pc.is_in(ids, value_set=banned))).to_pylist())


def _drop_repeats(root: str, kind: str, shards: dict[str, pa.Array], banned: pa.Array,
                  cfg: StorageConfig | None) -> int:
    """Rewrite ``kind``'s shards so each clip_id is in one row and none of ``banned`` is left;
    largest shards keep their rows first (fewest rewrites). Returns the rows removed."""
    targets = _repeated(shards, banned)
    if not targets:
        return 0
    banned_set = set(pc.unique(banned).to_pylist()) & targets
    names = {_name(u) for u in shards}
    seen: set[str] = set()
    removed = 0
    for uri, ids in sorted(shards.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        idl = ids.to_pylist()
        if not targets.intersection(idl):
            continue
        keep, mine = [], set()
        for cid in idl:
            ok = cid not in banned_set and not (cid in targets and (cid in seen or cid in mine))
            keep.append(ok)
            if ok and cid in targets:
                mine.add(cid)
        if all(keep):
            seen |= mine
            continue
        removed += keep.count(False)
        table = _read(uri, cfg).filter(pa.array(keep))
        new = shard_name(table.column("clip_id").to_pylist()) if table.num_rows else None
        if new is not None and new in names:  # exactly these rows are another shard: that one keeps them
            removed += table.num_rows
        elif new is not None:
            write_parquet(storage.join(root, kind, new), table, cfg)
            names.add(new)
            seen |= mine
        storage.delete(uri, cfg)
        names.discard(_name(uri))
    return removed


def dedupe_store(root: str, cfg: StorageConfig | None = None) -> dict[str, int]:
    """Remove repeated clips (see the module docstring); returns rows removed per kind."""
    feats = shard_ids(root, FEATURES_DIR, cfg)
    out = {FEATURES_DIR: _drop_repeats(root, FEATURES_DIR, feats, pa.array([], pa.string()), cfg)}
    if out[FEATURES_DIR]:
        feats = shard_ids(root, FEATURES_DIR, cfg)
    f_ids = pa.concat_arrays(list(feats.values())) if feats else pa.array([], pa.string())
    out[ERRORS_DIR] = _drop_repeats(root, ERRORS_DIR, shard_ids(root, ERRORS_DIR, cfg), f_ids, cfg)
    if any(out.values()):
        log.warning("removed repeated clips from %s: %d feature rows, %d error rows", root,
                    out[FEATURES_DIR], out[ERRORS_DIR])
    return out


# ------------------------------------------------------------------------------ compaction


@dataclass
class CompactSummary:
    root: str
    files_before: dict[str, int]
    files_after: dict[str, int]
    rows: dict[str, int]
    duplicates_removed: dict[str, int]
    recovered: str = ""  # "rolled forward" | "rolled back" | ""

    def describe(self) -> str:
        lines = [f"compact {self.root}"]
        if self.recovered:
            lines.append(f"  an interrupted compaction was {self.recovered}")
        for kind in (FEATURES_DIR, ERRORS_DIR):
            lines.append(f"  {kind:9s} {self.rows.get(kind, 0):8d} rows: {self.files_before.get(kind, 0)} → "
                         f"{self.files_after.get(kind, 0)} files ({self.duplicates_removed.get(kind, 0)} repeated rows removed)")
        return "\n".join(lines)


def _plan_uri(root: str) -> str:
    return storage.join(root, PLAN_FILE)


def _save_plan(root: str, plan: dict[str, Any], cfg: StorageConfig | None) -> None:
    """The plan, replaced whole (temp + rename locally; an S3 PUT is atomic)."""
    uri = _plan_uri(root)
    if storage.is_s3(uri):
        storage.write_text(uri, json.dumps(plan), cfg)
        return
    storage.write_text(uri + ".new", json.dumps(plan), cfg)
    fs, path = storage.resolve(uri, cfg)
    fs.move(path + ".new", path)


def recover(root: str, cfg: StorageConfig | None = None) -> str:
    """Finish (state ``swapping``) or roll back (otherwise) an interrupted compaction of ``root``;
    "" when there was none. Callers hold the output's lock."""
    uri = _plan_uri(root)
    if not storage.exists(uri, cfg):
        return ""
    plan = json.loads(storage.read_text(uri, cfg))
    if plan.get("state") == "swapping":
        _swap(root, plan, cfg)
        log.warning("%s: finished an interrupted compaction", root)
        return "rolled forward"
    for kind in (FEATURES_DIR, ERRORS_DIR):
        for f in storage.list_files(storage.join(root, kind), cfg):
            if f.endswith(PENDING_SUFFIX):
                storage.delete(f, cfg)
    storage.delete(uri, cfg)
    log.warning("%s: rolled back an interrupted compaction", root)
    return "rolled back"


def _swap(root: str, plan: dict[str, Any], cfg: StorageConfig | None) -> None:
    """Step 3: delete the old shards, rename the new ones into place, drop the plan. Idempotent:
    a rerun after an interruption skips what is done."""
    for kind, entry in plan["kinds"].items():
        keep = set(entry["new"])  # an old shard whose rows are exactly a new file's: overwritten by the rename
        for name in entry["old"]:
            uri = storage.join(root, kind, name)
            if name not in keep and storage.exists(uri, cfg):
                storage.delete(uri, cfg)
    for kind, entry in plan["kinds"].items():
        for name in entry["new"]:
            uri = storage.join(root, kind, name)
            if storage.exists(uri + PENDING_SUFFIX, cfg):
                fs, path = storage.resolve(uri, cfg)
                fs.move(path + PENDING_SUFFIX, path)
    storage.delete(_plan_uri(root), cfg)


def _write_merged(root: str, kind: str, olds: list[str], shard_mb: float, cfg: StorageConfig | None) -> list[str]:
    """Step 1 for one kind: the rows of ``olds`` (in order) as ``.compacting`` files of about
    ``shard_mb`` MB (in-memory Arrow size); returns their final names. Holds one output file."""
    news: list[str] = []
    buf: list[pa.Table] = []
    per_file = 0

    def flush() -> None:
        if not buf:
            return
        table = pa.concat_tables(buf).sort_by("clip_id")
        buf.clear()
        name = shard_name(table.column("clip_id").to_pylist())
        write_parquet(storage.join(root, kind, name + PENDING_SUFFIX), table, cfg)
        news.append(name)

    for uri in olds:
        table = _read(uri, cfg)
        if table.num_rows == 0:
            continue
        if not per_file:
            per_file = max(1, int(shard_mb * MB / max(1.0, table.nbytes / table.num_rows)))
        while table.num_rows:
            room = per_file - sum(t.num_rows for t in buf)
            buf.append(table.slice(0, room))
            table = table.slice(room)
            if sum(t.num_rows for t in buf) >= per_file:
                flush()
    flush()
    return news


def compact_store(root: str, cfg: StorageConfig | None = None, shard_mb: float = 128.0) -> CompactSummary:
    """Merge ``root``'s feature and error shards into files of about ``shard_mb`` MB (see the
    module docstring); rows are the same set before and after. Callers hold the output's lock
    (the CLI does)."""
    recovered = recover(root, cfg)
    dups = dedupe_store(root, cfg)
    before: dict[str, int] = {}
    rows: dict[str, int] = {}
    plan: dict[str, Any] = {"state": "writing", "kinds": {}}
    for kind in (FEATURES_DIR, ERRORS_DIR):
        shards = shard_ids(root, kind, cfg)
        before[kind], rows[kind] = len(shards), sum(len(a) for a in shards.values())
        if len(shards) > 1:
            plan["kinds"][kind] = {"old": [_name(u) for u in sorted(shards)], "new": []}
    after = dict(before)
    if plan["kinds"]:
        _save_plan(root, plan, cfg)
        for kind, entry in plan["kinds"].items():
            entry["new"] = _write_merged(root, kind, [storage.join(root, kind, n) for n in entry["old"]],
                                         shard_mb, cfg)
            after[kind] = len(entry["new"])
        plan["state"] = "swapping"
        _save_plan(root, plan, cfg)
        _swap(root, plan, cfg)
    return CompactSummary(root=root, files_before=before, files_after=after, rows=rows,
                          duplicates_removed=dups, recovered=recovered)



def run_compact(root: str, cfg: Config) -> CompactSummary:
    """``conclugen compact``: :func:`compact_store` under the output's lock (no extraction into
    the store meanwhile), to files of ``extract.shard_mb`` MB."""
    from conclugen.locks import output_lock

    if not storage.exists(storage.join(root, META_FILE), cfg.storage):
        raise FeatureStoreError(f"{root} holds no feature store ({META_FILE} missing)")
    with output_lock(root, "compact", cfg.storage):
        return compact_store(root, cfg.storage, cfg.extract.shard_mb)
