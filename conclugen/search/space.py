"""Search spaces as YAML: ``dotted.config.field: {distribution: [args]}``.

Validated on load — an unknown field, an unknown distribution or a bad range is an error that
names the parameter — and turned into Ray Tune sample objects.
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


class SpaceError(ConfigError):
    """A search space is wrong; the message names the parameter."""


def load_space(path: str | Path) -> dict[str, tuple[str, list[Any]]]:
    p = Path(path)
    if not p.is_file():
        raise SpaceError(f"search space file not found: {p}")
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, Mapping) or not raw:
        raise SpaceError(f"{p}: a search space is a non-empty mapping of config fields to distributions")
    return validate_space(raw, source=str(p))


def validate_space(raw: Mapping[str, Any], source: str = "space") -> dict[str, tuple[str, list[Any]]]:
    space: dict[str, tuple[str, list[Any]]] = {}
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
            if not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
                raise SpaceError(f"{where}: {dist} bounds must be numbers, got {args!r}")
            low, high = args[0], args[1]
            if not low < high:
                raise SpaceError(f"{where}: low {low} must be below high {high}")
            if dist.endswith("loguniform") and low <= 0:
                raise SpaceError(f"{where}: {dist} needs low > 0, got {low}")
            if len(args) == 3 and args[2] <= 0:
                raise SpaceError(f"{where}: q must be > 0, got {args[2]}")
            probes = [low, high - 1 if dist == "randint" else high]
        else:
            probes = list(args)
        # Every value the distribution can produce at its edges must be a valid config value.
        for value in probes:
            try:
                load_config(None, [f"{name}={_yaml_value(value)}"])
            except ConfigError as e:
                detail = str(e).splitlines()[-1].strip()
                raise SpaceError(f"{where}: value {value!r} is not valid for the config ({detail})") from None
        space[name] = (dist, list(args))
    return space


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
