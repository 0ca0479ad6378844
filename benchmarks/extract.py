"""Benchmark: the Ray Data extraction pipeline against a plain sequential loop, and its memory.

    python benchmarks/extract.py --workdir /tmp/bench --clips 100 --sizes 100,1000

1. Synthesizes ``--clips`` unique clips (MELD layout; reused when already there).
2. **Loop**: for each clip, read the bytes + ``decode_clip`` (timed as t_decode), then the four
   backbones' forward passes (t_forward), in this process with torch's default threads.
3. **Pipeline**: ``run_extract`` on the same clips into a fresh store; clips/s end to end (actor
   and worker start-up included) and in steady state (after the first rows come out).
4. Prints pipeline/loop speed-up next to the perfect-overlap bound
   ``(t_decode + t_forward) / max(t_decode, t_forward)`` (goal: ≥ 90% of it, never < 1).
5. Peak memory (summed RSS of this process and every Ray process under it, sampled every
   0.1 s) while the pipeline runs over manifests of each size in ``--sizes``; sizes beyond
   the unique clips repeat them under new clip_ids (same bytes, same work per clip).

The backbones are the config's (offline defaults unless ``--config/--set`` say otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def tree_rss() -> int:
    import psutil

    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class PeakSampler:
    def __init__(self, every: float = 0.1) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss())
            self._stop.wait(self.every)

    def __enter__(self) -> PeakSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def sequential_loop(rows: list[dict], cfg) -> dict[str, float]:  # noqa: ANN001
    """Decode + forward one clip at a time, as a plain script would."""
    from conclugen import storage
    from conclugen.data.media import decode_clip
    from conclugen.features.backbones import load_backbone

    b = {k: load_backbone(k, getattr(cfg.extract.backbones, k), "cpu", cfg.extract)
         for k in ("image", "video3d", "audio", "text")}
    t_dec = t_fwd = 0.0
    for r in rows:
        t0 = time.perf_counter()
        data = storage.read_bytes(r["video_uri"], cfg.storage)
        clip = decode_clip(data, cfg.extract, r.get("start_s"), r.get("end_s"), cfg.corpus.max_clip_seconds)
        t1 = time.perf_counter()
        b["image"].embed([clip.face_frames])
        b["video3d"].embed([clip.windows])
        b["audio"].embed([clip.audio if clip.has_audio else None])
        b["text"].embed([r.get("transcript")])
        t2 = time.perf_counter()
        t_dec += t1 - t0
        t_fwd += t2 - t1
    return {"t_decode": t_dec, "t_forward": t_fwd, "t_loop": t_dec + t_fwd, "clips": len(rows)}


def repeated(manifest, n: int):  # noqa: ANN001, ANN201
    from conclugen.data.corpora.manifest import Manifest

    rows = []
    for k in range(n):
        r = dict(manifest.rows[k % len(manifest.rows)])
        if k >= len(manifest.rows):
            r["clip_id"] = f"{r['clip_id']}#r{k // len(manifest.rows)}"
        rows.append(r)
    return Manifest(rows=rows, problems=[], label_space=manifest.label_space, multilabel=manifest.multilabel,
                    corpus=manifest.corpus)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/conclugen-bench-extract")
    ap.add_argument("--clips", type=int, default=100, help="unique synthetic clips (loop and speed-up)")
    ap.add_argument("--sizes", default="100,1000", help="manifest sizes for the memory comparison")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-cpus", type=int, default=0, help="Ray logical CPUs (0: os.cpu_count())")
    ap.add_argument("--config", default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--loop-threads", type=int, default=0, help="torch threads in the loop (0: torch's default)")
    args = ap.parse_args(argv)

    import ray

    from conclugen.config import load_config
    from conclugen.data.corpora import load_manifest
    from conclugen.data.synthetic import synthesize
    from conclugen.features.extract import run_extract
    from conclugen.runtime import start_local_ray

    cfg = load_config(args.config, args.sets)
    work = Path(args.workdir)
    corpus = work / f"synth-{args.clips}-s{args.seed}"
    if not (corpus / "train_sent_emo.csv").exists():
        shutil.rmtree(corpus, ignore_errors=True)
        print(synthesize(str(corpus), clips=args.clips, seed=args.seed).describe(), flush=True)
    manifest = load_manifest("meld", str(corpus), cfg)
    print(f"corpus: {len(manifest.rows)} clips at {corpus}", flush=True)

    import torch

    if args.loop_threads:
        torch.set_num_threads(args.loop_threads)
    print(f"loop: sequential decode + forward, torch threads = {torch.get_num_threads()}", flush=True)
    loop = sequential_loop(manifest.rows, cfg)
    bound = loop["t_loop"] / max(loop["t_decode"], loop["t_forward"])
    loop_rate = loop["clips"] / loop["t_loop"]
    print(f"loop: {loop['t_loop']:.1f} s = decode {loop['t_decode']:.1f} s + forward {loop['t_forward']:.1f} s "
          f"→ {loop_rate:.2f} clips/s; perfect-overlap bound {bound:.2f}×", flush=True)

    start_local_ray(args.num_cpus or os.cpu_count(), log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False  # keep the figures readable
    figures: dict[str, object] = {"loop": loop, "bound": bound, "loop_clips_per_s": loop_rate,
                                  "cpus": os.cpu_count(), "config": cfg.extract.model_dump()}
    # speed-up on the same clips
    out = work / "features-speed"
    shutil.rmtree(out, ignore_errors=True)
    with PeakSampler() as ps:
        s = run_extract(str(corpus), "meld", str(out), cfg, progress=None, manifest=manifest)
    steady = (s.processed - s.first_output_rows) / max(1e-9, s.seconds - s.first_output_s)
    figures["pipeline"] = {"clips": s.processed, "seconds": s.seconds, "clips_per_s": s.clips_per_s,
                           "first_output_s": s.first_output_s, "steady_clips_per_s": steady,
                           "peak_rss": ps.peak, "errors": s.errors}
    ratio, ratio_steady = s.clips_per_s / loop_rate, steady / loop_rate
    figures |= {"ratio": ratio, "ratio_steady": ratio_steady}

    # memory vs corpus size
    mem = {}
    for n in [int(x) for x in args.sizes.split(",") if x]:
        out = work / f"features-mem-{n}"
        shutil.rmtree(out, ignore_errors=True)
        with PeakSampler() as ps:
            sm = run_extract(str(corpus), "meld", str(out), cfg, progress=None, manifest=repeated(manifest, n))
        mem[n] = {"peak_rss": ps.peak, "seconds": sm.seconds, "clips_per_s": sm.clips_per_s,
                  "accounted": sm.accounted}
        print(f"  memory run {n:5d} clips: peak RSS {ps.peak / 2**30:.2f} GiB, {sm.clips_per_s:.2f} clips/s", flush=True)
    figures["memory"] = mem
    ray.shutdown()

    print("\n=== extraction benchmark ===")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; clips: {loop['clips']} unique synthetic (MELD layout)")
    print(f"loop      : {loop['t_loop']:.1f} s = decode {loop['t_decode']:.1f} s + forward {loop['t_forward']:.1f} s"
          f"  → {loop_rate:.2f} clips/s")
    print(f"pipeline  : {s.seconds:.1f} s → {s.clips_per_s:.2f} clips/s end to end "
          f"(first rows after {s.first_output_s:.1f} s; steady {steady:.2f} clips/s)")
    print(f"speed-up  : {ratio:.2f}× end to end, {ratio_steady:.2f}× steady; perfect-overlap bound {bound:.2f}× "
          f"→ {ratio / bound:.0%} / {ratio_steady / bound:.0%} of the bound")
    sizes = sorted(mem)
    for n in sizes:
        print(f"memory    : {n:5d} clips → peak RSS {mem[n]['peak_rss'] / 2**30:.2f} GiB")
    if len(sizes) >= 2:
        growth = mem[sizes[-1]]["peak_rss"] / mem[sizes[0]]["peak_rss"]
        figures["memory_growth"] = growth
        print(f"growth    : {growth:.2f}× from {sizes[0]} to {sizes[-1]} clips (goal ≤ 1.2×)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
