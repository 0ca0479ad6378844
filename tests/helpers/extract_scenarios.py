"""Extraction fault scenarios: shared pieces for tests/features/test_extract_faults.py and, run as
``python -m tests.helpers.extract_scenarios node-removed …``, the multi-node scenario (its own
``ray.cluster_utils.Cluster``, as the pytest session already holds one Ray cluster).

Everything is judged from what the run leaves in the store (:func:`accounting`), through the store
readers, so the checks hold whichever process writes the shards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conclugen import storage
from conclugen.config import Config, StorageConfig, load_config
from conclugen.features.store import ERRORS_DIR, FEATURES_DIR

# Tiny clips, but enough backbone work per clip that a fault lands mid-run: every clip's plain
# input plus 2 augmented versions through the backbones, one clip per batch, one actor, and
# shards of ~1 row (extract.shard_mb) so shards appear as clips finish.
SLOW_SETS = ["extract.augmentations=2", "extract.decode_batch_size=1", "extract.backbone_batch_size=1",
             "extract.backbone_actors=1", "extract.decode_tasks=1", "extract.task_clips=1",
             "extract.shard_mb=0.01", "corpus.max_clip_seconds=2"]


def scenario_config(*sets: str) -> Config:
    return load_config(None, [*SLOW_SETS, *sets])


def synth_corpus(out: str, clips: int, storage_cfg: StorageConfig | None = None, seed: int = 5) -> str:
    """A synthetic MELD-layout corpus of ``clips`` clips (path or s3://); returns ``out``."""
    from conclugen.data.synthetic import synthesize

    synthesize(out, clips=clips, seed=seed, storage_cfg=storage_cfg, workers=1, voice="numpy")
    return out


def manifest_ids(corpus_root: str, cfg: Config) -> set[str]:
    from conclugen.data.corpora import load_manifest

    m = load_manifest("meld", corpus_root, cfg)
    return {r["clip_id"] for r in m.rows} | {p["clip_id"] for p in m.problems}


def shard_files(out_uri: str, kind: str, cfg: StorageConfig | None = None) -> list[str]:
    return storage.list_files(storage.join(out_uri, kind), cfg, suffixes=(".parquet",))


def accounting(out_uri: str, expected: set[str], cfg: StorageConfig | None = None) -> dict[str, Any]:
    """Every shard of features/ and errors/ read one by one (an unreadable one is reported, not
    skipped): clip_id counts per kind, duplicates, clips in both / neither, stray files."""
    import pyarrow.parquet as pq

    ids: dict[str, Counter[str]] = {}
    unreadable, stray = [], []
    for kind in (FEATURES_DIR, ERRORS_DIR):
        ids[kind] = Counter()
        for f in storage.list_files(storage.join(out_uri, kind), cfg):
            if not f.endswith(".parquet"):
                stray.append(f)
                continue
            fs, path = storage.resolve(f, cfg)
            try:
                with fs.open_input_file(path) as fh:
                    ids[kind].update(pq.read_table(fh, columns=["clip_id"]).column("clip_id").to_pylist())
            except Exception as e:  # noqa: BLE001 - reported to the test
                unreadable.append(f"{f}: {type(e).__name__}: {e}")
    feats, errs = set(ids[FEATURES_DIR]), set(ids[ERRORS_DIR])
    return {
        "features": len(feats), "errors": len(errs), "expected": len(expected),
        "error_rows": sorted(errs),
        "duplicates": sorted(c for k in ids.values() for c, n in k.items() if n > 1),
        "both": sorted(feats & errs), "missing": sorted(expected - feats - errs),
        "unexpected": sorted((feats | errs) - expected), "unreadable": unreadable, "stray": stray,
    }


def exact(acc: dict[str, Any]) -> bool:
    """Every expected clip in exactly one of features/errors, once; nothing unreadable or stray."""
    return not any(acc[k] for k in ("duplicates", "both", "missing", "unexpected", "unreadable", "stray"))


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.2,
             alive: Callable[[], bool] = lambda: True) -> None:
    """Poll ``condition`` until true; fail naming ``what`` on timeout or once ``alive()`` is false
    (the run ended before the condition: the fault would not land mid-run)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if not alive():
            raise AssertionError(f"the run ended before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


class Background:
    """``fn()`` in a thread: its result or exception once joined."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def alive(self) -> bool:
        """Whether it still runs; re-raises its error once it has ended with one."""
        if not self.thread.is_alive() and self.error is not None:
            raise self.error
        return self.thread.is_alive()

    def join(self, timeout: float) -> Any:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"the run did not end within {timeout:.0f} s")
        if self.error is not None:
            raise self.error
        return self.result


# --------------------------------------------------------------------------- node removed


def _busy_worker(cluster: Any) -> Any:
    """The worker node hosting the most live actors (the backbone pool's), else the first worker
    node. Read from the GCS (``ray._private.state``): the state API needs a dashboard."""
    from ray._private import state

    per_node = Counter(a.get("Address", {}).get("NodeID") for a in state.actors().values()
                       if a.get("State") == "ALIVE")
    return max(cluster.worker_nodes, key=lambda n: per_node.get(n.node_id, 0))


def node_removed(corpus: str, out: str, timeout: float) -> dict[str, Any]:
    """A head with no CPUs and two 2-CPU worker nodes; once the first feature shard exists, the
    busiest worker node is removed; the run must still finish with every clip accounted once."""
    import ray
    from ray.cluster_utils import Cluster

    from conclugen.features.extract import run_extract

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 150 * 1024**2})
    for _ in range(2):
        cluster.add_node(num_cpus=2, object_store_memory=150 * 1024**2)
    cluster.wait_for_nodes()
    os.environ.pop("RAY_ADDRESS", None)  # this cluster, named explicitly
    ray.init(address=cluster.address, log_to_driver=False)
    cfg = scenario_config()
    t0 = time.monotonic()
    try:
        run = Background(lambda: run_extract(corpus, "meld", out, cfg, shard_rows=2, progress=None))
        wait_for(lambda: bool(shard_files(out, FEATURES_DIR)), timeout, "the first feature shard", alive=run.alive)
        victim = _busy_worker(cluster)
        removed_at = time.monotonic() - t0
        shards_then = len(shard_files(out, FEATURES_DIR))
        cluster.remove_node(victim)
        summary = run.join(timeout)
        acc = accounting(out, manifest_ids(corpus, cfg))
        return {"ok": exact(acc) and summary.accounted, "accounted": summary.accounted, "removed_at_s": removed_at,
                "shards_when_removed": shards_then, "seconds": time.monotonic() - t0, **acc}
    finally:
        ray.shutdown()
        cluster.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="extract_scenarios")
    sub = p.add_subparsers(dest="scenario", required=True)
    nr = sub.add_parser("node-removed")
    nr.add_argument("--corpus", required=True)
    nr.add_argument("--out", required=True)
    nr.add_argument("--timeout", type=float, default=240)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = node_removed(args.corpus, args.out, args.timeout)
    print("RESULT " + json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
