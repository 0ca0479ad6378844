"""Encoders: the baselines see the input the heads see (model.input_norm)."""

from __future__ import annotations

import numpy as np
import torch

from conclugen.config import ModelConfig
from conclugen.evaluation.encoders import build_encoders, input_stats
from conclugen.model.heads import ConCluGen

DIMS = {"video": 6, "audio": 4}


def _model() -> tuple[ConCluGen, ModelConfig]:
    cfg = ModelConfig(modalities=["video", "audio"], d=8, p=4, r=4, k=3, audio_geu_dim=5)
    torch.manual_seed(0)
    return ConCluGen.from_config(cfg, DIMS).eval(), cfg


def test_baselines_share_the_checkpoints_input_standardisation() -> None:
    model, cfg = _model()
    assert input_stats(model) == {}  # identity: nothing to apply
    rng = np.random.default_rng(0)
    stats = {m: (rng.normal(size=d).astype(np.float32), (rng.random(d) + 0.5).astype(np.float32))
             for m, d in DIMS.items()}
    model.set_input_stats(stats)
    feats = {m: rng.normal(size=(5, d)).astype(np.float32) * 10 for m, d in DIMS.items()}
    enc = build_encoders(model, cfg, DIMS, seed=1)
    raw = enc["raw_features"](feats)
    want = np.concatenate([(feats[m] - stats[m][0]) / stats[m][1] for m in ("video", "audio")], axis=1)
    np.testing.assert_allclose(raw, want, rtol=1e-6, atol=1e-6)
    # random heads: the seeded random architecture, reading the same standardised input
    from conclugen.evaluation.encoders import random_heads

    rand_model = random_heads(cfg, DIMS, seed=1)
    x = {m: torch.from_numpy((feats[m] - stats[m][0]) / stats[m][1]) for m in DIMS}
    with torch.no_grad():
        want = np.concatenate([rand_model.represent(x)[m].numpy() for m in ("video", "audio")], axis=1)
    np.testing.assert_allclose(enc["random_heads"](feats), want, rtol=1e-5, atol=1e-6)
