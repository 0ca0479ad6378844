"""ConCluGen on Ray: multimodal self-supervised pretraining for facial expression recognition."""

__version__ = "0.1.0"
