"""Linear-probe evaluation of frozen representations (see docs/method.md, Linear probe).

The classifier is ``Dropout(0.5) → Linear`` (Kaiming-normal weights, zero bias) trained with
AdamW (lr 0.00967, weight decay 0.004, batch 4096 — ``cfg.probe``) on the frozen, concatenated
per-modality representations.

- Single-label (CAER, MELD, synthetic): cross-entropy with class weights
  (:func:`conclugen.evaluation.class_weights.class_weights_for`). The kept state is the epoch with
  the best **validation accuracy**.
- Multi-label (MOSEI): BCE-with-logits with ``pos_weight``, a label is predicted when its
  sigmoid ≥ ``cfg.threshold`` (0.5). The kept state is the epoch with the best **validation
  weighted F1** *(ours)*: exact-match accuracy over 6 labels is dominated by the all-absent
  prediction and barely moves, while weighted F1 is the headline figure.
- Early stopping on the validation loss: training stops once it has not improved for
  ``cfg.patience`` epochs; the kept state is still the best-accuracy (best-F1) one.
- Features are standardised with the training split's mean and std *(ours)*. The reference lr is
  fixed, while the three encoders compared here (pretrained heads, raw backbone features, random
  heads) produce vectors on very different scales; standardising makes the comparison about the
  information in the vectors, not their scale. Constant features keep std 1 (they become 0).
- No validation rows (a corpus without a dev split): 10% of train is held out, stratified by
  the first label, seeded *(ours)*.

Entry point: :func:`fit_probe` (arrays in, :class:`ProbeResult` out); several encoders over one
feature store, with reports: :func:`conclugen.evaluation.compare.evaluate_representations`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from conclugen.config import ProbeConfig
from conclugen.evaluation.class_weights import frequency_weights
from conclugen.evaluation.metrics import compute_metrics
from conclugen.evaluation.probe_data import ProbeData, ProbeError, drop_unlabeled, encode_targets, holdout_val
from conclugen.evaluation.probe_model import ProbeModel, decide

# A linear probe on a few thousand rows is far too small for intra-op threads: on a busy 2-core
# machine two threads made it ~7x slower than one. Inputs of more values keep the caller's setting.
_ONE_THREAD_BELOW = 20_000_000


@dataclass
class ProbeResult:
    label_space: list[str]
    multilabel: bool
    model: ProbeModel
    best_epoch: int  # 1-based, an entry of history
    epochs_run: int
    stopped_early: bool
    selection_metric: str  # "accuracy" or "f1_weighted" on the validation split
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, val_loss, val_accuracy, val_f1_weighted
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    class_weights: list[float]
    n_train: int
    n_val: int
    n_test: int
    standardized: bool
    test_clip_ids: list[str] | None = None
    test_labels: list[list[str]] = field(default_factory=list)
    test_proba: np.ndarray | None = None  # [N_test, C]
    encoder: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def test_pred(self) -> list[list[str]]:
        if self.test_proba is None:
            return []
        return self.model.labels_of(self.model.decide(self.test_proba))

    def summary(self) -> dict[str, Any]:
        """JSON-ready: everything except the weights and per-sample arrays."""
        return {
            "encoder": self.encoder,
            "label_space": self.label_space,
            "multilabel": self.multilabel,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            "selection_metric": f"val_{self.selection_metric}",
            "class_weights": self.class_weights,
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


def _selection(multilabel: bool) -> str:
    return "f1_weighted" if multilabel else "accuracy"


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
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    y_va: np.ndarray,
    loss_fn: nn.Module,
    *,
    label_space: list[str],
    multilabel: bool,
    cfg: ProbeConfig,
) -> _Fit:
    """Dropout → Linear trained with AdamW, selected on the validation split, early-stopped on its loss."""
    selection = _selection(multilabel)
    # Own RNG stream: the probe is reproducible per seed and leaves the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        model = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(train[0].shape[1], len(label_space)))
        nn.init.kaiming_normal_(model[1].weight)
        nn.init.zeros_(model[1].bias)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        history: list[dict[str, float]] = []
        best_score, best_epoch, best_state = -np.inf, 0, copy.deepcopy(model.state_dict())
        best_loss, since_best_loss = np.inf, 0
        stopped_early = False
        for epoch in range(1, cfg.epochs + 1):
            train_loss = _train_epoch(model, opt, loss_fn, *train, cfg.batch_size, gen)
            val_loss, m = _validate(model, loss_fn, *val, y_va, label_space, multilabel, cfg.threshold)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
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


def fit_probe(
    train: ProbeData,
    val: ProbeData,
    test: ProbeData,
    *,
    label_space: list[str],
    multilabel: bool,
    cfg: ProbeConfig,
    class_weights: list[float] | None = None,
    standardize: bool = True,
    num_threads: int | None = None,
) -> ProbeResult:
    """Train the linear probe on ``train``, select on ``val``, report on ``test``.

    ``class_weights``: CE weights (single-label) or BCE pos_weight (multi-label) in
    ``label_space`` order; None computes them from the training labels
    (:func:`~conclugen.evaluation.class_weights.frequency_weights`); pass all ones for an
    unweighted loss. ``num_threads``: torch intra-op threads while training (None: 1 for small
    inputs, else unchanged).
    """
    label_space = list(label_space)
    c = len(label_space)
    if c < 2 and not multilabel:
        raise ProbeError("a single-label probe needs at least 2 classes")
    notes: list[str] = []
    train, val, test = _clean_splits(train, val, test, multilabel, cfg.seed, notes)
    y_tr, y_va, y_te = (encode_targets(d.labels, label_space, multilabel) for d in (train, val, test))
    weights = list(class_weights) if class_weights is not None else frequency_weights(
        train.labels, label_space, multilabel)
    if len(weights) != c:
        raise ProbeError(f"{len(weights)} class weights for {c} classes")

    mean, std = _standardiser(train.X, standardize)
    x_tr, x_va = (torch.from_numpy((x - mean) / std) for x in (train.X, val.X))
    w = torch.tensor(weights, dtype=torch.float32)
    loss_fn: nn.Module = nn.BCEWithLogitsLoss(pos_weight=w) if multilabel else nn.CrossEntropyLoss(weight=w)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads or (1 if x_tr.numel() < _ONE_THREAD_BELOW else prev_threads))
    try:
        fit = _train_linear((x_tr, torch.from_numpy(y_tr)), (x_va, torch.from_numpy(y_va)), y_va, loss_fn,
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
        epochs_run=len(fit.history), stopped_early=fit.stopped_early, selection_metric=_selection(multilabel),
        history=fit.history, val_metrics=val_metrics, test_metrics=test_metrics,
        class_weights=[float(x) for x in weights], n_train=len(train), n_val=len(val), n_test=len(test),
        standardized=standardize, test_clip_ids=test.clip_ids, test_labels=test.labels, test_proba=test_proba,
        notes=notes,
    )
