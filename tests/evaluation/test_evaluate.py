"""`conclugen evaluate`: encoders against plain torch, checkpoint resolution, and the command end to
end on tiny features (Ray Train pretraining, 1 worker → probes with baselines → reports, predict
bundle, an MLflow run nested under the pretraining run)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conclugen.config import load_config
from tests.helpers.configs import TINY as BASE_TINY
from tests.helpers.features import DEFAULT_DIMS, make_arrays, write_feature_store

TINY = [*BASE_TINY, "probe.epochs=30", "probe.batch_size=64"]


def _save(folder: Path, cfg, seed: int = 0, epoch: int = 0, score: float = 1.0) -> str:
    from conclugen.model.heads import ConCluGen
    from conclugen.training.run_folder import save_checkpoint_dir

    torch.manual_seed(seed)
    model = ConCluGen.from_config(cfg.model, DEFAULT_DIMS)
    save_checkpoint_dir(folder, {"model": model.state_dict(), "config": cfg.public_dict(),
                                 "input_dims": dict(DEFAULT_DIMS), "epoch": epoch}, {"epoch": epoch, "score": score})
    return str(folder)


def test_encoders_match_plain_torch(tmp_path: Path) -> None:
    from conclugen.evaluation.encoders import build_encoders, random_heads
    from conclugen.training.run_folder import load_checkpoint

    cfg = load_config(None, TINY)
    model, info = load_checkpoint(_save(tmp_path / "c", cfg, seed=3))
    arr = make_arrays(10, seed=1)
    feats = {m: arr[m] for m in DEFAULT_DIMS}
    enc = build_encoders(model, cfg.model, DEFAULT_DIMS, seed=127)

    # conclugen: GEU per modality (fc1 → ReLU → GLU gating → fc2 → ReLU), concatenated in order
    def geu(g, x):
        h = torch.relu(g.fc1(x))
        h = h * torch.sigmoid(g.gating.fc(h))
        return torch.relu(g.fc2(h))

    with torch.no_grad():
        want = []
        for m in model.modalities:
            x = torch.from_numpy(feats[m])
            e = model.encoders[m]
            want.append((e[1](geu(e[0], x)) if m == "audio" else geu(e, x)).numpy())
    got = enc["conclugen"](feats)
    assert got.shape == (10, 3 * 32)
    np.testing.assert_allclose(got, np.concatenate(want, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(enc["raw_features"](feats), np.concatenate([feats[m] for m in model.modalities], 1))

    # random heads: seeded (same seed → same vectors), not the checkpoint's weights, RNG untouched
    state = torch.random.get_rng_state()
    r1 = enc["random_heads"](feats)
    r2 = build_encoders(model, cfg.model, DEFAULT_DIMS, seed=127, which=("random_heads",))["random_heads"](feats)
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_array_equal(r1, r2)
    assert not np.allclose(r1, got)
    other = random_heads(cfg.model, DEFAULT_DIMS, seed=128)
    assert not torch.equal(other.encoders["video"].fc1.weight, random_heads(cfg.model, DEFAULT_DIMS, 127).encoders["video"].fc1.weight)


def test_checkpoint_resolution_and_mismatch(tmp_path: Path) -> None:
    from conclugen.evaluation.evaluate import run_evaluate
    from conclugen.features.store import FeatureStoreError
    from conclugen.training.run_folder import CheckpointNotFoundError, resolve_checkpoint

    cfg = load_config(None, [*TINY, f"workdir={tmp_path / 'work'}"])
    run = tmp_path / "run"
    a = _save(run / "checkpoint_a", cfg, epoch=0, score=2.0)
    b = _save(run / "checkpoint_b", cfg, epoch=1, score=1.5)
    _save(run / "checkpoint_c", cfg, epoch=2, score=1.7)
    assert resolve_checkpoint(str(run), cfg.storage) == b  # the best (lowest score) of a run folder
    assert resolve_checkpoint(a, cfg.storage) == a
    assert resolve_checkpoint(a + "/checkpoint.pt", cfg.storage) == a + "/checkpoint.pt"
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint"):
        resolve_checkpoint(str(tmp_path / "nothing"), cfg.storage)
    # features of other dims stop before any probe work, naming the modality
    feats = str(tmp_path / "feats")
    write_feature_store(feats, dims={"video": 20, "audio": 12, "text": 16})
    with pytest.raises(FeatureStoreError, match="video"):
        run_evaluate(feats, str(run), cfg, str(tmp_path / "out"), log_mlflow=False)


def test_evaluate_intervals_label_efficiency_and_also(tmp_path: Path) -> None:
    from conclugen.evaluation.evaluate import EvaluateError, parse_also, parse_fractions, run_evaluate

    cfg = load_config(None, [*TINY, "probe.epochs=10", "probe.bootstrap=100", f"workdir={tmp_path / 'work'}"])
    a, b = _save(tmp_path / "a", cfg, seed=1), _save(tmp_path / "b", cfg, seed=2)
    feats = str(tmp_path / "feats")
    write_feature_store(feats, splits={"train": 64, "val": 24, "test": 24})
    out = tmp_path / "out"
    ev = run_evaluate(feats, a, cfg, str(out), encoders=("conclugen", "raw_features"), log_mlflow=False,
                      map_method="pca", also={"other": b}, label_fractions=(0.25, 1.0), seeds=2)
    names = ["conclugen", "raw_features", "other"]
    assert list(ev.results) == names and set(ev.intervals) == set(names)

    # comparison table and CSV: every figure with its interval, the value inside it
    rows = {r["encoder"]: r for r in csv.DictReader((out / "comparison.csv").open())}
    assert list(rows) == names
    for n, r in rows.items():
        for k in ("accuracy", "f1_weighted", "precision_weighted", "recall_weighted"):
            iv = ev.intervals[n][k]
            assert float(r[f"{k}_low"]) == pytest.approx(iv.low, abs=1e-6)
            assert float(r[f"{k}_high"]) == pytest.approx(iv.high, abs=1e-6)
            assert iv.low <= float(r[k]) + 1e-6 and float(r[k]) <= iv.high + 1e-6
            assert iv.value == pytest.approx(ev.results[n].test_metrics[k])
        assert f"| {n} | {ev.intervals[n]['accuracy']} |" in ev.table_markdown
    assert ev.table_markdown == (out / "comparison.md").read_text() and "95% interval" in ev.table_markdown
    # report.json / evaluate.json carry the same intervals (one seeded bootstrap)
    rep = json.loads((out / "conclugen" / "report.json").read_text())
    assert rep["test_intervals"]["f1_weighted"]["low"] == pytest.approx(ev.intervals["conclugen"]["f1_weighted"].low)
    assert str(ev.intervals["conclugen"]["f1_weighted"]) in (out / "conclugen" / "report.md").read_text()
    summary = json.loads((out / "evaluate.json").read_text())
    assert summary["test_intervals"]["other"]["accuracy"]["high"] == ev.intervals["other"]["accuracy"].high

    # label efficiency over every encoder, the --also one included
    le = ev.label_efficiency
    assert le is not None and le.encoders == names and le.fractions == [0.25, 1.0]
    le_rows = list(csv.DictReader((out / "label_efficiency" / "label_efficiency.csv").open()))
    assert len(le_rows) == 3 * 2 * 2
    full = [r for r in le_rows if r["encoder"] == "other" and float(r["fraction"]) == 1.0]
    assert float(full[0]["f1_weighted"]) == pytest.approx(ev.results["other"].test_metrics["f1_weighted"], abs=1e-6)
    assert le.table_markdown in ev.describe()

    assert parse_fractions("0.01, 0.1,1") == [0.01, 0.1, 1.0] and parse_also(["x=a/b=c"]) == {"x": "a/b=c"}
    for bad in ("0,0.5", "a,b", "1.5"):
        with pytest.raises(EvaluateError, match="label-fractions"):
            parse_fractions(bad)
    with pytest.raises(EvaluateError, match="NAME=CHECKPOINT"):
        parse_also(["nocheckpoint"])
    with pytest.raises(EvaluateError, match="new folder-safe name"):
        run_evaluate(feats, a, cfg, str(tmp_path / "o2"), log_mlflow=False, also={"raw_features": b})


@pytest.mark.slow
@pytest.mark.ray
def test_evaluate_command_end_to_end(ray_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from conclugen.cli import app
    from conclugen.training.driver import run_pretrain

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    work = tmp_path / "work"
    sets = [*TINY, "train.workers=1", "train.epochs=2", f"workdir={work}"]
    cfg = load_config(None, sets)
    feats = str(tmp_path / "feats")
    write_feature_store(feats, splits={"train": 96, "val": 32, "test": 32})
    pre = run_pretrain(feats, str(tmp_path / "run"), cfg, log_model=False)

    out = tmp_path / "eval"
    args = ["evaluate", feats, "--checkpoint", str(tmp_path / "run"), "--out", str(out),
            "--label-fractions", "0.25,1", "--seeds", "2"]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("conclugen", "raw_features", "random_heads"):
        assert f"| {name} |" in result.output  # the comparison table is printed
        for f in ("report.md", "report.json", "predictions.csv", "confusion.png", "map2d.png", "probe.npz"):
            assert (out / name / f).is_file(), (name, f)
        assert (out / name / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = {r["encoder"]: r for r in csv.DictReader((out / "comparison.csv").open())}
    assert list(rows) == ["conclugen", "raw_features", "random_heads"]
    # The tiny store's classes are far apart in every modality: the raw features separate them
    # almost perfectly and every encoder is far above chance (0.25). Heads after 2 epochs vary
    # from run to run (the probe keeps the earliest best-val epoch), so their bound is looser.
    assert float(rows["raw_features"]["f1_weighted"]) > 0.9
    for r in rows.values():
        assert float(r["f1_weighted"]) > 0.5 and float(r["accuracy"]) > 0.5
    summary = json.loads((out / "evaluate.json").read_text())
    assert summary["checkpoint"] == pre.best_checkpoint and summary["pretrain_run_id"] == pre.mlflow_run_id
    report = json.loads((out / "conclugen" / "report.json").read_text())
    assert report["n_test"] == 32 and report["n_features"] == 3 * 32
    assert abs(report["test"]["f1_weighted"] - float(rows["conclugen"]["f1_weighted"])) < 1e-6

    bundle = json.loads((out / "model" / "bundle.json").read_text())
    assert bundle["modalities"] == ["video", "audio", "text"] and bundle["label_space"] == ["anger", "joy", "sadness", "neutral"]
    assert (out / "model" / "probe.npz").read_bytes() == (out / "conclugen" / "probe.npz").read_bytes()

    # MLflow: the evaluate run is a child of the pretraining run, in the workdir's sqlite store
    client = MlflowClient(tracking_uri=cfg.tracking_uri())
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == pre.mlflow_run_id
    assert run.data.tags["conclugen.checkpoint"] == pre.best_checkpoint
    assert run.data.metrics["conclugen.test_f1_weighted"] == pytest.approx(float(rows["conclugen"]["f1_weighted"]), abs=1e-6)
    assert run.data.metrics["raw_features.test_accuracy"] == pytest.approx(float(rows["raw_features"]["accuracy"]), abs=1e-6)
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"comparison.md", "comparison.csv", "conclugen", "model", "label_efficiency"} <= arts
    assert "label_efficiency/label_efficiency.png" in {a.path for a in client.list_artifacts(run.info.run_id,
                                                                                             "label_efficiency")}
    # intervals and label efficiency as metrics
    f1 = run.data.metrics["conclugen.test_f1_weighted"]
    assert run.data.metrics["conclugen.test_f1_weighted_low"] <= f1 <= run.data.metrics["conclugen.test_f1_weighted_high"]
    le = {r["encoder"]: r for r in csv.DictReader((out / "label_efficiency" / "label_efficiency.csv").open())
          if float(r["fraction"]) == 0.25}
    assert set(le) == {"conclugen", "raw_features", "random_heads"}
    key = "label_efficiency.raw_features.25pct.f1_weighted"
    assert run.data.metrics[f"{key}_low"] <= run.data.metrics[key] <= run.data.metrics[f"{key}_high"]
    assert "Label efficiency, test F1 (w)" in result.output
