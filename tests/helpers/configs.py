"""Tiny `--set` overrides shared by the end-to-end tests: heads small enough that a run takes
seconds on 2 cores. A test adds what it needs on top (epochs, workers, probe budget)."""

from __future__ import annotations

# Heads: D 32, P 16, R 16, K 4 (audio GEU 16).
TINY_MODEL = ["model.d=32", "model.p=16", "model.r=16", "model.k=4", "model.audio_geu_dim=16"]

# Pretraining: small batch, short warm-up, a fast learning rate, a short queue and k-means.
TINY_TRAIN = ["train.batch_size=32", "train.warmup_epochs=1", "train.lr=1e-3", "losses.queue_batches=2",
              "losses.kmeans_iters=20"]

TINY = [*TINY_MODEL, *TINY_TRAIN]
