"""Search spaces: the shipped files validate; bad spaces are errors naming the parameter."""

from __future__ import annotations

from pathlib import Path

import pytest

from conclugen.config import load_config
from conclugen.search.space import (
    SpaceError,
    as_overrides,
    flatten_params,
    load_fixed,
    load_space,
    quantize,
    to_tune,
    validate_space,
)

ROOT = Path(__file__).resolve().parents[2]


def test_paper_space_is_the_reference_space() -> None:
    space = load_space(ROOT / "tune_spaces" / "paper.yaml")
    for loss in ("contrastive", "clustering", "reconstruction"):
        assert space[f"losses.{loss}"] == ("qloguniform", [1e-4, 1.1, 1e-4])
    assert space["model.k"] == ("choice", [2, 4, 8, 32, 64, 128])
    assert space["losses.queue_batches"] == ("randint", [2, 129])
    assert space["losses.kmeans_start_epoch"] == ("randint", [0, 16])
    assert space["losses.mode"] == ("choice", ["individual", "joint"])
    assert space["train.lr"] == ("loguniform", [1e-5, 1e-3])
    assert space["train.weight_decay"] == ("loguniform", [1e-5, 1e-3])
    assert space["model.d"][1] == [1024, 2048, 4096]
    assert space["model.p"][1] == space["model.r"][1] == [512, 768, 1024, 1536]


def test_quick_space_samples_into_valid_configs() -> None:
    from ray.tune.search.sample import Domain

    space = load_space(ROOT / "tune_spaces" / "quick.yaml")
    domains = to_tune(space)
    for _ in range(20):
        params = {k: d.sample() for k, d in domains.items() if isinstance(d, Domain)}
        cfg = load_config(None, as_overrides(params))
        assert cfg.model.k in (4, 8)
        assert 1e-4 <= cfg.train.lr <= 3e-3


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"model.kk": {"choice": [2, 4]}}, "model.kk"),
        ({"train.lr": {"logunifrom": [1e-5, 1e-3]}}, "unknown distribution"),
        ({"train.lr": {"loguniform": [1e-3, 1e-5]}}, "below high"),
        ({"train.lr": {"loguniform": [0, 1e-3]}}, "low > 0"),
        ({"train.lr": {"loguniform": [1e-5]}}, "takes [low, high]"),
        ({"losses.mode": {"choice": ["joint", "both"]}}, "losses.mode"),
        ({"model.d": {"randint": [0, 10]}}, "model.d"),
        ({"train.lr": {"loguniform": [1e-5, 1e-3], "uniform": [0, 1]}}, "exactly one"),
    ],
)
def test_bad_spaces_name_the_parameter(raw: dict, needle: str) -> None:
    with pytest.raises(SpaceError) as e:
        validate_space(raw)
    assert needle in str(e.value)
    assert list(raw)[0] in str(e.value)


def test_missing_file() -> None:
    with pytest.raises(SpaceError, match="not found"):
        load_space("/nonexistent.yaml")


def test_quick_space_fixes_tiny_heads_and_a_short_budget() -> None:
    """The quick space is quick: the demo's head sizes and at most 10 epochs, not the defaults
    (D 4096 for 100 epochs)."""
    fixed = load_fixed(ROOT / "tune_spaces" / "quick.yaml")
    assert fixed["model.d"] == 256 and fixed["model.p"] == 64 and fixed["model.r"] == 128
    assert fixed["model.audio_geu_dim"] <= 256
    assert fixed["train.epochs"] <= 10
    assert "fixed" not in load_space(ROOT / "tune_spaces" / "quick.yaml")  # not a searched field
    assert load_fixed(ROOT / "tune_spaces" / "paper.yaml") == {}


@pytest.mark.parametrize(
    "text, needle",
    [
        ("train.lr: {loguniform: [1.0e-5, 1.0e-3]}\nfixed: {train.epochs: 0}\n", "fixed: train.epochs"),
        ("train.lr: {loguniform: [1.0e-5, 1.0e-3]}\nfixed: {model.dd: 3}\n", "fixed: model.dd"),
        ("train.lr: {loguniform: [1.0e-5, 1.0e-3]}\nfixed: {train.lr: 0.1}\n", "searched too"),
        ("train.lr: {loguniform: [1.0e-5, 1.0e-3]}\nfixed: [train.epochs]\n", "fixed: give a mapping"),
        ("fixed: {train.epochs: 3}\n", "non-empty mapping"),
    ],
)
def test_bad_fixed_values_name_the_field(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=needle.replace("[", r"\[")):
        load_space(path)
    with pytest.raises(SpaceError, match=needle.replace("[", r"\[")):
        load_fixed(path)


def test_quantize_rounds_q_distributions_only() -> None:
    space = load_space(ROOT / "tune_spaces" / "paper.yaml")
    got = quantize({"losses.contrastive": 0.123456, "train.lr": 0.000123456, "model.k": 8}, space)
    assert got["losses.contrastive"] == pytest.approx(0.1235)  # q = 1e-4
    assert got["train.lr"] == 0.000123456  # loguniform: untouched
    assert got["model.k"] == 8
    assert quantize(got, space) == got  # idempotent
    # clipped into [low, high] after rounding
    assert quantize({"losses.clustering": 1e-9}, space)["losses.clustering"] == pytest.approx(1e-4)


def test_flatten_params() -> None:
    assert flatten_params({"losses": {"mode": "joint"}, "train.lr": 0.1}) == {"losses.mode": "joint", "train.lr": 0.1}
