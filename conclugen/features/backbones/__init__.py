"""Frozen backbones behind one registry (see :mod:`conclugen.features.backbones.registry`)."""

from conclugen.features.backbones.registry import (
    KINDS,
    OFFLINE,
    Backbone,
    BackboneError,
    NoBackbone,
    load_backbone,
    parse_spec,
    resolve_model_dir,
)

__all__ = [
    "KINDS",
    "OFFLINE",
    "Backbone",
    "BackboneError",
    "NoBackbone",
    "load_backbone",
    "parse_spec",
    "resolve_model_dir",
]
