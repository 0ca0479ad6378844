"""`conclugen ablate`: the row set and its configs, the concurrency plan, and the command end to end
on tiny features (rows as concurrent Ray tasks, each a 1-worker Ray Train run + probe; one table
with the baselines; a parent MLflow run over the rows' runs)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conclugen.config import load_config
from tests.helpers.configs import TINY as BASE_TINY
from tests.helpers.features import write_feature_store

# balanced protocol (standardised inputs): after 1 pretraining epoch the heads' outputs are tiny,
# and the reference protocol's unstandardised 20-epoch probe on them stays at chance.
TINY = [*BASE_TINY, "probe.epochs=20", "probe.batch_size=64", "probe.protocol=balanced"]


def test_rows_are_the_reference_set() -> None:
    from conclugen.evaluation.ablation import ABLATIONS, row_config

    base = load_config(None, ["losses.contrastive=0.5", "losses.reconstruction=0", "train.epochs=7",
                              "storage.secret_access_key=s3cr3t"])
    want = {  # row → (contrastive, clustering, reconstruction, simclr, modalities)
        "all_losses": (0.5, 1.0, 1.0, 0.0, ["video", "audio", "text"]),
        "contrastive_clustering": (0.5, 1.0, 0.0, 0.0, ["video", "audio", "text"]),
        "contrastive_reconstruction": (0.5, 0.0, 1.0, 0.0, ["video", "audio", "text"]),
        "contrastive": (0.5, 0.0, 0.0, 0.0, ["video", "audio", "text"]),
        "contrastive_video_audio": (0.5, 0.0, 0.0, 0.0, ["video", "audio"]),
        "contrastive_video_text": (0.5, 0.0, 0.0, 0.0, ["video", "text"]),
        "reconstruction": (0.0, 0.0, 1.0, 0.0, ["video", "audio", "text"]),
        "simclr_video": (0.0, 0.0, 0.0, 1.0, ["video"]),
        "memory_bank": (0.5, 1.0, 1.0, 0.0, ["video", "audio", "text"]),
    }
    assert [r.name for r in ABLATIONS] == list(want)
    for r in ABLATIONS:
        c = row_config(base, r)
        L = c.losses
        assert (L.contrastive, L.clustering, L.reconstruction, L.simclr, c.model.modalities) == want[r.name], r.name
        # the memory_bank row differs from all_losses in its clustering schedule only
        assert L.kmeans_schedule == ("memory_bank" if r.name == "memory_bank" else "every_step"), r.name
        # equal budget: same epochs/batch/seed/lr for every row, no early stop
        assert (c.train.epochs, c.train.patience, c.train.batch_size, c.train.seed, c.train.lr) == (
            7, 7, base.train.batch_size, base.train.seed, base.train.lr)
        assert c.storage.secret_access_key.get_secret_value() == "s3cr3t"


def test_plan_parallel() -> None:
    from conclugen.evaluation.ablation import AblationError, _select, plan_parallel

    cfg = load_config(None, ["train.workers=1"])
    assert plan_parallel(cfg, {"CPU": 8}, 7) == 2  # 1 (probe) + 1 worker + 1 headroom per row
    assert plan_parallel(cfg, {"CPU": 2}, 7) == 1  # never 0: rows then run one after the other
    assert plan_parallel(cfg, {"CPU": 64}, 7) == 7
    assert plan_parallel(cfg, {"CPU": 64}, 7, max_parallel=3) == 3
    two = load_config(None, ["train.workers=2", "train.cpus_per_worker=2"])
    assert plan_parallel(two, {"CPU": 24}, 7) == 4
    gpu = load_config(None, ["train.workers=2", "train.use_gpu=true"])
    assert plan_parallel(gpu, {"CPU": 64, "GPU": 4}, 7) == 2  # two GPUs per row
    with pytest.raises(AblationError, match="unknown ablation rows"):
        _select(["all_losses", "simclr"])


def test_simclr_row_skipped_without_augmented_versions(tmp_path: Path) -> None:
    from conclugen.evaluation.ablation import _select, _skipped_rows
    from conclugen.features.store import read_meta, write_meta

    cfg = load_config(None, [])
    feats = str(tmp_path / "feats")
    write_feature_store(feats)
    rows = _select(["all_losses", "simclr_video"])
    skipped = _skipped_rows(rows, feats, cfg)
    assert list(skipped) == ["simclr_video"] and "extract.augmentations > 0" in skipped["simclr_video"]
    meta = read_meta(feats)
    meta.augmentations = 2
    write_meta(feats, meta)
    assert _skipped_rows(rows, feats, cfg) == {}


def test_table_shows_intervals_and_skipped_rows() -> None:
    from conclugen.evaluation.ablation_table import AblationResult, RowResult, table_metrics

    ok = RowResult("all_losses", ["contrastive", "clustering"], ["video", "audio"], "ok", accuracy=0.7523,
                   f1_weighted=0.7, accuracy_low=0.651, accuracy_high=0.8449, f1_weighted_low=0.6, f1_weighted_high=0.8,
                   epochs=3)
    skip = RowResult("simclr_video", ["simclr"], ["video"], "skipped", error="needs augmented versions")
    res = AblationResult("/tmp/x", [ok, skip], parallel=1, seconds=1.0)
    md = res.markdown()
    assert "| all_losses | contrastive + clustering | video+audio | 0.752 [0.65, 0.84] | 0.700 [0.60, 0.80] | 3 |" in md
    assert "| simclr_video (skipped: needs augmented versions) | simclr | video | — | — | — |" in md
    rows = list(csv.DictReader(res.csv_text().splitlines()))
    assert rows[0]["accuracy_low"] == "0.651000" and rows[1]["status"] == "skipped" and rows[1]["accuracy"] == ""
    m = table_metrics(res.rows)
    assert m == {"all_losses.test_f1_weighted": 0.7, "all_losses.test_f1_weighted_low": 0.6,
                 "all_losses.test_f1_weighted_high": 0.8, "all_losses.test_accuracy": 0.7523,
                 "all_losses.test_accuracy_low": 0.651, "all_losses.test_accuracy_high": 0.8449}


@pytest.mark.slow
@pytest.mark.ray
def test_ablate_command_end_to_end(ray_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from conclugen.cli import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    work = tmp_path / "work"
    sets = [*TINY, "train.workers=1", "train.epochs=1", f"workdir={work}"]
    feats = str(tmp_path / "feats")
    write_feature_store(feats, splits={"train": 64, "val": 32, "test": 32})
    out = tmp_path / "ablation"
    rows = ["all_losses", "contrastive_video_audio"]
    args = ["ablate", feats, "--out", str(out)]
    for r in [*rows, "simclr_video"]:  # the store has no augmented versions: simclr_video is skipped
        args += ["--row", r]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 rows, 2 at a time" in result.output  # 8 logical CPUs, 3 per row: both rows at once

    table = list(csv.DictReader((out / "ablation.csv").open()))
    assert [t["row"] for t in table] == [*rows, "simclr_video", "raw_features", "random_heads"]
    assert [t["status"] for t in table] == ["ok", "ok", "skipped", "baseline", "baseline"]
    assert "extract.augmentations > 0" in table[2]["error"] and "skipped simclr_video" in result.output
    table.pop(2)
    assert table[1]["modalities"] == "video+audio" and table[1]["losses"] == "contrastive"
    for t in table:
        assert 0.0 <= float(t["f1_weighted"]) <= 1.0 and 0.0 <= float(t["accuracy"]) <= 1.0
        for k in ("f1_weighted", "accuracy"):  # the 95% interval over test clips holds the value
            assert float(t[f"{k}_low"]) <= float(t[k]) <= float(t[f"{k}_high"])
    for t in table[:2]:
        assert int(t["epochs"]) == 1 and (out / t["row"] / "eval" / "conclugen" / "confusion.png").is_file()
        assert Path(t["checkpoint"]).is_dir() and str(out / t["row"] / "run") in t["checkpoint"]
    # separable tiny classes: the raw features almost perfectly, every row far above chance (0.25)
    assert float(table[2]["f1_weighted"]) > 0.9
    assert all(float(t["f1_weighted"]) > 0.5 for t in table)
    md = (out / "ablation.md").read_text()
    assert "| contrastive_video_audio | contrastive | video+audio |" in md and "| raw_features |" in md

    cfg = load_config(None, sets)
    client = MlflowClient(tracking_uri=cfg.tracking_uri())
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    parent = client.search_runs([exp.experiment_id], "tags.`conclugen.command` = 'ablate' and attributes.run_name = 'ablation'")
    assert len(parent) == 1
    p = parent[0]
    assert p.info.status == "FINISHED"
    assert p.data.metrics["contrastive_video_audio.test_f1_weighted"] == pytest.approx(float(table[1]["f1_weighted"]), abs=1e-6)
    assert p.data.metrics["random_heads.test_accuracy"] == pytest.approx(float(table[3]["accuracy"]), abs=1e-6)
    assert {a.path for a in client.list_artifacts(p.info.run_id)} >= {"ablation.md", "ablation.csv"}
    for t in table[:2]:  # each row's pretraining run is a child of the ablation run …
        pre = client.get_run(t["pretrain_run_id"])
        assert pre.data.tags["mlflow.parentRunId"] == p.info.run_id and pre.data.tags["conclugen.ablation"] == t["row"]
        assert pre.data.params["model.modalities"] == ('["video", "audio"]' if t["row"] == "contrastive_video_audio"
                                                        else '["video", "audio", "text"]')
        ev = client.get_run(t["evaluate_run_id"])  # … and its evaluate run a child of that
        assert ev.data.tags["mlflow.parentRunId"] == pre.info.run_id
