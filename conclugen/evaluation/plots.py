"""Probe figures: confusion matrices and the 2D map of test representations (PNG).

Figures use matplotlib's object API on an Agg canvas (``matplotlib.figure.Figure``), so nothing
here touches pyplot's global state or needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _figure(w: float, h: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _row_share(cm: np.ndarray) -> np.ndarray:
    """Each cell as a share of its true row (0 for an empty row)."""
    rows = cm.sum(1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)


def _single_label_confusion(cm: np.ndarray, labels: list[str]) -> Any:
    """One C×C matrix, counts in the cells, colour by share of the true class."""
    c = len(labels)
    fig = _figure(1.2 + 0.75 * c, 1.0 + 0.7 * c)
    ax = fig.add_subplot(1, 1, 1)
    share = _row_share(cm)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(c):
        for j in range(c):
            colour = "white" if share[i, j] > 0.6 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(c), labels, rotation=45, ha="right")
    ax.set_yticks(range(c), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    return fig


def _multilabel_confusion(cm: np.ndarray, labels: list[str]) -> Any:
    """One 2×2 [[tn, fp], [fn, tp]] per label, side by side."""
    c = len(labels)
    fig = _figure(2.2 * c, 2.6)
    for k, name in enumerate(labels):
        ax = fig.add_subplot(1, c, k + 1)
        m = cm[k]
        ax.imshow(_row_share(m), cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8)
        ax.set_xticks([0, 1], ["absent", "present"], fontsize=7)
        ax.set_yticks([0, 1], ["absent", "present"], fontsize=7)
        ax.set_title(name, fontsize=9)
        if k == 0:
            ax.set_ylabel("true")
        ax.set_xlabel("predicted", fontsize=7)
    return fig


def plot_confusion(metrics: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Single-label: one C×C matrix; multi-label: one 2×2 [[tn, fp], [fn, tp]] per label. Cells
    show counts, colours the share of the true row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = list(metrics["label_space"])
    cm = np.asarray(metrics["confusion_matrix"])
    fig = (_multilabel_confusion if metrics.get("multilabel") else _single_label_confusion)(cm, labels)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def embed_2d(X: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """[N, F] → [N, 2] by PCA or t-SNE (``auto``: t-SNE for 10 < N ≤ 2000, else PCA)."""
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=np.float32)
    n = X.shape[0]
    if method == "auto":
        method = "tsne" if 10 < n <= 2000 else "pca"
    if method not in ("pca", "tsne"):
        raise ValueError(f"map method must be pca, tsne or auto, not {method!r}")
    if n < 3 or X.shape[1] < 2:
        out = np.zeros((n, 2), dtype=np.float32)
        out[:, : min(2, X.shape[1])] = X[:, :2]
        return out, "none"
    from threadpoolctl import threadpool_limits

    std = X.std(0)
    Z = (X - X.mean(0)) / np.where(std > 1e-6, std, 1.0)
    # Small maps in one thread: on a loaded 2-core machine t-SNE of 50 points took 10 s with
    # OpenMP threads and 0.2 s without.
    with threadpool_limits(limits=1 if n <= 1000 else None):
        if method == "pca":
            return PCA(n_components=2, random_state=seed).fit_transform(Z), "pca"
        from sklearn.manifold import TSNE

        k = min(50, n - 1, Z.shape[1])  # PCA first: faster and less noisy t-SNE
        Z = PCA(n_components=k, random_state=seed).fit_transform(Z) if Z.shape[1] > k else Z
        perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return tsne.fit_transform(Z), "tsne"


def plot_map2d(
    X: np.ndarray,
    labels: Sequence[Sequence[str]],
    label_space: Sequence[str],
    path: str | Path,
    *,
    method: str = "auto",
    seed: int = 0,
    title: str = "",
) -> Path:
    """Scatter of the 2D map coloured by label (multi-label: the first present label, or "none")."""
    import matplotlib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    xy, used = embed_2d(X, method, seed)
    order = list(label_space)
    colour_of = [next((lab for lab in order if lab in row), "none") for row in labels]
    fig = _figure(6.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["tab10"]
    for k, name in enumerate([*order, "none"]):
        idx = [i for i, c in enumerate(colour_of) if c == name]
        if idx:
            colour = "lightgrey" if name == "none" else cmap(k % 10)
            ax.scatter(xy[idx, 0], xy[idx, 1], s=12, alpha=0.8, label=name, color=colour)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title or 'test representations'} ({used})")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_label_efficiency(
    fractions: Sequence[float],
    curves: Mapping[str, Sequence[Any]],
    path: str | Path,
    *,
    ylabel: str = "test F1 (weighted)",
    title: str = "",
) -> Path:
    """A metric against the labelled fraction (log x axis): one line per encoder with its
    interval as a band. ``curves`` maps an encoder to one interval per fraction (objects with
    ``value``, ``low`` and ``high``, e.g. :class:`conclugen.evaluation.intervals.Interval`)."""
    import matplotlib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.asarray(fractions, dtype=float)
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["tab10"]
    for k, (name, ivs) in enumerate(curves.items()):
        colour = cmap(k % 10)
        ax.plot(x, [i.value for i in ivs], marker="o", color=colour, label=name)
        ax.fill_between(x, [i.low for i in ivs], [i.high for i in ivs], color=colour, alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{f * 100:g}%" for f in x])
    ax.minorticks_off()
    ax.set_xlabel("labelled share of the training split")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
