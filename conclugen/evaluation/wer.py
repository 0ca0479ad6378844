"""Word error rate of ASR output against reference transcripts (docs/method.md, Backbones and
features: ASR).

WER = (substitutions + deletions + insertions) / reference words, summed over the corpus (the
usual corpus-level figure: each clip's edits count, not a mean of per-clip rates). Both sides are
normalised the same way first: lower case, words are runs of letters, digits and apostrophes
(punctuation dropped), since the transcripts are punctuated and cased and ASR output is not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str | None) -> list[str]:
    """``text`` normalised into words (see the module docstring); None → no words."""
    return [w for w in _WORD.findall((text or "").lower()) if w.strip("'")]


def word_edits(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """The Levenshtein distance between two word sequences: the fewest substitutions,
    deletions and insertions that turn ``ref`` into ``hyp`` (one row of the DP table at a time)."""
    prev = list(range(len(hyp) + 1))  # ref prefix of length 0 → hyp prefix of length j: j insertions
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)  # → empty hyp prefix: i deletions
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


@dataclass(frozen=True)
class WordErrorRate:
    """Corpus-level WER: edit count, reference words and clips it was computed over."""

    errors: int
    ref_words: int
    clips: int

    @property
    def wer(self) -> float:
        return self.errors / self.ref_words if self.ref_words else float("nan")

    def describe(self) -> str:
        return f"WER {self.wer:.3f} ({self.errors} word errors / {self.ref_words} reference words, {self.clips} clips)"


def corpus_wer(pairs: Iterable[tuple[str | None, str | None]]) -> WordErrorRate:
    """WER over (reference, hypothesis) pairs; a None hypothesis (no speech found) counts as
    empty, so every reference word is a deletion."""
    errors = ref_words = clips = 0
    for ref, hyp in pairs:
        r = words(ref)
        errors += word_edits(r, words(hyp))
        ref_words += len(r)
        clips += 1
    return WordErrorRate(errors, ref_words, clips)
