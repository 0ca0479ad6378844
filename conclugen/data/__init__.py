"""Stage 1: corpora → manifests, clip decoding, face crops, the synthetic corpus (see docs/architecture.md)."""
