"""The synthetic corpus: MELD layout, decodable clips of the stated duration, labels and splits,
byte-for-byte determinism, voice fallback and s3:// output."""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from conclugen.data.synthetic import EMOTIONS, SynthSummary, synthesize
from conclugen.data.synthetic.corpus import meld_time
from conclugen.data.synthetic.plan import FPS, SIZE

HEADER = (
    "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
)
TIME_RE = re.compile(r"^\d\d:[0-5]\d:[0-5]\d,\d{3}$")
N_CLIPS = 14
FOLDERS = {
    "train": ("train_sent_emo.csv", "train/train_splits"),
    "dev": ("dev_sent_emo.csv", "dev/dev_splits_complete"),
    "test": ("test_sent_emo.csv", "test/output_repeated_splits_test"),
}


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _seconds(t: str) -> float:
    h, m, rest = t.split(":")
    s, ms = rest.split(",")
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthSummary]:
    root = tmp_path_factory.mktemp("synth") / "corpus"
    summary = synthesize(str(root), clips=N_CLIPS, seed=0, difficulty=0.3, workers=1)
    return root, summary


def _rows(root: Path, split: str) -> list[dict[str, str]]:
    with open(root / FOLDERS[split][0], newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_layout_and_csv_header(corpus: tuple[Path, SynthSummary]) -> None:
    root, summary = corpus
    expected = set()
    for split, (csv_name, folder) in FOLDERS.items():
        first = (root / csv_name).read_text(encoding="utf-8").splitlines()[0]
        assert first == HEADER
        for r in _rows(root, split):
            expected.add(f"{folder}/dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4")
        expected.add(csv_name)
    expected.add("conclugen-synthetic.json")
    found = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert found == expected
    assert sorted(found) == summary.files
    assert summary.clips == N_CLIPS


def test_labels_splits_and_times(corpus: tuple[Path, SynthSummary]) -> None:
    root, summary = corpus
    sizes = {split: len(_rows(root, split)) for split in FOLDERS}
    assert sum(sizes.values()) == N_CLIPS
    for split, share in zip(FOLDERS, (0.7, 0.1, 0.2), strict=True):
        assert abs(sizes[split] - share * N_CLIPS) <= 1, sizes
    assert summary.clips_per_split == sizes
    for split in FOLDERS:
        rows = _rows(root, split)
        assert [int(r["Sr No."]) for r in rows] == list(range(1, len(rows) + 1))
        counts = Counter(r["Emotion"] for r in rows)
        assert set(counts) <= set(EMOTIONS)
        # Roughly balanced: within a split no emotion has 2 more clips than another.
        assert max(counts.values()) - min(counts.get(e, 0) for e in EMOTIONS) <= 1 or len(rows) < 7
        assert summary.clips_per_emotion[split] == dict(counts)
        by_dialogue: dict[str, list[dict[str, str]]] = {}
        for r in rows:
            e, s = r["Emotion"], r["Sentiment"]
            if e == "neutral":
                assert s == "neutral"
            elif e == "joy":
                assert s == "positive"
            elif e == "surprise":
                assert s in ("positive", "negative")
            else:
                assert s == "negative"
            assert r["Utterance"].strip() and r["Speaker"].strip()
            assert int(r["Season"]) >= 1 and int(r["Episode"]) >= 1
            assert TIME_RE.match(r["StartTime"]) and TIME_RE.match(r["EndTime"])
            dur = _seconds(r["EndTime"]) - _seconds(r["StartTime"])
            assert 2.0 - 1e-6 <= dur <= 4.0 + 1e-6
            by_dialogue.setdefault(r["Dialogue_ID"], []).append(r)
        for utts in by_dialogue.values():
            assert [int(r["Utterance_ID"]) for r in utts] == list(range(len(utts)))
            ends = [_seconds(r["EndTime"]) for r in utts]
            starts = [_seconds(r["StartTime"]) for r in utts]
            assert all(s >= e for s, e in zip(starts[1:], ends[:-1], strict=True))  # in order
    # Seven emotions over the whole (small) corpus.
    all_counts = Counter(r["Emotion"] for split in FOLDERS for r in _rows(root, split))
    assert set(all_counts) == set(EMOTIONS)


def test_every_clip_decodes_with_stated_duration(corpus: tuple[Path, SynthSummary]) -> None:
    root, summary = corpus
    total = 0.0
    for split, (_, folder) in FOLDERS.items():
        for r in _rows(root, split):
            stated = _seconds(r["EndTime"]) - _seconds(r["StartTime"])
            path = root / folder / f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4"
            with av.open(str(path)) as c:
                assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
                v, a = c.streams.video[0], c.streams.audio[0]
                assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
                assert (v.width, v.height) == (SIZE, SIZE)
                assert abs(c.duration / 1e6 - stated) < 0.05
                frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            with av.open(str(path)) as c:
                chunks = [f.to_ndarray() for f in c.decode(audio=0)]
                sr = c.streams.audio[0].sample_rate
            audio = np.concatenate(chunks, axis=1)[0]
            assert abs(len(frames) / FPS - stated) < 1e-6
            assert abs(len(audio) / sr - stated) < 0.1
            # Speech, not silence; a moving picture, not a still.
            assert np.sqrt(np.mean(audio**2)) > 0.01
            diffs = [
                np.abs(frames[i].astype(int) - frames[i + 5]).mean() for i in range(0, len(frames) - 5, 5)
            ]
            assert max(diffs) > 1.0
            total += stated
    assert abs(summary.media_seconds - total) < 0.01


@pytest.mark.slow
def test_deterministic_per_seed_and_different_across_seeds(
    corpus: tuple[Path, SynthSummary], tmp_path: Path
) -> None:
    root, _ = corpus
    # Same seed, this time through the process pool: identical bytes.
    again = tmp_path / "again"
    synthesize(str(again), clips=N_CLIPS, seed=0, difficulty=0.3, workers=2)
    assert _digest(again) == _digest(root)
    other = tmp_path / "other"
    synthesize(str(other), clips=N_CLIPS, seed=1, difficulty=0.3, workers=1)
    a, b = _digest(root), _digest(other)
    assert a.keys() != b.keys() or all(a[k] != b[k] for k in a)


def test_summary_describes_the_run(corpus: tuple[Path, SynthSummary]) -> None:
    root, summary = corpus
    text = summary.describe()
    assert str(root) in text and "clips/s" in text
    assert summary.voice in text and ("espeak-ng" in summary.voice or "numpy" in summary.voice)
    assert summary.clips_per_s > 0 and summary.total_bytes > 0
    for e in EMOTIONS:
        assert e[:8] in text


def test_meld_time_format() -> None:
    assert meld_time(0) == "00:00:00,000"
    assert meld_time(3725.5) == "01:02:05,500"
    assert meld_time(59.9996) == "00:01:00,000"


def test_numpy_voice_fallback(tmp_path: Path) -> None:
    s1 = synthesize(str(tmp_path / "a"), clips=3, seed=4, workers=1, voice="numpy")
    s2 = synthesize(str(tmp_path / "b"), clips=3, seed=4, workers=1, voice="numpy")
    assert "numpy" in s1.voice and "numpy" in s1.describe()
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    clip = next((tmp_path / "a").rglob("*.mp4"))
    with av.open(str(clip)) as c:
        audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)[0]
    assert np.sqrt(np.mean(audio**2)) > 0.01
    assert s2.clips == 3


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        synthesize(str(tmp_path), clips=0)
    with pytest.raises(ValueError):
        synthesize(str(tmp_path), clips=3, difficulty=1.5)
    with pytest.raises(ValueError):
        synthesize(str(tmp_path), clips=3, voice="festival")


@pytest.mark.s3
@pytest.mark.slow
def test_s3_output_matches_local(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    try:
        server = request.getfixturevalue("s3_server")
    except pytest.FixtureLookupError:
        pytest.skip("no s3_server fixture")
    from conclugen import storage

    uri = server.bucket_uri("synth") + "/corpus"
    synthesize(uri, clips=3, seed=7, workers=1)
    synthesize(str(tmp_path), clips=3, seed=7, workers=1)
    local = _digest(tmp_path)
    remote = {
        u[len(uri) + 1 :]: hashlib.sha256(storage.read_bytes(u)).hexdigest() for u in storage.list_files(uri)
    }
    assert remote == local


def test_meld_loader_marks_the_corpus_synthetic(corpus: tuple[Path, SynthSummary], tmp_path: Path) -> None:
    from conclugen.config import load_config
    from conclugen.data.corpora import load_manifest

    root, summary = corpus
    manifest = load_manifest("meld", str(root), load_config())
    assert manifest.corpus == "synthetic" and {r["corpus"] for r in manifest.rows} == {"synthetic"}
    assert len(manifest.rows) == sum(summary.clips_per_split.values()) and not manifest.problems
    # Without the marker the same layout reads as MELD (whose reference class weights then apply).
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "conclugen-synthetic.json").unlink()
    assert load_manifest("meld", str(copy), load_config()).corpus == "meld"
