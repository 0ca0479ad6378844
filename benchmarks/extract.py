"""Benchmark: the Ray Data extraction pipeline against a sequential loop and a process pool, and
its memory.

    python benchmarks/extract.py --workdir /tmp/bench --clips 200 --sizes 100,1000
    python benchmarks/extract.py --quick          # a few clips: checks that the script works

1. Synthesizes ``--clips`` unique clips (MELD layout; reused when already there).
2. **Loop** (a fresh process, torch's default threads): per clip, read the bytes + ``decode_clip``
   (t_decode), then every backbone's forward pass (t_forward). The figures are ratios to its rate.
3. **Pool** — what a user would script by hand: ``concurrent.futures`` with one process per core,
   each loading the backbones once (torch and OpenCV at 1 thread) and doing read + decode +
   forward per clip. Each process records its per-clip decode / forward wall times: measured
   while every core is busy, they are the stage costs ``d`` and ``f`` of a saturated machine.
4. **Pipeline**: ``run_extract`` on the same clips into a fresh store, in this process, Ray started
   as ``conclugen extract`` starts it (``--num-cpus`` logical CPUs; 0 = the CLI's default).
5. Peak memory: summed RSS of the process tree of one extraction (driver + every Ray process),
   sampled every 0.2 s, each manifest size of ``--sizes`` in a fresh process with a fresh Ray;
   sizes beyond the unique clips repeat them under new clip_ids (same bytes, same work per clip).

**Steady state** (pipeline and pool alike, :func:`steady_rate`): from the completions (seconds,
clips finished so far) — ``ExtractSummary.completions`` per finished batch, the pool's per clip —
the rate between the first completion at ≥ 25% of the clips and the first at ≥ 90%. Both ends
lie inside the running pipeline, so the clips in flight at the start of the window (decoded
before it) are matched by as many in flight at its end: start-up (worker / actor / model loading,
first batches filling the stages) and the drain at the end are both outside. The earlier measure
(rows after the first output ÷ time after it) counted every clip already in flight at the first
output as produced after it, which gave 194% of a physical bound. **Start-up cost** =
end-to-end seconds − clips / steady rate: the time the run lost to starting, over a run that
would have been steady from t = 0 (Ray's own start is printed separately).

**Bound** (speed-up over the loop that no overlap can beat, for the resources the pipeline has):
with ``d``, ``f`` the per-clip decode and forward seconds of one core (from the pool), ``P``
cores, ``A`` backbone actors per stage pool holding ``k`` torch threads (``backbone_threads`` or
1, Ray's OMP default), the pipeline's rate is at most

    min(A·k / f_stage, P / (d + f))        (f_stage: the slowest actor pool's per-clip forward)

— an actor cannot forward faster than its ``k`` threads on ``k`` cores, and the whole machine
cannot do more than ``P`` core-seconds of work per second. Decode tasks have no term of their
own: OpenCV runs its own threads inside a task, so only the machine term binds them. The bound is
that rate × the loop's seconds per clip. The pool reaches ``P / (d + f)`` by construction, so
"pipeline ≥ 1.0× pool" means the pipeline reaching the machine term; that needs
``A·k ≥ P·f / (d + f)`` forward threads (printed). The per-clip costs are at batch 1 (as the
loop and the pool run); the actors' batches can make forward a little cheaper, so a steady figure
slightly above 100% can come from batching alone; far above it means the measure is wrong.

The backbones are the config's (offline defaults unless ``--config/--set`` say otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

STEADY_FROM, STEADY_TO = 0.25, 0.90


# ------------------------------------------------------------------------------ measures


def steady_rate(completions: list[tuple[float, int]], total: int) -> tuple[float, float, float] | None:
    """(clips/s, window start, window end) between the first completion at ≥ 25% of ``total``
    and the first at ≥ 90% (module docstring); None when the window holds no interval."""
    start = next(((t, n) for t, n in completions if n >= STEADY_FROM * total), None)
    end = next(((t, n) for t, n in completions if n >= STEADY_TO * total), None)
    if start is None or end is None or end[0] <= start[0]:
        return None
    return (end[1] - start[1]) / (end[0] - start[0]), start[0], end[0]


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class PeakSampler:
    """The peak of :func:`tree_rss` of ``pid`` while the block runs."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every, self.peak, self._stop = pid, every, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.every)

    def __enter__(self) -> PeakSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


# ------------------------------------------------------------------------------ loop and pool


def load_models(cfg: Any) -> dict[str, Any]:
    from conclugen.features.backbone_stage import active_kinds
    from conclugen.features.backbones import load_backbone

    return {k: load_backbone(k, getattr(cfg.extract.backbones, k), "cpu", cfg.extract) for k in active_kinds(cfg.extract)}


def clip_work(row: dict[str, Any], cfg: Any, models: dict[str, Any]) -> dict[str, Any]:
    """Read + decode + every backbone's forward for one clip, as a hand-written script does it
    (ASR only for a clip without transcript, as the pipeline); the seconds of each part."""
    from conclugen import storage
    from conclugen.data.media import decode_clip

    t0 = time.perf_counter()
    data = storage.read_bytes(row["video_uri"], cfg.storage)
    clip = decode_clip(data, cfg.extract, row.get("start_s"), row.get("end_s"), cfg.corpus.max_clip_seconds)
    fwd: dict[str, float] = {}
    text = row.get("transcript")
    audio = clip.audio if clip.has_audio and len(clip.audio) else None
    t = time.perf_counter()
    t_decode = t - t0
    inputs = {"image": lambda: clip.face_frames, "video3d": lambda: clip.windows, "audio": lambda: audio,
              "text": lambda: text}
    for kind, model in models.items():
        if kind == "asr":
            if text is None and audio is not None:
                text = model.transcribe([audio])[0]
        else:
            model.embed([inputs[kind]()])
        now = time.perf_counter()
        fwd[kind], t = now - t, now
    return {"t_decode": t_decode, "t_forward": sum(fwd.values()), "by_kind": fwd}


def _sum_work(parts: list[dict[str, Any]]) -> dict[str, Any]:
    by_kind: dict[str, float] = {}
    for p in parts:
        for k, v in p["by_kind"].items():
            by_kind[k] = by_kind.get(k, 0.0) + v
    return {"clips": len(parts), "t_decode": sum(p["t_decode"] for p in parts),
            "t_forward": sum(p["t_forward"] for p in parts), "by_kind": by_kind}


def loop_run(cfg_json: str, rows: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    """The sequential loop (run in a fresh process so this one holds no models)."""
    import torch

    from conclugen.config import Config

    if threads:
        torch.set_num_threads(threads)
    cfg = Config.model_validate_json(cfg_json)
    models = load_models(cfg)
    t0 = time.perf_counter()
    out = _sum_work([clip_work(r, cfg, models) for r in rows])
    return out | {"seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}


_POOL: dict[str, Any] = {}


def _pool_init(cfg_json: str) -> None:
    import cv2
    import torch

    from conclugen.config import Config

    torch.set_num_threads(1)  # one process per core: any more threads would only contend
    cv2.setNumThreads(1)
    _POOL["cfg"] = cfg = Config.model_validate_json(cfg_json)
    _POOL["models"] = load_models(cfg)


def _pool_clip(row: dict[str, Any]) -> dict[str, Any]:
    out = clip_work(row, _POOL["cfg"], _POOL["models"])
    return out | {"done_at": time.monotonic()}  # CLOCK_MONOTONIC: one clock for every process


def pool_run(cfg_json: str, rows: list[dict[str, Any]], procs: int) -> dict[str, Any]:
    """The process pool: end to end from creating it (start-up included) to the last clip."""
    t0 = time.monotonic()
    with ProcessPoolExecutor(max_workers=procs, mp_context=get_context("spawn"), initializer=_pool_init,
                             initargs=(cfg_json,)) as ex:
        parts = list(ex.map(_pool_clip, rows))
    seconds = time.monotonic() - t0
    done = sorted(p["done_at"] - t0 for p in parts)
    return _sum_work(parts) | {"seconds": seconds, "procs": procs,
                               "completions": [(t, i + 1) for i, t in enumerate(done)]}


def in_fresh_process(fn: Any, *args: Any) -> Any:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()


# ------------------------------------------------------------------------------ pipeline


def repeated(manifest: Any, n: int) -> Any:
    from conclugen.data.corpora.manifest import Manifest

    rows = []
    for k in range(n):
        r = dict(manifest.rows[k % len(manifest.rows)])
        if k >= len(manifest.rows):
            r["clip_id"] = f"{r['clip_id']}#r{k // len(manifest.rows)}"
        rows.append(r)
    return Manifest(rows=rows, problems=[], label_space=manifest.label_space, multilabel=manifest.multilabel,
                    corpus=manifest.corpus)


def start_ray(num_cpus: int) -> float:
    import ray

    from conclugen.features.progress import quiet_ray_data
    from conclugen.runtime import start_local_ray

    t0 = time.perf_counter()
    # address="local": a new cluster even when other Ray clusters run on this machine
    start_local_ray(num_cpus or None, log_to_driver=False, address="local")
    quiet_ray_data(ray.data.DataContext.get_current())  # keep the figures readable
    return time.perf_counter() - t0


def pipeline_run(corpus: Path, out: Path, cfg: Any, manifest: Any) -> dict[str, Any]:
    from conclugen.features.extract import run_extract

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = run_extract(str(corpus), "meld", str(out), cfg, progress=None, manifest=manifest)
    return {"clips": s.processed, "seconds": time.perf_counter() - t0, "pipeline_seconds": s.seconds,
            "first_output_s": s.first_output_s, "completions": [list(c) for c in s.completions],
            "errors": s.errors, "accounted": s.accounted}


def memory_child(args: argparse.Namespace) -> int:
    """``--memory-run N``: one extraction of N clips in this fresh process (the parent samples
    this process tree's RSS); figures as JSON to ``--json``."""
    import ray

    cfg, corpus, manifest = prepare(args)
    start_ray(args.num_cpus)
    n = args.memory_run
    r = pipeline_run(corpus, Path(args.workdir) / f"features-mem-{n}", cfg, repeated(manifest, n))
    ray.shutdown()
    Path(args.json).write_text(json.dumps(r))
    return 0


def memory_run(args: argparse.Namespace, n: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--workdir", args.workdir, "--clips", str(args.clips), "--seed",
           str(args.seed), "--num-cpus", str(args.num_cpus), "--memory-run", str(n), "--json", out,
           *(["--config", args.config] if args.config else []), *[x for s in args.sets for x in ("--set", s)]]
    proc = subprocess.Popen(cmd)
    with PeakSampler(proc.pid) as ps:
        rc = proc.wait()
    if rc != 0:
        raise SystemExit(f"memory run with {n} clips failed (exit {rc})")
    r = json.loads(Path(out).read_text())
    os.unlink(out)
    return r | {"peak_rss": ps.peak}


# ------------------------------------------------------------------------------ the bound


def bound(cfg: Any, pool: dict[str, Any], loop_rate: float, cpus: int) -> dict[str, float]:
    """The perfect-overlap bound (module docstring) from the pool's per-clip costs."""
    from conclugen.features.backbone_stage import stage_groups

    n = pool["clips"]
    d, f = pool["t_decode"] / n, pool["t_forward"] / n
    threads = cfg.extract.backbone_threads or 1
    actors = cfg.extract.backbone_actors
    f_stage = max(sum(pool["by_kind"].get(k, 0.0) for k in g) / n for g in stage_groups(cfg.extract))
    forward_rate = actors * threads / f_stage
    machine_rate = cpus / (d + f)
    rate = min(forward_rate, machine_rate)
    return {"d": d, "f": f, "forward_rate": forward_rate, "machine_rate": machine_rate, "rate": rate,
            "speedup": rate / loop_rate, "forward_threads_needed": math.ceil(cpus * f_stage / (d + f) - 1e-9)}


# ------------------------------------------------------------------------------ main


def prepare(args: argparse.Namespace) -> tuple[Any, Path, Any]:
    from conclugen.config import load_config
    from conclugen.data.corpora import load_manifest
    from conclugen.data.synthetic import synthesize

    cfg = load_config(args.config, args.sets)
    corpus = Path(args.workdir) / f"synth-{args.clips}-s{args.seed}"
    if not (corpus / "train_sent_emo.csv").exists():
        shutil.rmtree(corpus, ignore_errors=True)
        print(synthesize(str(corpus), clips=args.clips, seed=args.seed).describe(), flush=True)
    return cfg, corpus, load_manifest("meld", str(corpus), cfg)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/conclugen-bench-extract")
    ap.add_argument("--clips", type=int, default=200, help="unique synthetic clips (loop, pool, speed-up)")
    ap.add_argument("--sizes", default="100,1000", help="manifest sizes for the memory comparison")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-cpus", type=int, default=0, help="Ray logical CPUs (0: as `conclugen extract`)")
    ap.add_argument("--pool-procs", type=int, default=0, help="pool processes (0: one per core)")
    ap.add_argument("--config", default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--loop-threads", type=int, default=0, help="torch threads in the loop (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="6 clips, sizes 6,12: checks the script works")
    ap.add_argument("--memory-run", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.clips, args.sizes = 6, "6,12"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.memory_run:
        return memory_child(args)
    cfg, corpus, manifest = prepare(args)
    rows, cpus = manifest.rows, len(os.sched_getaffinity(0))
    print(f"corpus: {len(rows)} clips at {corpus}; {cpus} cores", flush=True)
    if cfg.extract.augmentations:
        print("note: extract.augmentations > 0: the pipeline does more work per clip than loop and pool")

    loop = in_fresh_process(loop_run, cfg.model_dump_json(), rows, args.loop_threads)
    loop_rate = loop["clips"] / loop["seconds"]
    print(f"loop: {loop['seconds']:.1f} s (decode {loop['t_decode']:.1f} + forward {loop['t_forward']:.1f}, "
          f"{loop['threads']} threads) → {loop_rate:.2f} clips/s", flush=True)
    pool = pool_run(cfg.model_dump_json(), rows, args.pool_procs or cpus)
    pool["steady"] = steady_rate(pool["completions"], pool["clips"])
    print(f"pool: {pool['procs']} processes, {pool['seconds']:.1f} s end to end", flush=True)
    b = bound(cfg, pool, loop_rate, cpus)

    import ray

    ray_start_s = start_ray(args.num_cpus)
    logical = int(ray.cluster_resources().get("CPU", 0))
    pipe = pipeline_run(corpus, Path(args.workdir) / "features-speed", cfg, manifest)
    pipe["steady"] = steady_rate([tuple(c) for c in pipe["completions"]], pipe["clips"])
    ray.shutdown()
    mem = {n: memory_run(args, n) for n in [int(x) for x in args.sizes.split(",") if x]}
    figures = {"cores": cpus, "ray_cpus": logical, "ray_start_s": ray_start_s, "loop": loop, "pool": pool,
               "pipeline": pipe, "bound": b, "memory": mem, "config": cfg.extract.model_dump()}
    report(figures, loop_rate)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    return 0


def _rates(r: dict[str, Any]) -> tuple[float, float | None, float | None]:
    """(end-to-end clips/s, steady clips/s, start-up cost in s)."""
    e2e = r["clips"] / r["seconds"]
    if r["steady"] is None:
        return e2e, None, None
    steady = r["steady"][0]
    return e2e, steady, r["seconds"] - r["clips"] / steady


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def report(fig: dict[str, Any], loop_rate: float) -> None:
    loop, pool, pipe, b, mem = fig["loop"], fig["pool"], fig["pipeline"], fig["bound"], fig["memory"]
    p_e2e, p_steady, p_start = _rates(pipe)
    q_e2e, q_steady, q_start = _rates(pool)
    ec = fig["config"]
    print("\n=== extraction benchmark ===")
    print(f"machine   : {fig['cores']} cores, Ray {fig['ray_cpus']} logical CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; {loop['clips']} unique synthetic clips (MELD layout)")
    print(f"config    : backbone_actors {ec['backbone_actors']}, backbone_threads {ec['backbone_threads']}, "
          f"decode_tasks {ec['decode_tasks']}, batches decode {ec['decode_batch_size']} / backbone "
          f"{ec['backbone_batch_size']}, stages {ec['backbone_stages']}")
    print(f"loop      : {loop_rate:.2f} clips/s ({loop['threads']} torch threads)")
    print(f"per clip  : decode {b['d']:.3f} s + forward {b['f']:.3f} s on one core (pool, all cores busy)")
    print(f"bound     : {b['speedup']:.2f}× the loop = min(forward {b['forward_rate']:.2f}, machine "
          f"{b['machine_rate']:.2f}) clips/s; the machine term needs ≥ {b['forward_threads_needed']} "
          f"forward threads (backbone_actors × backbone_threads)")
    print(f"pool      : {q_e2e:.2f} clips/s end to end, steady {_fmt(q_steady)}; start-up cost {_fmt(q_start, '.1f')} s")
    print(f"pipeline  : {p_e2e:.2f} clips/s end to end, steady {_fmt(p_steady)}; start-up cost {_fmt(p_start, '.1f')} s "
          f"(first rows after {pipe['first_output_s']:.1f} s; Ray start {fig['ray_start_s']:.1f} s not included)")
    print(f"speed-up  : {p_e2e / loop_rate:.2f}× the loop end to end, steady {_fmt(p_steady and p_steady / loop_rate)}× "
          f"= {_fmt(p_steady and p_steady / b['rate'], '.0%')} of the bound (goal ≥ 90%, never < 1.0×)")
    print(f"vs pool   : {p_e2e / q_e2e:.2f}× end to end, steady {_fmt(p_steady and q_steady and p_steady / q_steady)}× "
          f"(goal ≥ 1.0×)")
    if p_steady and p_steady > 1.10 * b["rate"]:
        print("WARNING   : the steady rate is above the physical bound: the measure (or the bound) is wrong")
    sizes = sorted(mem)
    for n in sizes:
        print(f"memory    : {n:5d} clips → peak RSS {mem[n]['peak_rss'] / 2**30:.2f} GiB "
              f"({mem[n]['clips'] / mem[n]['seconds']:.2f} clips/s)")
    if len(sizes) >= 2:
        fig["memory_growth"] = growth = mem[sizes[-1]]["peak_rss"] / mem[sizes[0]]["peak_rss"]
        print(f"growth    : {growth:.2f}× from {sizes[0]} to {sizes[-1]} clips (goal ≤ 1.2×)")


if __name__ == "__main__":
    raise SystemExit(main())
