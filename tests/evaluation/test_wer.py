"""Word error rate: hand-computed edit distances, normalisation, corpus-level aggregation, and the
DP against the textbook recursion on random word sequences."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from conclugen.evaluation.wer import corpus_wer, word_edits, words


@pytest.mark.parametrize(("ref", "hyp", "edits"), [
    ("the cat sat on the mat", "the cat sat on the mat", 0),
    ("the cat sat on the mat", "the cat sat on mat", 1),  # one deletion
    ("a b c", "a x c d", 2),  # one substitution, one insertion
    ("a b c d", "b c d a", 2),  # delete the first a, insert one at the end (not 4 substitutions)
    ("one two three", "three two one", 2),  # two substitutions
    ("", "a b", 2),  # insertions only
    ("a b", "", 2),  # deletions only
    ("a a a", "a", 2),
])
def test_word_edits_hand_computed(ref: str, hyp: str, edits: int) -> None:
    assert word_edits(ref.split(), hyp.split()) == edits
    assert word_edits(hyp.split(), ref.split()) == edits  # the distance is symmetric


def test_words_normalise_case_and_punctuation() -> None:
    assert words("Don't, STOP!  We did it... 2 times?") == ["don't", "stop", "we", "did", "it", "2", "times"]
    assert words(None) == [] and words(" ' - ") == []


def test_corpus_wer_sums_edits_over_reference_words() -> None:
    r = corpus_wer([("Yes! We did it!", "yes we did it"), ("Please leave.", None), ("so happy", "so so happy")])
    # 0 errors; 2 deletions (no hypothesis); 1 insertion — over 4 + 2 + 2 reference words
    assert (r.errors, r.ref_words, r.clips) == (3, 8, 3)
    assert r.wer == pytest.approx(3 / 8)
    assert "3 word errors / 8 reference words, 3 clips" in r.describe()
    assert math.isnan(corpus_wer([]).wer)


def _recursive_edits(ref: tuple[str, ...], hyp: tuple[str, ...]) -> int:
    """Levenshtein distance straight from its recursive definition."""

    @functools.cache
    def d(i: int, j: int) -> int:  # edits between ref[:i] and hyp[:j]
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (ref[i - 1] != hyp[j - 1]))

    return d(len(ref), len(hyp))


def test_word_edits_match_the_recursive_definition() -> None:
    rng = np.random.default_rng(0)
    vocab = ["a", "b", "c", "d"]
    for _ in range(200):
        ref = tuple(rng.choice(vocab, size=int(rng.integers(0, 7))).tolist())
        hyp = tuple(rng.choice(vocab, size=int(rng.integers(0, 7))).tolist())
        assert word_edits(ref, hyp) == _recursive_edits(ref, hyp), (ref, hyp)
