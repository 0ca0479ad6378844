"""`conclugen import-reference`: released Lightning checkpoints (built here with the reference's
exact state-dict names, plain torch tensors) → our checkpoint folder + predict bundle.

The expected outputs are computed by hand in numpy with the reference's layer order
(fc1 → ReLU → context gating → fc2 → ReLU per modality; audio: GEU then Linear; concatenation in
the reference's modality order; classifier; softmax / sigmoid), with the reference's label order
written out here, independently of the module under test."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from conclugen.config import load_config

D = 16
REF_DIMS = {"frames_2d_3d": 8, "audio_spectrograms": 6, "texts": 5}
OURS = {"frames_2d_3d": "video", "audio_spectrograms": "audio", "texts": "text"}
ALL = ["frames_2d_3d", "audio_spectrograms", "texts"]
# Classifier rows as the reference indexes them, in our label names.
REF_ROWS = {
    "meld": ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"],
    "caer": ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"],  # Anger … Happy … Sad …
    "mosei": ["happiness", "sadness", "anger", "surprise", "disgust", "fear"],  # SDK: happy, sad, …
}
# Small pretraining heads: projection D/8 = 2 hidden, P 4, R 3, K 5.
P, R, K = 4, 3, 5
# Backbone widths of these tiny features (video = image ⊕ video3d), in place of the reference's.
TINY_BACKBONES = {"image": 3, "video3d": 5, "audio": 6, "text": 5}


def _lin(state: dict, prefix: str, out: int, inp: int, g: torch.Generator, bias: bool = True) -> None:
    state[prefix + "weight"] = torch.randn(out, inp, generator=g) * 0.6
    if bias:
        state[prefix + "bias"] = torch.randn(out, generator=g) * 0.2


def _geu(state: dict, prefix: str, inp: int, out: int, g: torch.Generator) -> None:
    _lin(state, prefix + "fc1.", out, inp, g)
    _lin(state, prefix + "context_gating.fc.", out, out, g)
    _lin(state, prefix + "fc2.", out, out, g)


def reference_state(mods=ALL, corpus: str | None = "meld", pretraining: bool = False, seed: int = 0,
                    dims: dict[str, int] = REF_DIMS) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    state: OrderedDict = OrderedDict()
    for m in mods:
        base = f"_representation_heads.heads.{m}."
        if m == "audio_spectrograms":  # GEU at the backbone's width, then Linear(→ D)
            _geu(state, base + "0.", dims[m], dims[m], g)
            _lin(state, base + "1.", D, dims[m], g)
        else:
            _geu(state, base, dims[m], D, g)
    if corpus:
        _lin(state, "_classifier.linear_layers.0.1.", len(REF_ROWS[corpus]), len(mods) * D, g)
    if pretraining:
        h = D // 8
        _lin(state, "_pretraining_heads.projection_head.0.", h, D, g)
        state["_pretraining_heads.projection_head.1.weight"] = torch.rand(h, generator=g) + 0.5
        state["_pretraining_heads.projection_head.1.bias"] = torch.randn(h, generator=g) * 0.1
        state["_pretraining_heads.projection_head.1.running_mean"] = torch.randn(h, generator=g)
        state["_pretraining_heads.projection_head.1.running_var"] = torch.rand(h, generator=g) + 0.5
        state["_pretraining_heads.projection_head.1.num_batches_tracked"] = torch.tensor(7)
        _lin(state, "_pretraining_heads.projection_head.3.", P, h, g)
        _lin(state, "_pretraining_heads.cluster_classification_head.", K, P, g, bias=False)
        for m in mods:
            _lin(state, f"_pretraining_heads.reconstruction_heads.{m}.0.", R, D, g)
            _lin(state, f"_pretraining_heads.reconstruction_heads.{m}.2.", REF_DIMS[m], R, g)
    return state


class Namespace:
    """A training-code object in the hyper-parameters (as LightningCLI pickles them); unpickling
    it for real would run this class's code."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __setstate__(self, state):
        raise AssertionError("the import ran code of a class pickled in the checkpoint")


def save_lightning(path: Path, state: dict, hparams: object = None) -> str:
    torch.save({"epoch": 3, "global_step": 30, "pytorch-lightning_version": "2.0.9", "state_dict": state,
                "hyper_parameters": hparams if hparams is not None else {"modalities": list(ALL)},
                "optimizer_states": [], "lr_schedulers": []}, path)
    return str(path)


def _features(n: int = 12, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: np.abs(rng.normal(size=(n, d))).astype(np.float32) for m, d in REF_DIMS.items()}


def _np(state: dict, key: str) -> np.ndarray:
    return state[key].double().numpy()


def _relu(x):
    return np.maximum(x, 0.0)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _linear(state, prefix, x):
    y = x @ _np(state, prefix + "weight").T
    return y + _np(state, prefix + "bias") if prefix + "bias" in state else y


def reference_representation(state, feats, mods) -> np.ndarray:
    """The reference's forward up to the classifier's input, in numpy."""
    def geu(x, p):
        h = _relu(_linear(state, p + "fc1.", x))
        h = h * _sigmoid(_linear(state, p + "context_gating.fc.", h))  # GLU([h, fc(h)])
        return _relu(_linear(state, p + "fc2.", h))

    reps = []
    for m in mods:
        base = f"_representation_heads.heads.{m}."
        x = feats[m].astype(np.float64)
        reps.append(_linear(state, base + "1.", geu(x, base + "0.")) if m == "audio_spectrograms" else geu(x, base))
    return np.concatenate(reps, axis=1)


def reference_probabilities(state, feats, mods, multilabel: bool) -> np.ndarray:
    logits = _linear(state, "_classifier.linear_layers.0.1.", reference_representation(state, feats, mods))
    if multilabel:
        return _sigmoid(logits)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [f"workdir={tmp_path / 'work'}", *extra])


def _import(ckpt: str, corpus: str, out: Path, cfg):
    from conclugen.training.reference_import import import_reference

    return import_reference(ckpt, corpus, str(out), cfg, backbone_dims=TINY_BACKBONES)


def _ours_from_bundle(out: Path, feats: dict[str, np.ndarray]):
    from conclugen.evaluation.bundle import load_bundle
    from conclugen.evaluation.encoders import heads_encoder

    bundle = load_bundle(str(out))
    model, probe = bundle.model(), bundle.probe()
    X = heads_encoder(model, model.modalities)({OURS[m]: v for m, v in feats.items()})
    return bundle, model, probe, X


@pytest.mark.parametrize("corpus", ["meld", "caer", "mosei"])
def test_probe_checkpoint_round_trip(tmp_path: Path, corpus: str) -> None:
    state = reference_state(corpus=corpus, seed={"meld": 0, "caer": 1, "mosei": 2}[corpus])
    if corpus == "meld":  # the reference's MELD class weights, as a loss buffer, in its row order
        state["_train_losses.loss.weight"] = torch.tensor([4.0, 15, 15, 3, 1, 6, 3])
    ckpt = save_lightning(tmp_path / "ref.ckpt", state)
    out = tmp_path / "imported"
    res = _import(ckpt, corpus, out, _cfg(tmp_path))

    feats = _features()
    bundle, model, probe, X = _ours_from_bundle(out, feats)
    multilabel = corpus == "mosei"
    want = reference_probabilities(state, feats, ALL, multilabel)
    rows = REF_ROWS[corpus]
    assert sorted(probe.label_space) == sorted(rows) and probe.multilabel is multilabel
    assert bundle.label_space == probe.label_space and bundle.multilabel is multilabel
    got = probe.predict_proba(X)
    # our column j is the reference's row of the same label name
    np.testing.assert_allclose(got, want[:, [rows.index(lab) for lab in probe.label_space]], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(X, reference_representation(state, feats, ALL), rtol=1e-4, atol=1e-5)
    if multilabel:
        assert [set(x) for x in probe.predict(X)] == [{rows[i] for i in np.flatnonzero(p >= 0.5)} for p in want]
    else:
        assert probe.predict(X) == [[rows[int(i)]] for i in want.argmax(1)]

    assert model.modalities == ["video", "audio", "text"]
    assert (model.d, model.input_dims) == (D, {"video": 8, "audio": 6, "text": 5})
    assert res.initialised == ["projection head", "cluster head", "decoder video", "decoder audio", "decoder text"]
    text = res.describe()
    assert "initialised (seeded, not from the checkpoint): projection head" in text
    assert "frames_2d_3d → video" in text and str(out / "model") in text
    info = json.loads((out / "info.json").read_text())
    assert info["imported"]["initialised"] == res.initialised
    assert json.loads((out / "import.json").read_text())["corpus"] == corpus
    bb = bundle.info["backbones"]
    assert bb["text"] == "hf:j-hartmann/emotion-english-distilroberta-base" and bb["image"] == "hf:microsoft/resnet-152"
    assert bundle.info["backbone_dims"]["image"] == TINY_BACKBONES["image"]
    assert bundle.extract_config(_cfg(tmp_path).extract).backbones.text == bb["text"]
    if corpus == "meld":
        assert res.loss_weights["_train_losses.loss.weight"] == {
            "neutral": 4, "surprise": 15, "fear": 15, "sadness": 3, "joy": 1, "disgust": 6, "anger": 3}
        assert "neutral" in text and '"surprise": 15.0' in text


def test_reference_modality_order_is_kept(tmp_path: Path) -> None:
    """Two modalities in a non-default order: concatenation follows the reference's list."""
    mods = ["texts", "frames_2d_3d"]
    state = reference_state(mods, corpus="caer", seed=4)
    ckpt = save_lightning(tmp_path / "ref.ckpt", state, hparams={"modalities": mods, "num_classes": 7})
    _import(ckpt, "caer", tmp_path / "o", _cfg(tmp_path))
    feats = {m: v for m, v in _features().items() if m in mods}
    _, model, probe, X = _ours_from_bundle(tmp_path / "o", feats)
    assert model.modalities == ["text", "video"]
    np.testing.assert_allclose(probe.predict_proba(X), reference_probabilities(state, feats, mods, False),
                               rtol=1e-4, atol=1e-6)  # CAER's rows are already in our order


def test_pretraining_checkpoint_loads_every_head(tmp_path: Path) -> None:
    from conclugen.training.reference_import import read_lightning_checkpoint
    from conclugen.training.run_folder import load_checkpoint

    state = reference_state(corpus=None, pretraining=True, seed=5)

    ckpt = save_lightning(tmp_path / "pre.ckpt", state, hparams=Namespace(modalities=ALL))
    _import(save_lightning(tmp_path / "probe.ckpt", reference_state(corpus="mosei")), "mosei", tmp_path / "o",
            _cfg(tmp_path))  # an earlier import into the same folder left a bundle
    hp = read_lightning_checkpoint(ckpt)["hyper_parameters"]
    assert type(hp) is not Namespace and hp.state == {"modalities": ALL}  # an inert stand-in
    res = _import(ckpt, "mosei", tmp_path / "o", _cfg(tmp_path, "model.k=99"))
    assert res.initialised == [] and res.bundle_dir is None and not (tmp_path / "o" / "model").exists()
    model, info = load_checkpoint(str(tmp_path / "o"))
    assert (model.p, model.r, model.k) == (P, R, K)  # from the shapes, not the config's k=99
    assert info["imported"]["source"] == ckpt

    feats = _features(seed=3)
    with torch.no_grad():
        o = model({OURS[m]: torch.from_numpy(v) for m, v in feats.items()})
    pre = "_pretraining_heads."
    for m in ALL:
        x = feats[m].astype(np.float64)
        rep = reference_representation(state, {m: x}, [m])
        h = _linear(state, pre + "projection_head.0.", rep)
        h = (h - _np(state, pre + "projection_head.1.running_mean")) / np.sqrt(
            _np(state, pre + "projection_head.1.running_var") + 1e-5)
        h = _relu(h * _np(state, pre + "projection_head.1.weight") + _np(state, pre + "projection_head.1.bias"))
        u = _relu(_linear(state, pre + "projection_head.3.", h))
        rec = _relu(_linear(state, pre + f"reconstruction_heads.{m}.2.",
                            _relu(_linear(state, pre + f"reconstruction_heads.{m}.0.", rep))))
        ours = OURS[m]
        np.testing.assert_allclose(o.representations[ours].numpy(), rep, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(o.projections_raw[ours].numpy(), u, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(o.cluster_logits[ours].numpy(), u @ _np(state, pre + "cluster_classification_head.weight").T,
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(o.reconstructions[ours].numpy(), rec, rtol=1e-4, atol=1e-5)


def test_initialised_heads_are_seeded(tmp_path: Path) -> None:
    from conclugen.training.run_folder import load_checkpoint

    ckpt = save_lightning(tmp_path / "ref.ckpt", reference_state(corpus="meld"))
    weights = []
    for name, seed in (("a", 127), ("b", 127), ("c", 128)):
        _import(ckpt, "meld", tmp_path / name, _cfg(tmp_path, f"train.seed={seed}"))
        weights.append(load_checkpoint(str(tmp_path / name))[0].projection.net[0].weight)
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_evaluate_accepts_the_imported_folder(tmp_path: Path) -> None:
    from conclugen.evaluation.evaluate import run_evaluate
    from tests.helpers.features import write_feature_store

    cfg = _cfg(tmp_path, "probe.epochs=3", "probe.batch_size=64", "probe.bootstrap=0")
    ckpt = save_lightning(tmp_path / "ref.ckpt", reference_state(corpus="meld"))
    _import(ckpt, "meld", tmp_path / "imp", cfg)
    feats = str(tmp_path / "feats")
    write_feature_store(feats, {"train": 24, "val": 8, "test": 8}, dims={"video": 8, "audio": 6, "text": 5})
    res = run_evaluate(feats, str(tmp_path / "imp"), cfg, str(tmp_path / "eval"), encoders=("conclugen",),
                       log_mlflow=False, map_method="pca")
    assert res.checkpoint_uri == str(tmp_path / "imp") and list(res.results) == ["conclugen"]
    assert (tmp_path / "eval" / "model" / "probe.npz").is_file()


def test_reference_widths_need_no_backbone_dims(tmp_path: Path) -> None:
    """Features of the reference's backbones' widths (4096 video, 1024 audio, 768 text; D kept
    small): the bundle records the reference's backbones, placeholders named in the output."""
    from conclugen.evaluation.bundle import load_bundle
    from conclugen.training.reference_import import import_reference

    widths = {"frames_2d_3d": 4096, "audio_spectrograms": 1024, "texts": 768}
    ckpt = save_lightning(tmp_path / "ref.ckpt", reference_state(corpus="meld", dims=widths))
    res = import_reference(ckpt, "meld", str(tmp_path / "o"), _cfg(tmp_path))
    info = load_bundle(str(tmp_path / "o")).info
    assert info["backbone_dims"] == {"image": 2048, "video3d": 2048, "audio": 1024, "text": 768, "asr": 0}
    assert info["input_dims"] == {"video": 4096, "audio": 1024, "text": 768}
    assert info["extract"]["backbones"]["asr"] == "hf:facebook/s2t-large-librispeech-asr"
    assert res.model_cfg["audio_geu_dim"] == 1024
    assert "predict: video3d, audio name no runnable model here" in res.describe()


def _expect(tmp_path: Path, state_or_obj, error: str, match: str, corpus: str = "meld") -> None:
    import conclugen.training.reference_import as ri

    path = tmp_path / "bad.ckpt"
    torch.save(state_or_obj, path)
    with pytest.raises(getattr(ri, error), match=match) as e:
        ri.import_reference(str(path), corpus, str(tmp_path / "o"), _cfg(tmp_path), backbone_dims=TINY_BACKBONES)
    assert isinstance(e.value, ri.ReferenceImportError) and str(path) in str(e.value)


def test_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    import conclugen.training.reference_import as ri

    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(ri.NotLightningCheckpointError, match="text.ckpt: not a PyTorch checkpoint"):
        ri.import_reference(str(tmp_path / "text.ckpt"), "meld", str(tmp_path / "o"), _cfg(tmp_path))
    _expect(tmp_path, {"model": {}}, "NotLightningCheckpointError", "no 'state_dict' key")
    lightning = {"pytorch-lightning_version": "2.0.9"}
    _expect(tmp_path, {**lightning, "state_dict": {"_backbone.fc.weight": torch.zeros(2, 2)}},
            "CheckpointKindError", r"no '_representation_heads\.heads\.\*' key")
    _expect(tmp_path, {**lightning, "state_dict": {"_representation_heads.heads.frames_3d.fc1.weight": torch.zeros(2, 2)}},
            "CheckpointKindError", "frames_3d")
    five = reference_state(corpus="mosei")  # 6 rows where MELD has 7 labels
    _expect(tmp_path, {**lightning, "state_dict": five}, "CheckpointShapeError",
            r"'_classifier\.linear_layers\.0\.1\.weight' has 6 rows, meld has 7 labels")
    wide = reference_state(corpus="meld")
    wide["_classifier.linear_layers.0.1.weight"] = torch.zeros(7, 2 * D)
    _expect(tmp_path, {**lightning, "state_dict": wide}, "CheckpointShapeError", f"takes {2 * D} inputs.*{3 * D}")
    bad_d = reference_state(corpus="meld")
    bad_d["_representation_heads.heads.texts.fc1.weight"] = torch.zeros(D + 1, 5)
    _expect(tmp_path, {**lightning, "state_dict": bad_d}, "CheckpointShapeError", "disagree about D")
    torn = reference_state(corpus="meld")
    del torn["_representation_heads.heads.texts.fc2.bias"]
    _expect(tmp_path, {**lightning, "state_dict": torn}, "CheckpointKindError", "text representation head is incomplete")
    ckpt = save_lightning(tmp_path / "ok.ckpt", reference_state(corpus="meld"))
    with pytest.raises(ri.UnknownCorpusError, match="'ravdess'"):
        ri.import_reference(ckpt, "ravdess", str(tmp_path / "o"), _cfg(tmp_path))
    # features of other widths than the reference's backbones: a clear error unless given
    with pytest.raises(ri.CheckpointShapeError, match="video head takes 8-d features, the backbones give 4096"):
        ri.import_reference(ckpt, "meld", str(tmp_path / "o"), _cfg(tmp_path))


def test_cli_import_reference(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from conclugen.cli import app

    ckpt = save_lightning(tmp_path / "ref.ckpt", reference_state(corpus="caer"))
    out = tmp_path / "imp"
    dims = [a for k, v in TINY_BACKBONES.items() for a in ("--backbone-dim", f"{k}={v}")]
    r = CliRunner().invoke(app, ["import-reference", ckpt, "--corpus", "caer", "--out", str(out), *dims,
                                 "--backbone", "video3d=/models/r3d101", "--set", f"workdir={tmp_path / 'w'}"])
    assert r.exit_code == 0, r.output
    assert "predict bundle" in r.output and (out / "model" / "bundle.json").is_file()
    bundle = json.loads((out / "model" / "bundle.json").read_text())
    assert bundle["extract"]["backbones"]["video3d"] == "/models/r3d101"
    assert bundle["backbone_dims"] == {**TINY_BACKBONES, "asr": 0}
    r = CliRunner().invoke(app, ["import-reference", ckpt, "--corpus", "nope", "--out", str(out)])
    assert r.exit_code == 1 and "error: corpus 'nope'" in r.output
    r = CliRunner().invoke(app, ["import-reference", ckpt, "--corpus", "caer", "--out", str(out),
                                 "--backbone-dim", "image=wide"])
    assert r.exit_code == 1 and "error: --backbone-dim 'image=wide': expected KIND=N" in r.output
