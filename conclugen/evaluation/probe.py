"""Linear-probe evaluation of frozen representations (METHOD.md, "Downstream evaluation").

The classifier is ``Dropout(0.5) → Linear`` (Kaiming-normal weights, zero bias) trained with
AdamW (lr 0.00967, weight decay 0.004, batch 4096 — ``cfg.probe``) on the frozen, concatenated
per-modality representations.

- Single-label (CAER, MELD, synthetic): cross-entropy with class weights
  (:func:`class_weights_for`). The kept state is the epoch with the best **validation accuracy**.
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

Entry points: :func:`fit_probe` (arrays in, :class:`ProbeResult` out) and
:func:`evaluate_representations` (several encoders over one feature store, with reports).
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from conclugen import storage
from conclugen.config import MELD_EMOTIONS, MOSEI_EMOTIONS, Config, ProbeConfig
from conclugen.errors import ConCluGenError
from conclugen.evaluation.encoders import Encoder
from conclugen.evaluation.metrics import compute_metrics

# The reference's MELD weights are listed as [4, 15, 15, 3, 1, 6, 3]. Read in METHOD.md's order
# (neutral, joy, sadness, anger, surprise, fear, disgust) they would give the most frequent class
# (neutral, 4710 of 9989 training utterances) weight 4 and surprise (1205) weight 1, while fear
# and disgust (268 and 271, the rarest) would get 6 and 3. Read in **alphabetical** order —
# the order of sorted class names, as a label encoder produces — they are close to
# max_count / count of the official train split (anger 4.2, disgust 17.4, fear 17.6, joy 2.7,
# neutral 1, sadness 6.9, surprise 3.9). So they are keyed by name here, alphabetically.
MELD_REFERENCE_WEIGHTS: dict[str, float] = {
    "anger": 4.0,
    "disgust": 15.0,
    "fear": 15.0,
    "joy": 3.0,
    "neutral": 1.0,
    "sadness": 6.0,
    "surprise": 3.0,
}
# MOSEI pos_weight as METHOD.md maps them to names (happiness, sadness, anger, fear, disgust,
# surprise). Unlike MELD's weights this mapping could not be checked against label counts.
MOSEI_POS_WEIGHT: dict[str, float] = {
    "happiness": 1.05,
    "sadness": 5.22,
    "anger": 5.34,
    "fear": 19.49,
    "disgust": 7.04,
    "surprise": 23.69,
}
assert set(MELD_REFERENCE_WEIGHTS) == set(MELD_EMOTIONS)
assert set(MOSEI_POS_WEIGHT) == set(MOSEI_EMOTIONS)

NON_FEATURE_KEYS = frozenset({"clip_id", "split", "labels", "corpus", "intensities", "gaps"})


class ProbeError(ConCluGenError, ValueError):
    """The probe's inputs are inconsistent (unknown label, wrong shapes, empty split)."""


@dataclass
class ProbeData:
    """One split: features X float32 [N, F] and per-row label lists (canonical names)."""

    X: np.ndarray
    labels: list[list[str]]
    clip_ids: list[str] | None = None

    def __post_init__(self) -> None:
        self.X = np.asarray(self.X, dtype=np.float32)
        if self.X.ndim != 2:
            raise ProbeError(f"X must be [N, F], got shape {self.X.shape}")
        self.labels = [list(lab) if lab is not None else [] for lab in self.labels]
        if len(self.labels) != self.X.shape[0]:
            raise ProbeError(f"{self.X.shape[0]} feature rows but {len(self.labels)} label rows")
        if self.clip_ids is not None:
            self.clip_ids = [str(c) for c in self.clip_ids]
            if len(self.clip_ids) != self.X.shape[0]:
                raise ProbeError(f"{self.X.shape[0]} feature rows but {len(self.clip_ids)} clip ids")

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def subset(self, idx: np.ndarray) -> ProbeData:
        ids = None if self.clip_ids is None else [self.clip_ids[i] for i in idx]
        return ProbeData(self.X[idx], [self.labels[i] for i in idx], ids)


def encode_targets(
    labels: Sequence[Sequence[str]], label_space: Sequence[str], multilabel: bool
) -> np.ndarray:
    """Label lists → int64 class indices [N] (single-label) or a float32 indicator [N, C].

    Single-label rows must hold exactly one label; unknown names stop with a ProbeError.
    """
    index = {name: i for i, name in enumerate(label_space)}
    unknown = sorted({lab for row in labels for lab in row if lab not in index})
    if unknown:
        raise ProbeError(f"labels {unknown} are not in the label space {list(label_space)}")
    if multilabel:
        y = np.zeros((len(labels), len(label_space)), dtype=np.float32)
        for i, row in enumerate(labels):
            for lab in row:
                y[i, index[lab]] = 1.0
        return y
    bad = [i for i, row in enumerate(labels) if len(row) != 1]
    if bad:
        raise ProbeError(
            f"single-label probe: {len(bad)} rows do not hold exactly one label (first: row {bad[0]})"
        )
    return np.asarray([index[row[0]] for row in labels], dtype=np.int64)


def frequency_weights(
    train_labels: Sequence[Sequence[str]], label_space: Sequence[str], multilabel: bool
) -> list[float]:
    """Weights from the training labels.

    Single-label: ``max_count / count`` (the most frequent class gets 1 — the scale of the MELD
    reference weights; the loss is a weighted mean, so only ratios matter). Multi-label: the
    BCE ``pos_weight`` convention ``negatives / positives`` per label. Absent classes get 1.
    """
    y = encode_targets(train_labels, label_space, multilabel)
    if multilabel:
        pos = y.sum(0, dtype=np.float64)
        neg = y.shape[0] - pos
        return [float(n / p) if p > 0 else 1.0 for p, n in zip(pos, neg, strict=True)]
    counts = np.bincount(y, minlength=len(label_space)).astype(np.float64)
    top = counts.max() if counts.size else 0.0
    return [float(top / c) if c > 0 else 1.0 for c in counts]


def class_weights_for(
    corpus: str,
    label_space: Sequence[str],
    train_labels: Sequence[Sequence[str]],
    multilabel: bool | None = None,
    source: Literal["auto", "reference", "data", "none"] = "auto",
) -> list[float]:
    """Loss weights in ``label_space`` order.

    ``auto``: the reference constants where METHOD.md gives them (corpus "meld" with the 7
    emotions: CE weights; "mosei": BCE pos_weight), else from the training labels (CAER,
    synthetic, MELD sentiment, anything else). ``reference`` insists on the constants,
    ``data`` always computes from ``train_labels``, ``none`` gives all ones.

    The synthetic corpus is written in MELD's layout, so its feature store says corpus "meld":
    callers that know the features are synthetic pass ``corpus="synthetic"`` (or
    ``source="data"``); the MELD constants encode MELD's imbalance, not the synthetic balance.
    """
    name = corpus.lower()
    space = list(label_space)
    if multilabel is None:
        multilabel = name == "mosei"
    if source == "none":
        return [1.0] * len(space)
    if source != "data":
        if name == "meld" and not multilabel and set(space) == set(MELD_REFERENCE_WEIGHTS):
            return [MELD_REFERENCE_WEIGHTS[lab] for lab in space]
        if name == "mosei" and multilabel and set(space) == set(MOSEI_POS_WEIGHT):
            return [MOSEI_POS_WEIGHT[lab] for lab in space]
        if source == "reference":
            raise ProbeError(f"no reference weights for corpus {corpus!r} with labels {space}")
    return frequency_weights(train_labels, space, multilabel)


@dataclass
class ProbeModel:
    """The fitted probe as plain arrays: enough to classify new representations without torch."""

    label_space: list[str]
    multilabel: bool
    mean: np.ndarray  # [F] training mean (zeros when not standardised)
    std: np.ndarray  # [F] training std (ones when not standardised)
    weight: np.ndarray  # [C, F]
    bias: np.ndarray  # [C]
    threshold: float = 0.5

    def logits(self, X: np.ndarray) -> np.ndarray:
        z = (np.asarray(X, dtype=np.float32) - self.mean) / self.std
        return z @ self.weight.T + self.bias

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Softmax over classes (rows sum to 1) or per-label sigmoids (multi-label)."""
        lo = self.logits(X).astype(np.float64)
        if self.multilabel:
            return 1.0 / (1.0 + np.exp(-lo))
        lo -= lo.max(1, keepdims=True)
        e = np.exp(lo)
        return e / e.sum(1, keepdims=True)

    def predict_indices(self, X: np.ndarray) -> np.ndarray:
        proba = self.predict_proba(X)
        return (proba >= self.threshold).astype(np.int64) if self.multilabel else proba.argmax(1)

    def predict(self, X: np.ndarray) -> list[list[str]]:
        idx = self.predict_indices(X)
        if self.multilabel:
            return [[self.label_space[j] for j in np.flatnonzero(row)] for row in idx]
        return [[self.label_space[int(j)]] for j in idx]

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        meta = {"label_space": self.label_space, "multilabel": self.multilabel, "threshold": self.threshold}
        np.savez(
            buf,
            mean=self.mean,
            std=self.std,
            weight=self.weight,
            bias=self.bias,
            meta=np.array(json.dumps(meta)),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ProbeModel:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(
                label_space=list(meta["label_space"]),
                multilabel=bool(meta["multilabel"]),
                threshold=float(meta["threshold"]),
                mean=z["mean"],
                std=z["std"],
                weight=z["weight"],
                bias=z["bias"],
            )

    def save(self, uri: str | Path, storage_cfg: Any = None) -> None:
        storage.write_bytes(str(uri), self.to_bytes(), storage_cfg)

    @classmethod
    def load(cls, uri: str | Path, storage_cfg: Any = None) -> ProbeModel:
        return cls.from_bytes(storage.read_bytes(str(uri), storage_cfg))


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
        if self.multilabel:
            return [
                [self.label_space[j] for j in np.flatnonzero(r >= self.model.threshold)]
                for r in self.test_proba
            ]
        return [[self.label_space[int(j)]] for j in self.test_proba.argmax(1)]

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


def _holdout_val(train: ProbeData, frac: float, seed: int) -> tuple[ProbeData, ProbeData]:
    """Stratified (by first label) seeded hold-out from train, at least one row per stratum ≥ 2."""
    rng = np.random.default_rng(seed)
    keys = np.asarray([row[0] if row else "" for row in train.labels], dtype=object)
    val_idx: list[int] = []
    for k in sorted(set(keys.tolist())):
        idx = np.flatnonzero(keys == k)
        rng.shuffle(idx)
        take = int(round(frac * len(idx))) if len(idx) >= 2 else 0
        if take == 0 and len(idx) >= 2:
            take = 1
        val_idx.extend(idx[:take].tolist())
    mask = np.zeros(len(train), dtype=bool)
    mask[val_idx] = True
    return train.subset(np.flatnonzero(~mask)), train.subset(np.flatnonzero(mask))


def _drop_unlabeled(d: ProbeData, name: str, notes: list[str]) -> ProbeData:
    keep = np.asarray([len(row) > 0 for row in d.labels], dtype=bool)
    if keep.all():
        return d
    notes.append(f"{name}: {int((~keep).sum())} rows without a label left out")
    return d.subset(np.flatnonzero(keep))


def _train_linear(
    x_tr: torch.Tensor,
    t_tr: torch.Tensor,
    x_va: torch.Tensor,
    t_va: torch.Tensor,
    y_va: np.ndarray,
    loss_fn: nn.Module,
    *,
    label_space: list[str],
    multilabel: bool,
    cfg: ProbeConfig,
    selection: str,
) -> tuple[nn.Linear, list[dict[str, float]], int, bool]:
    """Dropout → Linear trained with AdamW; returns the best-validation Linear, the curve, its
    (1-based) epoch and whether the validation loss stopped training early."""
    f, c = x_tr.shape[1], len(label_space)

    def decide(logits: torch.Tensor) -> np.ndarray:
        if multilabel:
            return (torch.sigmoid(logits) >= cfg.threshold).numpy().astype(np.int64)
        return logits.argmax(1).numpy()

    # Own RNG stream: the probe is reproducible per seed and leaves the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        model = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(f, c))
        nn.init.kaiming_normal_(model[1].weight)
        nn.init.zeros_(model[1].bias)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        history: list[dict[str, float]] = []
        best_score, best_epoch, best_state = -np.inf, 0, copy.deepcopy(model.state_dict())
        best_loss, since_best_loss = np.inf, 0
        stopped_early = False
        n = x_tr.shape[0]
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=gen)
            total, seen = 0.0, 0
            for start in range(0, n, cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                # One full batch: the mean loss ignores row order, so skip the gather copy.
                xb, tb = (x_tr, t_tr) if n <= cfg.batch_size else (x_tr[idx], t_tr[idx])
                loss = loss_fn(model(xb), tb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            model.eval()
            with torch.no_grad():
                lv = model(x_va)
                val_loss = float(loss_fn(lv, t_va))
            m = compute_metrics(y_va, decide(lv), label_space, multilabel)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": total / seen,
                    "val_loss": val_loss,
                    "val_accuracy": m["accuracy"],
                    "val_f1_weighted": m["f1_weighted"],
                }
            )
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
    return model[1], history, best_epoch, stopped_early


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
    (:func:`frequency_weights`); pass all ones for an unweighted loss. ``num_threads``: torch
    intra-op threads while training (None: 1 for small inputs, else unchanged).
    """
    label_space = list(label_space)
    c = len(label_space)
    if c < 2 and not multilabel:
        raise ProbeError("a single-label probe needs at least 2 classes")
    notes: list[str] = []
    if not multilabel:  # multi-label rows with no label are valid (all absent)
        train, val, test = (
            _drop_unlabeled(d, n, notes) for d, n in ((train, "train"), (val, "val"), (test, "test"))
        )
    if len(train) == 0:
        raise ProbeError("the training split is empty")
    f = train.X.shape[1]
    for d, n in ((val, "val"), (test, "test")):
        if len(d) and d.X.shape[1] != f:
            raise ProbeError(f"{n} has {d.X.shape[1]} features, train has {f}")
    if len(val) == 0:
        train, val = _holdout_val(train, 0.1, cfg.seed)
        notes.append(f"no validation rows: held out {len(val)} training rows (10%, stratified) for selection")
        if len(val) == 0:
            raise ProbeError("no validation rows and too few training rows to hold any out")

    y_tr = encode_targets(train.labels, label_space, multilabel)
    y_va = encode_targets(val.labels, label_space, multilabel)
    y_te = encode_targets(test.labels, label_space, multilabel)
    weights = (
        list(class_weights)
        if class_weights is not None
        else frequency_weights(train.labels, label_space, multilabel)
    )
    if len(weights) != c:
        raise ProbeError(f"{len(weights)} class weights for {c} classes")

    if standardize:
        mean = train.X.mean(0, dtype=np.float64).astype(np.float32)
        std = train.X.std(0, dtype=np.float64).astype(np.float32)
        std[std < 1e-6] = 1.0  # constant (e.g. dead-ReLU) features: keep them at 0
    else:
        mean, std = np.zeros(f, np.float32), np.ones(f, np.float32)

    def prep(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((x - mean) / std)

    x_tr, x_va = prep(train.X), prep(val.X)
    t_tr, t_va = torch.from_numpy(y_tr), torch.from_numpy(y_va)
    w = torch.tensor(weights, dtype=torch.float32)
    loss_fn: nn.Module = nn.BCEWithLogitsLoss(pos_weight=w) if multilabel else nn.CrossEntropyLoss(weight=w)
    selection = "f1_weighted" if multilabel else "accuracy"

    # A linear probe on a few thousand rows is far too small for intra-op threads: on a busy
    # 2-core machine two threads made it ~7x slower than one. Large inputs keep the caller's setting.
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads or (1 if x_tr.numel() < 20_000_000 else prev_threads))
    try:
        lin, history, best_epoch, stopped_early = _train_linear(
            x_tr,
            t_tr,
            x_va,
            t_va,
            y_va,
            loss_fn,
            label_space=label_space,
            multilabel=multilabel,
            cfg=cfg,
            selection=selection,
        )
    finally:
        torch.set_num_threads(prev_threads)
    probe = ProbeModel(
        label_space=label_space,
        multilabel=multilabel,
        mean=mean,
        std=std,
        weight=lin.weight.detach().numpy().copy(),
        bias=lin.bias.detach().numpy().copy(),
        threshold=cfg.threshold,
    )
    val_metrics = compute_metrics(y_va, probe.predict_indices(val.X), label_space, multilabel)
    test_proba = probe.predict_proba(test.X) if len(test) else np.zeros((0, c))
    test_metrics = compute_metrics(
        y_te, probe.predict_indices(test.X) if len(test) else y_te, label_space, multilabel
    )
    if len(test) == 0:
        notes.append("the test split is empty: test metrics are zeros")
    return ProbeResult(
        label_space=label_space,
        multilabel=multilabel,
        model=probe,
        best_epoch=best_epoch,
        epochs_run=len(history),
        stopped_early=stopped_early,
        selection_metric=selection,
        history=history,
        val_metrics=val_metrics,
        test_metrics=test_metrics,
        class_weights=[float(x) for x in weights],
        n_train=len(train),
        n_val=len(val),
        n_test=len(test),
        standardized=standardize,
        test_clip_ids=test.clip_ids,
        test_labels=test.labels,
        test_proba=test_proba,
        notes=notes,
    )


def feature_arrays(
    arrays: Mapping[str, Any], modalities: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """The per-modality [N, dim] arrays of a ``load_arrays`` dict (all of them, or ``modalities``)."""
    if modalities is not None:
        missing = [m for m in modalities if m not in arrays]
        if missing:
            raise ProbeError(f"arrays have no {missing} (have {sorted(arrays)})")
        return {m: np.asarray(arrays[m]) for m in modalities}
    return {
        k: v
        for k, v in arrays.items()
        if k not in NON_FEATURE_KEYS and isinstance(v, np.ndarray) and v.ndim == 2
    }


def evaluate_representations(
    encoders: Mapping[str, Encoder],
    arrays: Mapping[str, Any],
    *,
    label_space: list[str],
    multilabel: bool,
    corpus: str,
    cfg: Config,
    out_dir: str | Path,
    class_weights: list[float] | None = None,
    map_method: str = "auto",
) -> dict[str, ProbeResult]:
    """Probe each encoder's representations of the train/val/test rows of ``arrays``.

    ``encoders`` maps a name ("conclugen", "raw_features", "random_heads", …) to a function of
    the per-modality arrays {modality: [n, dim]} → [n, F]. Writes ``out_dir/<name>/`` (report.md,
    report.json, predictions.csv, confusion.png, map2d.png, probe.npz) and
    ``out_dir/comparison.{md,csv}``; returns the results by name, in the given order.
    """
    from conclugen.evaluation.report import write_comparison, write_probe_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = np.asarray(arrays["split"], dtype=object)
    labels = [list(x) if x is not None else [] for x in arrays["labels"]]
    ids = [str(x) for x in arrays["clip_id"]]
    rows = {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}
    if rows["train"].size == 0:
        raise ProbeError("the features hold no train rows")
    used = np.concatenate([rows["train"], rows["val"], rows["test"]])
    feats = {k: v[used] for k, v in feature_arrays(arrays).items()}
    pos: dict[str, np.ndarray] = {}  # row positions of each split inside ``used``
    start = 0
    for s in ("train", "val", "test"):
        pos[s] = np.arange(start, start + len(rows[s]))
        start += len(rows[s])
    if class_weights is None:
        train_labels = [labels[i] for i in rows["train"]]
        if not multilabel:
            train_labels = [r for r in train_labels if r]
        class_weights = class_weights_for(corpus, label_space, train_labels, multilabel)

    results: dict[str, ProbeResult] = {}
    for name, encode in encoders.items():
        X = np.asarray(encode(feats), dtype=np.float32)
        if X.ndim != 2 or X.shape[0] != len(used):
            raise ProbeError(f"encoder {name!r} returned shape {X.shape}, expected [{len(used)}, F]")
        data = {
            s: ProbeData(X[pos[s]], [labels[i] for i in rows[s]], [ids[i] for i in rows[s]])
            for s in ("train", "val", "test")
        }
        res = fit_probe(
            data["train"],
            data["val"],
            data["test"],
            label_space=label_space,
            multilabel=multilabel,
            cfg=cfg.probe,
            class_weights=class_weights,
        )
        res.encoder = name
        enc_dir = out / name
        write_probe_report(res, enc_dir, X_test=data["test"].X, map_method=map_method, seed=cfg.probe.seed)
        res.model.save(enc_dir / "probe.npz")
        results[name] = res
    write_comparison(results, out)
    return results


from conclugen.evaluation.report import log_probe_results  # noqa: E402  (re-export: report imports probe lazily)

__all__ = [
    "ProbeData",
    "ProbeModel",
    "ProbeResult",
    "ProbeError",
    "class_weights_for",
    "frequency_weights",
    "encode_targets",
    "fit_probe",
    "evaluate_representations",
    "feature_arrays",
    "log_probe_results",
]
