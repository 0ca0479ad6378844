"""What an extraction run did: counts, errors grouped by reason, and the store's accounting."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class ExtractSummary:
    out_uri: str
    corpus: str
    manifest_clips: int
    skipped: int  # already written before this run
    processed: int  # clips that went through the pipeline in this run
    features: int  # feature rows written in this run
    errors: int  # error rows written in this run (incl. manifest problems)
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    total_features: int = 0  # in the store after the run
    total_errors: int = 0
    accounted: bool = False  # every manifest clip in exactly one of features / errors
    unaccounted: list[str] = field(default_factory=list)
    gaps: dict[str, int] = field(default_factory=dict)
    first_output_s: float = 0.0  # from pipeline start to the first rows out (worker/actor start-up)
    first_output_rows: int = 0
    augmentations: int = 0  # augmented versions per clip written besides the plain one
    # (seconds since the pipeline started, clips finished so far) after each finished batch: the
    # benchmark's steady-state rate; the progress line's clips/s and ETA
    completions: list[tuple[float, int]] = field(default_factory=list)
    duplicates_removed: int = 0  # repeated rows the final check removed (a retry that regrouped rows)

    @property
    def clips_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        lines = [
            f"extract {self.corpus} → {self.out_uri}",
            f"  manifest clips        {self.manifest_clips}",
            f"  already written       {self.skipped}",
            f"  processed this run    {self.processed}  ({self.clips_per_s:.2f} clips/s, {self.seconds:.1f} s)",
            f"  features written      {self.features}",
            f"  versions per clip     1 plain + {self.augmentations} augmented",
            f"  errors written        {self.errors}",
        ]
        for reason, n in sorted(self.errors_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {n:5d}  {reason}")
        if self.gaps:
            lines.append("  gaps (zeros)          " + ", ".join(f"{k}: {v}" for k, v in sorted(self.gaps.items())))
        if self.duplicates_removed:
            lines.append(f"  repeated rows removed {self.duplicates_removed}")
        lines.append(f"  store: {self.total_features} features + {self.total_errors} errors = "
                     f"{self.total_features + self.total_errors} of {self.manifest_clips} manifest clips "
                     f"({'all accounted for' if self.accounted else 'MISMATCH'})")
        return "\n".join(lines)


def error_reason(stage: str, error: str) -> str:
    """Group key for the summary: stage + exception type (+ MediaError's reason code)."""
    head = error.split(":", 1)
    kind = head[0]
    if kind == "MediaError" and len(head) > 1:
        kind += ":" + head[1].strip().split(":", 1)[0]
    return f"{stage} / {kind}"


def accounting(manifest_ids: pa.Array, features: pa.Array, errors: pa.Array) -> tuple[list[str], list[str]]:
    """(manifest clips in neither features nor errors, clips in more than one row of the store):
    Arrow kernels over the clip_id columns, so the check stays cheap at 1M clips."""
    both = pa.concat_arrays([features, errors])
    missing = manifest_ids.filter(pc.invert(pc.is_in(manifest_ids, value_set=both)))
    counts = pc.value_counts(both)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    return sorted(missing.to_pylist()), sorted(repeated.to_pylist())
