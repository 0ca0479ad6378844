"""What `conclugen predict` and the served MLflow model return: one :class:`ClipPrediction` per
input clip, collected in a :class:`PredictResult` (text table, JSON, CSV, flat records)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ClipPrediction:
    clip_id: str
    video_uri: str
    probabilities: dict[str, float] | None  # None when the clip failed
    predicted: list[str]
    gaps: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.probabilities is not None


@dataclass
class PredictResult:
    label_space: list[str]
    multilabel: bool
    clips: list[ClipPrediction]
    csv_path: str | None = None
    json_path: str | None = None
    seconds: float = 0.0

    @property
    def n_ok(self) -> int:
        return sum(c.ok for c in self.clips)

    def table(self) -> str:
        """Fixed-width text: one line per clip (probabilities), then one error line per failed clip."""
        labels = self.label_space
        width = max([4, *(len(_short(c.clip_id)) for c in self.clips)])
        w = max(7, *(len(lab) for lab in labels))
        head = f"{'clip':<{width}}  {'predicted':<12}  " + "  ".join(f"{lab:>{w}}" for lab in labels)
        lines = [head, "-" * len(head)]
        for c in self.clips:
            if c.ok:
                probs = "  ".join(f"{c.probabilities[lab]:>{w}.4f}" for lab in labels)
                pred = ",".join(c.predicted) or "-"
                lines.append(f"{_short(c.clip_id):<{width}}  {pred:<12}  {probs}"
                             + (f"  (gaps: {','.join(c.gaps)})" if c.gaps else ""))
        for c in self.clips:
            if not c.ok:
                lines.append(f"error: {c.video_uri}: {c.error}")
        lines.append(f"{self.n_ok} of {len(self.clips)} clips predicted ({self.seconds:.1f} s)"
                     + (f"; written to {self.csv_path} and {self.json_path}" if self.csv_path else ""))
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({
            "label_space": self.label_space, "multilabel": self.multilabel,
            "clips": [{"clip_id": c.clip_id, "video_uri": c.video_uri, "predicted": c.predicted,
                       "probabilities": c.probabilities, "gaps": c.gaps, "error": c.error or None}
                      for c in self.clips],
        }, indent=2)

    def columns(self) -> list[str]:
        """The columns of :meth:`records` (and of predictions.csv): one ``p_<label>`` per class."""
        return ["clip_id", "video_uri", "status", "predicted", *[f"p_{lab}" for lab in self.label_space],
                "gaps", "error"]

    def records(self) -> list[dict[str, Any]]:
        """One flat row per clip: probabilities as floats (NaN for a failed clip), the decided
        labels and gaps ``;``-joined — predictions.csv and the MLflow pyfunc's output."""
        nan = float("nan")
        return [{"clip_id": c.clip_id, "video_uri": c.video_uri, "status": "ok" if c.ok else "error",
                 "predicted": ";".join(c.predicted),
                 **{f"p_{lab}": c.probabilities[lab] if c.ok else nan for lab in self.label_space},
                 "gaps": ";".join(c.gaps), "error": c.error} for c in self.clips]

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(self.columns())
        for r in self.records():
            w.writerow([_csv_cell(v) for v in r.values()])
        return buf.getvalue()


def _csv_cell(v: Any) -> Any:
    """Probabilities with 6 decimals, a failed clip's NaN as an empty cell."""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6f}"
    return v


def _short(clip_id: str, keep: int = 48) -> str:
    return clip_id if len(clip_id) <= keep else "…" + clip_id[-(keep - 1):]
