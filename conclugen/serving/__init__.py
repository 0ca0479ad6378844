"""Stage 5: predictions for new videos with a predict bundle (see docs/architecture.md)."""
