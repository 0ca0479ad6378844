"""Search spaces as YAML: ``dotted.config.field: {distribution: [args]}``, plus ``fixed:`` values.

A space file maps config fields to one distribution each; an optional ``fixed:`` section maps
config fields to plain values that every trial uses without searching them (e.g. the head sizes
and the epoch budget of ``tune_spaces/quick.yaml``). Validated on load — an unknown field, an
unknown distribution, a bad range or a bad fixed value is an error that names the parameter —
and turned into Ray Tune sample objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from conclugen.config import ConfigError, load_config

# distribution → (number of args, description)
DISTRIBUTIONS: dict[str, tuple[int, str]] = {
    "choice": (-1, "a list of values"),
    "uniform": (2, "[low, high]"),
    "quniform": (3, "[low, high, q]"),
    "loguniform": (2, "[low, high], low > 0"),
    "qloguniform": (3, "[low, high, q], low > 0"),
    "randint": (2, "[low, high) integers"),
}
# The section of a space file that holds values every trial uses (not searched).
FIXED = "fixed"

Space = dict[str, tuple[str, list[Any]]]


class SpaceError(ConfigError):
    """A search space is wrong; the message names the parameter."""


def _read(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(searched entries, fixed entries) of a space file, not validated yet."""
    p = Path(path)
    if not p.is_file():
        raise SpaceError(f"search space file not found: {p}")
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, Mapping):
        raise SpaceError(f"{p}: a search space is a mapping of config fields to distributions")
    fixed = raw.get(FIXED) or {}
    if not isinstance(fixed, Mapping):
        raise SpaceError(f"{p}: {FIXED}: give a mapping of config fields to values, e.g. {{train.epochs: 10}}")
    searched = {k: v for k, v in raw.items() if k != FIXED}
    if not searched:
        raise SpaceError(f"{p}: a search space is a non-empty mapping of config fields to distributions")
    return searched, dict(fixed)


def load_space(path: str | Path) -> Space:
    """The searched fields of a space file: dotted field → (distribution, args), validated
    (the ``fixed:`` section too, so that one call checks the whole file)."""
    searched, fixed = _read(path)
    space = validate_space(searched, source=str(path))
    validate_fixed(fixed, space, source=str(path))
    return space


def load_fixed(path: str | Path) -> dict[str, Any]:
    """The ``fixed:`` section of a space file (dotted field → value), validated; {} when absent."""
    searched, fixed = _read(path)
    return validate_fixed(fixed, validate_space(searched, source=str(path)), source=str(path))


def validate_space(raw: Mapping[str, Any], source: str = "space") -> Space:
    space: Space = {}
    for name, spec in raw.items():
        where = f"{source}: {name}"
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise SpaceError(f"{where}: give exactly one distribution, e.g. {{loguniform: [1e-5, 1e-3]}}")
        (dist, args), = spec.items()
        if dist not in DISTRIBUTIONS:
            raise SpaceError(f"{where}: unknown distribution {dist!r} (known: {', '.join(DISTRIBUTIONS)})")
        nargs, shape = DISTRIBUTIONS[dist]
        if not isinstance(args, list) or (nargs > 0 and len(args) != nargs) or (nargs < 0 and not args):
            raise SpaceError(f"{where}: {dist} takes {shape}, got {args!r}")
        if dist != "choice":
            _check_bounds(where, dist, args)
        # Every value the distribution can produce at its edges must be a valid config value.
        for value in edges(dist, args):
            _check_value(where, name, value)
        space[name] = (dist, list(args))
    return space


def validate_fixed(raw: Mapping[str, Any], space: Mapping[str, Any], source: str = "space") -> dict[str, Any]:
    """Fixed values: each a valid config value, none also searched."""
    for name, value in raw.items():
        where = f"{source}: {FIXED}: {name}"
        if name in space:
            raise SpaceError(f"{where}: is searched too; give it either a distribution or a fixed value")
        if isinstance(value, Mapping):
            raise SpaceError(f"{where}: a fixed value is a plain value, got {value!r}")
        _check_value(where, name, value)
    return dict(raw)


def _check_bounds(where: str, dist: str, args: list[Any]) -> None:
    if not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        raise SpaceError(f"{where}: {dist} bounds must be numbers, got {args!r}")
    low, high = args[0], args[1]
    if not low < high:
        raise SpaceError(f"{where}: low {low} must be below high {high}")
    if dist.endswith("loguniform") and low <= 0:
        raise SpaceError(f"{where}: {dist} needs low > 0, got {low}")
    if len(args) == 3 and args[2] <= 0:
        raise SpaceError(f"{where}: q must be > 0, got {args[2]}")


def _check_value(where: str, name: str, value: Any) -> None:
    try:
        load_config(None, [f"{name}={_yaml_value(value)}"])
    except ConfigError as e:
        detail = str(e).splitlines()[-1].strip()
        raise SpaceError(f"{where}: value {value!r} is not valid for the config ({detail})") from None


def edges(dist: str, args: list[Any]) -> list[Any]:
    """The values a distribution can produce at its edges: every choice, else low and high
    (``randint``'s high is exclusive)."""
    if dist == "choice":
        return list(args)
    return [args[0], args[1] - 1 if dist == "randint" else args[1]]


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def to_tune(space: Mapping[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    """The space as Ray Tune sample objects, keyed by dotted config field."""
    from ray import tune

    makers = {
        "choice": lambda a: tune.choice(a),
        "uniform": lambda a: tune.uniform(a[0], a[1]),
        "quniform": lambda a: tune.quniform(a[0], a[1], a[2]),
        "loguniform": lambda a: tune.loguniform(a[0], a[1]),
        "qloguniform": lambda a: tune.qloguniform(a[0], a[1], a[2]),
        "randint": lambda a: tune.randint(a[0], a[1]),
    }
    return {name: makers[dist](args) for name, (dist, args) in space.items()}


def as_overrides(params: Mapping[str, Any]) -> list[str]:
    """A trial's sampled values as ``--set`` strings for :func:`conclugen.config.load_config`."""
    return [f"{k}={_yaml_value(v)}" for k, v in params.items()]


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Tune may hand dotted keys back nested ({"losses": {"clustering": …}}): flatten with '.'."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten_params(v, key))
        else:
            out[key] = v
    return out


def quantize(params: Mapping[str, Any], space: Mapping[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    """Round q-distributions to their grid: Optuna drops the quantisation of ``qloguniform``
    (it cannot combine ``log`` and ``step``), so the trial applies it. Idempotent."""
    out = dict(params)
    for name, (dist, args) in space.items():
        if name in out and dist in ("quniform", "qloguniform"):
            low, high, q = args
            v = round(float(out[name]) / q) * q
            v = min(max(v, low), high)
            out[name] = float(f"{v:.12g}")  # no float noise in params and YAML
        elif name in out and hasattr(out[name], "item"):  # numpy scalar → Python
            out[name] = out[name].item()
    return out


def trial_params(config: Mapping[str, Any], space: Mapping[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    """A trial's sampled values as Tune hands them (maybe nested), flat and on their grid."""
    return quantize(flatten_params(config), space)
