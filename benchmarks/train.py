"""Benchmark: samples/s of the Ray Train loop vs a plain PyTorch loop, measured in one run.

Both loops run epochs with the same :class:`conclugen.training.step.Stepper` (same model, the
three losses, per-step k-means with its queue, AdamW), the same in-memory data and the same
global batch. Throughput is training samples per second over the steps of an epoch (data iteration included; validation and
checkpoint writing excluded in both), per epoch after the first (warm-up). Printed as wall-clock
samples/s (median and best epoch) and as samples per CPU-second of the training processes (all
ranks summed), which does not depend on how much of a shared machine other processes take.

Ratios printed:
  ray1 / plain   Ray Train with 1 worker (as many threads as the plain loop) — goal ≥ 0.9
  ray2 / ray1    2 workers (DDP over gloo, each with those threads) over 1 worker: the scaling

The Ray runs use the in-memory shard cache that run_pretrain uses for data that fits the object
store (each worker reads its shard through Ray Data once, then batches it like the plain loop);
``--stream`` adds a 1-worker run that streams every epoch through Ray Data instead.

The plain loop runs before and after the Ray runs and the mean is used, so load drift on a shared
machine affects both sides alike.

    python benchmarks/train.py            # mid-size heads (D=512, K=32, batch 256)
    python benchmarks/train.py --quick    # tiny, for CI
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def make_data(n: int, dims: dict[str, int], k: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    out = {}
    for m, d in dims.items():
        centres = rng.normal(size=(k, d))
        out[m] = np.maximum(centres[y] + 0.5 * rng.normal(size=(n, d)), 0).astype(np.float32)
    return out


def plain_loop(cfg, data: dict[str, np.ndarray], epochs: int, threads: int) -> tuple[list[float], list[float]]:
    """The same work as the Ray loop in one process: shuffle, fixed batches, step."""
    from conclugen.training.step import Stepper, seed_all

    torch.set_num_threads(threads)
    seed_all(cfg.train.seed)
    dims = {m: v.shape[1] for m, v in data.items()}
    st = Stepper(cfg, dims)
    tensors = {m: torch.from_numpy(v) for m, v in data.items()}
    n = next(iter(tensors.values())).shape[0]
    bs = cfg.train.batch_size
    steps = n // bs
    rates, cpu_rates = [], []
    for epoch in range(epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        perm = torch.from_numpy(np.random.default_rng(cfg.train.seed + epoch).permutation(n))
        batches = ({m: t[perm[s * bs : (s + 1) * bs]] for m, t in tensors.items()} for s in range(steps))
        st.run_epoch(batches, epoch, train=True)  # raises NonFiniteLossError on a NaN loss
        rates.append(steps * bs / (time.perf_counter() - t0))
        cpu_rates.append(steps * bs / (time.process_time() - c0))
    return rates[1:], cpu_rates[1:]


def ray_loop(
    cfg, data: dict[str, np.ndarray], workers: int, cpus_per_worker: float, workdir: str, cache: bool = True
) -> tuple[list[float], list[float]]:
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    from conclugen.training.driver import fit
    from conclugen.training.run_folder import find_checkpoints

    table = pa.table({m: ArrowTensorArray.from_numpy(v) for m, v in data.items()})
    ds = ray.data.from_arrow(table)
    ds.context.enable_progress_bars = False
    ds = ds.materialize()
    n = table.num_rows
    c = cfg.model_copy(update={"train": cfg.train.model_copy(update={
        "workers": workers, "cpus_per_worker": cpus_per_worker, "keep_checkpoints": cfg.train.epochs,
    })})
    run_uri = os.path.join(workdir, f"ray{workers}{'' if cache else '-stream'}")
    shutil.rmtree(run_uri, ignore_errors=True)
    fit({"train": ds}, run_uri, c, {m: v.shape[1] for m, v in data.items()}, n_train=n, cache_shards=cache)
    ms = [ck["metrics"] for ck in find_checkpoints(run_uri)][1:]
    return [m["samples_per_s"] for m in ms], [m["samples_per_cpu_s"] for m in ms]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the plain loop = CPUs (threads) per Ray Train worker")
    ap.add_argument("--stream", action="store_true",
                    help="also time 1 worker streaming batches from Ray Data each epoch (no shard cache)")
    args = ap.parse_args(argv)

    import ray

    from conclugen.config import load_config
    from conclugen.runtime import start_local_ray

    if args.quick:
        dims = {"video": 64, "audio": 32, "text": 48}
        sets = ["model.d=64", "model.p=16", "model.r=32", "model.k=4", "model.audio_geu_dim=32",
                "train.batch_size=64", "losses.queue_batches=4", "losses.kmeans_iters=20"]
        rows, epochs = args.rows or 1024, args.epochs or 4
    else:
        dims = {"video": 1024, "audio": 256, "text": 384}
        sets = ["model.d=512", "model.p=128", "model.r=256", "model.k=32", "model.audio_geu_dim=256",
                "train.batch_size=256", "losses.queue_batches=20"]
        rows, epochs = args.rows or 2048, args.epochs or 5
    work = tempfile.mkdtemp(prefix="bench_train_")
    cfg = load_config(None, [*sets, f"train.epochs={epochs}", "train.warmup_epochs=1", f"workdir={work}"])
    data = make_data(rows, dims, cfg.model.k)
    print(f"bench_train: {rows} rows, dims {dims}, D={cfg.model.d} P={cfg.model.p} K={cfg.model.k}, "
          f"batch {cfg.train.batch_size}, {epochs} epochs (first is warm-up), {args.threads} threads",
          flush=True)

    start_local_ray(8, object_store_bytes=1_000_000_000, log_to_driver=False)
    def show(name: str, r: tuple[list[float], list[float]]) -> None:
        print(f"{name:<24}wall: median {statistics.median(r[0]):8.1f} best {max(r[0]):8.1f} samples/s | "
              f"per CPU-second: median {statistics.median(r[1]):8.1f} ({len(r[0])} epochs)", flush=True)

    try:
        plain_a = plain_loop(cfg, data, epochs, args.threads)
        show("plain PyTorch loop", plain_a)
        ray1 = ray_loop(cfg, data, 1, float(args.threads), work)
        show("Ray Train, 1 worker", ray1)
        ray2 = ray_loop(cfg, data, 2, float(args.threads), work)
        show("Ray Train, 2 workers", ray2)
        if args.stream:
            show("Ray Train, 1w streaming", ray_loop(cfg, data, 1, float(args.threads), work, cache=False))
        plain_b = plain_loop(cfg, data, epochs, args.threads)
        show("plain PyTorch (again)", plain_b)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    plain = (plain_a[0] + plain_b[0], plain_a[1] + plain_b[1])
    med = statistics.median
    print(f"wall-clock  (median epochs): ray1/plain = {med(ray1[0]) / med(plain[0]):.3f} (goal >= 0.9), "
          f"ray2/ray1 = {med(ray2[0]) / med(ray1[0]):.3f}")
    print(f"wall-clock  (best epochs)  : ray1/plain = {max(ray1[0]) / max(plain[0]):.3f}, "
          f"ray2/ray1 = {max(ray2[0]) / max(ray1[0]):.3f}")
    print(f"per CPU-second (median)    : ray1/plain = {med(ray1[1]) / med(plain[1]):.3f}, "
          f"ray2/ray1 = {med(ray2[1]) / med(ray1[1]):.3f}  (load-independent efficiency)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
