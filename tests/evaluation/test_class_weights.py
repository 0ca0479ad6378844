"""Probe loss weights by label name for each corpus under each protocol (expected values written
by hand from the reference code: meld_datamodule.py, cmu_mosei_datamodule.py,
caer_video_datamodule.py of tub-cv-group/conclugen)."""

from __future__ import annotations

import pytest

from conclugen.config import MELD_EMOTIONS, MOSEI_EMOTIONS
from conclugen.evaluation.class_weights import (
    class_weights_for,
    frequency_weights,
    named_weights,
    train_class_weights,
)
from conclugen.evaluation.probe_data import ProbeError

MELD_REFERENCE = {"neutral": 4.0, "surprise": 15.0, "fear": 15.0, "sadness": 3.0, "joy": 1.0,
                  "disgust": 6.0, "anger": 3.0}
MOSEI_REFERENCE = {"happiness": 1.0528500080108643, "sadness": 5.215074062347412,
                   "anger": 5.3373003005981445, "surprise": 19.48985481262207,
                   "disgust": 7.0448384284973145, "fear": 23.688003540039062}
CAER = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]


def _by_name(corpus: str, space: list[str], labels: list[list[str]], protocol: str, **kw) -> dict[str, float]:
    return named_weights(space, class_weights_for(corpus, space, labels, protocol=protocol, **kw))


def test_meld_reference_uses_the_reference_label_order() -> None:
    space = list(MELD_EMOTIONS)
    assert _by_name("meld", space, [], "reference") == MELD_REFERENCE
    shuffled = ["fear", "neutral", "anger", "joy", "disgust", "surprise", "sadness"]
    assert _by_name("MELD", shuffled, [], "reference") == MELD_REFERENCE
    assert class_weights_for("meld", shuffled, [], protocol="reference") == [15.0, 4.0, 3.0, 1.0, 6.0, 15.0, 3.0]


def test_mosei_reference_pos_weight_by_sdk_position() -> None:
    # SDK order [happy, sad, anger, surprise, disgust, fear]: surprise 19.49, fear 23.69.
    got = _by_name("mosei", list(MOSEI_EMOTIONS), [], "reference")
    assert got == MOSEI_REFERENCE
    assert round(got["surprise"], 2) == 19.49 and round(got["fear"], 2) == 23.69


def test_caer_reference_is_count_over_total() -> None:
    train = [["happiness"]] * 6 + [["sadness"]] * 3 + [["anger"]] * 1
    got = _by_name("caer", CAER, train, "reference")
    assert got == pytest.approx({"anger": 0.1, "disgust": 0.0, "fear": 0.0, "happiness": 0.6, "neutral": 0.0,
                                 "sadness": 0.3, "surprise": 0.0})


def test_sentiment_reference_is_normalised_inverse_share() -> None:
    sent = [["neutral"]] * 4 + [["positive"]] * 2 + [["negative"]] * 1
    # N / count = 7/1, 7/4, 7/2 → normalised by their sum 12.25.
    assert _by_name("meld", ["negative", "neutral", "positive"], sent, "reference") == pytest.approx(
        {"negative": 7 / 12.25, "neutral": 1.75 / 12.25, "positive": 3.5 / 12.25})


def test_balanced_protocol_always_from_the_data() -> None:
    meld_train = [["neutral"]] * 8 + [["joy"]] * 4 + [["fear"]] * 2 + [["anger"]] * 1
    assert _by_name("meld", list(MELD_EMOTIONS), meld_train, "balanced") == {
        "neutral": 1.0, "joy": 2.0, "sadness": 1.0, "anger": 8.0, "surprise": 1.0, "fear": 4.0, "disgust": 1.0}
    mosei_train = [["happiness"], ["happiness", "fear"], [], ["happiness"]]
    assert _by_name("mosei", list(MOSEI_EMOTIONS), mosei_train, "balanced") == {
        "happiness": 1 / 3, "sadness": 1.0, "anger": 1.0, "fear": 3.0, "disgust": 1.0, "surprise": 1.0}
    caer_train = [["happiness"]] * 6 + [["sadness"]] * 3 + [["anger"]] * 2
    assert _by_name("caer", CAER, caer_train, "balanced") == {
        "anger": 3.0, "disgust": 1.0, "fear": 1.0, "happiness": 1.0, "neutral": 1.0, "sadness": 2.0, "surprise": 1.0}


def test_sources_and_errors() -> None:
    balanced = [[e] for e in MELD_EMOTIONS] * 3
    # Synthetic features (MELD layout): from the data, not MELD's constants.
    assert class_weights_for("synthetic", list(MELD_EMOTIONS), balanced) == pytest.approx([1 / 7] * 7)
    assert class_weights_for("meld", list(MELD_EMOTIONS), balanced, source="data") == pytest.approx([1 / 7] * 7)
    assert class_weights_for("meld", list(MELD_EMOTIONS), balanced, source="data", protocol="balanced") == [1.0] * 7
    assert class_weights_for("meld", ["a", "b"], [["a"]], source="none") == [1.0, 1.0]
    assert class_weights_for("mosei", list(MOSEI_EMOTIONS), [], source="reference", protocol="balanced") == [
        MOSEI_REFERENCE[e] for e in MOSEI_EMOTIONS]
    with pytest.raises(ProbeError, match="no reference weights"):
        class_weights_for("caer", ["a", "b"], [["a"]], source="reference")
    with pytest.raises(ProbeError, match="unknown probe protocol"):
        class_weights_for("caer", ["a", "b"], [["a"]], protocol="nope")
    assert frequency_weights([["a"], ["a", "b"], [], ["a"]], ["a", "b"], True) == [1 / 3, 3.0]
    # A store's rows without a label are left out of single-label counts.
    assert train_class_weights("caer", ["a", "b"], [["a"], [], ["b"], ["b"]], False) == pytest.approx([1 / 3, 2 / 3])
