"""One process's training step: heads, the losses, online k-means, AdamW and the schedule.

:class:`Stepper` is shared by the Ray Train loop (:mod:`conclugen.training.worker`) and the plain
PyTorch loop of ``benchmarks/train.py``, so both do exactly the same work per step. Training and
validation go through the same :meth:`Stepper.run_epoch`: per batch the losses, their weighted
mean (see docs/method.md, Losses), and one all-reduce of the loss values — global values for
logging, and a non-finite loss seen by every rank at the same step, so all stop together instead
of hanging in a collective.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from conclugen.model.distributed import all_reduce_sum, world
from conclugen.model.heads import ConCluGen, to_sync_batchnorm
from conclugen.model.kmeans import OnlineKMeans
from conclugen.model.losses import clustering, combine, mms_contrastive, nt_xent, reconstruction
from conclugen.model.memory_bank import MemoryBank, NonFiniteBankError
from conclugen.training.data import CLIP_KEY, second_view_key
from conclugen.training.errors import NonFiniteLossError, PretrainError
from conclugen.training.schedule import make_scheduler

if TYPE_CHECKING:
    from conclugen.config import Config

LOSS_NAMES = ("contrastive", "clustering", "reconstruction", "simclr")
# The SimCLR baseline contrasts two versions of the video features (docs/method.md, Losses).
SIMCLR_MODALITY = "video"


def seed_all(seed: int) -> None:
    """Seed Python, numpy and torch (the same initial weights on every rank)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cluster_stats(counts: torch.Tensor) -> dict[str, float]:
    """Occupancy (share of clusters used) and normalised entropy (1 = uniform) of assignments."""
    total = float(counts.sum())
    if total <= 0:
        return {}
    p = counts / total
    nz = p[p > 0]
    k = counts.numel()
    ent = float(-(nz * nz.log()).sum()) / math.log(k) if k > 1 else 0.0
    return {"cluster_occupancy": float((counts > 0).double().mean()), "cluster_entropy": ent}


class Stepper:
    """What one process trains with: ``model`` (the heads; ``module`` is what the forward pass runs
    on — the DDP wrapper after :meth:`wrap`), the loss weights, online k-means (the training
    queue, and a queue-less one for validation), AdamW and the per-epoch LR schedule."""

    def __init__(
        self,
        cfg: Config,
        input_dims: Mapping[str, int],
        device: torch.device | str = "cpu",
        distributed: bool = False,
        sync_batchnorm: bool = False,
        input_stats: Mapping[str, tuple[Any, Any]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.distributed = distributed
        self.world_size = world()[1]
        self.modalities = list(cfg.model.modalities)
        self.input_dims = {m: int(input_dims[m]) for m in self.modalities}
        self.weights = {n: float(getattr(cfg.losses, n)) for n in LOSS_NAMES}
        self.names = [n for n in LOSS_NAMES if self.weights[n] > 0]  # the losses logged, in order
        if self.weights["simclr"] > 0 and SIMCLR_MODALITY not in self.modalities:
            raise PretrainError(f"losses.simclr > 0 needs {SIMCLR_MODALITY!r} in model.modalities={self.modalities}")
        # Modalities whose training batches carry a second version (second_view_key).
        self.second_views = (SIMCLR_MODALITY,) if self.weights["simclr"] > 0 else ()
        model = ConCluGen.from_config(cfg.model, self.input_dims)
        if input_stats is not None:  # model.input_norm=standardize (a resume restores them too)
            model.set_input_stats({m: input_stats[m] for m in self.modalities})
        # On its device before the optimizer holds its parameters (prepare_model's move is then a no-op).
        self.model = (to_sync_batchnorm(model) if sync_batchnorm else model).to(self.device)
        self.module: torch.nn.Module = self.model
        self.kmeans = self._kmeans(cfg.losses.queue_batches)
        # Validation clusters each batch on its own, so it never touches the training queue (nor
        # the memory bank: the validation loss stays comparable across schedules).
        self.val_kmeans = self._kmeans(0)
        L = cfg.losses
        self.bank = MemoryBank(cfg.model.k, iters=L.kmeans_iters, tol=L.kmeans_tol, seed=cfg.train.seed,
                               distributed=distributed, device=self.device) \
            if L.kmeans_schedule == "memory_bank" else None
        self.counts = torch.zeros(cfg.model.k, dtype=torch.float64)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg.train)

    def _kmeans(self, queue: int) -> OnlineKMeans:
        L = self.cfg.losses
        # memory_bank: the training batches use the bank; per-batch k-means serves validation only.
        schedule = "every_step" if L.kmeans_schedule == "memory_bank" else L.kmeans_schedule
        return OnlineKMeans(
            self.cfg.model.k, queue_batches=queue, iters=L.kmeans_iters, tol=L.kmeans_tol,
            schedule=schedule, refit_every=L.kmeans_refit_every, seed=self.cfg.train.seed,
            distributed=self.distributed,
        )

    def _clusters_at(self, epoch: int) -> bool:
        return self.weights["clustering"] > 0 and epoch >= self.cfg.losses.kmeans_start_epoch

    def needs_bank_fill(self, epoch: int) -> bool:
        """memory_bank: this epoch clusters but the bank is empty (the first clustering epoch, or
        the first epoch after a resume: the bank is not checkpointed), so :meth:`fill_bank` first.
        The same answer on every rank (each rank trains the same number of steps per epoch)."""
        return self.bank is not None and self._clusters_at(epoch) and len(self.bank) == 0

    def fill_bank(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        """A no-grad pass over ``batches`` (the epoch's training batches) that records their fused
        cluster-head outputs in the bank, as DeepCluster-v2 initialises its memory. Training mode,
        as the training steps compute them (BatchNorm on the batch's statistics); the BatchNorm
        running statistics are restored afterwards, so the pass leaves the model unchanged."""
        assert self.bank is not None
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}
        self.model.train(True)
        with torch.no_grad():
            for feats in batches:
                out = self.model(feats, heads=["cluster_logits"])
                self.bank.add(self._keys(feats), torch.stack([out.cluster_logits[m] for m in self.modalities]).mean(0))
        for k, v in self.model.named_buffers():
            v.copy_(buffers[k])

    def _keys(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if CLIP_KEY not in feats:
            raise PretrainError(f"losses.kmeans_schedule=memory_bank needs the rows' clip keys in each training "
                                f"batch ({CLIP_KEY!r}: conclugen.training.data.WorkerBatches(keys=True))")
        return feats[CLIP_KEY]

    def wrap(self, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        """Run the forward pass through ``wrap(model)`` (e.g. Ray Train's DDP ``prepare_model``);
        the optimizer keeps the model's parameters."""
        self.module = wrap(self.model)

    def find_unused(self) -> bool:
        """DDP must tolerate parameters without gradient when a head's loss is (sometimes) off
        (SimCLR only adds uses of the video and projection heads, so it leaves nothing unused)."""
        heads = [self.weights[n] for n in ("contrastive", "clustering", "reconstruction")]
        return min(heads) == 0 or self.cfg.losses.kmeans_start_epoch > 0

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer and scheduler state (the resumable part of a checkpoint payload)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "kmeans": self._kmeans_state()}

    def load_state_dict(self, payload: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (after :meth:`wrap`, which may move the model's device)."""
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        for name, km in self._kmeans_by_name().items():  # absent in checkpoints of older versions
            state = payload.get("kmeans", {}).get(name)
            if state is not None:
                km.step = int(state["step"])
                km.centroids = None if state["centroids"] is None else state["centroids"].to(self.device)

    def _kmeans_by_name(self) -> dict[str, OnlineKMeans]:
        return {"train": self.kmeans, "val": self.val_kmeans}

    def _kmeans_state(self) -> dict[str, Any]:
        """Each k-means' call counter (it seeds every refit) and centroids (warm starts): with them
        a resumed run clusters as the uninterrupted one would (the queue is emptied each epoch)."""
        return {name: {"step": km.step, "centroids": None if km.centroids is None else km.centroids.detach().cpu()}
                for name, km in self._kmeans_by_name().items()}

    def losses(self, feats: Mapping[str, torch.Tensor], epoch: int, train: bool) -> dict[str, torch.Tensor]:
        """The active losses of one batch (clustering from ``losses.kmeans_start_epoch`` on).

        SimCLR contrasts ``feats["video"]`` with the batch's second video version
        (``second_view_key("video")``). Validation batches have none (validation reads the plain
        version): both views are then the plain vector, so the validation SimCLR term measures
        only how far apart different clips are *(ours)*."""
        L = self.cfg.losses
        views = {m: feats[second_view_key(m)] for m in self.second_views if second_view_key(m) in feats}
        if train and len(views) < len(self.second_views):
            raise PretrainError(f"losses.simclr needs a second version of {list(self.second_views)} in each "
                                "training batch: train on a store extracted with extract.augmentations ≥ 1")
        cluster = self._clusters_at(epoch)
        out = self.module(feats, views=views, heads=self._heads(cluster))
        losses: dict[str, torch.Tensor] = {}
        if self.weights["contrastive"] > 0:
            losses["contrastive"] = mms_contrastive(out.projections, margin=L.margin, gather=self.distributed)
        if cluster:
            fused = torch.stack([out.cluster_logits[m] for m in self.modalities]).mean(0).detach()
            keys = self._keys(feats) if train and self.bank is not None else None
            losses["clustering"] = self._clustering(out.cluster_logits, fused, train, keys)
        if self.weights["reconstruction"] > 0:
            # the target is the standardised input the heads read (model.input_norm)
            losses["reconstruction"] = reconstruction(out.reconstructions, out.inputs)
        if self.weights["simclr"] > 0:
            za = out.projections[SIMCLR_MODALITY]
            zb = out.view_projections.get(SIMCLR_MODALITY, za)
            losses["simclr"] = nt_xent(za, zb, temperature=L.simclr_temperature, gather=self.distributed)
        return losses

    def _heads(self, cluster: bool) -> list[str]:
        """The model outputs this step's losses use; only those are computed (see
        :meth:`conclugen.model.heads.ConCluGen.forward`: an output no loss uses breaks DDP)."""
        w = self.weights
        return [h for h, used in (("projections", w["contrastive"] > 0 or w["simclr"] > 0),
                                  ("cluster_logits", cluster), ("reconstructions", w["reconstruction"] > 0)) if used]

    def _clustering(self, cluster_logits: Mapping[str, torch.Tensor], fused: torch.Tensor, train: bool,
                    keys: torch.Tensor | None = None) -> torch.Tensor:
        # k-means on NaN/inf input fails obscurely (or hangs a collective): every rank learns
        # whether any rank has a non-finite vector and all skip together; the NaN loss is then
        # reported by run_epoch's check with epoch and step. The same all-reduce carries the
        # number of rows the memory bank has labels for.
        found = None if keys is None else self.bank.lookup(keys)  # type: ignore[union-attr]
        flags = torch.stack([(~torch.isfinite(fused).all()).to(torch.float32),
                             fused.new_tensor(0.0 if found is None else float(found[1].sum()), dtype=torch.float32)])
        bad, n_found = all_reduce_sum(flags).tolist()
        if bad > 0:
            return fused.new_tensor(float("nan"))
        if found is not None:
            assert keys is not None
            return self._bank_clustering(cluster_logits, fused, keys, *found, n_found)
        km = self.kmeans if train else self.val_kmeans
        if not train:
            km.reset()
        centroids, assignments = km(fused)
        L = self.cfg.losses
        loss = clustering(cluster_logits, centroids.to(fused.dtype), assignments, mode=L.mode, margin=L.cluster_margin)
        if train:
            self.counts += torch.bincount(assignments.long().cpu(), minlength=self.cfg.model.k).double()
        return loss

    def _bank_clustering(self, cluster_logits: Mapping[str, torch.Tensor], fused: torch.Tensor, keys: torch.Tensor,
                         labels: torch.Tensor, found: torch.Tensor, n_found: float) -> torch.Tensor:
        """The clustering loss against the bank's labels and centroids of the epoch, over the rows
        the bank has a label for (docs/method.md, Losses). Per rank ``ws · Σ_found CE / N_found``
        with N_found over all ranks: the mean over ranks is the mean CE over the global batch's
        found rows, and DDP's average its gradient (the convention of model.losses)."""
        assert self.bank is not None
        self.bank.add(keys, fused)
        mine = int(found.sum())
        if mine == 0 or self.bank.clusters is None:  # a zero that keeps the cluster head in the graph (DDP)
            return sum(c.sum() for c in cluster_logits.values()) * 0.0  # type: ignore[return-value]
        L = self.cfg.losses
        centroids = self.bank.clusters.centroids.to(fused.dtype)
        loss = clustering({m: c[found] for m, c in cluster_logits.items()}, centroids, labels[found],
                          mode=L.mode, margin=L.cluster_margin)
        self.counts += torch.bincount(labels[found].long().cpu(), minlength=self.cfg.model.k).double()
        return loss * (mine * self.world_size / n_found)

    def total(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return combine(losses, self.weights)

    def reduce(self, losses: Mapping[str, torch.Tensor], total: torch.Tensor) -> torch.Tensor:
        """[each of ``names``, total] averaged over ranks, float64 on CPU (0 for an inactive loss)."""
        vals = torch.stack([losses[n].detach() if n in losses else total.new_zeros(()) for n in self.names]
                           + [total.detach()])
        return all_reduce_sum(vals.double()).cpu() / self.world_size  # on the device: NCCL has no CPU tensors

    def run_epoch(
        self,
        batches: Iterable[Mapping[str, torch.Tensor]],
        epoch: int,
        train: bool,
        after_first_step: Callable[[], None] | None = None,
    ) -> dict[str, float]:
        """One pass over ``batches``: the mean global losses (``names`` active this epoch, and
        ``loss``, the total). Training steps the optimizer per batch and the scheduler once at the
        end, and raises :class:`NonFiniteLossError` (before updating) at a non-finite loss on any
        rank; validation clusters each batch on its own and records no cluster counts."""
        if train:
            self._epoch_start(epoch)
            self.counts.zero_()
        self.module.train(train)
        sums = torch.zeros(len(self.names) + 1, dtype=torch.float64)
        n = 0
        with nullcontext() if train else torch.no_grad():
            for step, feats in enumerate(batches):
                losses = self.losses(feats, epoch, train)
                total = self.total(losses)
                vals = self.reduce(losses, total)
                if train:
                    self._update(total, vals, epoch, step)
                    if step == 0 and after_first_step is not None:
                        after_first_step()
                sums += vals
                n += 1
        if train:
            self.scheduler.step()
        out = {name: float(sums[i] / n) for i, name in enumerate(self.names)
               if name != "clustering" or epoch >= self.cfg.losses.kmeans_start_epoch}
        out["loss"] = float(sums[-1] / n)
        return out

    def _epoch_start(self, epoch: int) -> None:
        """Reset the per-step queue, or (memory_bank, clustering epochs) cluster the bank the ranks
        recorded during the last epoch (or :meth:`fill_bank`) and start this epoch's shard."""
        if self.bank is None:
            self.kmeans.reset()
        elif self._clusters_at(epoch):
            try:
                self.bank.recluster(epoch)
            except NonFiniteBankError as e:  # raised on every rank together (recluster all-reduces its checks)
                raise NonFiniteLossError(f"memory bank at epoch {epoch}: {e}", epoch, 0) from e

    def _update(self, total: torch.Tensor, vals: torch.Tensor, epoch: int, step: int) -> None:
        if not bool(torch.isfinite(vals).all()):
            bad = ", ".join(f"{n}={v:.4g}" for n, v in zip([*self.names, "total"], vals.tolist(), strict=True))
            raise NonFiniteLossError(f"non-finite loss at epoch {epoch}, step {step}: {bad}", epoch, step)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()

    def cluster_stats(self) -> dict[str, float]:
        """:func:`cluster_stats` of this epoch's training assignments, summed over ranks."""
        return cluster_stats(all_reduce_sum(self.counts.to(self.device)).cpu())
