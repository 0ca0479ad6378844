"""Benchmark: training at corpus scale from streamed feature stores (issue 14, item 3).

Writes two feature stores directly (pyarrow; ~``--shard-mb`` MB files, ``--row-group-mb`` row
groups, the store schema and meta.json of conclugen.features.store): 100k rows at the reference
dims (video 4096, audio 1024, text 768) and 1M rows at small dims. On each it runs, every one in a
fresh process so that peak memory is its own:

  plain   a plain PyTorch loop over the same Parquet files: per epoch the files in a seeded
          random order, each read with pyarrow (the next one in a background thread while this
          one trains), its rows permuted, fixed batches, the same Stepper (model, losses,
          k-means, AdamW) as the Ray workers
  ray     `run_pretrain(stream=True)` with 1 Ray Train worker: the streamed path with the
          per-epoch global shuffle (train.shuffle=global, conclugen/training/shuffle.py)

and prints, as ratios measured in the same run:
  samples/s  ray ÷ plain (median of the middle epochs: not the first, whose start waits for
             the first read, nor the last, which reads nothing ahead for a next epoch)  goal ≥ 0.9
  samples per CPU-second  ray ÷ plain, CPU of the whole training process (Ray's threads in
             the worker included, its other processes not): how much of the samples/s gap is
             the worker's own cost rather than the cores Ray's other processes take
  peak RSS   1M ÷ 100k, of the driver and of the Train worker          goal ≤ 1.2
  time to first step (s, and ray ÷ plain)

Peak RSS is the kernel's high-water mark (VmHWM) of each process, polled from /proc by the
driver. model.input_norm=none, so both loops do the same work before the first step (the
standardisation statistics are one more pass over the store on the Ray side).

``--threads`` (torch threads of both loops, the Train worker's CPUs) defaults to the cores less
one, as on a cluster node, where Ray's own processes (raylet, GCS, the Train controller and its
helper actors, idle workers: ~1% of a core each, ~15-20% in all) have somewhere to run. With every
core given to torch threads, each of their wake-ups preempts one thread of an OpenMP team and
stalls the rest; on 2 cores that cost the Ray side ~25% (`--threads 2`: 0.73 of the plain loop,
`--threads 1`: see the README).

    python benchmarks/train_scale.py            # 100k × 5888 floats and 1M × 144 floats
    python benchmarks/train_scale.py --quick    # tiny, to check it works
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REFERENCE_DIMS = {"video": 4096, "audio": 1024, "text": 768}
SMALL_DIMS = {"video": 64, "audio": 32, "text": 48}
FULL_SETS = ["model.d=512", "model.p=128", "model.r=256", "model.k=32", "model.audio_geu_dim=256",
             "train.batch_size=256", "losses.queue_batches=20"]
QUICK_SETS = ["model.d=64", "model.p=16", "model.r=32", "model.k=4", "model.audio_geu_dim=32",
              "train.batch_size=64", "losses.queue_batches=4", "losses.kmeans_iters=20"]


# ----------------------------------------------------------------------------- the stores


def write_store(root: str, rows: int, dims: dict[str, int], shard_mb: float, row_group_mb: float, k: int = 8) -> None:
    """``rows`` training rows (clusters around k centres, like benchmarks/train.py) in files of
    ~``shard_mb`` MB of vectors, row groups of ~``row_group_mb`` MB, written in clip order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from conclugen.features import store as F

    schema = F.feature_schema(dims)
    row_bytes = 4 * sum(dims.values())
    per_file = max(1, int(shard_mb * 2**20 // row_bytes))
    per_group = max(1, int(row_group_mb * 2**20 // row_bytes))
    rng = np.random.default_rng(0)
    centres = {m: rng.normal(size=(k, d)).astype(np.float32) for m, d in dims.items()}
    out = Path(F.features_uri(root))
    out.mkdir(parents=True, exist_ok=True)
    for f, start in enumerate(range(0, rows, per_file)):
        n = min(per_file, rows - start)
        y = rng.integers(0, k, n)
        cols = {"clip_id": pa.array([f"clip{i:08d}" for i in range(start, start + n)]),
                "split": pa.array(["train"] * n), "labels": pa.array([["neutral"]] * n, pa.list_(pa.string())),
                "corpus": pa.array(["bench"] * n)}
        for m, d in dims.items():
            x = np.maximum(centres[m][y] + 0.5 * rng.standard_normal((n, d), dtype=np.float32), 0)
            offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
            cols[m] = pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1)))
        table = pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)
        pq.write_table(table, str(out / f"part-bench-{f:05d}.parquet"), row_group_size=per_group)
    F.write_meta(root, F.FeatureMeta(corpus="bench", dims=dict(dims), label_space=["neutral"],
                                     backbones={m: F.BackboneInfo(f"bench:{m}", d, False) for m, d in dims.items()}))


# ----------------------------------------------------------------------------- the loops


def _config(args: argparse.Namespace, work: str):
    from conclugen.config import load_config

    sets = QUICK_SETS if args.quick else FULL_SETS
    return load_config(None, [*sets, f"train.epochs={args.epochs}", "train.warmup_epochs=1", f"workdir={work}",
                              "model.input_norm=none", "train.workers=1", f"train.cpus_per_worker={args.threads}",
                              f"train.keep_checkpoints={args.epochs}", f"train.shuffle_window_mb={args.window_mb}"])


def plain_child(root: str, args: argparse.Namespace) -> dict:
    """The plain loop (see the module docstring); samples/s per epoch, time to first step."""
    import pyarrow.parquet as pq
    import torch

    from conclugen.features.store import features_uri, read_meta
    from conclugen.training.shuffle import column_array
    from conclugen.training.step import Stepper, seed_all

    t0 = time.perf_counter()
    cfg = _config(args, tempfile.mkdtemp(prefix="bench_scale_plain_"))
    torch.set_num_threads(args.threads)
    seed_all(cfg.train.seed)
    mods = list(cfg.model.modalities)
    st = Stepper(cfg, {m: int(read_meta(root).dims[m]) for m in mods})
    files = sorted(str(p) for p in Path(features_uri(root)).glob("*.parquet"))
    bs = cfg.train.batch_size
    first: list[float] = []
    done = [0]

    def read(i: int) -> dict[str, np.ndarray]:
        t = pq.read_table(files[i], columns=mods)
        return {m: column_array(t.column(m)) for m in mods}

    reader = ThreadPoolExecutor(1)  # the next file is read while this one trains, as the Ray path does

    def batches(epoch: int):
        rng = np.random.default_rng([cfg.train.seed, epoch])
        carry: dict[str, np.ndarray] | None = None
        order = rng.permutation(len(files))
        ahead = reader.submit(read, order[0])
        for j in range(len(order)):
            arrays = ahead.result()
            if j + 1 < len(order):
                ahead = reader.submit(read, order[j + 1])
            if carry is not None:
                arrays = {m: np.concatenate([carry[m], arrays[m]]) for m in mods}
            perm = rng.permutation(len(arrays[mods[0]]))
            full = len(perm) // bs * bs
            for s in range(0, full, bs):
                done[0] += bs
                yield {m: torch.from_numpy(arrays[m][perm[s : s + bs]]) for m in mods}
            carry = {m: arrays[m][perm[full:]] for m in mods}

    rates, per_cpu = [], []
    for epoch in range(cfg.train.epochs):
        t_epoch, c_epoch, done[0] = time.perf_counter(), time.process_time(), 0
        st.run_epoch(batches(epoch), epoch, train=True,
                     after_first_step=lambda: first.append(time.perf_counter() - t0) if not first else None)
        rates.append(done[0] / (time.perf_counter() - t_epoch))
        per_cpu.append(done[0] / (time.process_time() - c_epoch))
    return {"samples_per_s": rates[1:-1], "samples_per_cpu_s": per_cpu[1:-1], "first_step_s": first[0],
            "peak_rss": _hwm(os.getpid())}


def ray_child(root: str, args: argparse.Namespace) -> dict:
    """run_pretrain(stream=True) with 1 worker; the worker's peak RSS polled from /proc."""
    import ray

    from conclugen.runtime import start_local_ray
    from conclugen.training.driver import run_pretrain
    from conclugen.training.run_folder import find_checkpoints, worker_records

    work = tempfile.mkdtemp(prefix="bench_scale_ray_")
    cfg = _config(args, work)
    start_local_ray(args.threads + 2, object_store_bytes=args.object_store_mb * 2**20, log_to_driver=False,
                    address="local")  # a cluster of its own, never one another process started
    peaks: dict[int, tuple[str, int]] = {}
    stop = threading.Event()

    def watch() -> None:  # VmHWM only grows: the last poll before a process exits is its peak
        while not stop.is_set():
            for pid, name in _ray_processes():
                peaks[pid] = (name, max(_hwm(pid), peaks.get(pid, (name, 0))[1]))
            stop.wait(1.0)  # each scan of /proc costs CPU the worker would otherwise have

    threading.Thread(target=watch, daemon=True).start()
    t0 = time.time()
    try:
        run_uri = os.path.join(work, "run")
        run_pretrain(root, run_uri, cfg, stream=True, log_model=False, lock_output=False)
    finally:
        stop.set()
        ray.shutdown()
    first = min(r["time"] for r in worker_records(run_uri) if r["epoch"] == 0) - t0
    metrics = [ck["metrics"] for ck in find_checkpoints(run_uri)][1:-1]
    workers = [rss for name, rss in peaks.values() if "RayTrainWorker" in name]
    return {"samples_per_s": [m["samples_per_s"] for m in metrics],
            "samples_per_cpu_s": [m["samples_per_cpu_s"] for m in metrics], "first_step_s": first,
            "peak_rss": _hwm(os.getpid()),
            "worker_peak_rss": max(workers) if workers else 0}


def _hwm(pid: int) -> int:
    """The process's peak resident set (bytes), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _ray_processes() -> list[tuple[int, str]]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ray::"):
                out.append((int(d.name), cmd))
    return out


# ----------------------------------------------------------------------------- the driver


def _child(kind: str, root: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, *argv, "--child", kind, "--root", root]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind} on {root} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny stores, to check the script works")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                    help="torch threads = CPUs of the Train worker (default: the cores less one)")
    ap.add_argument("--shard-mb", type=float, default=128.0, help="file size (extract.shard_mb)")
    ap.add_argument("--row-group-mb", type=float, default=4.0, help="Parquet row group size")
    ap.add_argument("--window-mb", type=float, default=512.0, help="train.shuffle_window_mb")
    ap.add_argument("--object-store-mb", type=int, default=4096)
    ap.add_argument("--sizes", default="100k,1M", help="which stores to run (100k, 1M or both)")
    ap.add_argument("--child", choices=["plain", "ray"], help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    raw = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(raw)
    args.epochs = args.epochs or (3 if args.quick else 4)
    if args.epochs < 3:
        ap.error("--epochs must be at least 3: the rates are those of the middle epochs")
    if args.child:
        print(json.dumps((plain_child if args.child == "plain" else ray_child)(args.root, args)))
        return 0
    if args.quick:
        sizes = {"100k": (2_000, {"video": 64, "audio": 32, "text": 48}), "1M": (20_000, {"video": 8, "audio": 4, "text": 4})}
        args.shard_mb, args.row_group_mb, args.window_mb = 0.25, 0.02, 1.0
    else:
        sizes = {"100k": (100_000, REFERENCE_DIMS), "1M": (1_000_000, SMALL_DIMS)}
    wanted = args.sizes.split(",")
    if not set(wanted) <= set(sizes):
        ap.error(f"--sizes: choose from {', '.join(sizes)}")
    sizes = {k: v for k, v in sizes.items() if k in wanted}
    child_argv = [a for a in raw if a != "--quick"] + (["--quick"] if args.quick else [])
    child_argv += ["--shard-mb", str(args.shard_mb), "--row-group-mb", str(args.row_group_mb),
                   "--window-mb", str(args.window_mb), "--epochs", str(args.epochs)]
    base = tempfile.mkdtemp(prefix="bench_scale_")
    got: dict[str, dict[str, dict]] = {}
    for name, (rows, dims) in sizes.items():
        root = os.path.join(base, name)
        write_store(root, rows, dims, args.shard_mb, args.row_group_mb)
        got[name] = {kind: _child(kind, root, child_argv) for kind in ("plain", "ray")}
        p, r = got[name]["plain"], got[name]["ray"]
        med = statistics.median
        print(f"{name}: {rows} rows × {sum(dims.values())} floats | plain {med(p['samples_per_s']):.0f} samples/s, "
              f"first step {p['first_step_s']:.1f} s, RSS {p['peak_rss'] / 2**20:.0f} MiB | ray 1 worker "
              f"{med(r['samples_per_s']):.0f} samples/s, first step {r['first_step_s']:.1f} s, driver RSS "
              f"{r['peak_rss'] / 2**20:.0f} MiB, worker RSS {r['worker_peak_rss'] / 2**20:.0f} MiB", flush=True)
        print(f"{name}: samples/s ray1 / plain = {med(r['samples_per_s']) / med(p['samples_per_s']):.3f} (goal >= 0.9), "
              f"samples per CPU-second of the training process ray1 / plain = "
              f"{med(r['samples_per_cpu_s']) / med(p['samples_per_cpu_s']):.3f}, "
              f"time to first step ray / plain = {r['first_step_s'] / p['first_step_s']:.2f}", flush=True)
    if len(got) < 2:
        return 0
    small, big = got["100k"]["ray"], got["1M"]["ray"]
    print(f"peak RSS 1M / 100k: driver {big['peak_rss'] / small['peak_rss']:.2f}, "
          f"worker {big['worker_peak_rss'] / max(small['worker_peak_rss'], 1):.2f} (goal <= 1.2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
