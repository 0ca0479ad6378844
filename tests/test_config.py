"""Config: defaults reproduce docs/method.md, overrides, errors name the field, secrets never echo."""

from __future__ import annotations

import pytest

from conclugen.config import Config, ConfigError, load_config


def test_defaults_follow_method() -> None:
    cfg = load_config()
    assert cfg.model.d == 4096 and cfg.model.p == 512 and cfg.model.audio_geu_dim == 1024
    assert cfg.losses.margin == pytest.approx(0.001) and cfg.losses.cluster_margin == pytest.approx(0.001)
    assert cfg.losses.kmeans_iters == 100 and cfg.losses.kmeans_tol == pytest.approx(1e-4)
    assert cfg.train.lr == pytest.approx(2e-5) and cfg.train.weight_decay == pytest.approx(1e-3)
    assert (cfg.train.warmup_epochs, cfg.train.restart_t0, cfg.train.restart_t_mult) == (5, 20, 2)
    assert cfg.train.eta_min == pytest.approx(1e-6) and cfg.train.restart_decay == pytest.approx(0.75)
    assert cfg.train.seed == 127 and cfg.train.patience == 15
    assert cfg.probe.lr == pytest.approx(0.00967) and cfg.probe.weight_decay == pytest.approx(0.004)
    assert cfg.probe.batch_size == 4096 and cfg.probe.dropout == pytest.approx(0.5)
    assert cfg.extract.face_fps == 1 and cfg.extract.face_size == 180
    assert (cfg.extract.window_frames, cfg.extract.window_fps) == (16, 16)
    assert cfg.extract.n_mels == 128
    assert cfg.extract.backbones.text.startswith("offline:")


def test_yaml_file_and_overrides(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  d: 64\n  modalities: [video, audio]\ntrain:\n  epochs: 3\n")
    cfg = load_config(f, ["train.epochs=5", "losses.mode=individual", "model.k=8"])
    assert cfg.model.d == 64 and cfg.model.modalities == ["video", "audio"]
    assert cfg.train.epochs == 5  # --set beats the file
    assert cfg.losses.mode == "individual" and cfg.model.k == 8
    assert cfg.model.p == 512  # untouched defaults stay


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.epochz=3", "train.epochz"),
        ("nosuchsection.x=1", "nosuchsection"),
        ("model.d=abc", "model.d"),
        ("losses.mode=both", "losses.mode"),
        ("train.lr=-1", "train.lr"),
        ("model.modalities=[video, video]", "model.modalities"),
    ],
)
def test_bad_fields_are_named(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert field in str(e.value)


def test_unknown_key_in_file_is_named(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("extract:\n  backbones:\n    imagee: hf:x\n")
    with pytest.raises(ConfigError, match=r"extract\.backbones\.imagee: unknown field"):
        load_config(f)


def test_clustering_needs_contrastive() -> None:
    with pytest.raises(ConfigError, match="contrastive"):
        load_config(None, ["losses.contrastive=0", "losses.clustering=1"])
    cfg = load_config(None, ["losses.contrastive=0", "losses.clustering=0"])
    assert cfg.losses.reconstruction == 1


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/config.yaml")


def test_secrets_never_echoed() -> None:
    secret = "s3cr3t-VALUE-that-must-not-leak"
    cfg = load_config(None, [f"storage.secret_access_key={secret}", "storage.access_key_id=AKIAEXAMPLEKEY"])
    assert cfg.storage.secret_access_key is not None
    assert cfg.storage.secret_access_key.get_secret_value() == secret
    for text in (cfg.to_yaml(), str(cfg.flat_params()), repr(cfg), str(cfg.public_dict())):
        assert secret not in text and "AKIAEXAMPLEKEY" not in text
    assert not any("secret" in k or "access_key" in k for k in cfg.flat_params())


def test_flat_params_cover_every_section() -> None:
    params = Config().flat_params()
    for key in ("model.d", "losses.mode", "train.lr", "probe.lr", "tune.samples", "extract.backbones.text"):
        assert key in params
    assert params["model.modalities"] == '["video", "audio", "text"]'
