"""Benchmark: the Ray Data extraction pipeline against a sequential loop and a process pool, and
its memory.

    python benchmarks/extract.py --workdir /tmp/bench --clips 200 --sizes 100,1000
    python benchmarks/extract.py --quick          # a few clips: checks that the script works

1. Synthesizes ``--clips`` unique clips (MELD layout; reused when already there).
2. **Loop** (a fresh process, torch's default threads): per clip, read the bytes + ``decode_clip``
   (t_decode), then every backbone's forward pass (t_forward). The figures are ratios to its rate.
3. **Pool** — what a user would script by hand: ``concurrent.futures`` with one process per core,
   each loading the backbones once (torch and OpenCV at 1 thread) and doing read + decode +
   forward per clip. Run a second time with each task a batch of ``extract.backbone_batch_size``
   clips (decoded one by one, forwarded as one batch, as the pipeline's actors do): its per-clip
   decode / forward wall times, measured while every core is busy, are the stage costs ``d`` and
   ``f`` of a saturated machine (benchmarks/extract_baselines.py).
4. **Pipeline**: ``run_extract`` on the same clips into a fresh store, in this process, Ray started
   as ``conclugen extract`` starts it (``--num-cpus`` logical CPUs; 0 = the CLI's default).
5. Peak memory: summed PSS of the process tree of one extraction (driver + every Ray process;
   :func:`tree_memory` says why PSS and not RSS), sampled every 0.5 s, each manifest size of
   ``--sizes`` in a fresh process with a fresh Ray; sizes beyond the unique clips repeat them under new clip_ids (same bytes, same work per clip).

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
with ``d``, ``f`` the per-clip decode and forward seconds of one core (from the batched pool),
``P`` cores, ``A`` backbone actors per stage pool holding ``k`` torch threads (``backbone_threads``
or 1, Ray's OMP default), the pipeline's rate is at most

    min(A·k / f_stage, P / (d + f))        (f_stage: the slowest actor pool's per-clip forward)

— an actor cannot forward faster than its ``k`` threads on ``k`` cores, and the whole machine
cannot do more than ``P`` core-seconds of work per second. Decode tasks have no term of their
own: OpenCV runs its own threads inside a task, so only the machine term binds them. The bound is
that rate × the loop's seconds per clip; the batched pool reaches ``P / (d + f)`` by
construction. The costs leave out each pool process's first task (its first forward pass also
builds oneDNN's kernels: counted in, it put the pipeline's steady rate at 109% of the bound).
They are at the actors' batch: the bound from batch-1 costs (the per-clip pool's) was exceeded
by the pipeline (121%) because batching makes forward cheaper per clip.

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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extract_baselines import in_fresh_process, loop_run, pool_run  # noqa: E402

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


def tree_memory(pid: int) -> tuple[int, int, dict[str, int]]:
    """(summed RSS, summed PSS, PSS by process name) of ``pid`` and its descendants, in bytes.

    RSS counts a shared page once in every process that touched it: Ray's object store is one
    shared-memory file mapped by the driver and every worker, so summed RSS grows with how many
    workers have touched how much of it, not with memory in use. PSS splits each shared page
    among the processes mapping it, so its sum is the tree's footprint."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, {}
    rss = pss = 0
    by_name: dict[str, int] = {}
    for p in procs:
        try:
            m = p.memory_full_info()
            name = " ".join(p.cmdline()[:1])[:40] or p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss, pss = rss + m.rss, pss + m.pss
        by_name[name] = by_name.get(name, 0) + m.pss
    return rss, pss, by_name


class PeakSampler:
    """The peaks of :func:`tree_memory` of ``pid`` while the block runs (``by_name``: at the
    PSS peak)."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.pid, self.every, self._stop = pid, every, threading.Event()
        self.peak = self.peak_pss = 0
        self.by_name: dict[str, int] = {}
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss, by_name = tree_memory(self.pid)
            self.peak = max(self.peak, rss)
            if pss > self.peak_pss:
                self.peak_pss, self.by_name = pss, by_name
            self._stop.wait(self.every)

    def __enter__(self) -> PeakSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


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
    return r | {"peak_rss": ps.peak, "peak_pss": ps.peak_pss, "pss_by_name": ps.by_name}


# ------------------------------------------------------------------------------ the bound


def bound(cfg: Any, pool: dict[str, Any], loop_rate: float, cpus: int) -> dict[str, float]:
    """The perfect-overlap bound (module docstring) from the batched pool's per-clip costs, its
    processes warmed up (``pool_run``'s ``warm``)."""
    from conclugen.features.backbone_stage import stage_groups

    pool = pool["warm"]
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
    batched = pool_run(cfg.model_dump_json(), rows, args.pool_procs or cpus, cfg.extract.backbone_batch_size)
    batched["steady"] = steady_rate(batched["completions"], batched["clips"])
    print(f"pool, batch {batched['batch']}: {batched['seconds']:.1f} s end to end", flush=True)
    b = bound(cfg, batched, loop_rate, cpus)

    import ray

    ray_start_s = start_ray(args.num_cpus)
    logical = int(ray.cluster_resources().get("CPU", 0))
    pipe = pipeline_run(corpus, Path(args.workdir) / "features-speed", cfg, manifest)
    pipe["steady"] = steady_rate([tuple(c) for c in pipe["completions"]], pipe["clips"])
    ray.shutdown()
    mem = {n: memory_run(args, n) for n in [int(x) for x in args.sizes.split(",") if x]}
    figures = {"cores": cpus, "ray_cpus": logical, "ray_start_s": ray_start_s, "loop": loop, "pool": pool,
               "pool_batched": batched, "pipeline": pipe, "bound": b, "memory": mem, "config": cfg.extract.model_dump()}
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
    print(f"per clip  : decode {b['d']:.3f} s + forward {b['f']:.3f} s on one core (pool at backbone batch "
          f"{fig['pool_batched']['batch']}, all cores busy, first task of each process left out; "
          f"at batch 1: decode {pool['t_decode'] / pool['clips']:.3f} + forward {pool['t_forward'] / pool['clips']:.3f} s)")
    print(f"bound     : {b['speedup']:.2f}× the loop = min(forward {b['forward_rate']:.2f}, machine "
          f"{b['machine_rate']:.2f}) clips/s; the machine term needs ≥ {b['forward_threads_needed']} "
          f"forward threads (backbone_actors × backbone_threads)")
    print(f"pool      : {q_e2e:.2f} clips/s end to end, steady {_fmt(q_steady)}; start-up cost {_fmt(q_start, '.1f')} s")
    bq_e2e, bq_steady, _ = _rates(fig["pool_batched"])
    print(f"batched   : {bq_e2e:.2f} clips/s end to end, steady {_fmt(bq_steady)} (forward at backbone batch; "
          "the bound's costs)")
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
        top = sorted(mem[n]["pss_by_name"].items(), key=lambda kv: -kv[1])[:4]
        print(f"memory    : {n:5d} clips → peak PSS {mem[n]['peak_pss'] / 2**30:.2f} GiB, summed RSS "
              f"{mem[n]['peak_rss'] / 2**30:.2f} GiB ({mem[n]['clips'] / mem[n]['seconds']:.2f} clips/s); at the "
              "PSS peak: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in top))
    if len(sizes) >= 2:
        lo, hi = mem[sizes[0]], mem[sizes[-1]]
        fig["memory_growth"] = growth = hi["peak_pss"] / lo["peak_pss"]
        print(f"growth    : {growth:.2f}× PSS from {sizes[0]} to {sizes[-1]} clips (goal ≤ 1.2×); summed RSS "
              f"{hi['peak_rss'] / lo['peak_rss']:.2f}× (counts the shared object store once per process)")


if __name__ == "__main__":
    raise SystemExit(main())
