"""Two gloo processes (torch.multiprocessing, no Ray) against the single-process global batch.

One spawn runs every distributed scenario (spawning costs seconds); each rank saves its results
and the tests compare them with single-process computations on the concatenated data:
- gather_with_grad: values and gradients, unequal sizes;
- mms_contrastive(gather=True) under DDP: the mean over ranks of the returned values equals the
  global loss, DDP's averaged parameter gradients equal the global gradients, and the input
  gradient on each rank is world_size × the global one (DDP divides parameter gradients only);
- nt_xent(gather=True) (SimCLR, both views through one shared head in one DDP forward): the same
  three equalities;
- distributed k-means (given init, K > N with re-seeding, rank-0 random init) and OnlineKMeans
  with a queue, against single-process k-means on the concatenated data with the same init.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from conclugen.model.distributed import all_reduce_sum, gather_with_grad, world
from conclugen.model.kmeans import OnlineKMeans, kmeans, random_init
from conclugen.model.losses import mms_contrastive, nt_xent

# Spawning two processes and DDP's first construction (it imports torch._dynamo) take ~20–60 s.
pytestmark = pytest.mark.slow

WS = 2
MODS = ("video", "audio", "text")
IN_DIM, P = 6, 4


def _data(
    seed: int, sizes: tuple[int, ...], dim: int, dtype: torch.dtype = torch.float64
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g, dtype=dtype) for n in sizes]


class _Heads(nn.Module):
    """A tiny per-modality projection (no BatchNorm: CPU workers keep per-worker BN)."""

    def __init__(self, mods: tuple[str, ...]) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.lin = nn.ModuleDict({m: nn.Linear(IN_DIM, P) for m in mods})

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: F.normalize(torch.tanh(self.lin[m](feats[m])), dim=1) for m in self.lin}


def _contrastive_inputs(
    mods: tuple[str, ...], sizes: tuple[int, ...], dtype: torch.dtype
) -> list[dict[str, torch.Tensor]]:
    per_mod = {m: _data(100 + i, sizes, IN_DIM, dtype) for i, m in enumerate(mods)}
    return [{m: per_mod[m][r] for m in mods} for r in range(len(sizes))]


CONTRASTIVE_CASES = [
    # (name, modalities, per-rank batch sizes, dtype, margin)
    ("2mod_f64", MODS[:2], (5, 5), torch.float64, 0.001),
    ("3mod_f64_unequal", MODS, (4, 7), torch.float64, 0.2),
    ("3mod_f32", MODS, (16, 16), torch.float32, 0.001),
]
SIMCLR_CASES = [
    # (name, per-rank batch sizes, dtype, temperature)
    ("f64_unequal", (3, 6), torch.float64, 0.07),
    ("f32", (16, 16), torch.float32, 0.5),
]
KMEANS_CASES = [
    # (name, per-rank sizes, dim, k, iters, assignment backend). The backend is fixed on both
    # sides: faiss and torch agree except on float near-ties, which K > N makes common (points
    # that are their own centroid all have similarity ~1, and that order picks re-seeds).
    ("given_init", (50, 70), 5, 6, 40, "faiss"),
    ("k_exceeds_points", (3, 2), 3, 8, 5, "torch"),
]


class _TwoViews(nn.Module):
    """Both SimCLR views through one shared head, in one forward (as ConCluGen's ``views``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(12)
        self.lin = nn.Linear(IN_DIM, P)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(self.lin(a)), torch.tanh(self.lin(b))


def _simclr_inputs(sizes: tuple[int, ...], dtype: torch.dtype) -> list[list[torch.Tensor]]:
    a, b = _data(200, sizes, IN_DIM, dtype), _data(201, sizes, IN_DIM, dtype)
    return [[a[r], b[r]] for r in range(len(sizes))]


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WS)
    res: dict[str, Any] = {"world": world()}
    try:
        # gather_with_grad, unequal sizes: loss = Σ w ⊙ gather(x) on every rank.
        x = _data(1, (3, 5), 4)[rank].requires_grad_()
        y = gather_with_grad(x)
        w = _data(2, (8,), 4)[0]
        (w * y).sum().backward()
        res["gather"] = (y.detach(), x.grad)
        s = torch.tensor([float(rank + 1)])
        res["all_reduce"] = all_reduce_sum(s).item()

        for name, mods, sizes, dtype, margin in CONTRASTIVE_CASES:
            model = _Heads(mods).to(dtype)
            ddp = nn.parallel.DistributedDataParallel(model)
            feats = {
                m: v.clone().requires_grad_()
                for m, v in _contrastive_inputs(mods, sizes, dtype)[rank].items()
            }
            loss = mms_contrastive(ddp(feats), margin=margin, gather=True)
            loss.backward()
            res[name] = {
                "loss": loss.detach(),
                "param_grads": {n: p.grad.clone() for n, p in model.named_parameters()},
                "input_grads": {m: v.grad.clone() for m, v in feats.items()},
            }

        for name, sizes, dtype, temperature in SIMCLR_CASES:
            model = _TwoViews().to(dtype)
            ddp = nn.parallel.DistributedDataParallel(model)
            views = [v.clone().requires_grad_() for v in _simclr_inputs(sizes, dtype)[rank]]
            loss = nt_xent(*ddp(*views), temperature=temperature, gather=True)
            loss.backward()
            res[f"simclr_{name}"] = {
                "loss": loss.detach(),
                "param_grads": {n: p.grad.clone() for n, p in model.named_parameters()},
                "input_grads": [v.grad.clone() for v in views],
            }

        for name, sizes, dim, k, iters, backend in KMEANS_CASES:
            xs = _data(3, sizes, dim, torch.float32)
            init = _data(4, (k,), dim, torch.float32)[0]
            res[f"km_{name}"] = kmeans(xs[rank], k, iters=iters, init=init, distributed=True, backend=backend)
        xs = _data(5, (40, 60), 4, torch.float32)
        res["km_rank0_init"] = kmeans(xs[rank], 5, seed=9, distributed=True, backend="torch")

        ok = OnlineKMeans(4, queue_batches=2, seed=3, distributed=True, backend="torch")
        steps = []
        for step in range(3):
            xb = _data(20 + step, (12, 12), 4, torch.float32)[rank]
            steps.append(ok(xb))
        res["online"] = steps
    finally:
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WS, join=True)
    return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(WS)]


def test_world_and_all_reduce(ranks: list[dict[str, Any]]) -> None:
    assert [r["world"] for r in ranks] == [(0, 2), (1, 2)]
    assert [r["all_reduce"] for r in ranks] == [3.0, 3.0]
    assert world() == (0, 1)
    t = torch.tensor([2.0])
    assert all_reduce_sum(t) is t and t.item() == 2.0
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


def test_gather_with_grad_unequal_sizes(ranks: list[dict[str, Any]]) -> None:
    xs = _data(1, (3, 5), 4)
    w = _data(2, (8,), 4)[0]
    full = torch.cat(xs)
    offsets = [0, 3]
    for r, res in enumerate(ranks):
        y, g = res["gather"]
        assert torch.equal(y, full)
        # Both ranks' losses use every row: the owner gets the sum of both gradients.
        assert torch.equal(g, WS * w[offsets[r] : offsets[r] + len(xs[r])])


def _max_dev(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("case", CONTRASTIVE_CASES, ids=[c[0] for c in CONTRASTIVE_CASES])
def test_contrastive_matches_single_process_global_batch(ranks: list[dict[str, Any]], case: tuple) -> None:
    name, mods, sizes, dtype, margin = case
    model = _Heads(mods).to(dtype)
    shards = _contrastive_inputs(mods, sizes, dtype)
    feats = {m: torch.cat([s[m] for s in shards]).requires_grad_() for m in mods}
    loss = mms_contrastive(model(feats), margin=margin)
    loss.backward()
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    devs = {}
    # Value: the mean over ranks of the returned per-rank values is the global loss.
    mean_loss = sum(r[name]["loss"] for r in ranks) / WS
    devs["value"] = _max_dev(mean_loss, loss.detach())
    # Parameters: after DDP's averaging, every rank holds the global gradient.
    devs["param_grad"] = 0.0
    for res in ranks:
        for n, p in model.named_parameters():
            devs["param_grad"] = max(devs["param_grad"], _max_dev(res[name]["param_grads"][n], p.grad))
    # Inputs: each rank's rows get world_size × their global gradient (DDP rescales params only).
    devs["input_grad"] = 0.0
    offsets = [0, sizes[0]]
    for r, res in enumerate(ranks):
        for m in mods:
            want = feats[m].grad[offsets[r] : offsets[r] + sizes[r]]
            devs["input_grad"] = max(devs["input_grad"], _max_dev(res[name]["input_grads"][m] / WS, want))
    print(f"\n[max deviation] contrastive {name}: {devs} (loss {loss.item():.6f})")
    assert all(v <= tol * max(1.0, loss.item()) for v in devs.values()), devs
    # Not vacuous: the gradient is non-zero and the per-rank values differ from the global one.
    assert max(float(p.grad.abs().max()) for p in model.parameters()) > 1e-3


@pytest.mark.parametrize("case", SIMCLR_CASES, ids=[c[0] for c in SIMCLR_CASES])
def test_simclr_matches_single_process_global_batch(ranks: list[dict[str, Any]], case: tuple) -> None:
    name, sizes, dtype, temperature = case
    model = _TwoViews().to(dtype)
    shards = _simclr_inputs(sizes, dtype)
    views = [torch.cat([s[i] for s in shards]).requires_grad_() for i in range(2)]
    loss = nt_xent(*model(*views), temperature=temperature)
    loss.backward()
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    got = [r[f"simclr_{name}"] for r in ranks]
    devs = {"value": _max_dev(sum(g["loss"] for g in got) / WS, loss.detach())}
    devs["param_grad"] = max(_max_dev(g["param_grads"][n], p.grad) for g in got for n, p in model.named_parameters())
    offsets = [0, sizes[0]]
    devs["input_grad"] = max(
        _max_dev(g["input_grads"][i] / WS, views[i].grad[offsets[r] : offsets[r] + sizes[r]])
        for r, g in enumerate(got) for i in range(2)
    )
    print(f"\n[max deviation] simclr {name}: {devs} (loss {loss.item():.6f})")
    assert all(v <= tol * max(1.0, loss.item()) for v in devs.values()), devs
    # Not vacuous: the gradient is non-zero, and each rank's own value is not the global one.
    assert max(float(p.grad.abs().max()) for p in model.parameters()) > 1e-3
    assert abs(float(got[0]["loss"]) - loss.item()) > 1e-6


@pytest.mark.parametrize("case", KMEANS_CASES, ids=[c[0] for c in KMEANS_CASES])
def test_distributed_kmeans_matches_single_process(ranks: list[dict[str, Any]], case: tuple) -> None:
    name, sizes, dim, k, iters, backend = case
    xs = _data(3, sizes, dim, torch.float32)
    init = _data(4, (k,), dim, torch.float32)[0]
    c_ref, l_ref = kmeans(torch.cat(xs), k, iters=iters, init=init, backend=backend)
    c0, l0 = ranks[0][f"km_{name}"]
    c1, l1 = ranks[1][f"km_{name}"]
    assert torch.equal(c0, c1)  # identical on every rank
    assert torch.equal(torch.cat([l0, l1]), l_ref)
    dev = _max_dev(c0, c_ref)
    print(f"\n[max deviation] k-means {name}: centroids {dev:.3g}, assignments equal")
    assert dev <= 1e-5


def test_distributed_kmeans_rank0_init(ranks: list[dict[str, Any]]) -> None:
    xs = _data(5, (40, 60), 4, torch.float32)
    c_ref, l_ref = kmeans(torch.cat(xs), 5, init=random_init(xs[0], 5, 9), backend="torch")
    (c0, l0), (c1, l1) = ranks[0]["km_rank0_init"], ranks[1]["km_rank0_init"]
    assert torch.equal(c0, c1)
    assert torch.equal(torch.cat([l0, l1]), l_ref)
    assert _max_dev(c0, c_ref) <= 1e-5


def test_distributed_online_kmeans_with_queue(ranks: list[dict[str, Any]]) -> None:
    hist: list[list[torch.Tensor]] = [[], []]
    worst = 0.0
    for step in range(3):
        xb = _data(20 + step, (12, 12), 4, torch.float32)
        # the queue (2 batches) joins the k-means input only once full: from step 2 on
        local = [torch.cat(hist[r][-2:] + [xb[r]]) if step >= 2 else xb[r] for r in range(WS)]
        c_ref, l_ref = kmeans(torch.cat(local), 4, init=random_init(local[0], 4, 3 + step), backend="torch")
        (c0, a0), (c1, a1) = ranks[0]["online"][step], ranks[1]["online"][step]
        assert torch.equal(c0, c1)
        n0 = len(local[0])
        assert torch.equal(a0, l_ref[n0 - 12 : n0])
        assert torch.equal(a1, l_ref[-12:])
        worst = max(worst, _max_dev(c0, c_ref))
        for r in range(WS):
            hist[r].append(xb[r])
    print(f"\n[max deviation] online k-means (queue 2, 3 steps): centroids {worst:.3g}")
    assert worst <= 1e-5
