"""Writing the corpus in MELD's distributed layout: the clips (rendered in a process pool), one
CSV per split with MELD's header, and the marker file that tells the MELD loader the corpus is
synthetic; to a local folder or, through a temporary one, to ``s3://``."""

from __future__ import annotations

import csv
import io
import json
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conclugen import storage
from conclugen.data.corpora.manifest import SYNTH_MARKER
from conclugen.data.corpora.meld import MELD_COLUMNS
from conclugen.data.synthetic.plan import EMOTIONS, POOL, SPLITS, UNLABELED, plan_corpus
from conclugen.data.synthetic.render import render_job
from conclugen.data.synthetic.speech import resolve_voice
from conclugen.runtime import machine_cores

if TYPE_CHECKING:
    from collections.abc import Iterable

    from conclugen.config import StorageConfig


@dataclass
class SynthSummary:
    """What :func:`synthesize` made."""

    out: str
    seed: int
    difficulty: float
    clips_per_split: dict[str, int]  # train, dev, test, and "unlabeled" when there is a pool
    clips_per_emotion: dict[str, dict[str, int]]  # labelled split → emotion → count
    seconds: float
    workers: int
    voice: str  # "espeak-ng <version>" or "numpy fallback (...)"
    media_seconds: float
    total_bytes: int
    files: list[str] = field(default_factory=list)  # paths relative to ``out``

    @property
    def clips(self) -> int:
        return sum(self.clips_per_split.values())

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else float("inf")

    def describe(self) -> str:
        lines = [
            f"synthetic corpus (MELD layout) → {self.out}",
            f"  {self.clips} clips ({self.media_seconds:.1f} s of media, {self.total_bytes / 1e6:.1f} MB)"
            f" in {self.seconds:.1f} s = {self.clips_per_s:.2f} clips/s with {self.workers} worker(s)",
            f"  seed {self.seed}, difficulty {self.difficulty:g}; voice: {self.voice}",
            "  split   clips  " + " ".join(f"{e[:8]:>8}" for e in EMOTIONS),
        ]
        for split, n in self.clips_per_split.items():
            if split == UNLABELED:
                lines.append(f"  {split:<6} {n:>6}  (pool for pretraining: no labels written, {POOL[0]})")
                continue
            per = self.clips_per_emotion.get(split, {})
            lines.append(f"  {split:<6} {n:>6}  " + " ".join(f"{per.get(e, 0):>8}" for e in EMOTIONS))
        return "\n".join(lines)


@dataclass
class _Written:
    """What has been written so far: paths relative to the root, their size, clip durations."""

    files: list[str] = field(default_factory=list)
    total_bytes: int = 0
    durations: dict[int, float] = field(default_factory=dict)  # plan index → seconds


def meld_time(seconds: float) -> str:
    """``hh:mm:ss,mmm`` as in MELD's StartTime/EndTime columns."""
    ms = int(round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def clip_relpath(split: str, dialogue: int, utterance: int) -> str:
    """A clip's path under the corpus root, as MELD.Raw names it (the pool: under POOL's folder)."""
    folder = POOL[1] if split == UNLABELED else SPLITS[split][1]
    return f"{folder}/dia{dialogue}_utt{utterance}.mp4"


def synthesize(
    out: str,
    clips: int = 70,
    seed: int = 0,
    difficulty: float = 0.3,
    storage_cfg: StorageConfig | None = None,
    *,
    workers: int | None = None,
    voice: str = "auto",
    unlabeled: int = 0,
) -> SynthSummary:
    """Write a synthetic corpus of ``clips`` clips in MELD's layout to ``out`` (path or s3://).

    ``unlabeled``: clips of an unlabeled pool from the same generative process, for pretraining
    (``POOL``: a MELD-style CSV with Emotion and Sentiment empty, and its clip folder; read with
    :func:`conclugen.data.synthetic.pool.load_synthetic`). The labelled clips do not depend on it.

    ``voice``: ``auto`` (espeak-ng when installed, else the numpy synthesiser), ``espeak-ng``
    or ``numpy``. ``workers``: processes (default: the usable CPUs, at most 8; 1 = in this
    process).
    """
    if clips < 1:
        raise ValueError("clips must be >= 1")
    if unlabeled < 0:
        raise ValueError("unlabeled must be >= 0")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError("difficulty must be within [0, 1]")
    t_start = time.perf_counter()
    engine, voice_desc = resolve_voice(voice)
    plans = plan_corpus(clips, seed, difficulty, unlabeled)
    n_workers = _worker_count(workers, len(plans))
    to_s3 = storage.is_s3(out)
    tmp = tempfile.TemporaryDirectory(prefix="conclugen-synth-") if to_s3 else None
    root = Path(tmp.name) if tmp else Path(storage.resolve(out)[1])
    written = _Written()
    try:
        root.mkdir(parents=True, exist_ok=True)
        _write_clips(root, plans, seed, engine, n_workers, written)
        _write_csvs(root, plans, written)
        # Marks the corpus as synthetic for the MELD loader: the probe then weights classes from
        # the (balanced) data instead of MELD's reference weights, which encode MELD's imbalance.
        marker = {
            "generator": "conclugen synth",
            "seed": seed,
            "clips": clips,
            "difficulty": difficulty,
            "voice": engine,
            "unlabeled": unlabeled,
        }
        (root / SYNTH_MARKER).write_text(json.dumps(marker, sort_keys=True) + "\n")
        written.files.append(SYNTH_MARKER)
        if to_s3:
            storage.upload_dir(root, out, storage_cfg)
    finally:
        if tmp is not None:
            tmp.cleanup()
    per_split = {split: sum(p["split"] == split for p in plans) for split in SPLITS}
    if unlabeled:
        per_split[UNLABELED] = unlabeled
    per_emotion = {
        split: dict(Counter(p["emotion"] for p in plans if p["split"] == split)) for split in SPLITS
    }
    return SynthSummary(
        out=out,
        seed=seed,
        difficulty=difficulty,
        clips_per_split=per_split,
        clips_per_emotion=per_emotion,
        seconds=time.perf_counter() - t_start,
        workers=n_workers,
        voice=voice_desc,
        media_seconds=float(sum(written.durations.values())),
        total_bytes=written.total_bytes,
        files=sorted(written.files),
    )


def _worker_count(workers: int | None, n_clips: int) -> int:
    if workers is None:
        # CPUs this process may use (not the host's count), at most 8; a pool only pays for
        # its start-up (spawned interpreters) from a few clips per worker on.
        workers = min(machine_cores(), 8, max(1, n_clips // 4))
    return max(1, min(int(workers), n_clips))


def _write_clips(
    root: Path, plans: list[dict[str, Any]], seed: int, engine: str, n_workers: int, written: _Written
) -> None:
    jobs = [(p, seed, engine) for p in plans]
    pool = None
    results: Iterable[tuple[bytes, float]]
    if n_workers == 1:
        results = map(render_job, jobs)
    else:
        import multiprocessing as mp

        # spawn: safe inside processes that hold threads (Ray, pytest plugins).
        pool = ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn"))
        results = pool.map(render_job, jobs, chunksize=1)
    try:
        for p, (data, dur) in zip(plans, results, strict=True):
            rel = clip_relpath(p["split"], p["dialogue"], p["utterance"])
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
            written.files.append(rel)
            written.total_bytes += len(data)
            written.durations[p["index"]] = dur
    finally:
        if pool is not None:
            pool.shutdown()


def _write_csvs(root: Path, plans: list[dict[str, Any]], written: _Written) -> None:
    csvs = {split: csv_name for split, (csv_name, _) in SPLITS.items()}
    if any(p["split"] == UNLABELED for p in plans):
        csvs[UNLABELED] = POOL[0]
    for split, csv_name in csvs.items():
        text = csv_text([p for p in plans if p["split"] == split], written.durations)
        (root / csv_name).write_bytes(text.encode("utf-8"))
        written.files.append(csv_name)
        written.total_bytes += len(text)


def csv_text(rows: list[dict[str, Any]], durations: dict[int, float]) -> str:
    """One split's CSV in MELD's layout; utterances of a dialogue follow each other in time.
    Pool rows (split ``unlabeled``) leave Emotion and Sentiment empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MELD_COLUMNS)
    t_by_dialogue: dict[int, float] = {}
    for sr_no, p in enumerate(rows, start=1):
        start = t_by_dialogue.get(p["dialogue"], p["t0"])
        end = start + durations[p["index"]]
        t_by_dialogue[p["dialogue"]] = end + p["gap"]
        w.writerow(
            [
                sr_no,
                p["text"],
                p["speaker"]["name"],
                "" if p["split"] == UNLABELED else p["emotion"],
                "" if p["split"] == UNLABELED else p["sentiment"],
                p["dialogue"],
                p["utterance"],
                p["season"],
                p["episode"],
                meld_time(start),
                meld_time(end),
            ]
        )
    return buf.getvalue()
