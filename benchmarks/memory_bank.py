"""Clustering cost per epoch: memory bank (losses.kmeans_schedule=memory_bank) vs per-step k-means.

The same fused vectors (a K-dim mixture, as the cluster head's outputs) cut into an epoch of
batches, in one process:

- ``every_step`` (the reference's schedule): ``OnlineKMeans`` per step, k-means from a random
  start on queue + batch (the queue joins once full);
- ``memory_bank``: per step the bank's bookkeeping (record the batch, look its labels up), plus
  one k-means over the whole bank at the epoch start (``MemoryBank.recluster``).

Both use the config's k-means settings (``--iters``, ``--tol``). The bank's one-off fill pass (a
no-grad forward over one epoch, at the first clustering epoch and after a resume) is a forward
pass, not clustering, and is left out. Timings are the best of ``--repeat`` epochs after one
warm-up; prints the ratio memory_bank / every_step (lower is cheaper) and the k-means iterations.

    python benchmarks/memory_bank.py                  # 16,384 rows (64 steps of 256), K 128, queue 20
    python benchmarks/memory_bank.py --rows 32768
    python benchmarks/memory_bank.py --quick          # small, to check it runs

Probe F1 of the two schedules on the demo corpus (not a timing; after ``conclugen demo``, with
the demo's head and training settings, conclugen/demo.py DEMO_BASE):

    conclugen ablate work/demo/features --out /tmp/mb-ablation --row all_losses --row memory_bank \
      --set model.d=256 --set model.p=64 --set model.r=128 --set model.k=16 --set losses.queue_batches=4 \
      --set train.epochs=15 --set train.batch_size=32 --set train.lr=1e-3 --set train.warmup_epochs=2 \
      --set train.restart_t0=5 --set probe.epochs=200 --set probe.batch_size=256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conclugen.model.kmeans import OnlineKMeans  # noqa: E402
from conclugen.model.memory_bank import MemoryBank  # noqa: E402


def _epoch_data(rows: int, k: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, k, generator=g)
    x = centers[torch.randint(0, k, (rows,), generator=g)] + 0.7 * torch.randn(rows, k, generator=g)
    keys = torch.randint(0, 1 << 62, (rows,), generator=g)
    steps = rows // batch
    return [(keys[s * batch:(s + 1) * batch], x[s * batch:(s + 1) * batch]) for s in range(steps)]


def _every_step(data: list[tuple[torch.Tensor, torch.Tensor]], args: argparse.Namespace) -> tuple[float, float]:
    km = OnlineKMeans(args.k, queue_batches=args.queue, iters=args.iters, tol=args.tol, seed=args.seed)
    km.reset()
    iters = 0.0
    t = time.perf_counter()
    for _, x in data:
        km(x)
        iters += km.last_stats["iters"]
    return time.perf_counter() - t, iters


def _memory_bank(data: list[tuple[torch.Tensor, torch.Tensor]], args: argparse.Namespace) -> tuple[float, float]:
    bank = MemoryBank(args.k, iters=args.iters, tol=args.tol, seed=args.seed)
    for keys, x in data:  # the bank as the previous epoch left it (not timed)
        bank.add(keys, x)
    t = time.perf_counter()
    clusters = bank.recluster(1)
    for keys, x in data:
        bank.add(keys, x)
        bank.lookup(keys)
    elapsed = time.perf_counter() - t
    assert clusters is not None
    return elapsed, bank.last_stats["iters"]


def _best(fn, data, args: argparse.Namespace) -> tuple[float, float]:
    runs = [fn(data, args) for _ in range(args.repeat + 1)][1:]  # the first run warms up
    return min(r[0] for r in runs), runs[0][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small size, to check the script runs")
    ap.add_argument("--rows", type=int, default=16384, help="rows in the epoch (the bank)")
    ap.add_argument("--batch", type=int, default=256, help="local batch (train.batch_size on one worker)")
    ap.add_argument("--k", type=int, default=128, help="clusters = fused width (model.k)")
    ap.add_argument("--queue", type=int, default=20, help="losses.queue_batches")
    ap.add_argument("--iters", type=int, default=100, help="losses.kmeans_iters")
    ap.add_argument("--tol", type=float, default=1e-4, help="losses.kmeans_tol")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a Ray worker: cpus_per_worker)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.rows, args.k, args.queue, args.iters, args.repeat = 2048, 16, 4, 20, 1
    torch.set_num_threads(args.threads)
    data = _epoch_data(args.rows, args.k, args.batch, args.seed)
    t_step, it_step = _best(_every_step, data, args)
    t_bank, it_bank = _best(_memory_bank, data, args)
    steps = len(data)
    print(f"clustering cost per epoch: {steps} steps × batch {args.batch} = {steps * args.batch} rows, K {args.k}, "
          f"queue {args.queue}, iters ≤ {args.iters}, tol {args.tol:g}, {args.threads} thread(s), best of {args.repeat}")
    print(f"  every_step   {t_step:8.3f} s   ({it_step:.0f} k-means iterations in all, {steps} k-means)")
    print(f"  memory_bank  {t_bank:8.3f} s   ({it_bank:.0f} k-means iterations, 1 k-means over the bank)")
    print(f"  bank memory  {steps * args.batch * args.k * 4 / 2**20:.1f} MiB float32 (K floats per clip)")
    print(f"memory_bank / every_step = {t_bank / t_step:.3f}")


if __name__ == "__main__":
    main()
