"""Each loss against plain numpy written from the equations of docs/method.md, Losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conclugen.model.losses import clustering, combine, mms_contrastive, nt_xent, reconstruction


def _np_ce(logits: np.ndarray, target: np.ndarray) -> float:
    """Mean over rows of −log softmax(logits)[target] (log-sum-exp written out)."""
    mx = logits.max(axis=1, keepdims=True)
    lse = (mx + np.log(np.exp(logits - mx).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(lse - logits[np.arange(len(target)), target]))


def _np_mms(z: dict[str, np.ndarray], m: float) -> float:
    names = list(z)
    pairs = (
        [(names[0], names[1])]
        if len(names) == 2
        else [(names[i], names[(i + 1) % len(names)]) for i in range(len(names))]
    )
    total = 0.0
    for a, b in pairs:
        s = z[a] @ z[b].T - m * np.eye(len(z[a]))
        diag = np.arange(len(s))
        total += _np_ce(s, diag) + _np_ce(s.T, diag)
    return total


def _unit(rng: np.random.Generator, b: int, p: int) -> np.ndarray:
    x = rng.normal(size=(b, p))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("names", [("video", "audio"), ("video", "audio", "text")])
@pytest.mark.parametrize("margin", [0.0, 0.001, 0.5])
def test_mms_contrastive_matches_numpy(names: tuple[str, ...], margin: float) -> None:
    rng = np.random.default_rng(len(names) * 10 + int(margin * 1000))
    z = {n: _unit(rng, 7, 5) for n in names}
    got = mms_contrastive({n: torch.tensor(v) for n, v in z.items()}, margin=margin)
    assert got.item() == pytest.approx(_np_mms(z, margin), rel=1e-10, abs=1e-12)
    # gather=True outside torch.distributed is the plain loss.
    got_g = mms_contrastive({n: torch.tensor(v) for n, v in z.items()}, margin=margin, gather=True)
    assert got_g.item() == pytest.approx(got.item(), rel=1e-12)


def test_mms_margin_changes_the_value_and_pair_order_matters() -> None:
    rng = np.random.default_rng(1)
    z = {n: torch.tensor(_unit(rng, 6, 4)) for n in ("a", "b", "c")}
    assert mms_contrastive(z, margin=0.3).item() > mms_contrastive(z, margin=0.0).item()
    # Three modalities: all three cyclic pairs, so the loss is symmetric under reordering...
    zr = {k: z[k] for k in ("c", "a", "b")}
    assert mms_contrastive(zr).item() == pytest.approx(mms_contrastive(z).item(), rel=1e-12)
    # ...and equals the sum of the three two-modality losses.
    two = sum(mms_contrastive({a: z[a], b: z[b]}).item() for a, b in [("a", "b"), ("b", "c"), ("c", "a")])
    assert mms_contrastive(z).item() == pytest.approx(two, rel=1e-12)


def test_mms_needs_two_modalities() -> None:
    with pytest.raises(ValueError, match="at least two"):
        mms_contrastive({"video": torch.randn(3, 4)})


def test_mms_gradient_is_correct() -> None:
    torch.manual_seed(0)
    za = torch.nn.functional.normalize(torch.randn(5, 3, dtype=torch.float64), dim=1).requires_grad_()
    zb = torch.nn.functional.normalize(torch.randn(5, 3, dtype=torch.float64), dim=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: mms_contrastive({"a": a, "b": b}, margin=0.1), (za, zb))


def _np_cluster_term(x: np.ndarray, c: np.ndarray, lab: np.ndarray, m: float) -> float:
    s = x @ c.T
    s[np.arange(len(lab)), lab] -= m
    return _np_ce(s, lab)


@pytest.mark.parametrize("n_mod", [2, 3])
@pytest.mark.parametrize("margin", [0.0, 0.001, 0.7])
def test_clustering_joint_and_individual_match_numpy(n_mod: int, margin: float) -> None:
    rng = np.random.default_rng(n_mod + int(margin * 100))
    b, k = 9, 4
    logits = {f"m{i}": rng.normal(size=(b, k)) for i in range(n_mod)}
    cent = rng.normal(size=(k, k))
    lab = rng.integers(0, k, size=b)
    t_logits = {n: torch.tensor(v) for n, v in logits.items()}
    fused = np.mean(np.stack(list(logits.values())), axis=0)
    joint = clustering(t_logits, torch.tensor(cent), torch.tensor(lab), "joint", margin)
    assert joint.item() == pytest.approx(_np_cluster_term(fused, cent, lab, margin), rel=1e-10)
    indiv = clustering(t_logits, torch.tensor(cent), torch.tensor(lab), "individual", margin)
    want = sum(_np_cluster_term(v, cent, lab, margin) for v in logits.values())
    assert indiv.item() == pytest.approx(want, rel=1e-10)
    assert indiv.item() != pytest.approx(joint.item(), rel=1e-3)


def test_clustering_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="joint"):
        clustering({"a": torch.randn(2, 3)}, torch.randn(3, 3), torch.tensor([0, 1]), mode="both")


@pytest.mark.parametrize("n_mod", [1, 2, 3])
def test_reconstruction_matches_numpy(n_mod: int) -> None:
    rng = np.random.default_rng(n_mod)
    dims = [6, 3, 4][:n_mod]
    rec = {f"m{i}": rng.normal(size=(5, d)) for i, d in enumerate(dims)}
    tgt = {f"m{i}": rng.normal(size=(5, d)) for i, d in enumerate(dims)}
    want = sum(float(np.mean((rec[m] - tgt[m]) ** 2)) for m in rec)
    got = reconstruction(
        {m: torch.tensor(v) for m, v in rec.items()}, {m: torch.tensor(v) for m, v in tgt.items()}
    )
    assert got.item() == pytest.approx(want, rel=1e-12)
    with pytest.raises(KeyError):
        reconstruction({"m0": torch.zeros(2, 6)}, {"other": torch.zeros(2, 6)})


def test_combine_is_weighted_mean_over_active_losses() -> None:
    losses = {
        "contrastive": torch.tensor(2.0),
        "clustering": torch.tensor(3.0),
        "reconstruction": torch.tensor(5.0),
    }
    w = {"contrastive": 0.5, "clustering": 0.25, "reconstruction": 2.0}
    assert combine(losses, w).item() == pytest.approx((0.5 * 2 + 0.25 * 3 + 2 * 5) / 3)
    # A zero weight makes a loss inactive: it counts neither in the sum nor in n_active.
    w0 = {**w, "clustering": 0.0}
    assert combine(losses, w0).item() == pytest.approx((0.5 * 2 + 2 * 5) / 2)
    # A loss left out (e.g. clustering before kmeans_start_epoch) is inactive too.
    part = {k: v for k, v in losses.items() if k != "clustering"}
    assert combine(part, w).item() == pytest.approx((0.5 * 2 + 2 * 5) / 2)
    with pytest.raises(KeyError, match="no weight"):
        combine({"typo": torch.tensor(1.0)}, w)
    with pytest.raises(ValueError, match="no active"):
        combine({"clustering": torch.tensor(1.0)}, w0)


def test_combine_gradient_flows_only_through_active_losses() -> None:
    a = torch.tensor(1.0, requires_grad=True)
    b = torch.tensor(1.0, requires_grad=True)
    combine({"x": a * 3, "y": b * 4}, {"x": 2.0, "y": 0.0}).backward()
    assert a.grad.item() == pytest.approx(6.0)
    assert b.grad is None


def _np_nt_xent(a: np.ndarray, b: np.ndarray, t: float) -> float:
    """NT-Xent from its equation: z = normalised [a; b], s_kj = z_k·z_j / τ, positive p(k) = k ± N,
    ℓ_k = −log(exp(s_k,p(k)) / Σ_{j≠k} exp(s_kj)), mean over the 2N rows."""
    z = np.concatenate([a, b])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(a)
    total = 0.0
    for k in range(2 * n):
        p = (k + n) % (2 * n)
        s = np.array([z[k] @ z[j] / t for j in range(2 * n) if j != k])
        pos = z[k] @ z[p] / t
        total += -(pos - (s.max() + np.log(np.exp(s - s.max()).sum())))
    return total / (2 * n)


@pytest.mark.parametrize("t", [0.07, 0.5, 1.0])
@pytest.mark.parametrize("n", [2, 7])
def test_nt_xent_matches_numpy(t: float, n: int) -> None:
    rng = np.random.default_rng(n * 100 + int(t * 100))
    a, b = rng.normal(size=(n, 5)), rng.normal(size=(n, 5))  # not normalised: the loss normalises
    got = nt_xent(torch.tensor(a), torch.tensor(b), temperature=t)
    assert got.item() == pytest.approx(_np_nt_xent(a, b, t), rel=1e-10)
    # gather=True outside torch.distributed is the plain loss; the two views play symmetric roles.
    assert nt_xent(torch.tensor(a), torch.tensor(b), t, gather=True).item() == pytest.approx(got.item(), rel=1e-12)
    assert nt_xent(torch.tensor(b), torch.tensor(a), t).item() == pytest.approx(got.item(), rel=1e-10)


def test_nt_xent_rewards_matching_views_and_has_a_correct_gradient() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 4))
    near = nt_xent(torch.tensor(a), torch.tensor(a + 0.01 * rng.normal(size=a.shape))).item()
    shuffled = nt_xent(torch.tensor(a), torch.tensor(a[::-1].copy())).item()
    assert near < shuffled
    torch.manual_seed(0)
    za, zb = (torch.randn(5, 3, dtype=torch.float64).requires_grad_() for _ in range(2))
    assert torch.autograd.gradcheck(lambda x, y: nt_xent(x, y, temperature=0.2), (za, zb))
    with pytest.raises(ValueError, match="differ in shape"):
        nt_xent(torch.zeros(3, 2), torch.zeros(4, 2))
