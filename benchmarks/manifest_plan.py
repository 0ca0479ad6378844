"""Benchmark: planning and streaming the extraction's manifest dataset (rows only, no videos).

    python benchmarks/manifest_plan.py                 # 100k and 1M rows
    python benchmarks/manifest_plan.py --quick         # 2k and 10k rows: checks that the script works

1. **Plan**: a manifest of ``--big`` rows (``MANIFEST_SCHEMA``, synthetic clip_ids) → the driver's
   steps of ``run_extract`` before any clip is decoded: :func:`todo_table` (Arrow resume filter
   against 10% of the ids "already written"), :func:`write_manifest` (one row group per read
   task, ``task_clips`` as ``extract.task_clips`` = 0 picks it), :func:`manifest_dataset`: seconds.
2. **Rate**: a trivial ``map_batches(batch_size=decode_batch_size)`` (the decode stage's batching,
   the work replaced by a row count) over the manifest dataset, drained with ``iter_batches``, at
   ``--mid`` and ``--big`` rows: rows/s, planning included.
3. **Baseline** in the same run: the old plan, ``ray.data.from_items`` of one JSON string per row
   with one block per ``decode_batch_size`` rows, at ``--old`` rows (it did not finish planning
   100k rows in 5 minutes on 2 cores): rows/s. The figures are printed as ratios to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class _Rows:
    """What todo_table needs of a Manifest, built in Arrow (a Python list of 1M dicts would
    measure this script, not the plan)."""

    def __init__(self, n: int) -> None:
        import pyarrow as pa

        from conclugen.data.corpora.manifest import MANIFEST_SCHEMA

        ids = pa.array([f"clip{i:07d}" for i in range(n)])
        cols = {"clip_id": ids, "video_uri": pa.array([f"/corpus/clip{i:07d}.mp4" for i in range(n)]),
                "split": pa.array(["train"] * n), "corpus": pa.array(["bench"] * n),
                "labels": pa.array([["joy"]] * n, pa.list_(pa.string())), "transcript": pa.array(["hello there"] * n)}
        self._table = pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in MANIFEST_SCHEMA},
                               schema=MANIFEST_SCHEMA)
        self.rows, self.problems = range(n), []

    def table(self):  # noqa: ANN201 - mirrors Manifest.table
        return self._table


def _count(batch):  # noqa: ANN001, ANN202 - the trivial stage: rows through, no work
    return {"n": [batch.num_rows]}


def new_plan(n: int, workdir: str, decode_batch: int) -> tuple[float, float]:
    """(planning seconds, rows/s of plan + trivial map_batches) of the new manifest dataset."""
    import pyarrow as pa
    import ray

    from conclugen.config import load_config
    from conclugen.features.manifest_store import manifest_dataset, task_clips, todo_table, write_manifest

    man = _Rows(n)
    done = pa.array([f"clip{i:07d}" for i in range(0, n, 10)])
    cfg = load_config(None, [f"extract.decode_batch_size={decode_batch}"]).extract
    t0 = time.perf_counter()
    todo, _, _ = todo_table(man, done)
    per = task_clips(todo.num_rows, cfg, float(ray.cluster_resources().get("CPU", 1)))
    uri = write_manifest(workdir, todo, f"bench-{n}", per)
    ds = manifest_dataset(uri, None).map_batches(_count, batch_size=decode_batch, batch_format="pyarrow")
    plan_s = time.perf_counter() - t0
    _drain(ds, todo.num_rows)
    return plan_s, todo.num_rows / (time.perf_counter() - t0)


def old_plan(n: int, decode_batch: int) -> float:
    """rows/s of the old plan (from_items, one block per decode batch) + the trivial map_batches."""
    import math

    import ray

    items = [{"row": json.dumps({"clip_id": f"clip{i:07d}", "video_uri": f"/c/{i}.mp4"})} for i in range(n)]
    t0 = time.perf_counter()
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(n / decode_batch)))
    _drain(ds.map_batches(_count, batch_size=decode_batch, batch_format="pyarrow"), n)
    return n / (time.perf_counter() - t0)


def _drain(ds, n: int) -> None:  # noqa: ANN001
    got = sum(sum(b["n"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
    assert got == n, (got, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--mid", type=int, default=100_000)
    ap.add_argument("--old", type=int, default=4_000)
    ap.add_argument("--decode-batch", type=int, default=4)
    ap.add_argument("--num-cpus", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.big, args.mid, args.old = 10_000, 2_000, 400
    import ray

    from conclugen.features.progress import quiet_ray_data
    from conclugen.runtime import start_local_ray

    start_local_ray(num_cpus=args.num_cpus or None)
    quiet_ray_data(ray.data.DataContext.get_current())
    workdir = tempfile.mkdtemp(prefix="manifest-plan-")
    base = old_plan(args.old, args.decode_batch)
    print(f"baseline: old from_items plan, {args.old} rows: {base:.0f} rows/s (plan + trivial map_batches)")
    for n in (args.mid, args.big):
        plan_s, rate = new_plan(n, os.path.join(workdir, str(n)), args.decode_batch)
        print(f"{n:>9d} rows (90% to do): plan {plan_s:.2f} s; plan + trivial map_batches(batch_size="
              f"{args.decode_batch}) {rate:.0f} rows/s = {rate / base:.1f}x the old plan's rate at {args.old} rows")
    ray.shutdown()


if __name__ == "__main__":
    main()
