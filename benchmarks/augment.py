"""Benchmark: the cost of augmented versions in extraction, per version, against plain extraction.

    python benchmarks/augment.py --workdir /tmp/bench-aug --clips 24 --k 2
    python benchmarks/augment.py --quick          # 4 clips, one round: checks that it runs

1. Synthesizes ``--clips`` clips (MELD layout; reused when already there).
2. Starts one local Ray and runs a small warm-up extraction (imports, model files in the page cache).
3. ``--rounds`` times, alternating the order: ``run_extract`` with ``extract.augmentations`` = 0
   and = k into fresh stores; wall time of the pipeline (``ExtractSummary.seconds``) each time,
   the best of the rounds kept.
4. Prints both figures measured in this run and their ratios:

   - total ratio ``time(k) / time(0)`` (what asking for k versions costs over plain extraction);
   - per-version cost ``(time(k) / time(0)) / (k + 1)``: each of the k + 1 versions' share relative
     to one plain extraction. 1.0 = a version costs a whole extraction; below 1 = the decode (done
     once) and the fixed start-up are shared.

The backbones are the config's (offline defaults unless ``--config/--set`` say otherwise).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def timed_extract(corpus: Path, out: Path, cfg, manifest) -> float:  # noqa: ANN001
    from conclugen.features.extract import run_extract

    shutil.rmtree(out, ignore_errors=True)
    s = run_extract(str(corpus), "meld", str(out), cfg, progress=None, manifest=manifest)
    if not s.accounted or s.errors:
        raise SystemExit(f"extraction into {out} lost clips or had errors: {s.describe()}")
    return s.seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/conclugen-bench-augment")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--k", type=int, default=2, help="augmented versions per clip in the measured run")
    ap.add_argument("--rounds", type=int, default=2, help="alternating N=0 / N=k pairs (best kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-cpus", type=int, default=0, help="Ray logical CPUs (0: os.cpu_count())")
    ap.add_argument("--quick", action="store_true", help="4 clips, one round")
    ap.add_argument("--config", default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.quick:
        args.clips, args.rounds = 4, 1

    import ray

    from conclugen.config import load_config
    from conclugen.data.corpora import load_manifest
    from conclugen.data.synthetic import synthesize
    from conclugen.runtime import start_local_ray

    sets = [s for s in args.sets if not s.startswith("extract.augmentations=")]
    base = load_config(args.config, sets)
    plain = load_config(args.config, [*sets, "extract.augmentations=0"])
    aug = load_config(args.config, [*sets, f"extract.augmentations={args.k}"])
    work = Path(args.workdir)
    corpus = work / f"synth-{args.clips}-s{args.seed}"
    if not (corpus / "train_sent_emo.csv").exists():
        shutil.rmtree(corpus, ignore_errors=True)
        print(synthesize(str(corpus), clips=args.clips, seed=args.seed).describe(), flush=True)
    manifest = load_manifest("meld", str(corpus), base)
    print(f"corpus: {len(manifest.rows)} clips at {corpus}; k = {args.k}", flush=True)

    start_local_ray(args.num_cpus or os.cpu_count(), log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    timed_extract(corpus, work / "features-warmup", plain, dataclasses.replace(manifest, rows=manifest.rows[:2]))

    times: dict[int, list[float]] = {0: [], args.k: []}
    for r in range(args.rounds):
        order = [(0, plain), (args.k, aug)] if r % 2 == 0 else [(args.k, aug), (0, plain)]
        for n, cfg in order:
            t = timed_extract(corpus, work / f"features-n{n}", cfg, manifest)
            times[n].append(t)
            print(f"  round {r + 1}: N={n:2d} → {t:.1f} s", flush=True)
    ray.shutdown()

    t0, tk = min(times[0]), min(times[args.k])
    total = tk / t0
    per_version = total / (args.k + 1)
    print("\n=== augmentation cost in extraction ===")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{len(manifest.rows)} synthetic clips; best of {args.rounds} round(s)")
    print(f"N=0        : {t0:.1f} s  ({len(manifest.rows) / t0:.2f} clips/s)")
    print(f"N={args.k:<2d}       : {tk:.1f} s  ({len(manifest.rows) / tk:.2f} clips/s, "
          f"{len(manifest.rows) * (args.k + 1) / tk:.2f} versions/s)")
    print(f"total ratio: time(N={args.k}) / time(N=0) = {total:.2f}×")
    print(f"per version: (time(N={args.k}) / time(N=0)) / {args.k + 1} = {per_version:.2f} "
          f"of a plain extraction per version")
    if args.json:
        Path(args.json).write_text(json.dumps({"k": args.k, "clips": len(manifest.rows), "times": times,
                                               "t0": t0, "tk": tk, "total_ratio": total,
                                               "per_version": per_version}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
