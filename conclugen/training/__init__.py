"""Stage 3: pretraining the heads on Ray Train, and the run folder it leaves (see docs/architecture.md)."""
