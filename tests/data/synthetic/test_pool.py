"""The unlabeled pool: planned after (and independent of) the labelled clips, written beside them
without labels, and read back as split ``unlabeled`` with transcripts."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from conclugen.config import load_config
from conclugen.data.corpora import load_manifest
from conclugen.data.synthetic import EMOTIONS, synthesize
from conclugen.data.synthetic.plan import plan_corpus
from conclugen.data.synthetic.pool import load_synthetic

POOL_CSV, POOL_DIR = "unlabeled_sent_emo.csv", "unlabeled/unlabeled_splits"


def _digest(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not str(p.relative_to(root)).startswith(skip)
    }


def test_pool_plans_follow_the_labelled_ones() -> None:
    labelled = plan_corpus(70, 3, 0.3)
    plans = plan_corpus(70, 3, 0.3, unlabeled=140)
    assert plans[:70] == labelled  # adding a pool leaves the labelled corpus as it was
    pool = plans[70:]
    assert len(pool) == 140 and {p["split"] for p in pool} == {"unlabeled"}
    assert [p["index"] for p in pool] == list(range(70, 210))  # own render seeds
    # Same generative process: the same cast, balanced hidden emotions, modalities that mostly
    # agree with the clip's emotion (as in the labelled splits at this difficulty).
    assert {p["speaker"]["name"] for p in pool} <= {p["speaker"]["name"] for p in labelled}
    assert set(Counter(p["emotion"] for p in pool).values()) == {20}
    agree = sum(p["face_emotion"] == p["emotion"] for p in pool) / len(pool)
    assert 0.75 < agree < 1.0


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("pool")
    synthesize(str(base / "plain"), clips=7, seed=2, workers=1, voice="numpy")
    summary = synthesize(str(base / "pooled"), clips=7, seed=2, workers=1, voice="numpy", unlabeled=4)
    assert summary.clips_per_split == {"train": 5, "dev": 1, "test": 1, "unlabeled": 4}
    assert summary.clips == 11 and "unlabeled" in summary.describe()
    return base / "plain", base / "pooled"


def test_pool_is_written_beside_an_unchanged_labelled_corpus(pooled: tuple[Path, Path]) -> None:
    plain, root = pooled
    labelled = _digest(root, skip=(POOL_CSV, POOL_DIR, "conclugen-synthetic.json"))
    assert labelled == _digest(plain, skip=("conclugen-synthetic.json",))
    with open(root / POOL_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert all(r["Emotion"] == "" and r["Sentiment"] == "" and r["Utterance"].strip() for r in rows)
    clips = sorted(p.name for p in (root / POOL_DIR).glob("*.mp4"))
    assert clips == sorted(f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4" for r in rows)


def test_load_synthetic_adds_the_pool_as_unlabeled(pooled: tuple[Path, Path], tmp_path: Path) -> None:
    plain, root = pooled
    cfg = load_config()
    meld = load_manifest("meld", str(root), cfg)
    m = load_synthetic(str(root), cfg)
    assert m.rows[: len(meld.rows)] == meld.rows and len(meld.rows) == 7  # the MELD loader skips the pool
    pool = m.rows[len(meld.rows):]
    assert len(pool) == 4 and not m.problems and m.corpus == "synthetic"
    assert all(r["split"] == "unlabeled" and r["labels"] == [] and r["transcript"] for r in pool)
    assert all(r["corpus"] == "synthetic" and Path(r["video_uri"]).is_file() for r in pool)
    assert len({r["clip_id"] for r in m.rows}) == 11
    assert set(m.label_space) == set(EMOTIONS)
    # Without a pool it is the MELD manifest; a listed pool clip that is missing is a problem.
    assert load_synthetic(str(plain), cfg).rows == load_manifest("meld", str(plain), cfg).rows
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / POOL_DIR / Path(pool[0]["video_uri"]).name).unlink()
    broken = load_synthetic(str(copy), cfg)
    assert len(broken.rows) == 10 and len(broken.problems) == 1
    assert "MissingClipError" in broken.problems[0]["error"]
    assert broken.problems[0]["clip_id"] == pool[0]["clip_id"]


def test_cli_synth_writes_a_pool(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from conclugen.cli import app

    out = tmp_path / "c"
    result = CliRunner().invoke(app, ["synth", str(out), "--clips", "3", "--unlabeled", "2", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "unlabeled" in result.output and (out / POOL_CSV).is_file()
    assert len(list((out / POOL_DIR).glob("*.mp4"))) == 2
    assert json.loads((out / "conclugen-synthetic.json").read_text())["unlabeled"] == 2
