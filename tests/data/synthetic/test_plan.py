"""The corpus plan: difficulty sets how often each modality agrees with the label, and
transcripts come from their modality's templates."""

from __future__ import annotations

import re

import numpy as np

from conclugen.data.synthetic.plan import plan_corpus
from conclugen.data.synthetic.transcripts import TEMPLATES


def test_difficulty_controls_modality_agreement() -> None:
    def agreement(d: float) -> dict[str, float]:
        plans = plan_corpus(700, 0, d)
        return {
            m: float(np.mean([p[f"{m}_emotion"] == p["emotion"] for p in plans]))
            for m in ("face", "voice", "text")
        }

    easy, mid, hard = agreement(0.0), agreement(0.3), agreement(1.0)
    assert all(v == 1.0 for v in easy.values())
    for m in ("face", "voice", "text"):
        assert hard[m] < mid[m] < 1.0
        assert 0.2 < hard[m] < 0.8  # no modality gives every label away, none is pure noise
    # The transcript really comes from the templates of its modality's emotion.
    for p in plan_corpus(70, 0, 0.3):
        keys = [p["text_emotion"]] if p["text_emotion"] != "surprise" else ["surprise+", "surprise-"]
        assert any(_from_template(p["text"], t) for k in keys for t in TEMPLATES[k]), p["text"]


def _from_template(text: str, template: str) -> bool:
    pattern = re.escape(template)
    for slot in ("name", "thing", "time"):
        pattern = pattern.replace(re.escape("{" + slot + "}"), ".+")
    return re.fullmatch(pattern, text) is not None
