"""Hyperparameter search with Ray Tune around pretraining (see docs/architecture.md)."""
