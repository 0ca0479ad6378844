"""The method: heads, losses, k-means and the collectives they use (see docs/method.md)."""
