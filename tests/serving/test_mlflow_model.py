"""The served model: a tiny `evaluate` (sqlite MLflow store) logs the predict bundle as a pyfunc and
registers it with its figures as version tags; the registered model, loaded in a fresh process,
predicts videos given as paths, bytes and through the REST server's JSON parsing, with the same
probabilities as `conclugen predict` (Ray Data) on the same clips."""

from __future__ import annotations

import base64
import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conclugen.config import MELD_EMOTIONS, Config, load_config
from tests.helpers.predict_bundle import TINY_PREDICT, fresh_checkpoint, offline_store

TRANSCRIPT = "I am so happy today, this is wonderful!"
MODEL_NAME = "conclugen-served"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """evaluate → MLflow (sqlite) with the model registered; two copies of one synthetic clip, one
    with a sidecar transcript."""
    from conclugen.data.synthetic import synthesize
    from conclugen.evaluation.evaluate import run_evaluate

    tmp = tmp_path_factory.mktemp("served")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = load_config(None, [*TINY_PREDICT, f"workdir={tmp / 'work'}", f"tracking.uri={uri}",
                             f"tracking.model_name={MODEL_NAME}", "tracking.experiment=served"])
    feats = str(tmp / "features")
    fresh_checkpoint(tmp, cfg, offline_store(feats))
    ev = run_evaluate(feats, str(tmp / "run"), cfg, str(tmp / "eval"), encoders=("conclugen",))
    synthesize(str(tmp / "synth"), clips=1, seed=5, workers=1, voice="numpy")
    clip = sorted((tmp / "synth").rglob("*.mp4"))[0]
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    with_text, without = tmp / "a" / "clip.mp4", tmp / "b" / "clip.mp4"
    shutil.copyfile(clip, with_text)
    shutil.copyfile(clip, without)
    with_text.with_suffix(".txt").write_text(TRANSCRIPT)
    return SimpleNamespace(tmp=tmp, uri=uri, cfg=cfg, ev=ev, with_text=with_text, without=without)


def test_evaluate_registers_the_model_with_its_figures(evaluated) -> None:
    from conclugen import tracking

    ev, cfg = evaluated.ev, evaluated.cfg
    c = tracking.client(evaluated.uri)
    versions = c.search_model_versions(f"name='{MODEL_NAME}'")
    assert [str(v.version) for v in versions] == ["1"]
    mv = c.get_model_version(MODEL_NAME, "1")
    test = ev.results["conclugen"].test_metrics
    assert mv.run_id == ev.mlflow_run_id
    assert math.isclose(float(mv.tags["test_accuracy"]), test["accuracy"], abs_tol=1e-6)
    assert math.isclose(float(mv.tags["test_f1_weighted"]), test["f1_weighted"], abs_tol=1e-6)
    assert mv.tags["corpus"] == "meld" and mv.tags["protocol"] == cfg.probe.protocol
    assert mv.tags["checkpoint"] == ev.checkpoint_uri and mv.tags["evaluate_run_id"] == ev.mlflow_run_id
    assert mv.tags["label_space"] == ",".join(MELD_EMOTIONS)
    # the experiment evaluate created is a training-runs ("Machine learning") experiment
    exp = c.get_experiment(c.get_run(ev.mlflow_run_id).info.experiment_id)
    assert exp.name == "served" and exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


# Runs in a fresh interpreter: load the registered model by its registry URI, predict a frame
# (paths, a transcript, bytes, a missing file), then the REST server's JSON handling on base64 bytes.
FRESH = r"""
import base64, json, sys
import mlflow, pandas as pd
from mlflow.pyfunc import scoring_server

model_uri, a, b, missing, transcript, out = sys.argv[1:]
model = mlflow.pyfunc.load_model(model_uri)
raw = open(b, "rb").read()
frame = pd.DataFrame({"video": [a, b, None, missing], "video_bytes": [None, None, raw, None],
                      "transcript": [None, transcript, None, None]})
got = model.predict(frame)
body = json.dumps({"dataframe_split": {"columns": ["video_bytes"], "data": [[base64.b64encode(raw).decode()]]}})
resp = scoring_server.invocations(body, "application/json", model, model.metadata.get_input_schema())
bad = scoring_server.invocations(json.dumps({"dataframe_records": [{"video": missing}]}), "application/json",
                                 model, model.metadata.get_input_schema())
records = {"frame": json.loads(got.to_json(orient="records")), "status": resp.status,
           "rest": json.loads(resp.response), "rest_missing": json.loads(bad.response)}
open(out, "w").write(json.dumps(records))
"""


@pytest.mark.ray
@pytest.mark.slow
def test_registered_model_in_a_fresh_process_matches_predict(ray_cluster, evaluated, tmp_path: Path) -> None:
    from conclugen.serving.predict import predict_videos

    e = evaluated
    missing = tmp_path / "missing.mp4"
    out = tmp_path / "served.json"
    env = {**os.environ, "MLFLOW_TRACKING_URI": e.uri}
    proc = subprocess.run([sys.executable, "-c", FRESH, f"models:/{MODEL_NAME}/1", str(e.with_text), str(e.without),
                           str(missing), TRANSCRIPT, str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    served = json.loads(out.read_text())

    # `conclugen predict`'s path (Ray Data) on the same clips: with its sidecar text, and without text
    ref = predict_videos([str(e.with_text), str(e.without)], e.ev.out_dir, e.cfg)
    want_text, want_none = ([c.probabilities[lab] for lab in MELD_EMOTIONS] for c in ref.clips)
    assert ref.clips[0].gaps == [] and ref.clips[1].gaps == ["text"]
    assert np.abs(np.subtract(want_text, want_none)).max() > 1e-3  # the text is visible in the output

    rows = served["frame"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error"]

    def probs(r: dict) -> list[float]:
        return [r[f"p_{lab}"] for lab in MELD_EMOTIONS]

    np.testing.assert_allclose(probs(rows[0]), want_text, rtol=0, atol=1e-5)  # sidecar beside the path
    np.testing.assert_allclose(probs(rows[1]), want_text, rtol=0, atol=1e-5)  # transcript column
    np.testing.assert_allclose(probs(rows[2]), want_none, rtol=0, atol=1e-5)  # bytes, no text
    assert rows[0]["predicted"] == ref.clips[0].predicted[0] and rows[2]["gaps"] == "text"
    assert rows[0]["video_uri"] == str(e.with_text) and rows[2]["video_uri"] == "<video_bytes of row 2>"
    # a missing file is an error row naming the path, as predict reports it; the others go on
    assert rows[3]["video_uri"] == str(missing) and rows[3]["error"].startswith("read: ")
    assert str(missing) in rows[3]["error"] and rows[3]["p_joy"] is None
    # the REST server's JSON: base64 bytes in a `video_bytes` column → the same numbers
    assert served["status"] == 200
    (rest,) = served["rest"]["predictions"]
    np.testing.assert_allclose(probs(rest), want_none, rtol=0, atol=1e-5)
    (gone,) = served["rest_missing"]["predictions"]  # strict JSON: a failed clip's probabilities are null
    assert gone["status"] == "error" and gone["video_uri"] == str(missing) and gone["p_joy"] is None

    # `conclugen predict --local`: the in-process path from the command line, same numbers
    from typer.testing import CliRunner

    from conclugen.cli import app

    args = ["predict", str(e.with_text), "--model", e.ev.out_dir, "--out", str(tmp_path / "cli"), "--local"]
    for s in [*TINY_PREDICT, f"workdir={e.tmp / 'work'}", f"tracking.uri={e.uri}"]:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (row,) = csv.DictReader((tmp_path / "cli" / "predictions.csv").open())
    np.testing.assert_allclose([float(row[f"p_{lab}"]) for lab in MELD_EMOTIONS], want_text, rtol=0, atol=1e-5)


def test_bad_input_names_what_is_wrong() -> None:
    import pandas as pd

    from conclugen.serving.mlflow_model import ServingInputError, predict_frame

    stub = SimpleNamespace(cfg=Config())  # both checks fire before any clip is read
    with pytest.raises(ServingInputError, match="`video`.*`video_bytes` column"):
        predict_frame(stub, pd.DataFrame({"path": ["x.mp4"]}))
    with pytest.raises(ServingInputError, match="input row 1: give exactly one"):
        predict_frame(stub, pd.DataFrame({"video": ["x.mp4", None], "video_bytes": [None, None]}))
    with pytest.raises(ServingInputError, match="input row 0"):
        predict_frame(stub, pd.DataFrame({"video": ["x.mp4"], "video_bytes": [b"\x00"]}))


def test_signature_declares_bytes_as_binary() -> None:
    """The signature declares bytes as MLflow's binary type: the REST JSON's base64 decodes to them."""
    from mlflow.utils.proto_json_utils import dataframe_from_parsed_json

    from conclugen.serving.mlflow_model import model_signature

    sig = model_signature(list(MELD_EMOTIONS))
    assert [c.name for c in sig.outputs.inputs][4:11] == [f"p_{lab}" for lab in MELD_EMOTIONS]
    blob = b"\x00\x01video\xff"
    df = dataframe_from_parsed_json({"columns": ["video_bytes"], "data": [[base64.b64encode(blob).decode()]]},
                                    "split", sig.inputs)
    assert df["video_bytes"][0] == blob
