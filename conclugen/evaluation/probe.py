"""Linear-probe evaluation of frozen representations (see docs/method.md, Linear probe).

The classifier is ``Dropout(0.5) → Linear`` (Kaiming-normal weights, zero bias) trained with
AdamW (lr 0.00967, weight decay 0.004, batch 4096 — ``cfg.probe``) on the frozen, concatenated
per-modality representations. Early stopping on the validation loss: training stops once it has
not improved for ``cfg.patience`` epochs; the kept state is the best one by the selection metric.
Single-label: cross-entropy with class weights; multi-label (MOSEI): BCE-with-logits with
``pos_weight``, a label is predicted when its sigmoid ≥ ``cfg.threshold`` (0.5).

``cfg.protocol`` picks one of two protocols:

- ``reference`` (default) — the authors' downstream config (tub-cv-group/conclugen:
  configs/testing.yaml): features as they come (no standardisation), the learning rate stepped
  once per epoch (Lightning's default ``interval: epoch`` for the schedulers that
  src/models/abstract_model.py ``configure_optimizers`` returns) by LinearLR (0.1 → 1 over 5
  epochs) then torch's plain ``CosineAnnealingWarmRestarts`` (T_0 20, T_mult 2, eta_min 1e-6) —
  the probe's restarts do **not** decay (pretraining's CosineAnnealingWarmRestartsExpDecay with
  gamma 0.75 comes from configs/defaults.yaml, which testing.yaml overrides); class weights from
  :mod:`conclugen.evaluation.class_weights` (the validation loss uses the validation split's
  weights, as set_class_weights_on_model.py does); the kept epoch is the one with the best
  **validation accuracy** for every corpus (defaults.yaml: ModelCheckpoint
  ``monitor: val_accuracy_epoch``; for MOSEI that is the weighted per-label accuracy of
  :mod:`conclugen.evaluation.metrics`).
- ``balanced`` *(ours)* — features standardised with the training split's mean and std (the
  encoders compared here produce vectors on very different scales; constant features keep std
  1), a constant learning rate, inverse-frequency weights from the training labels for every
  corpus (also for the validation loss), and selection on validation accuracy (single-label) or
  validation weighted F1 (multi-label: exact match barely moves with 6 labels).

Training splits with augmented versions (``ProbeData.versions``) are trained on one augmented
version per sample, per modality, per epoch (:func:`~conclugen.evaluation.probe_data.epoch_features`);
validation and test always use the plain features. No validation rows (a corpus without a dev
split): 10% of train is held out, stratified by the first label, seeded *(ours)*.

Entry point: :func:`fit_probe` (arrays in, :class:`ProbeResult` out); several encoders over one
feature store, with reports: :func:`conclugen.evaluation.compare.evaluate_representations`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from conclugen.config import ProbeConfig
from conclugen.evaluation.class_weights import class_weights_for, named_weights
from conclugen.evaluation.metrics import compute_metrics
from conclugen.evaluation.probe_data import (
    ProbeData,
    ProbeError,
    drop_unlabeled,
    encode_targets,
    epoch_features,
    holdout_val,
)
from conclugen.evaluation.probe_model import ProbeModel, decide
from conclugen.training.schedule import lr_at

# A linear probe on a few thousand rows is far too small for intra-op threads: on a busy 2-core
# machine two threads made it ~7x slower than one. Inputs of more values keep the caller's setting.
_ONE_THREAD_BELOW = 20_000_000
# configs/testing.yaml of the reference: SequentialLR(milestones [5]) of LinearLR(start_factor
# 0.1, total_iters 5) and CosineAnnealingWarmRestarts(T_0 20, T_mult 2, eta_min 1e-6), no decay.
_SCHEDULE = {"warmup_epochs": 5, "start_factor": 0.1, "t0": 20, "t_mult": 2, "eta_min": 1e-6, "decay": 1.0}


@dataclass
class ProbeResult:
    label_space: list[str]
    multilabel: bool
    model: ProbeModel
    best_epoch: int  # 1-based, an entry of history
    epochs_run: int
    stopped_early: bool
    selection_metric: str  # "accuracy" or "f1_weighted" on the validation split
    history: list[dict[str, float]]  # per epoch: epoch, lr, train_loss, val_loss, val_accuracy, val_f1_weighted
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    class_weights: list[float]  # label_space order (multi-label: the BCE pos_weight)
    n_train: int
    n_val: int
    n_test: int
    standardized: bool
    test_clip_ids: list[str] | None = None
    test_labels: list[list[str]] = field(default_factory=list)
    test_proba: np.ndarray | None = None  # [N_test, C]
    encoder: str = ""
    notes: list[str] = field(default_factory=list)
    # metric → Interval of the test figures, set by compare.evaluate_representations (the one
    # bootstrap per encoder that the reports, the comparison and evaluate.json all show)
    test_intervals: dict[str, Any] = field(default_factory=dict)
    protocol: str = "reference"
    augmentations: int = 0  # augmented versions training drew from (0: plain features only)
    val_class_weights: list[float] | None = None  # the validation loss's, when not class_weights

    @property
    def test_pred(self) -> list[list[str]]:
        if self.test_proba is None:
            return []
        return self.model.labels_of(self.model.decide(self.test_proba))

    def summary(self) -> dict[str, Any]:
        """JSON-ready: everything except the weights and per-sample arrays; class weights by name."""
        val_w = None if self.val_class_weights is None else named_weights(self.label_space, self.val_class_weights)
        return {
            "encoder": self.encoder,
            "protocol": self.protocol,
            "label_space": self.label_space,
            "multilabel": self.multilabel,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            "selection_metric": f"val_{self.selection_metric}",
            "class_weights": named_weights(self.label_space, self.class_weights),
            "val_class_weights": val_w,
            "augmentations": self.augmentations,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "n_features": int(self.model.weight.shape[1]),
            "standardized": self.standardized,
            "threshold": self.model.threshold if self.multilabel else None,
            "val": self.val_metrics,
            "test": self.test_metrics,
            "history": self.history,
            "notes": self.notes,
        }


@dataclass
class _Fit:
    """What the training loop returns: the best-validation Linear, the curve, its (1-based) epoch
    and whether the validation loss stopped training early."""

    linear: nn.Linear
    history: list[dict[str, float]]
    best_epoch: int
    stopped_early: bool


@dataclass
class _Losses:
    train: nn.Module
    val: nn.Module


def _selection(multilabel: bool, protocol: str = "reference") -> str:
    return "f1_weighted" if multilabel and protocol == "balanced" else "accuracy"


def probe_lr(epoch: int, cfg: ProbeConfig) -> float:
    """Learning rate during ``epoch`` (0-based): the reference schedule, or ``cfg.lr`` throughout
    under ``balanced``."""
    return lr_at(epoch, cfg.lr, **_SCHEDULE) if cfg.protocol == "reference" else cfg.lr


def _loss(weights: list[float], multilabel: bool) -> nn.Module:
    w = torch.tensor(weights, dtype=torch.float32)
    return nn.BCEWithLogitsLoss(pos_weight=w) if multilabel else nn.CrossEntropyLoss(weight=w)


def _train_epoch(
    model: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module, x: torch.Tensor, t: torch.Tensor,
    batch_size: int, gen: torch.Generator,
) -> float:
    """One shuffled pass over the training rows; returns the mean training loss."""
    model.train()
    n = x.shape[0]
    perm = torch.randperm(n, generator=gen)
    total, seen = 0.0, 0
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        # One full batch: the mean loss ignores row order, so skip the gather copy.
        xb, tb = (x, t) if n <= batch_size else (x[idx], t[idx])
        loss = loss_fn(model(xb), tb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    return total / seen


def _validate(
    model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, t: torch.Tensor, y: np.ndarray,
    label_space: list[str], multilabel: bool, threshold: float,
) -> tuple[float, dict[str, Any]]:
    """(validation loss, validation metrics) of the current state."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = float(loss_fn(logits, t))
    scores = torch.sigmoid(logits) if multilabel else logits
    return loss, compute_metrics(y, decide(scores.numpy(), multilabel, threshold), label_space, multilabel)


def _train_linear(
    train: tuple[Callable[[int], torch.Tensor], torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    y_va: np.ndarray,
    losses: _Losses,
    *,
    label_space: list[str],
    multilabel: bool,
    cfg: ProbeConfig,
) -> _Fit:
    """Dropout → Linear trained with AdamW, selected on the validation split, early-stopped on its
    loss. ``train[0](epoch)`` gives the (1-based) epoch's training features."""
    selection = _selection(multilabel, cfg.protocol)
    x_of, t_tr = train
    # Own RNG stream: the probe is reproducible per seed and leaves the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        model = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(val[0].shape[1], len(label_space)))
        nn.init.kaiming_normal_(model[1].weight)
        nn.init.zeros_(model[1].bias)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # Stepped once per epoch, as Lightning steps the reference's schedulers.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: probe_lr(e, cfg) / cfg.lr)

        history: list[dict[str, float]] = []
        best_score, best_epoch, best_state = -np.inf, 0, copy.deepcopy(model.state_dict())
        best_loss, since_best_loss = np.inf, 0
        stopped_early = False
        for epoch in range(1, cfg.epochs + 1):
            lr = float(opt.param_groups[0]["lr"])
            train_loss = _train_epoch(model, opt, losses.train, x_of(epoch), t_tr, cfg.batch_size, gen)
            sched.step()
            val_loss, m = _validate(model, losses.val, *val, y_va, label_space, multilabel, cfg.threshold)
            history.append({"epoch": epoch, "lr": lr, "train_loss": train_loss, "val_loss": val_loss,
                            "val_accuracy": m["accuracy"], "val_f1_weighted": m["f1_weighted"]})
            if m[selection] > best_score:  # strict: ties keep the earliest epoch (= np.argmax)
                best_score, best_epoch = m[selection], epoch
                best_state = copy.deepcopy(model.state_dict())
            if val_loss < best_loss:
                best_loss, since_best_loss = val_loss, 0
            else:
                since_best_loss += 1
                if since_best_loss >= cfg.patience:
                    stopped_early = True
                    break

    model.load_state_dict(best_state)
    return _Fit(model[1], history, best_epoch, stopped_early)


def _clean_splits(
    train: ProbeData, val: ProbeData, test: ProbeData, multilabel: bool, seed: int, notes: list[str]
) -> tuple[ProbeData, ProbeData, ProbeData]:
    """Unlabelled single-label rows dropped, feature counts checked, a validation split held out
    of train when there is none."""
    if not multilabel:  # multi-label rows with no label are valid (all absent)
        train, val, test = (drop_unlabeled(d, n, notes) for d, n in ((train, "train"), (val, "val"), (test, "test")))
    if len(train) == 0:
        raise ProbeError("the training split is empty")
    f = train.X.shape[1]
    for d, n in ((val, "val"), (test, "test")):
        if len(d) and d.X.shape[1] != f:
            raise ProbeError(f"{n} has {d.X.shape[1]} features, train has {f}")
    if len(val) == 0:
        train, val = holdout_val(train, 0.1, seed)
        notes.append(f"no validation rows: held out {len(val)} training rows (10%, stratified) for selection")
        if len(val) == 0:
            raise ProbeError("no validation rows and too few training rows to hold any out")
    return train, val, test


def _standardiser(X: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the training features, or (0, 1) when not standardising."""
    f = X.shape[1]
    if not standardize:
        return np.zeros(f, np.float32), np.ones(f, np.float32)
    mean = X.mean(0, dtype=np.float64).astype(np.float32)
    std = X.std(0, dtype=np.float64).astype(np.float32)
    std[std < 1e-6] = 1.0  # constant (e.g. dead-ReLU) features: keep them at 0
    return mean, std


def _loss_weights(
    train: ProbeData, val: ProbeData, label_space: list[str], multilabel: bool, cfg: ProbeConfig,
    corpus: str | None, class_weights: list[float] | None, val_class_weights: list[float] | None,
) -> tuple[list[float], list[float]]:
    """(training-loss weights, validation-loss weights); see :func:`fit_probe`."""
    def from_labels(d: ProbeData) -> list[float]:
        return class_weights_for(corpus or "", label_space, d.labels, multilabel, protocol=cfg.protocol)

    weights = list(class_weights) if class_weights is not None else from_labels(train)
    if val_class_weights is not None:
        val_w = list(val_class_weights)
    elif class_weights is None and cfg.protocol == "reference":
        val_w = from_labels(val)  # each split's loss gets its own split's weights
    else:
        val_w = weights
    for w in (weights, val_w):
        if len(w) != len(label_space):
            raise ProbeError(f"{len(w)} class weights for {len(label_space)} classes")
    return weights, val_w


def fit_probe(
    train: ProbeData,
    val: ProbeData,
    test: ProbeData,
    *,
    label_space: list[str],
    multilabel: bool,
    cfg: ProbeConfig,
    class_weights: list[float] | None = None,
    standardize: bool | None = None,
    num_threads: int | None = None,
    corpus: str | None = None,
    val_class_weights: list[float] | None = None,
) -> ProbeResult:
    """Train the linear probe on ``train``, select on ``val``, report on ``test``, by ``cfg.protocol``.

    ``class_weights``: CE weights (single-label) or BCE pos_weight (multi-label) in
    ``label_space`` order, used for the validation loss too unless ``val_class_weights`` is
    given; None computes them with :func:`~conclugen.evaluation.class_weights.class_weights_for`
    for ``corpus`` under the protocol (``reference``: the validation loss then gets the
    validation split's own weights). Pass all ones for an unweighted loss. ``standardize``: None
    follows the protocol (only ``balanced`` standardises). ``train.versions`` set: trained on
    augmented versions, one per sample, modality and epoch. ``num_threads``: torch intra-op
    threads while training (None: 1 for small inputs, else unchanged).
    """
    label_space = list(label_space)
    c = len(label_space)
    if c < 2 and not multilabel:
        raise ProbeError("a single-label probe needs at least 2 classes")
    standardize = cfg.protocol == "balanced" if standardize is None else standardize
    notes: list[str] = []
    train, val, test = _clean_splits(train, val, test, multilabel, cfg.seed, notes)
    y_tr, y_va, y_te = (encode_targets(d.labels, label_space, multilabel) for d in (train, val, test))
    weights, val_w = _loss_weights(train, val, label_space, multilabel, cfg, corpus, class_weights, val_class_weights)
    augmentations = train.n_versions - 1
    if augmentations:
        notes.append(f"trained on {augmentations} augmented versions (one per sample, modality and epoch); "
                     "val/test on plain features")

    mean, std = _standardiser(train.X, standardize)
    x_va = torch.from_numpy((val.X - mean) / std)
    plain_tr = torch.from_numpy((train.X - mean) / std)

    def x_of(epoch: int) -> torch.Tensor:
        return plain_tr if not augmentations else torch.from_numpy((epoch_features(train, epoch, cfg.seed) - mean) / std)

    losses = _Losses(_loss(weights, multilabel), _loss(val_w, multilabel))
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads or (1 if plain_tr.numel() < _ONE_THREAD_BELOW else prev_threads))
    try:
        fit = _train_linear((x_of, torch.from_numpy(y_tr)), (x_va, torch.from_numpy(y_va)), y_va, losses,
                            label_space=label_space, multilabel=multilabel, cfg=cfg)
    finally:
        torch.set_num_threads(prev_threads)
    probe = ProbeModel(label_space=label_space, multilabel=multilabel, mean=mean, std=std,
                       weight=fit.linear.weight.detach().numpy().copy(),
                       bias=fit.linear.bias.detach().numpy().copy(), threshold=cfg.threshold)
    val_metrics = compute_metrics(y_va, probe.predict_indices(val.X), label_space, multilabel)
    test_proba = probe.predict_proba(test.X) if len(test) else np.zeros((0, c))
    test_metrics = compute_metrics(y_te, probe.decide(test_proba) if len(test) else y_te, label_space, multilabel)
    if len(test) == 0:
        notes.append("the test split is empty: test metrics are zeros")
    return ProbeResult(
        label_space=label_space, multilabel=multilabel, model=probe, best_epoch=fit.best_epoch,
        epochs_run=len(fit.history), stopped_early=fit.stopped_early,
        selection_metric=_selection(multilabel, cfg.protocol),
        history=fit.history, val_metrics=val_metrics, test_metrics=test_metrics,
        class_weights=[float(x) for x in weights], n_train=len(train), n_val=len(val), n_test=len(test),
        standardized=standardize, test_clip_ids=test.clip_ids, test_labels=test.labels, test_proba=test_proba,
        notes=notes, protocol=cfg.protocol, augmentations=augmentations,
        val_class_weights=None if val_w == weights else [float(x) for x in val_w],
    )
