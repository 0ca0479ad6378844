"""Stage 2: frozen backbones and the feature store they fill, on Ray Data (see docs/architecture.md)."""
