"""Augmented versions in the backbone stage: each version's vector is the backbone's output on
that version's augmented input (rebuilt here from the seeds), gaps are zeros in every version,
a transcript the swap left alone gets exactly the plain vector, and the stage writes
``<column>_aug`` as [N, dim]."""

from __future__ import annotations

import numpy as np
import pytest

from conclugen.data.media import log_mel
from conclugen.data.media.augment import augment_frames, rng_for, spec_augment, swap_words, wave_time_mask
from conclugen.features.augment_stage import augmentation_notes, version_vectors
from conclugen.features.backbone_stage import apply_backbone
from conclugen.features.backbones import load_backbone
from conclugen.features.rows import pack, unpack

N = 3


def _batch(faces: list[np.ndarray | None], waves: list[np.ndarray | None], texts: list[str | None]) -> dict:
    ids = [f"clip{i}" for i in range(len(faces))]
    return {"clip_id": np.asarray(ids, dtype=object), "faces": np.asarray([pack(f) for f in faces], dtype=object),
            "audio": np.asarray([pack(w) for w in waves], dtype=object),
            "text": np.asarray([t or "" for t in texts], dtype=object),
            "text_src": np.asarray(["manifest" if t else "none" for t in texts], dtype=object),
            "err_stage": np.asarray([""] * len(ids), dtype=object), "err": np.asarray([""] * len(ids), dtype=object)}


@pytest.fixture(scope="module")
def clips() -> dict:
    g = np.random.default_rng(0)
    faces = [g.integers(0, 256, (3, 48, 48, 3), dtype=np.uint8), g.integers(0, 256, (1, 48, 48, 3), dtype=np.uint8), None]
    t = np.arange(24000) / 16000
    waves = [(0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32),
             (0.2 * g.standard_normal(17000)).astype(np.float32), None]
    texts = ["how you doin today", "hi", None]
    return {"faces": faces, "waves": waves, "texts": texts, "batch": _batch(faces, waves, texts)}


def test_frame_versions_are_the_backbone_on_each_augmented_copy(clips: dict) -> None:
    model = load_backbone("image", "offline:seeded-image")
    res = version_vectors("image", model, clips["batch"], [0, 1, 2], N)
    assert [r.shape for r in res] == [(N + 1, model.dim)] * 3
    for k, faces in enumerate(clips["faces"][:2]):
        np.testing.assert_allclose(res[k][0], model.embed([faces])[0], rtol=1e-5, atol=1e-5)
        for v in range(1, N + 1):
            want = model.embed([augment_frames(faces, rng_for(f"clip{k}", v, "image"))])[0]
            np.testing.assert_allclose(res[k][v], want, rtol=1e-5, atol=1e-5)
            assert not np.allclose(res[k][v], res[k][0])
    assert not res[2].any()  # no frames: zeros in every version


@pytest.mark.parametrize("spec", ["offline:seeded-audio", "offline:audio"])
def test_mel_audio_versions_mask_the_models_own_spectrogram(clips: dict, spec: str) -> None:
    model = load_backbone("audio", spec)
    assert model.input_form == "mel"
    res = version_vectors("audio", model, clips["batch"], [0, 1, 2], N)
    wave = clips["waves"][0]
    np.testing.assert_allclose(res[0][0], model.embed([wave])[0], rtol=1e-4, atol=1e-4)
    # the reference's draw allows a 0-wide mask: clip0's version 1 draws two (see mask_span)
    differ = [not np.allclose(res[0][v], res[0][0], atol=1e-6) for v in range(1, N + 1)]
    assert sum(differ) >= N - 1
    if spec == "offline:seeded-audio":  # every version recomputed: the model on the masked log-mel
        import torch

        for v in range(1, N + 1):
            mel = spec_augment(log_mel(wave, 16000, n_mels=model.n_mels).numpy(), rng_for("clip0", v, "audio"))
            with torch.inference_mode():
                want = model.model(torch.from_numpy(mel)[None]).mean(dim=2)[0].numpy()
            np.testing.assert_allclose(res[0][v], want, rtol=1e-4, atol=1e-5)
    assert not res[2].any()


def test_waveform_audio_versions_time_mask_the_samples(tmp_path, clips: dict) -> None:  # noqa: ANN001
    from tests.helpers.tiny_models import build_tiny_models

    model = load_backbone("audio", f"hf:{build_tiny_models(tmp_path)['wav2vec2']}")
    assert model.input_form == "waveform"
    res = version_vectors("audio", model, clips["batch"], [0, 1], 2)
    wave = clips["waves"][1]
    np.testing.assert_allclose(res[1][0], model.embed([wave])[0], rtol=1e-4, atol=1e-5)
    want = model.embed([wave_time_mask(wave, rng_for("clip1", 2, "audio"))])[0]
    np.testing.assert_allclose(res[1][2], want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(res[1][2], res[1][0])


def test_text_versions_reuse_the_plain_vector_when_the_swap_left_the_text(clips: dict) -> None:
    model = load_backbone("text", "offline:minilm")
    n = 8
    res = version_vectors("text", model, clips["batch"], [0, 1, 2], n)
    text = clips["texts"][0]
    changed = 0
    for v in range(1, n + 1):
        swapped = swap_words(text, rng_for("clip0", v, "text"))
        if swapped == text:
            np.testing.assert_array_equal(res[0][v], res[0][0])
        else:
            changed += 1
            np.testing.assert_allclose(res[0][v], model.embed([swapped])[0], rtol=1e-4, atol=1e-5)
    assert 0 < changed < n  # p = 0.5 over 8 draws (fixed seeds)
    assert all(np.array_equal(res[1][v], res[1][0]) for v in range(n + 1))  # one word: never swapped
    assert not res[2].any()  # no transcript: zeros


def test_apply_backbone_writes_aug_columns_and_keeps_plain(clips: dict) -> None:
    model = load_backbone("image", "offline:seeded-image")
    plain = dict(clips["batch"])
    apply_backbone("image", model, plain)
    assert "v_image_aug" not in plain and "faces" not in plain
    out = dict(clips["batch"])
    out["err_stage"] = np.asarray(["", "", "read"], dtype=object)
    apply_backbone("image", model, out, augmentations=2)
    assert unpack(out["v_image_aug"][0]).shape == (2, model.dim) and out["v_image_aug"][2] == b""
    np.testing.assert_allclose(unpack(out["v_image"][0]), unpack(plain["v_image"][0]), rtol=1e-5, atol=1e-5)


def test_augmentation_notes_say_what_each_modality_got() -> None:
    from conclugen.features.backbones.registry import input_form

    assert input_form("audio", "offline:audio") == "mel" and input_form("audio", "offline:seeded-audio") == "mel"
    assert input_form("audio", "hf:facebook/wav2vec2-base") == "waveform" and input_form("audio", "offline:none") == ""
    assert input_form("image", "offline:image") == ""
    assert augmentation_notes(0, "offline:audio", "mel") == {}
    mel = augmentation_notes(2, "offline:audio", "mel")
    assert set(mel) == {"video", "audio", "text"} and "frequency masking" in mel["audio"]
    wave = augmentation_notes(2, "hf:facebook/wav2vec2-base", "waveform")["audio"]
    assert "time masking only" in wave and "frequency masking" in wave and "not applied" in wave
