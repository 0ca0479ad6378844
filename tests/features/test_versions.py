"""Choosing augmented versions: uniform, deterministic in (seed, epoch, modality, clip), and
independent of how the clips are split into batches or shards."""

from __future__ import annotations

import numpy as np
import pytest

from conclugen.features.versions import augmented_views, select_versions, version_index

IDS = [f"clip{i:04d}" for i in range(4000)]


def test_same_inputs_draw_the_same_versions_whatever_the_batching() -> None:
    whole = version_index(IDS, "video", epoch=3, seed=7, choices=range(0, 11))
    parts = np.concatenate([version_index(IDS[i : i + 37], "video", 3, 7, range(0, 11)) for i in range(0, 4000, 37)])
    assert np.array_equal(whole, parts)


def test_epochs_modalities_and_seeds_draw_differently() -> None:
    base = version_index(IDS, "video", 0, 7, range(11))
    for other in (version_index(IDS, "video", 1, 7, range(11)), version_index(IDS, "audio", 0, 7, range(11)),
                  version_index(IDS, "video", 0, 8, range(11))):
        # independent uniform draws over 11 values agree on ~1/11 of the clips
        assert np.mean(base == other) < 0.15


def test_draws_are_uniform_over_the_choices() -> None:
    idx = version_index(IDS, "text", 0, 1, choices=range(1, 5))
    counts = np.bincount(idx, minlength=5)
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] - 1000) < 5 * np.sqrt(1000 * 0.25 * 0.75))


def test_views_reshape_and_selection() -> None:
    plain = np.arange(6, dtype=np.float32).reshape(3, 2)
    flat = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 4) + 100  # 2 versions of dim 2
    views = augmented_views(flat, n=2, dim=2)
    assert views.shape == (3, 2, 2) and views[1, 1].tolist() == [106.0, 107.0]
    out = select_versions(plain, views, np.array([0, 2, 1]))
    assert out.tolist() == [[0.0, 1.0], [106.0, 107.0], [108.0, 109.0]]
    assert plain.tolist() == [[0, 1], [2, 3], [4, 5]]  # input untouched
    with pytest.raises(ValueError, match="expected"):
        augmented_views(flat, n=3, dim=2)
    with pytest.raises(ValueError, match="no versions"):
        version_index(["a"], "video", 0, 0, choices=[])


def test_clip_keys_are_stable_distinct_and_nonnegative() -> None:
    import hashlib

    from conclugen.features.versions import clip_keys

    ids = [f"c{i}" for i in range(500)]
    keys = clip_keys(ids)
    assert keys.dtype == np.int64 and (keys >= 0).all() and len(set(keys.tolist())) == len(ids)
    want = int.from_bytes(hashlib.blake2b(b"clip:c7", digest_size=8).digest(), "little") & (2**63 - 1)
    assert keys[7] == want
    assert (clip_keys(list(reversed(ids)))[::-1] == keys).all()
