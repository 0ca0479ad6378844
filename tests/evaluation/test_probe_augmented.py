"""The probe on augmented versions: training draws one augmented version per sample, modality and
epoch; validation and test read the plain features; stores without versions are unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conclugen.config import Config, ModelConfig, ProbeConfig
from conclugen.evaluation.compare import encoded_splits, evaluate_representations
from conclugen.evaluation.encoders import EncoderError, encode_versions, heads_encoder, raw_features_encoder
from conclugen.evaluation.probe import fit_probe
from conclugen.evaluation.probe_data import ProbeData, epoch_features
from conclugen.features.store import aug_column, load_arrays
from conclugen.features.versions import version_index
from conclugen.model.heads import ConCluGen
from tests.helpers.features import write_feature_store

NAMES = ["a", "b"]
N_AUG = 4


def _arrays(seed: int = 0) -> dict:
    """A load_arrays-shaped dict in which the plain training vectors carry the class signal
    reversed and every augmented version carries it the right way, while val/test are the other
    way round (plain right, augmented reversed). "video" is noise in every version."""
    rng = np.random.default_rng(seed)
    split = np.array(["train"] * 120 + ["val"] * 60 + ["test"] * 80, dtype=object)
    n = len(split)
    y = rng.integers(0, 2, n)
    sign = np.where(y == 1, 1.0, -1.0)[:, None]
    train = (split == "train")[:, None]
    mu = np.array([4.0, -2.0, 3.0])
    text = np.where(train, -sign, sign) * mu + 0.4 * rng.normal(size=(n, 3))
    text_aug = np.where(train, sign, -sign)[:, None, :] * mu + 0.4 * rng.normal(size=(n, N_AUG, 3))
    return {
        "clip_id": [f"clip{i:03d}" for i in range(n)],
        "split": split,
        "labels": [[NAMES[k]] for k in y],
        "text": text.astype(np.float32),
        "video": rng.normal(size=(n, 5)).astype(np.float32),
        aug_column("text"): text_aug.astype(np.float32),
        aug_column("video"): rng.normal(size=(n, N_AUG, 5)).astype(np.float32),
    }


def test_epoch_features_draw_augmented_versions_per_modality_and_epoch() -> None:
    rng = np.random.default_rng(1)
    n, V = 50, 1 + N_AUG
    versions = {"video": rng.normal(size=(V, n, 3)).astype(np.float32),
                "text": rng.normal(size=(V, n, 2)).astype(np.float32)}
    ids = [f"c{i}" for i in range(n)]
    data = ProbeData(np.concatenate([versions["video"][0], versions["text"][0]], 1), [["a"]] * n, ids, versions)
    seen = {}
    for epoch in (1, 2, 3):
        X = epoch_features(data, epoch, seed=7)
        for m, cols in (("video", slice(0, 3)), ("text", slice(3, 5))):
            # which version each row shows, read back from the features themselves
            shown = np.array([[np.allclose(X[i, cols], versions[m][v, i]) for v in range(V)].index(True)
                              for i in range(n)])
            np.testing.assert_array_equal(shown, version_index(ids, m, epoch, 7, range(1, V)))
            assert shown.min() >= 1  # the plain version is not among the training choices
            seen[m, epoch] = shown
    assert np.mean(seen["video", 1] == seen["video", 2]) < 0.6  # versions change from epoch to epoch
    assert np.mean(seen["video", 1] == seen["text", 1]) < 0.6  # and are drawn per modality
    assert len(set(seen["text", 1].tolist())) == N_AUG
    np.testing.assert_array_equal(epoch_features(data, 2, seed=7), epoch_features(data, 2, seed=7))
    plain = ProbeData(data.X, data.labels, ids)
    assert epoch_features(plain, 1, 7) is plain.X
    assert data.subset(np.array([3, 1])).versions["text"].shape == (V, 2, 2)


def test_probe_trains_on_augmented_versions_and_evaluates_on_plain(tmp_path: Path) -> None:
    arrays = _arrays()
    cfg = Config()
    cfg.probe = ProbeConfig(epochs=60)
    enc = {"raw_features": raw_features_encoder(["video", "text"])}
    res = evaluate_representations(enc, arrays, label_space=NAMES, multilabel=False, corpus="caer",
                                   cfg=cfg, out_dir=tmp_path)["raw_features"]
    # Trained on the (right-way-round) augmented versions, scored on the plain val/test vectors:
    # both near perfect. Trained on plain, or scored on augmented, it would be wrong.
    assert res.augmentations == N_AUG and any("augmented" in n for n in res.notes)
    assert res.val_metrics["accuracy"] > 0.95 and res.test_metrics["accuracy"] > 0.95
    assert json.loads((tmp_path / "raw_features" / "report.json").read_text())["augmentations"] == N_AUG
    plain = {k: v for k, v in arrays.items() if not k.endswith("_aug")}
    res_plain = evaluate_representations(enc, plain, label_space=NAMES, multilabel=False, corpus="caer",
                                         cfg=cfg, out_dir=tmp_path / "plain")["raw_features"]
    # Trained on the reversed plain vectors, the best validation epoch is little better than chance.
    assert res_plain.augmentations == 0 and res_plain.test_metrics["accuracy"] < 0.65


def test_encode_versions_per_modality_through_frozen_heads() -> None:
    dims = {"video": 6, "text": 4}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ConCluGen.from_config(ModelConfig(d=8, p=4, r=4, k=2, modalities=["video", "text"]), dims).eval()
    enc = heads_encoder(model, ["video", "text"])
    rng = np.random.default_rng(2)
    plain = {m: rng.normal(size=(10, d)).astype(np.float32) for m, d in dims.items()}
    views = {"video": rng.normal(size=(10, 3, 6)).astype(np.float32)}  # text has no views
    out = encode_versions(enc, plain, views)
    assert out["video"].shape == (4, 10, 8) and out["text"].shape == (4, 10, 8)
    for v in range(4):
        feats = {"video": plain["video"] if v == 0 else views["video"][:, v - 1], "text": plain["text"]}
        np.testing.assert_allclose(np.concatenate([out["video"][v], out["text"][v]], 1), enc(feats), atol=1e-6)
    np.testing.assert_allclose(out["text"][3], out["text"][0])
    with pytest.raises(EncoderError):
        encode_versions(lambda f: f["video"], plain, views)


def test_load_arrays_augmented_views_from_a_store(tmp_path: Path) -> None:
    root = str(tmp_path / "aug")
    write_feature_store(root, {"train": 10, "val": 4, "test": 4}, dims={"video": 5, "text": 3}, augmentations=3)
    arr = load_arrays(root, ["video", "text"], augmented=True)
    assert arr[aug_column("video")].shape == (18, 3, 5) and arr[aug_column("text")].shape == (18, 3, 3)
    # The views are the plain vector plus noise (tests/helpers/features.py), so close but not equal.
    diff = np.abs(arr[aug_column("video")] - arr["video"][:, None, :])
    assert 0 < diff.mean() < 1.0
    assert aug_column("video") not in load_arrays(root, ["video", "text"])
    data = encoded_splits("raw", raw_features_encoder(["video", "text"]), arr)
    assert data["train"].n_versions == 4 and data["val"].versions is None and data["test"].versions is None
    res = fit_probe(data["train"], data["val"], data["test"], label_space=["anger", "joy", "sadness", "neutral"],
                    multilabel=False, cfg=ProbeConfig(epochs=5))
    assert res.augmentations == 3
    # A store without versions: nothing added, plain training.
    plain_root = str(tmp_path / "plain")
    write_feature_store(plain_root, {"train": 10, "val": 4, "test": 4}, dims={"video": 5})
    plain = load_arrays(plain_root, ["video"], augmented=True)
    assert set(plain) == {"clip_id", "split", "labels", "video"}
    assert encoded_splits("raw", raw_features_encoder(["video"]), plain)["train"].versions is None
