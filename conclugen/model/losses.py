"""ConCluGen losses as pure tensor functions (see docs/method.md, Losses).

Distributed convention (``gather=True`` under torch.distributed): every loss returned on a rank
is a *per-rank term whose mean over ranks equals the loss of the global batch*, and whose
gradient, averaged over ranks by DDP, equals the gradient of the global-batch loss.

- Local losses (clustering, reconstruction) are batch means over the local rows; with equal
  local batch sizes their mean over ranks is the global-batch mean, and DDP's gradient average
  is the global gradient — nothing to do.
- The contrastive loss needs negatives from the global batch. Each rank all-gathers the
  projections (``gather_with_grad``) and computes only *its own rows* (and columns) of the global
  similarity matrix: ``L_r = (1/N) Σ_{rows i on r} CE_i`` with N the global batch, so that
  ``Σ_r L_r = L_global``. Backpropagating ``L_r`` sends gradients to every rank's rows through the
  gather, whose backward sums them on the owner; each rank's parameter gradient is then the
  share of ``∇L_global`` flowing through its own inputs, and their *sum* is ``∇L_global``. DDP
  *averages*, so each rank returns ``world_size · L_r``: its DDP mean is exactly ``∇L_global``
  and the mean of the returned values over ranks is ``L_global``. (With one process this is the
  ordinary loss.) To log the global value, average the returned value over ranks.
- The SimCLR loss (:func:`nt_xent`) follows the same convention: each rank gathers both views
  and computes only its own rows of the global 2N × 2N similarity matrix.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from conclugen.model.distributed import gather_with_grad_offset, world


def _pairs(names: list[str]) -> list[tuple[str, str]]:
    """Cyclic pairs: (a, b) for two modalities; (a, b), (b, c), (c, a) for three."""
    if len(names) < 2:
        raise ValueError(f"the contrastive loss needs at least two modalities, got {names}")
    if len(names) == 2:
        return [(names[0], names[1])]
    return [(names[i], names[(i + 1) % len(names)]) for i in range(len(names))]


def _margin_ce_sum(logits: Tensor, target: Tensor, margin: float) -> Tensor:
    """Σ_rows CE(logits − margin at the target column, target)."""
    if margin:
        logits = logits.scatter_add(
            1, target[:, None], torch.full_like(target[:, None], -margin, dtype=logits.dtype)
        )
    return F.cross_entropy(logits, target, reduction="sum")


def mms_contrastive(projections: Mapping[str, Tensor], margin: float = 0.001, gather: bool = False) -> Tensor:
    """Max-margin symmetric contrastive loss over cyclic modality pairs.

    Per pair (i, j): ``S = z_i z_jᵀ − m·I``; ``CE(S, arange) + CE(Sᵀ, arange)`` with CE
    averaged over the batch; pair losses summed. ``projections`` are L2-normalised [B, P].
    With ``gather=True`` under torch.distributed the negatives come from the global batch; see
    the module docstring for the value/gradient convention.
    """
    names = list(projections)
    pairs = _pairs(names)
    if gather:
        _, ws = world()
        glob: dict[str, Tensor] = {}
        offset = 0
        for m in names:
            glob[m], offset = gather_with_grad_offset(projections[m])
        n_global = next(iter(glob.values())).shape[0]
    else:
        ws, glob, offset = 1, dict(projections), 0
        n_global = next(iter(glob.values())).shape[0]
    total = projections[names[0]].new_zeros(())
    for a, b in pairs:
        za, zb = projections[a], projections[b]
        target = torch.arange(za.shape[0], device=za.device) + offset
        # Rows of S owned by this rank: z_a(local) · z_b(global)ᵀ; columns of S are rows of Sᵀ:
        # z_b(local) · z_a(global)ᵀ. Without gather these are S and Sᵀ themselves.
        rows = _margin_ce_sum(za @ glob[b].T, target, margin)
        cols = _margin_ce_sum(zb @ glob[a].T, target, margin)
        total = total + (rows + cols)
    return total * (ws / n_global)


def nt_xent(view_a: Tensor, view_b: Tensor, temperature: float = 0.07, gather: bool = False) -> Tensor:
    """SimCLR's NT-Xent between two views of the same clips (row i of ``view_a`` and of ``view_b``).

    With ``z = normalise(concat(view_a, view_b))`` ([2N, P]) and ``S = z zᵀ / τ``, row k's loss is
    the cross-entropy of ``S[k, j ≠ k]`` against its other view (k ± N), averaged over the 2N
    rows, as in the reference's ``SimCLRLoss`` (src/losses/simclr_loss.py: normalise, drop the
    diagonal, the positive against all 2N − 2 negatives, ``CrossEntropyLoss`` mean). With
    ``gather=True`` under torch.distributed the negatives are those of the global batch and
    each rank computes only its own 2n rows; see the module docstring for the value/gradient
    convention.
    """
    if view_a.shape != view_b.shape:
        raise ValueError(f"the two views differ in shape: {tuple(view_a.shape)} vs {tuple(view_b.shape)}")
    za, zb = F.normalize(view_a, dim=1), F.normalize(view_b, dim=1)
    if gather:
        _, ws = world()
        ga, offset = gather_with_grad_offset(za)
        gb, _ = gather_with_grad_offset(zb)
    else:
        ws, ga, gb, offset = 1, za, zb, 0
    n, n_global = za.shape[0], ga.shape[0]
    keys = torch.cat([ga, gb])  # global rows: view a 0..N-1, view b N..2N-1
    own = torch.arange(n, device=za.device) + offset
    rows = torch.cat([own, own + n_global])  # this rank's rows of the global matrix
    positives = torch.cat([own + n_global, own])
    logits = torch.cat([za, zb]) @ keys.T / temperature
    self_sim = F.one_hot(rows, 2 * n_global).bool()
    logits = logits.masked_fill(self_sim, float("-inf"))
    return F.cross_entropy(logits, positives, reduction="sum") * (ws / (2 * n_global))


def clustering(
    cluster_logits: Mapping[str, Tensor],
    centroids: Tensor,
    assignments: Tensor,
    mode: str = "joint",
    margin: float = 0.001,
) -> Tensor:
    """Clustering loss: ``S = x Cᵀ``, ``S[label] −= margin``, CE averaged over the batch.

    ``joint``: x = mean over modalities of the cluster-head outputs; ``individual``: one term per
    modality (x = c_m, same centroids and labels), summed. ``centroids`` [K, K] and
    ``assignments`` [B] come from k-means on the detached fused vectors (no gradient).
    """
    if not cluster_logits:
        raise ValueError("clustering needs at least one modality")
    target = assignments.long()
    if mode == "joint":
        xs = [torch.stack(list(cluster_logits.values())).mean(0)]
    elif mode == "individual":
        xs = list(cluster_logits.values())
    else:
        raise ValueError(f"clustering mode must be 'joint' or 'individual', got {mode!r}")
    total = xs[0].new_zeros(())
    for x in xs:
        total = total + _margin_ce_sum(x @ centroids.T, target, margin) / x.shape[0]
    return total


def reconstruction(reconstructions: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> Tensor:
    """Σ over modalities of MSE(decoder_m(rep_m), backbone feature_m) (mean over elements)."""
    if not reconstructions:
        raise ValueError("reconstruction needs at least one modality")
    missing = [m for m in reconstructions if m not in targets]
    if missing:
        raise KeyError(f"reconstruction targets missing for {missing}")
    return torch.stack([F.mse_loss(r, targets[m]) for m, r in reconstructions.items()]).sum()


def combine(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """Weighted mean over the active losses: ``(Σ λ_i L_i) / n_active``.

    A loss is *active* when it is present in ``losses`` and its weight is > 0. Callers leave out
    losses that are switched off (e.g. clustering before ``kmeans_start_epoch``), so they do not
    count in ``n_active``; a present loss with weight 0 is ignored. A loss without a weight is an
    error (it would otherwise be silently dropped).
    """
    unknown = [k for k in losses if k not in weights]
    if unknown:
        raise KeyError(f"no weight for losses {unknown}; weights have {sorted(weights)}")
    active = [k for k in losses if float(weights[k]) > 0]
    if not active:
        raise ValueError(f"no active loss among {list(losses)} with weights {dict(weights)}")
    total = sum(float(weights[k]) * losses[k] for k in active)
    return total / len(active)  # type: ignore[return-value]
