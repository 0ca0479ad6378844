"""Cosine k-means against numpy written from docs/method.md (Clustering), against faiss on
separated data, and the online (queue + schedule) wrapper."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from conclugen.model.kmeans import OnlineKMeans, kmeans, random_init


def _np_kmeans(x: np.ndarray, init: np.ndarray, iters: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Cosine k-means: argmax cosine, centroid = mean of assigned points; empty clusters take the
    points with the lowest similarity to their centroid (ties by index), in cluster order."""
    c = init.copy()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for _ in range(iters):
        cn = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
        s = xn @ cn.T
        lab = s.argmax(axis=1)
        sim = s[np.arange(len(x)), lab]
        new = np.zeros_like(c)
        empty = []
        for j in range(len(c)):
            members = lab == j
            if members.any():
                new[j] = x[members].mean(axis=0)
            else:
                empty.append(j)
        order = np.argsort(sim, kind="stable")
        for i, j in enumerate(empty):
            new[j] = x[order[i % len(x)]]
        shift = ((new - c) ** 2).sum()
        c = new
        if shift <= tol:
            break
    return c, lab


def _blobs(n_per: int, k: int, d: int, seed: int, spread: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.linalg.qr(rng.normal(size=(d, d)))[0][:k] * 3  # orthogonal directions
    labels = np.repeat(np.arange(k), n_per)
    x = centers[labels] + spread * rng.normal(size=(len(labels), d))
    return x, labels


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_reference_on_random_data(backend: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    init = x[rng.choice(200, 7, replace=False)]
    c, lab = kmeans(torch.tensor(x), 7, iters=30, tol=1e-6, init=torch.tensor(init), backend=backend)
    c_np, lab_np = _np_kmeans(x.astype(np.float64), init.astype(np.float64), 30, 1e-6)
    np.testing.assert_array_equal(lab.numpy(), lab_np)
    np.testing.assert_allclose(c.numpy(), c_np, rtol=1e-4, atol=1e-5)


def test_empty_cluster_is_reseeded_like_numpy() -> None:
    rng = np.random.default_rng(3)
    x = np.abs(rng.normal(size=(40, 4))).astype(np.float32)  # all in the positive orthant
    init = np.concatenate([x[:3], -np.ones((2, 4), np.float32)])  # two centroids nobody picks
    c, lab = kmeans(torch.tensor(x), 5, iters=1, init=torch.tensor(init))
    c_np, lab_np = _np_kmeans(x.astype(np.float64), init.astype(np.float64), 1, 1e-4)
    np.testing.assert_array_equal(lab.numpy(), lab_np)
    np.testing.assert_allclose(c.numpy(), c_np, rtol=1e-5, atol=1e-6)
    # The re-seeded centroids are the two points worst served by their centroid.
    assert any(np.allclose(c.numpy()[3], p) for p in x)
    c2, lab2 = kmeans(torch.tensor(x), 5, iters=50, init=torch.tensor(init))
    assert len(set(lab2.tolist())) == 5


def test_k_larger_than_points_is_deterministic_and_finite() -> None:
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    c1, l1 = kmeans(x, 12, seed=4)
    c2, l2 = kmeans(x, 12, seed=4)
    assert torch.equal(c1, c2) and torch.equal(l1, l2)
    assert c1.shape == (12, 3) and torch.isfinite(c1).all()
    assert l1.min() >= 0 and l1.max() < 12
    # Every point sits in its own cluster (5 points, 12 clusters) and is its centroid.
    assert len(set(l1.tolist())) == 5
    assert torch.allclose(c1[l1], x)


def test_well_separated_data_recovers_the_clusters_like_faiss() -> None:
    x, truth = _blobs(60, 6, 16, seed=5)
    xt = torch.tensor(x, dtype=torch.float32)
    # k-means++-free random init can merge blobs; a few seeds and the best inertia, like faiss.
    best = max(
        (kmeans(xt, 6, seed=s) for s in range(5)),
        key=lambda r: float(
            (
                torch.nn.functional.normalize(xt, dim=1) * torch.nn.functional.normalize(r[0], dim=1)[r[1]]
            ).sum()
        ),
    )
    assert _same_partition(best[1].numpy(), truth)
    km = faiss.Kmeans(16, 6, niter=50, spherical=True, nredo=5, seed=1)
    xn = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    km.train(xn)
    _, flab = km.index.search(xn, 1)
    assert _same_partition(best[1].numpy(), flab[:, 0])


def test_tol_stops_early_and_iters_caps() -> None:
    x, _ = _blobs(30, 3, 8, seed=2)
    xt = torch.tensor(x, dtype=torch.float32)
    init = xt[[0, 30, 60]]
    c_conv, _ = kmeans(xt, 3, init=init, tol=1e-4)
    c_one, _ = kmeans(xt, 3, init=init, iters=1)
    # Converged in one step already (init points are in distinct blobs): same centroids.
    assert torch.allclose(c_conv, c_one, atol=1e-5)
    c_rnd, _ = kmeans(torch.randn(300, 5), 8, iters=1, tol=0.0, seed=0)
    c_rnd2, _ = kmeans(torch.randn(300, 5), 8, iters=2, tol=0.0, seed=0)
    assert not torch.allclose(c_rnd, c_rnd2)


def test_online_every_step_equals_kmeans_on_queue_plus_batch() -> None:
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(10, 4, generator=g) for _ in range(5)]
    ok = OnlineKMeans(3, queue_batches=2, seed=7)
    for step, xb in enumerate(batches):
        # the queue joins only once it holds queue_batches batches (the reference's rule)
        data = torch.cat(batches[step - 2 : step + 1]) if step >= 2 else xb
        c, a = ok(xb)
        c_ref, l_ref = kmeans(data, 3, seed=7 + step)
        assert torch.equal(c, c_ref)
        assert torch.equal(a, l_ref[-10:])
    assert len(ok._queue) == 2
    ok.reset()
    assert len(ok._queue) == 0
    c, a = ok(batches[0])
    assert torch.equal(c, kmeans(batches[0], 3, seed=7 + 5)[0])


def test_online_warm_schedule_refits_every_n_steps() -> None:
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(12, 4, generator=g) for _ in range(7)]
    ok = OnlineKMeans(3, queue_batches=3, schedule="warm", refit_every=3, seed=0)
    c0, a0 = ok(batches[0])  # first call: fit from a random init
    assert torch.equal(c0, kmeans(batches[0], 3, seed=0)[0])
    c1, a1 = ok(batches[1])  # assignment only
    assert torch.equal(c1, c0)
    cn = torch.nn.functional.normalize(c0, dim=1)
    assert torch.equal(a1, (torch.nn.functional.normalize(batches[1], dim=1) @ cn.T).argmax(1))
    c2, _ = ok(batches[2])
    assert torch.equal(c2, c0)
    c3, a3 = ok(batches[3])  # refit on the whole queue + batch, warm-started from c0
    data = torch.cat(batches[0:4])
    c_ref, l_ref = kmeans(data, 3, init=c0)
    assert torch.equal(c3, c_ref) and torch.equal(a3, l_ref[-12:])
    ok.reset()  # epoch start: next call refits (warm) on the batch alone
    c4, _ = ok(batches[4])
    assert torch.equal(c4, kmeans(batches[4], 3, init=c3)[0])


def test_random_init_cycles_when_k_exceeds_points() -> None:
    x = torch.arange(6.0).reshape(3, 2)
    init = random_init(x, 7, seed=0)
    assert init.shape == (7, 2)
    assert {tuple(r) for r in init.tolist()} == {tuple(r) for r in x.tolist()}


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        kmeans(torch.zeros(0, 3), 2)
    with pytest.raises(ValueError, match="init"):
        kmeans(torch.randn(4, 3), 2, init=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="schedule"):
        OnlineKMeans(2, schedule="sometimes")
