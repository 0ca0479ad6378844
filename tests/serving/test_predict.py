"""`conclugen predict`: a real evaluate bundle, real extraction (offline backbones) of synthetic
clips through Ray Data, the heads and the probe; an unreadable file gets an error line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conclugen.config import MELD_EMOTIONS, load_config
from tests.helpers.predict_bundle import TINY_PREDICT as TINY
from tests.helpers.predict_bundle import fresh_checkpoint, offline_store

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    from conclugen.evaluation.evaluate import run_evaluate

    tmp = tmp_path_factory.mktemp("predict")
    cfg = load_config(None, [*TINY, f"workdir={tmp / 'work'}"])
    feats = str(tmp / "features")
    meta = offline_store(feats)
    ckpt = fresh_checkpoint(tmp, cfg, meta)
    ev = run_evaluate(feats, str(tmp / "run"), cfg, str(tmp / "eval"), encoders=("conclugen",), log_mlflow=False)
    assert ev.checkpoint_uri == ckpt  # a run folder resolves to its (only) checkpoint
    return ev.out_dir, cfg


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conclugen.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("clips")
    synthesize(str(root), clips=2, seed=5, workers=1, voice="numpy")
    return root


def test_bundle_contents(bundle) -> None:
    from conclugen.evaluation.bundle import load_bundle

    out, cfg = bundle
    b = load_bundle(out)
    assert b.label_space == list(MELD_EMOTIONS) and not b.multilabel
    assert b.info["backbones"]["image"] == "offline:image" and b.info["extract"]["backbones"]["text"] == "offline:minilm"
    assert set(b.payload) >= {"model", "config", "input_dims"} and "optimizer" not in b.payload
    # the bundle's probe is the conclugen encoder's probe written next to its report
    assert b.probe_bytes == (Path(out) / "conclugen" / "probe.npz").read_bytes()
    assert load_bundle(str(Path(out) / "model")).uri == b.uri  # the bundle folder itself works too


def test_predict_synthetic_clip_and_a_broken_file(ray_cluster, bundle, clips: Path, tmp_path: Path) -> None:
    from conclugen.config import ModelConfig
    from conclugen.evaluation.bundle import load_bundle
    from conclugen.evaluation.probe_model import ProbeModel
    from conclugen.features.decode_stage import read_and_decode
    from conclugen.model.heads import ConCluGen
    from conclugen.serving.predict import predict_videos

    out, cfg = bundle
    videos = sorted(clips.rglob("*.mp4"))
    assert len(videos) == 2
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    missing = tmp_path / "missing.mp4"
    (videos[0].with_suffix(".txt")).write_text("I am so happy today, this is wonderful!")  # sidecar transcript

    res = predict_videos([str(videos[0]), str(broken), str(missing), str(videos[1])], out, cfg, out=str(tmp_path / "pred"))
    assert [c.video_uri for c in res.clips] == [str(videos[0]), str(broken), str(missing), str(videos[1])]
    ok = [c for c in res.clips if c.ok]
    assert len(ok) == 2 and res.n_ok == 2
    for c in ok:
        p = np.array([c.probabilities[lab] for lab in MELD_EMOTIONS])
        assert p.shape == (7,) and np.all(p >= 0) and abs(p.sum() - 1.0) < 1e-6
        assert c.predicted == [MELD_EMOTIONS[int(p.argmax())]]
    assert ok[0].gaps == [] and ok[1].gaps == ["text"]  # sidecar text vs no transcript (ASR off)
    bad = {c.video_uri: c.error for c in res.clips if not c.ok}
    assert bad[str(broken)].startswith("decode") and bad[str(missing)].startswith("read")

    # The same stage objects in this process, without Ray (the MLflow pyfunc's path): same results.
    loc = predict_videos([str(videos[0]), str(broken), str(missing), str(videos[1])], out, cfg, local=True)
    assert [(c.clip_id, c.ok, c.gaps, c.predicted, c.error) for c in loc.clips] == \
        [(c.clip_id, c.ok, c.gaps, c.predicted, c.error) for c in res.clips]
    for a, b in zip(res.clips, loc.clips, strict=True):
        if a.ok:
            np.testing.assert_allclose([b.probabilities[lab] for lab in MELD_EMOTIONS],
                                       [a.probabilities[lab] for lab in MELD_EMOTIONS], rtol=0, atol=1e-5)

    # Recompute clip 0 by hand: decode → offline backbones → heads → probe, outside Ray.
    from conclugen.data.corpora.manifest import row
    from conclugen.features.backbones import load_backbone
    from conclugen.features.rows import unpack

    d = read_and_decode(row(str(videos[0]), str(videos[0]), "unlabeled", "predict",
                            transcript="I am so happy today, this is wonderful!"), cfg, cfg.storage)
    feats = {
        "video": np.concatenate([load_backbone("image", "offline:image").embed([unpack(d["faces"])])[0],
                                 load_backbone("video3d", "offline:video3d").embed([unpack(d["windows"])])[0]]),
        "audio": load_backbone("audio", "offline:audio").embed([unpack(d["audio"])])[0],
        "text": load_backbone("text", "offline:minilm").embed(["I am so happy today, this is wonderful!"])[0],
    }
    b = load_bundle(out)
    model = ConCluGen.from_config(ModelConfig.model_validate(b.payload["config"]["model"]), b.payload["input_dims"])
    model.load_state_dict(b.payload["model"])
    model.eval()
    with torch.no_grad():
        reps = model.represent({m: torch.from_numpy(np.asarray(v, np.float32))[None] for m, v in feats.items()})
    X = torch.cat([reps[m] for m in model.modalities], 1).numpy()
    want = ProbeModel.from_bytes(b.probe_bytes).predict_proba(X)[0]
    got = np.array([ok[0].probabilities[lab] for lab in MELD_EMOTIONS])
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)

    # CSV / JSON written, one row per input, errors included
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "error", "error", "ok"]
    assert abs(sum(float(rows[0][f"p_{lab}"]) for lab in MELD_EMOTIONS) - 1.0) < 1e-5
    js = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert js["label_space"] == list(MELD_EMOTIONS) and len(js["clips"]) == 4
    assert js["clips"][1]["error"] and js["clips"][0]["probabilities"]
    table = res.table()
    assert "error: " + str(broken) in table and "2 of 4 clips predicted" in table


@pytest.mark.s3
def test_predict_command_on_s3_folder(ray_cluster, s3_server, bundle, clips: Path, tmp_path: Path) -> None:
    """The CLI on an s3:// folder (Ray Data batch inference over every video below it), writing
    its CSV/JSON to s3://; and the errors that stop before any work."""
    from typer.testing import CliRunner

    from conclugen import storage
    from conclugen.cli import app
    from conclugen.evaluation.bundle import BundleError, load_bundle
    from conclugen.serving.predict import PredictError, collect_inputs

    out, cfg = bundle
    src = storage.join(s3_server.bucket_uri("predict-in"), "clips")
    storage.upload_dir(clips, src)
    dest = storage.join(s3_server.bucket_uri("predict-out"), "run1")
    rows = collect_inputs([src], cfg)
    assert len(rows) == 2 and all(r["video_uri"].startswith("s3://") for r in rows)

    args = ["predict", src, "--model", out, "--out", dest]
    for s in [*TINY, f"workdir={tmp_path / 'work'}"]:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 of 2 clips predicted" in result.output
    for lab in MELD_EMOTIONS:
        assert lab in result.output  # one probability column per class
    lines = storage.read_text(storage.join(dest, "predictions.csv")).strip().splitlines()
    assert len(lines) == 3 and all(",ok," in ln for ln in lines[1:])
    js = json.loads(storage.read_text(storage.join(dest, "predictions.json")))
    for c in js["clips"]:
        assert abs(sum(c["probabilities"].values()) - 1.0) < 1e-6

    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(str(tmp_path))
    with pytest.raises(PredictError, match="no video files"):
        collect_inputs([str(tmp_path)], cfg)
    bad = CliRunner().invoke(app, ["predict", src, "--model", str(tmp_path)])
    assert bad.exit_code == 1 and "no model bundle" in bad.output
