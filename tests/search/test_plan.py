"""Planning a search (conclugen/search/plan.py): trial configs, fixed values, objective,
concurrency and the budget line printed before a search starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from conclugen.config import Config, ConfigError, load_config
from conclugen.search.plan import (
    Budget,
    heads_params,
    objective_metric,
    plan_budget,
    plan_concurrency,
    trial_config,
    with_fixed,
)
from conclugen.search.space import load_fixed, load_space, validate_space

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "tune_spaces" / "quick.yaml"
DIMS = {"video": 24, "audio": 12, "text": 16}


def test_plan_concurrency_fits_the_cluster() -> None:
    cfg = load_config(None, ["tune.max_concurrent=4", "tune.cpus_per_trial=0.5", "train.workers=2",
                             "train.cpus_per_worker=1"])
    # each trial holds 0.5 + 2 × 1 = 2.5 CPUs
    assert plan_concurrency(cfg, {"CPU": 8}) == 3
    assert plan_concurrency(cfg, {"CPU": 100}) == 4  # capped by tune.max_concurrent
    assert plan_concurrency(cfg, {"CPU": 1}) == 1  # never below one
    gpu = load_config(None, ["tune.max_concurrent=8", "tune.gpus_per_trial=1", "train.workers=2"])
    assert plan_concurrency(gpu, {"CPU": 64, "GPU": 4}) == 2  # 2 workers × 1 GPU per trial


def test_trial_config_keeps_secrets_and_validates() -> None:
    base = load_config(None, ["storage.secret_access_key=s3cr3t"])
    cfg = trial_config(base, {"losses.mode": "individual", "model.k": 4})
    assert cfg.losses.mode == "individual" and cfg.model.k == 4
    assert cfg.storage.secret_access_key.get_secret_value() == "s3cr3t"
    assert base.losses.mode == "joint"  # the base is not touched
    with pytest.raises(ConfigError, match="losses.mode"):
        trial_config(base, {"losses.mode": "both"})


def test_objective_metric() -> None:
    assert objective_metric(Config(), has_val=True) == ("probe_f1", "max")
    loss = load_config(None, ["tune.objective=val_loss"])
    assert objective_metric(loss, has_val=True) == ("val_loss", "min")
    assert objective_metric(loss, has_val=False) == ("loss", "min")


def test_fixed_values_fill_what_the_user_did_not_set() -> None:
    fixed = load_fixed(QUICK)
    cfg = with_fixed(Config(), fixed)  # nothing set: the quick space's sizes and epochs
    assert (cfg.model.d, cfg.model.p, cfg.model.r, cfg.train.epochs) == (256, 64, 128, fixed["train.epochs"])
    # --set (or a config file) wins over the space file; the rest still comes from it.
    user = load_config(None, ["model.d=32", "train.epochs=2", "storage.secret_access_key=s3cr3t"])
    cfg = with_fixed(user, fixed)
    assert cfg.model.d == 32 and cfg.train.epochs == 2 and cfg.model.p == 64
    assert cfg.storage.secret_access_key.get_secret_value() == "s3cr3t"
    assert with_fixed(user, {}) is user


def test_heads_params_counts_without_allocating() -> None:
    from conclugen.model.heads import ConCluGen

    cfg = load_config(None, ["model.d=32", "model.p=16", "model.r=16", "model.k=4", "model.audio_geu_dim=16"])
    real = sum(p.numel() for p in ConCluGen.from_config(cfg.model, DIMS).parameters())
    assert heads_params(cfg, DIMS) == real
    assert heads_params(Config(), {"video": 2048, "audio": 1024, "text": 768}) > 10_000_000  # D 4096, meta only


def test_budget_covers_the_corners_of_the_space() -> None:
    space = validate_space({"model.d": {"choice": [64, 32, 128]}, "model.k": {"randint": [2, 9]},
                            "train.epochs": {"choice": [3, 5]}, "train.lr": {"loguniform": [1e-4, 1e-2]}})
    cfg = load_config(None, ["model.p=16", "model.r=16", "model.audio_geu_dim=16", "tune.samples=4"])
    budget = plan_budget(cfg, space, DIMS, concurrent=2)
    smallest = heads_params(trial_config(cfg, {"model.d": 32, "model.k": 2}), DIMS)
    largest = heads_params(trial_config(cfg, {"model.d": 128, "model.k": 8}), DIMS)
    assert budget == Budget(trials=4, epochs=5, min_params=smallest, max_params=largest, concurrent=2)


def test_budget_line() -> None:
    assert Budget(4, 10, 1_234_567, 3_456_789, 2).describe() == \
        "tune: 4 trials × ≤10 epochs, heads 1.2M–3.5M params, 2 at a time"
    assert Budget(1, 2, 950, 950, 1).describe() == "tune: 1 trials × ≤2 epochs, heads 950 params, 1 at a time"
    # The quick space on the default config: tiny heads, its epoch budget.
    cfg = with_fixed(load_config(None, ["tune.samples=2"]), load_fixed(QUICK))
    line = plan_budget(cfg, load_space(QUICK), {"video": 2816, "audio": 1024, "text": 384}, 2).describe()
    assert line.startswith(f"tune: 2 trials × ≤{cfg.train.epochs} epochs, heads ") and "M params" in line
