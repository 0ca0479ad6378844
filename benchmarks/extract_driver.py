"""Benchmark: what extraction costs the *driver* — CPU seconds and peak RSS per 1,000 clips.

    python benchmarks/extract_driver.py --workdir /tmp/bench-driver --sizes 200,1000
    python benchmarks/extract_driver.py --repo /tmp/old-tree        # the same against old code
    python benchmarks/extract_driver.py --quick                      # checks that the script works

The old code for a before/after comparison: ``git worktree add /tmp/old-tree HEAD~`` (the commit
before the driver left the data path), passed as ``--repo``: that tree is put first on the
subprocess's ``sys.path``, so the same script measures its ``run_extract``.

1. Synthesizes ``--clips`` unique clips once (MELD layout; reused when there).
2. Each manifest size of ``--sizes`` runs in a fresh subprocess with a fresh local Ray:
   ``run_extract`` into a fresh store, the manifest repeating the unique clips under new clip_ids
   (same bytes, same work per clip). The subprocess reports its own ``resource.getrusage``: CPU
   seconds (user + system, every driver thread) and peak RSS (``ru_maxrss``). Ray workers are other
   processes and are not counted: this is the driver alone.
3. The figures are slopes between the two sizes (what 1,000 more clips cost the driver, Ray's
   start-up and the models' load cancelling out), and, as a ratio against a baseline measured in
   the same run, the driver's CPU seconds per clip over the whole run's wall seconds per clip
   (the share of the pipeline's time the driver is busy).

Also printed (computed, not measured): feature files per 10,000 clips at ``extract.shard_mb``
with the offline defaults' vector sizes (image 128 + video3d 128 + audio 96 + text 384 float32).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OFFLINE_DIMS = {"image": 128, "video3d": 128, "audio": 96, "text": 384}


def child(args: argparse.Namespace) -> None:
    """One size in this (fresh) process: extract, then report getrusage as JSON on stdout."""
    if args.repo:
        sys.path.insert(0, str(Path(args.repo).resolve()))
    from conclugen.config import load_config
    from conclugen.data.corpora import load_manifest
    from conclugen.data.corpora.manifest import Manifest
    from conclugen.features.extract import run_extract
    from conclugen.runtime import start_local_ray

    cfg = load_config(None, list(args.set or []))
    base = load_manifest("meld", args.corpus, cfg)
    rows = [dict(r, clip_id=f"{r['clip_id']}-r{k // len(base.rows)}")
            for k, r in ((k, base.rows[k % len(base.rows)]) for k in range(args.n))]
    manifest = Manifest(rows=rows, problems=[], label_space=base.label_space, multilabel=base.multilabel,
                        corpus=base.corpus)
    start_local_ray(num_cpus=args.num_cpus or None)
    t0 = time.perf_counter()
    s = run_extract(args.corpus, "meld", args.out, cfg, progress=None, manifest=manifest)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    files = len([f for f in os.listdir(os.path.join(args.out, "features")) if f.endswith(".parquet")])
    print("RESULT " + json.dumps({"n": args.n, "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_mb": ru.ru_maxrss / 1024,
                                  "wall_s": wall, "features": s.features, "files": files}), flush=True)


def measure(n: int, args: argparse.Namespace, corpus: Path, repo: str | None) -> dict:
    out = tempfile.mkdtemp(prefix=f"store-{n}-", dir=args.workdir)
    cmd = [sys.executable, __file__, "--child", "--n", str(n), "--corpus", str(corpus), "--out", out,
           "--num-cpus", str(args.num_cpus)]
    cmd += ["--repo", repo] if repo else []
    for s in args.set or []:
        cmd += ["--set", s]
    env = dict(os.environ, PYTHONPATH=repo or str(REPO))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo or str(REPO))
    line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
    if res.returncode or line is None:
        raise SystemExit(f"size {n} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def files_per_10k(shard_mb: float, augmentations: int = 0) -> int:
    row_bytes = 4 * sum(OFFLINE_DIMS.values()) * (1 + augmentations)
    return math.ceil(10_000 / max(1, int(shard_mb * 1024**2 // row_bytes)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "conclugen-bench-driver"))
    ap.add_argument("--clips", type=int, default=40, help="unique synthetic clips")
    ap.add_argument("--sizes", default="200,1000", help="two manifest sizes (clips)")
    ap.add_argument("--num-cpus", type=int, default=0, help="logical CPUs for Ray (0: the CLI's default)")
    ap.add_argument("--repo", default=None, help="another source tree to measure (e.g. a worktree of HEAD~)")
    ap.add_argument("--set", action="append", help="config override section.key=value (repeatable)")
    ap.add_argument("--quick", action="store_true", help="4 unique clips, sizes 8,16")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.clips, args.sizes = 4, "8,16"
    sys.path.insert(0, str(REPO))
    from conclugen.config import load_config
    from conclugen.data.synthetic import synthesize

    os.makedirs(args.workdir, exist_ok=True)
    corpus = Path(args.workdir) / f"corpus-{args.clips}"
    if not (corpus / "conclugen-synthetic.json").exists():
        synthesize(str(corpus), clips=args.clips, seed=0)
    small, large = sorted(int(x) for x in args.sizes.split(","))
    a, b = measure(small, args, corpus, args.repo), measure(large, args, corpus, args.repo)
    per_k = 1000 / (large - small)
    cpu_slope, rss_slope = (b["cpu_s"] - a["cpu_s"]) * per_k, (b["maxrss_mb"] - a["maxrss_mb"]) * per_k
    wall_slope = (b["wall_s"] - a["wall_s"]) * per_k
    shard_mb = load_config(None, list(args.set or [])).extract.shard_mb
    print(f"code: {args.repo or REPO}")
    for r in (a, b):
        print(f"  {r['n']:6d} clips: driver {r['cpu_s']:7.1f} CPU s, peak RSS {r['maxrss_mb']:7.0f} MB, "
              f"run {r['wall_s']:7.1f} s, {r['files']} feature files")
    print(f"driver per 1,000 clips: {cpu_slope:.1f} CPU s, {rss_slope:+.0f} MB peak RSS")
    print(f"driver busy share (driver CPU s / run wall s, per added clip): "
          f"{cpu_slope / wall_slope if wall_slope > 0 else float('nan'):.3f}x of the run's time")
    print(f"feature files per 10,000 clips at shard_mb={shard_mb:g} (offline defaults): {files_per_10k(shard_mb)}"
          f" (with 10 augmented versions: {files_per_10k(shard_mb, 10)})")


if __name__ == "__main__":
    main()
