"""Stage 4: the linear probe, its baselines, reports, the predict bundle and the ablation (see docs/architecture.md)."""
