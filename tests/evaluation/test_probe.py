"""Linear probe: separable vs noise, best-validation selection, early stopping, the two
protocols (features, learning-rate schedule, selection), the MOSEI multi-label path, reports and
PNGs, and MLflow logging linked to a pretraining run. Class weights: test_class_weights.py;
augmented versions: test_probe_augmented.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conclugen.config import MELD_EMOTIONS, MOSEI_EMOTIONS, Config, ProbeConfig
from conclugen.evaluation.class_weights import class_weights_for
from conclugen.evaluation.compare import evaluate_representations
from conclugen.evaluation.encoders import raw_features_encoder, torch_encoder
from conclugen.evaluation.metrics import single_label_metrics
from conclugen.evaluation.probe import fit_probe
from conclugen.evaluation.probe_data import ProbeData, ProbeError, encode_targets
from conclugen.evaluation.probe_model import ProbeModel
from conclugen.evaluation.probe_tracking import log_probe_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _blobs(
    rng: np.random.Generator, n: int, names: list[str], f: int, sep: float, means: np.ndarray
) -> ProbeData:
    y = rng.integers(0, len(names), n)
    X = rng.normal(size=(n, f)) + sep * means[y]
    return ProbeData(X.astype(np.float32), [[names[k]] for k in y], [f"c{i}" for i in range(n)])


def _splits(seed: int, names: list[str], f: int, sep: float, sizes=(240, 80, 200)) -> list[ProbeData]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(len(names), f))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    return [_blobs(rng, n, names, f, sep, means) for n in sizes]


def test_separable_features_reach_high_f1() -> None:
    names = list(MELD_EMOTIONS)
    tr, va, te = _splits(0, names, 32, sep=6.0)
    res = fit_probe(tr, va, te, label_space=names, multilabel=False, cfg=ProbeConfig(epochs=150))
    assert res.test_metrics["f1_weighted"] > 0.9
    assert res.test_metrics["accuracy"] > 0.9
    assert res.n_train == 240 and res.n_test == 200 and res.test_proba.shape == (200, 7)
    np.testing.assert_allclose(res.test_proba.sum(1), 1.0, atol=1e-6)


def test_noise_stays_near_chance() -> None:
    names = ["a", "b", "c"]
    rng = np.random.default_rng(1)
    splits = []
    for n in (300, 150, 600):
        y = rng.integers(0, 3, n)
        splits.append(ProbeData(rng.normal(size=(n, 64)).astype(np.float32), [[names[k]] for k in y]))
    res = fit_probe(*splits, label_space=names, multilabel=False, cfg=ProbeConfig(epochs=100))
    assert res.test_metrics["accuracy"] < 0.42  # chance is 1/3
    assert res.test_metrics["f1_weighted"] < 0.42


def test_best_validation_epoch_is_kept_and_early_stop_on_val_loss() -> None:
    # Few training rows, many noisy features: the probe overfits, validation accuracy peaks and
    # falls, and the validation loss turns up, so early stopping fires.
    names = ["a", "b", "c", "d"]
    tr, va, te = _splits(2, names, 200, sep=2.5, sizes=(60, 200, 100))
    cfg = ProbeConfig(epochs=300, patience=10)
    res = fit_probe(tr, va, te, label_space=names, multilabel=False, cfg=cfg)
    accs = [h["val_accuracy"] for h in res.history]
    assert [h["epoch"] for h in res.history] == list(range(1, res.epochs_run + 1))
    assert res.best_epoch == int(np.argmax(accs)) + 1
    assert res.best_epoch < res.epochs_run  # the restore actually matters here
    assert accs[res.best_epoch - 1] > accs[-1]
    # The returned model is the best epoch's state: its validation accuracy is the curve's max.
    y_va = encode_targets(va.labels, names, False)
    assert single_label_metrics(y_va, res.model.predict_indices(va.X), names)["accuracy"] == pytest.approx(
        max(accs)
    )
    assert res.val_metrics["accuracy"] == pytest.approx(max(accs))
    # Early stop: the last `patience` epochs did not improve on the best earlier validation loss.
    assert res.stopped_early and res.epochs_run < cfg.epochs
    losses = [h["val_loss"] for h in res.history]
    assert min(losses[-cfg.patience :]) >= min(losses[: -cfg.patience])


def test_deterministic_per_seed_and_scale_invariant() -> None:
    names = ["a", "b", "c"]
    tr, va, te = _splits(4, names, 16, sep=2.0, sizes=(150, 60, 120))
    cfg = ProbeConfig(epochs=60)
    r1 = fit_probe(tr, va, te, label_space=names, multilabel=False, cfg=cfg)
    r2 = fit_probe(tr, va, te, label_space=names, multilabel=False, cfg=cfg)
    np.testing.assert_array_equal(r1.model.weight, r2.model.weight)
    assert r1.history == r2.history
    # reference: the features as they come.
    assert not r1.standardized and r1.protocol == "reference"
    assert np.all(r1.model.mean == 0) and np.all(r1.model.std == 1)
    # balanced: standardised with train statistics, so scaling the features by 1000 barely
    # changes anything.
    bal = ProbeConfig(epochs=60, protocol="balanced")
    b1 = fit_probe(tr, va, te, label_space=names, multilabel=False, cfg=bal)
    big = [ProbeData(d.X * 1000.0, d.labels) for d in (tr, va, te)]
    b2 = fit_probe(*big, label_space=names, multilabel=False, cfg=bal)
    assert b1.standardized and b1.protocol == "balanced"
    np.testing.assert_allclose(b1.model.mean, tr.X.mean(0), rtol=1e-4, atol=1e-5)
    assert b2.test_metrics["accuracy"] == pytest.approx(b1.test_metrics["accuracy"], abs=0.02)


def _torch_reference_lrs(lr: float, epochs: int) -> list[float]:
    """configs/testing.yaml of the reference, composed by hand: SequentialLR(milestones [5]) of
    LinearLR(0.1, total_iters 5) and CosineAnnealingWarmRestarts(T_0 20, T_mult 2, eta_min 1e-6),
    stepped once per epoch."""
    import warnings

    import torch

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=5),
         torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=20, T_mult=2, eta_min=1e-6)],
        milestones=[5],
    )
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
        for _ in range(epochs):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return out


def test_learning_rate_schedule_per_protocol() -> None:
    from conclugen.evaluation.probe import probe_lr

    names = ["a", "b"]
    tr, va, te = _splits(9, names, 4, sep=3.0, sizes=(40, 20, 10))
    cfg = ProbeConfig(epochs=70, patience=1000)
    res = fit_probe(tr, va, te, label_space=names, multilabel=False, cfg=cfg)
    expected = _torch_reference_lrs(cfg.lr, 70)
    assert res.epochs_run == 70
    np.testing.assert_allclose([h["lr"] for h in res.history], expected, rtol=1e-9)
    # Warm-up from 0.1·lr, restarts to the full lr at epochs 25 and 65 (0-based; no decay).
    assert expected[0] == pytest.approx(0.1 * cfg.lr) and expected[5] == pytest.approx(cfg.lr)
    assert expected[25] == pytest.approx(cfg.lr) and expected[65] == pytest.approx(cfg.lr)
    assert expected[24] < 0.01 * cfg.lr
    np.testing.assert_allclose([probe_lr(e, cfg) for e in range(70)], expected, rtol=1e-9)
    bal_cfg = ProbeConfig(epochs=10, patience=1000, protocol="balanced")
    bal = fit_probe(tr, va, te, label_space=names, multilabel=False, cfg=bal_cfg)
    assert [h["lr"] for h in bal.history] == [bal_cfg.lr] * 10


def test_probe_leaves_global_torch_state_alone() -> None:
    import torch

    names = ["a", "b"]
    tr, va, te = _splits(7, names, 4, sep=3.0, sizes=(40, 20, 20))
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    fit_probe(tr, va, te, label_space=names, multilabel=False, cfg=ProbeConfig(epochs=5))
    assert torch.equal(torch.rand(3), expected) and torch.get_num_threads() == threads


def test_torch_encoder_batches_frozen_heads() -> None:
    import torch

    torch.manual_seed(0)
    heads = {"video": torch.nn.Linear(5, 3), "text": torch.nn.Linear(4, 2)}
    enc = torch_encoder(
        lambda b: torch.cat([torch.relu(heads[m](b[m])) for m in ("video", "text")], 1), batch_size=7
    )
    rng = np.random.default_rng(0)
    feats = {
        "video": rng.normal(size=(20, 5)).astype(np.float32),
        "text": rng.normal(size=(20, 4)).astype(np.float32),
    }
    out = enc(feats)
    ref = np.concatenate(
        [
            np.maximum(feats[m] @ heads[m].weight.detach().numpy().T + heads[m].bias.detach().numpy(), 0)
            for m in ("video", "text")
        ],
        1,
    )
    assert out.shape == (20, 5)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def _mosei_fixture(seed: int, n: int) -> tuple[ProbeData, np.ndarray]:
    """MOSEI layout: intensities in {0, 1/3, …, 3} per emotion, present iff intensity > 0;
    each emotion writes along its own feature direction."""
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.5, 0.2, 0.2, 0.08, 0.15, 0.08])
    present = rng.random((n, 6)) < prevalence
    intensity = np.where(present, rng.integers(1, 10, (n, 6)) / 3.0, 0.0)
    directions = np.random.default_rng(99).normal(size=(6, 24))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    X = (np.where(intensity > 0, 1.5, 0.0) + 0.3 * intensity) @ directions + 0.25 * rng.normal(size=(n, 24))
    labels = [[MOSEI_EMOTIONS[k] for k in range(6) if intensity[i, k] > 0] for i in range(n)]
    return ProbeData(X.astype(np.float32), labels), intensity


def test_multilabel_mosei_path() -> None:
    names = list(MOSEI_EMOTIONS)
    tr, _ = _mosei_fixture(10, 400)
    va, _ = _mosei_fixture(11, 150)
    te, inten = _mosei_fixture(12, 300)
    res = fit_probe(tr, va, te, label_space=names, multilabel=True, cfg=ProbeConfig(epochs=200), corpus="mosei")
    # The reference constants weigh every split's loss.
    assert res.class_weights == class_weights_for("mosei", names, []) and res.val_class_weights is None
    # reference: the kept epoch is the one with the best validation (weighted per-label) accuracy.
    assert res.selection_metric == "accuracy"
    assert res.best_epoch == int(np.argmax([h["val_accuracy"] for h in res.history])) + 1
    assert res.test_metrics["multilabel"] and res.test_metrics["f1_weighted"] > 0.85
    assert res.test_proba.shape == (300, 6)
    assert np.all((res.test_proba >= 0) & (res.test_proba <= 1))
    # Predictions are the labels whose sigmoid reaches the 0.5 threshold.
    assert res.test_pred == [[names[j] for j in range(6) if p[j] >= 0.5] for p in res.test_proba]
    assert sum(1 for row in te.labels if not row) > 0  # all-absent rows are kept in multi-label
    assert res.n_test == 300 and (inten > 0).sum() == sum(len(r) for r in te.labels)
    bal = fit_probe(tr, va, te, label_space=names, multilabel=True,
                    cfg=ProbeConfig(epochs=60, protocol="balanced"), corpus="mosei")
    assert bal.selection_metric == "f1_weighted"
    assert bal.best_epoch == int(np.argmax([h["val_f1_weighted"] for h in bal.history])) + 1
    assert bal.class_weights == class_weights_for("mosei", names, tr.labels, protocol="balanced")


def test_reference_validation_loss_uses_the_validation_split_weights() -> None:
    # CAER: count/total per split (set_class_weights_on_model.py puts each split's on its loss).
    names = ["a", "b", "c"]
    tr, va, te = _splits(12, names, 8, sep=4.0, sizes=(120, 60, 30))
    res = fit_probe(tr, va, te, label_space=names, multilabel=False, cfg=ProbeConfig(epochs=5), corpus="caer")

    def share(d: ProbeData) -> list[float]:
        return [sum(1 for r in d.labels if r == [n]) / len(d) for n in names]

    assert res.class_weights == pytest.approx(share(tr)) and res.val_class_weights == pytest.approx(share(va))
    summary = res.summary()
    assert summary["class_weights"] == pytest.approx(dict(zip(names, share(tr), strict=True)))
    assert summary["protocol"] == "reference" and summary["val_class_weights"].keys() == set(names)
    # Explicit weights: the same for the validation loss.
    fixed = fit_probe(tr, va, te, label_space=names, multilabel=False, cfg=ProbeConfig(epochs=5),
                      class_weights=[1.0, 2.0, 3.0])
    assert fixed.class_weights == [1.0, 2.0, 3.0] and fixed.val_class_weights is None


def test_targets_and_errors() -> None:
    assert encode_targets([["b"], ["a"]], ["a", "b"], False).tolist() == [1, 0]
    assert encode_targets([["b", "a"], []], ["a", "b"], True).tolist() == [[1, 1], [0, 0]]
    with pytest.raises(ProbeError, match="not in the label space"):
        encode_targets([["zzz"]], ["a", "b"], False)
    with pytest.raises(ProbeError, match="exactly one label"):
        encode_targets([["a", "b"]], ["a", "b"], False)
    with pytest.raises(ProbeError):
        ProbeData(np.zeros((3, 2)), [["a"]])


def test_missing_val_split_is_held_out_and_model_roundtrip(tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    tr, _, te = _splits(6, names, 8, sep=5.0, sizes=(200, 1, 60))
    empty = ProbeData(np.zeros((0, 8), np.float32), [])
    res = fit_probe(tr, empty, te, label_space=names, multilabel=False, cfg=ProbeConfig(epochs=40))
    assert res.n_val == 20 and res.n_train == 180 and any("held out" in n for n in res.notes)
    uri = str(tmp_path / "probe.npz")
    res.model.save(uri)
    back = ProbeModel.load(uri)
    np.testing.assert_allclose(back.predict_proba(te.X), res.test_proba, atol=1e-6)
    assert back.label_space == names and back.predict(te.X[:2]) == res.test_pred[:2]


def _arrays(seed: int = 0) -> dict:
    """A load_arrays-shaped dict: the class signal lives in "text"; "video" is noise."""
    rng = np.random.default_rng(seed)
    names = ["anger", "joy", "neutral"]
    split = np.array(["train"] * 90 + ["val"] * 40 + ["test"] * 50 + ["unlabeled"] * 10, dtype=object)
    n = len(split)
    y = rng.integers(0, 3, n)
    means = rng.normal(size=(3, 6)) * 3
    return {
        "clip_id": [f"clip{i:03d}" for i in range(n)],
        "split": split,
        "labels": [[names[k]] if s != "unlabeled" else [] for k, s in zip(y, split, strict=True)],
        "video": rng.normal(size=(n, 12)).astype(np.float32),
        "audio": rng.normal(size=(n, 8)).astype(np.float32),
        "text": (rng.normal(size=(n, 6)) + means[y]).astype(np.float32),
    }


def _is_png(path: Path) -> bool:
    from PIL import Image

    data = path.read_bytes()
    if not data.startswith(PNG_MAGIC):
        return False
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size[0] > 100 and im.size[1] > 100


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eval")
    cfg = Config()
    cfg.probe.epochs = 60
    encoders = {
        "raw_features": raw_features_encoder(["video", "audio", "text"]),
        "video_only": raw_features_encoder(["video"]),
    }
    results = evaluate_representations(
        encoders,
        _arrays(),
        label_space=["anger", "joy", "neutral"],
        multilabel=False,
        corpus="synthetic",
        cfg=cfg,
        out_dir=out,
    )
    return out, results


def test_evaluate_representations_writes_reports(evaluated: tuple[Path, dict]) -> None:
    out, results = evaluated
    assert list(results) == ["raw_features", "video_only"]
    raw, vid = results["raw_features"], results["video_only"]
    assert (raw.n_train, raw.n_val, raw.n_test) == (90, 40, 50)  # the unlabeled rows are not used
    assert raw.test_metrics["f1_weighted"] > 0.85 > vid.test_metrics["f1_weighted"]
    for name, res in results.items():
        d = out / name
        for f in ("report.md", "report.json", "predictions.csv", "confusion.png", "map2d.png", "probe.npz"):
            assert (d / f).is_file(), f"{name}/{f}"
        assert _is_png(d / "confusion.png") and _is_png(d / "map2d.png")
        rep = json.loads((d / "report.json").read_text())
        assert rep["encoder"] == name and rep["best_epoch"] == res.best_epoch
        assert rep["test"]["f1_weighted"] == pytest.approx(res.test_metrics["f1_weighted"])
        assert "| anger |" in (d / "report.md").read_text()
        with (d / "predictions.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 50 and rows[0]["clip_id"].startswith("clip")
        assert ProbeModel.load(str(d / "probe.npz")).weight.shape[1] == (26 if name == "raw_features" else 12)
    with (out / "comparison.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["encoder"] for r in table] == ["raw_features", "video_only"]
    assert float(table[0]["f1_weighted"]) == pytest.approx(raw.test_metrics["f1_weighted"], abs=1e-6)
    assert "| raw_features |" in (out / "comparison.md").read_text()


def test_evaluate_multilabel_reports(tmp_path: Path) -> None:
    names = list(MOSEI_EMOTIONS)
    parts = [_mosei_fixture(s, n)[0] for s, n in ((20, 200), (21, 60), (22, 80))]
    split = np.array(["train"] * 200 + ["val"] * 60 + ["test"] * 80, dtype=object)
    arrays = {
        "clip_id": [f"m{i:03d}" for i in range(340)],
        "split": split,
        "labels": [lab for p in parts for lab in p.labels],
        "video": np.concatenate([p.X for p in parts]),
    }
    cfg = Config()
    cfg.probe.epochs = 200  # raw features and the warm-restart schedule: slower than standardised
    res = evaluate_representations(
        {"raw_features": raw_features_encoder(["video"])},
        arrays,
        label_space=names,
        multilabel=True,
        corpus="mosei",
        cfg=cfg,
        out_dir=tmp_path,
        map_method="pca",
    )
    r = res["raw_features"]
    assert r.class_weights == class_weights_for("mosei", names, [])
    assert r.test_metrics["f1_weighted"] > 0.85
    assert _is_png(tmp_path / "raw_features" / "confusion.png") and _is_png(
        tmp_path / "raw_features" / "map2d.png"
    )
    rep = json.loads((tmp_path / "raw_features" / "report.json").read_text())
    assert rep["protocol"] == "reference" and rep["selection_metric"] == "val_accuracy"
    assert rep["class_weights"]["surprise"] == pytest.approx(19.48985481262207)
    assert rep["class_weights"]["fear"] == pytest.approx(23.688003540039062)
    assert 0 <= rep["test"]["exact_match"] <= rep["test"]["label_accuracy"] <= 1


def test_log_probe_results_links_to_pretraining_run(evaluated: tuple[Path, dict], tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    out, results = evaluated
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("probe-test", artifact_location=(tmp_path / "artifacts").as_uri())
    pretrain = client.create_run(exp, run_name="pretrain").info.run_id
    run_id = log_probe_results(
        results, out, pretrain, tracking_uri=uri,
        params={**{f"x.p{i}": i for i in range(150)}, "probe.lr": 0.00967},
    )
    run = client.get_run(run_id)
    assert run.info.experiment_id == exp and run.info.status == "FINISHED"
    assert (
        run.data.tags["mlflow.parentRunId"] == pretrain and run.data.tags["pretrain_run_id"] == pretrain
    )
    f1 = results["raw_features"].test_metrics["f1_weighted"]
    assert run.data.metrics["raw_features.test_f1_weighted"] == pytest.approx(f1)
    assert run.data.params["probe.lr"] == "0.00967" and run.data.params["x.p149"] == "149"
    assert run.data.params["probe.protocol"] == "reference"
    assert json.loads(run.data.params["probe.class_weights"]).keys() == {"anger", "joy", "neutral"}
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"comparison.md", "comparison.csv", "raw_features", "video_only"} <= top
    assert "raw_features/confusion.png" in {a.path for a in client.list_artifacts(run_id, "raw_features")}
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    assert sorted(c.data.tags["encoder"] for c in children) == ["raw_features", "video_only"]
    child = next(c for c in children if c.data.tags["encoder"] == "raw_features")
    assert child.data.metrics["test_f1_weighted"] == pytest.approx(f1)
    assert child.data.tags["pretrain_run_id"] == pretrain and child.data.tags["probe.protocol"] == "reference"
    curve = client.get_metric_history(child.info.run_id, "curve.val_accuracy")
    assert len(curve) == results["raw_features"].epochs_run
    assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"map2d.png", "report.md"}


def test_log_probe_results_marks_the_run_failed(evaluated: tuple[Path, dict], tmp_path: Path) -> None:
    import dataclasses

    from mlflow.tracking import MlflowClient

    out, results = evaluated
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = results["raw_features"]
    broken = dataclasses.replace(raw, test_metrics={k: v for k, v in raw.test_metrics.items() if k != "per_class"})
    with pytest.raises(KeyError, match="per_class"):
        log_probe_results({"raw_features": broken}, out, None, tracking_uri=uri, experiment="probe-fail")
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("probe-fail").experiment_id])
    status = {r.data.tags["conclugen.stage"]: r.info.status for r in runs}
    assert status == {"evaluate": "FAILED", "probe": "FAILED"}  # the run and the encoder's child run


@pytest.mark.parametrize("multilabel", [False, True])
def test_empty_test_split_selection_only(multilabel: bool) -> None:
    # The tuner probes train → val only and passes an empty test split.
    names = ["a", "b", "c"]
    tr, va, _ = _splits(8, names, 6, sep=4.0, sizes=(60, 30, 1))
    empty = ProbeData(np.zeros((0, 6), np.float32), [])
    res = fit_probe(tr, va, empty, label_space=names, multilabel=multilabel, cfg=ProbeConfig(epochs=150))
    assert res.n_test == 0 and res.test_proba.shape == (0, 3) and res.test_metrics["n"] == 0
    assert res.val_metrics["f1_weighted"] > 0.8
