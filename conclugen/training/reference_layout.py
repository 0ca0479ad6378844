"""The reference's released-checkpoint layout: module names, modality names, label orders and
backbones, as read from ``tub-cv-group/conclugen`` (docs/method.md, Released models).

``state_dict`` names follow the attributes of ``src/models/con_clu/contrastive_clustering_model.py``
(``_representation_heads``, ``_pretraining_heads``, ``_classifier``) and ``src/models/heads/*``.
Those modules compute what ``conclugen/model/heads.py`` computes, under other names:

    _representation_heads.heads.<m>.fc1 / .context_gating.fc / .fc2    encoders.<ours>.fc1 / .gating.fc / .fc2
    _representation_heads.heads.audio_spectrograms.0.<same> / .1       encoders.audio.0.<same> / .1
    _pretraining_heads.projection_head.{0,1,3}  (1 = BatchNorm)        projection.net.{0,1,3}
    _pretraining_heads.cluster_classification_head                     cluster_head
    _pretraining_heads.reconstruction_heads.<m>.{0,2}                  decoders.<ours>.net.{0,2}
    _classifier.linear_layers.0.1  [C, |M|·D] (0.0 is the Dropout)     the probe

GEU (both): fc1 → ReLU → GLU([h, fc(h)]) = h·σ(fc(h)) → fc2 → ReLU; the reference's audio GEU keeps
the backbone's width (d_a → d_a), so ``model.audio_geu_dim`` is read from its shape. Modalities:
``frames_2d_3d`` (the 2D and 3D vectors concatenated in that order, as our ``video``) → video,
``audio_spectrograms`` → audio, ``texts`` → text. The classifier reads the representations
concatenated in the order of the reference's ``modalities`` list (the batch dict is filled in that
order, ``video_dataset.py``; the heads' ModuleDict is built in it too).
"""

from __future__ import annotations

import re

from conclugen.config import MELD_EMOTIONS, MOSEI_EMOTIONS
from conclugen.data.corpora.manifest import CAER_EMOTIONS

REFERENCE_MODALITIES = {"frames_2d_3d": "video", "audio_spectrograms": "audio", "texts": "text"}
# Classifier row order per corpus, as the reference's data modules index labels (reference spelling
# → our name): MELD by its config's `labels` (meld_datamodule.py), CAER by constants.
# CAER_EXPRESSION_LABELS (label_util.class_index_for_fer_label), MOSEI by the SDK's
# `labels[i][1:]` (cmu_mosei_datamodule.py), not by its config's `labels` list.
REFERENCE_LABELS: dict[str, tuple[tuple[str, str], ...]] = {
    "meld": tuple((n, n) for n in ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")),
    "caer": (("Anger", "anger"), ("Disgust", "disgust"), ("Fear", "fear"), ("Happy", "joy"),
             ("Neutral", "neutral"), ("Sad", "sadness"), ("Surprise", "surprise")),
    "mosei": (("happy", "happiness"), ("sad", "sadness"), ("anger", "anger"), ("surprise", "surprise"),
              ("disgust", "disgust"), ("fear", "fear")),
}
OUR_LABELS = {"meld": list(MELD_EMOTIONS), "caer": list(CAER_EMOTIONS), "mosei": list(MOSEI_EMOTIONS)}
# The reference's backbones (configs/model/conclu/concat/conclu_multi.yaml): kind → (spec, dim, what).
# Hub ids where the hub has the model (image: the nearest one, as cluster/configs/cluster.yaml);
# ResNet3D-101 and ResDAVEnet have none, so their spec is a placeholder for --backbone.
REFERENCE_BACKBONES: dict[str, tuple[str, int, str]] = {
    "image": ("hf:microsoft/resnet-152", 2048, "ResNet-152, ImageNet (torchvision weights; the hub id is the nearest)"),
    "video3d": ("reference:resnet3d101-kinetics400", 2048, "ResNet3D-101, Kinetics-400"),
    "audio": ("reference:davenet", 1024, "ResDAVEnet on a 128-bin mel spectrogram"),
    "text": ("hf:j-hartmann/emotion-english-distilroberta-base", 768, "emotion-english-distilroberta-base"),
    "asr": ("hf:facebook/s2t-large-librispeech-asr", 0, "s2t-large-librispeech-asr"),
}
_M = "(frames_2d_3d|audio_spectrograms|texts)"
_GEU = r"(fc1|context_gating\.fc|fc2)\.(weight|bias)"
_RULES = [  # reference key → our key (groups: modality, then the rest)
    (re.compile(rf"_representation_heads\.heads\.(audio_spectrograms)\.0\.{_GEU}$"), "encoders.{m}.0.{1}.{2}"),
    (re.compile(r"_representation_heads\.heads\.(audio_spectrograms)\.1\.(weight|bias)$"), "encoders.{m}.1.{1}"),
    (re.compile(rf"_representation_heads\.heads\.(frames_2d_3d|texts)\.{_GEU}$"), "encoders.{m}.{1}.{2}"),
    (re.compile(r"_pretraining_heads\.projection_head\.([013]\.\w+)$"), "projection.net.{0}"),
    (re.compile(r"_pretraining_heads\.cluster_classification_head\.weight$"), "cluster_head.weight"),
    (re.compile(rf"_pretraining_heads\.reconstruction_heads\.{_M}\.([02]\.(weight|bias))$"), "decoders.{m}.net.{1}"),
]
CLASSIFIER = "_classifier.linear_layers.0.1."
LOSS_BUFFER = re.compile(r"_(train|val|test)_losses\..*(weight|pos_weight)$")


def our_key(key: str) -> str | None:
    """Our state-dict key for a reference key (None: not a head we hold)."""
    for rx, template in _RULES:
        hit = rx.match(key)
        if hit:
            rest = hit.groups()
            m = REFERENCE_MODALITIES.get(rest[0], "") if rest else ""
            return template.format(*rest, m=m).replace("context_gating.fc", "gating.fc")
    return None
