"""Corpus loaders on tiny fixtures in each real layout (MELD, CAER, CMU-MOSEI, plain folders),
from a local directory and from a real SeaweedFS S3 bucket."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pytest

from conclugen import storage
from conclugen.config import ExtractConfig, load_config
from conclugen.data.corpora import MANIFEST_SCHEMA, CorpusLayoutError, Manifest, load_manifest
from conclugen.data.corpora.manifest import canonical_emotion, decode_text, fix_mojibake
from conclugen.data.corpora.meld import MELD_COLUMNS, parse_meld_time
from conclugen.data.media import decode_clip, encode_clip

CFG = load_config()
DECODE = ExtractConfig(face_detector="none", face_size=32, window_size=16)


def tiny_clip(seconds: float = 1.0, fps: int = 8) -> bytes:
    n = int(round(seconds * fps))
    frames = np.full((n, 32, 32, 3), 90, np.uint8)
    t = np.arange(int(seconds * 16000)) / 16000
    return encode_clip(frames, fps, (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))


def put(root: Path, rel: str, data: bytes) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def by_id(m: Manifest) -> dict[str, dict]:
    return {r["clip_id"]: r for r in m.rows}


def problem_ids(m: Manifest) -> dict[str, str]:
    return {p["clip_id"]: p["error"] for p in m.problems}


# ----------------------------------------------------------------------------------- MELD


def meld_csv(rows: list[tuple], encoding: str = "utf-8") -> bytes:
    import csv
    import io

    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(MELD_COLUMNS)
    for i, (utt, emo, dia, uid) in enumerate(rows):
        w.writerow([i + 1, utt, "Joey", emo, "neutral", dia, uid, 1, 2, "00:14:38,127", "00:14:40,940"])
    return buf.getvalue().encode(encoding)


def make_meld(root: Path) -> None:
    clip = tiny_clip()
    # Real MELD text: UTF-8 that was once read as Latin-1 ("Iâ\x80\x99m" for "I’m").
    mojibake = "I’m fine, Chandler".encode().decode("latin-1")
    put(
        root,
        "train_sent_emo.csv",
        meld_csv(
            [
                (mojibake, "joy", 0, 0),
                ("Oh, my God!", "Surprise", 0, 1),
                ("Where is it?", "neutral", 1, 0),  # listed, file missing
                ("Hmm.", "confused", 1, 1),  # unknown emotion
                ("Oh, my God!", "surprise", 0, 1),  # the same utterance listed twice
            ]
        ),
    )
    # Windows-1252 bytes (not valid UTF-8): read through the fallback.
    put(root, "dev_sent_emo.csv", meld_csv([("Café, naïve — “quoted”", "sadness", 3, 2)], encoding="cp1252"))
    put(root, "test_sent_emo.csv", b"\xef\xbb\xbf" + meld_csv([("", "anger", 7, 0)]))  # BOM, empty text
    for rel in (
        "train/train_splits/dia0_utt0.mp4",
        "train/train_splits/dia0_utt1.mp4",
        "train/train_splits/dia1_utt1.mp4",
        "dev/dev_splits_complete/dia3_utt2.mp4",
        "test/output_repeated_splits_test/dia7_utt0.mp4",
    ):
        put(root, rel, clip)
    put(root, "train/train_splits/._dia0_utt0.mp4", b"\x00\x05\x16\x07")  # macOS junk


def check_meld(m: Manifest) -> None:
    rows = by_id(m)
    assert set(rows) == {
        "meld/train/dia0_utt0",
        "meld/train/dia0_utt1",
        "meld/val/dia3_utt2",
        "meld/test/dia7_utt0",
    }
    assert rows["meld/train/dia0_utt0"]["transcript"] == "I’m fine, Chandler"
    assert rows["meld/train/dia0_utt0"]["labels"] == ["joy"]
    assert rows["meld/train/dia0_utt1"]["labels"] == ["surprise"]
    assert rows["meld/val/dia3_utt2"] == {
        **rows["meld/val/dia3_utt2"],
        "split": "val",
        "labels": ["sadness"],
        "transcript": "Café, naïve — “quoted”",
    }
    assert rows["meld/test/dia7_utt0"]["transcript"] is None  # empty utterance → ASR
    assert all(r["start_s"] is None and r["end_s"] is None and r["corpus"] == "meld" for r in rows.values())
    assert all(r["video_uri"].endswith(r["clip_id"].split("/")[-1] + ".mp4") for r in rows.values())
    probs = problem_ids(m)
    assert probs["meld/train/dia1_utt0"].startswith("MissingClipError: ")
    assert (
        probs["meld/train/dia1_utt1"].startswith("UnknownLabelError: ")
        and "confused" in probs["meld/train/dia1_utt1"]
    )
    assert probs["meld/train/dia0_utt1"].startswith("DuplicateClipError: ")
    assert all(p["stage"] == "manifest" for p in m.problems)
    assert m.label_space == ["neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust"]
    assert not m.multilabel


def test_meld_layout(tmp_path: Path) -> None:
    make_meld(tmp_path / "MELD.Raw")
    m = load_manifest("meld", str(tmp_path / "MELD.Raw"), CFG)
    check_meld(m)
    t = m.table()
    assert t.schema.equals(MANIFEST_SCHEMA) and t.num_rows == 4
    # A row's clip decodes from bytes read through the storage layer.
    r = by_id(m)["meld/train/dia0_utt0"]
    d = decode_clip(storage.read_bytes(r["video_uri"]), DECODE)
    assert d.face_frames.shape[0] == 1 and d.n_window_frames == 16


def test_meld_flat_split_folders_and_relative_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "m"
    put(root, "train_sent_emo.csv", meld_csv([("Hi", "fear", 5, 0)]))
    put(root, "train_splits/dia5_utt0.mp4", tiny_clip())  # as the inner tarball unpacks
    monkeypatch.chdir(tmp_path)
    m = load_manifest("MELD", "m/", CFG)
    assert [r["clip_id"] for r in m.rows] == ["meld/train/dia5_utt0"] and not m.problems


def test_meld_bad_header_and_no_csv(tmp_path: Path) -> None:
    put(tmp_path, "train_sent_emo.csv", b"Sr No.,Utterance,Speaker,Emotion\n1,hi,Joey,joy\n")
    with pytest.raises(CorpusLayoutError, match="Dialogue_ID"):
        load_manifest("meld", str(tmp_path), CFG)
    with pytest.raises(CorpusLayoutError, match="no MELD CSV"):
        load_manifest("meld", str(tmp_path / "nothing"), CFG)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:14:38,127", 878.127), ("1:02:03,5", 3723.5), ("00:00:07.040", 7.04), ("00:00:09", 9.0)],
)
def test_parse_meld_time(text: str, seconds: float) -> None:
    assert parse_meld_time(text) == pytest.approx(seconds)


def test_parse_meld_time_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_meld_time("14:38")


def test_text_helpers() -> None:
    assert decode_text("naïve".encode()) == "naïve"
    assert decode_text("naïve".encode("cp1252")) == "naïve"
    assert decode_text(b"\x81\x8d") == "\x81\x8d"  # undefined in cp1252: Latin-1 never fails
    assert fix_mojibake("donâ\x80\x99t") == "don’t"
    assert fix_mojibake("plain ascii") == "plain ascii"
    assert fix_mojibake("déjà vu") == "déjà vu"  # real Latin-1 text that is not mojibake stays


# ----------------------------------------------------------------------------------- CAER


def make_caer(root: Path) -> None:
    clip = tiny_clip()
    for rel in (
        "train/Anger/0001.avi",
        "train/happy/0002.avi",
        "train/Disgust/0003.avi",
        "validation/Sad/0001.avi",
        "validation/SURPRISE/0003.avi",
        "validation/Fear/0009.avi",
        "test/Angry/0001.avi",
        "test/Joy/0004.avi",
        "test/Sadness/0005.avi",
        "test/Neutral/0006.avi",
        "train/Bored/0001.avi",
    ):
        put(root, rel, clip)
    put(root, "README.txt", b"CAER")
    put(root, "stray.avi", clip)  # not split/class/clip


def test_caer_layout(tmp_path: Path) -> None:
    make_caer(tmp_path)
    m = load_manifest("caer", str(tmp_path), CFG)
    rows = by_id(m)
    expect = {
        "caer/train/Anger/0001": ("train", "anger"),
        "caer/train/happy/0002": ("train", "joy"),
        "caer/train/Disgust/0003": ("train", "disgust"),
        "caer/validation/Sad/0001": ("val", "sadness"),
        "caer/validation/SURPRISE/0003": ("val", "surprise"),
        "caer/validation/Fear/0009": ("val", "fear"),
        "caer/test/Angry/0001": ("test", "anger"),
        "caer/test/Joy/0004": ("test", "joy"),
        "caer/test/Sadness/0005": ("test", "sadness"),
        "caer/test/Neutral/0006": ("test", "neutral"),
    }
    assert {k: (r["split"], r["labels"][0]) for k, r in rows.items()} == expect
    assert all(r["transcript"] is None and r["intensities"] is None for r in rows.values())
    assert m.label_space == ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    assert list(problem_ids(m)) == ["caer/train/Bored/0001"]
    assert problem_ids(m)["caer/train/Bored/0001"].startswith("UnknownLabelError")
    assert any("stray.avi" in n for n in m.notes)
    assert m.table().num_rows == 10


@pytest.mark.parametrize(
    ("name", "canon"),
    [
        ("Anger", "anger"),
        ("ANGRY", "anger"),
        ("Happy", "joy"),
        ("joy", "joy"),
        ("Sad", "sadness"),
        ("Sadness", "sadness"),
        ("Surprise", "surprise"),
        ("disgust", "disgust"),
    ],
)
def test_caer_synonyms(name: str, canon: str) -> None:
    from conclugen.data.corpora import CAER_EMOTIONS

    assert canonical_emotion(name, CAER_EMOTIONS) == canon


# ----------------------------------------------------------------------------------- MOSEI

# [sentiment, happy, sad, anger, surprise, disgust, fear] per segment, as in the SDK
MOSEI_LABELS = {
    "vidA": (
        [[1.0, 2.0, 0.0, 0.0, 0.33, 0.0, 0.0], [-1.0, 0.0, 1.5, 0.66, 0.0, 0.0, 0.33]],
        [[2.0, 3.5], [0.25, 1.75]],
    ),  # stored out of order: segment 0 is the one at 0.25 s
    "vidB": ([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], [[0.5, 2.5]]),
    "vidC": ([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]], [[0.0, 1.0]]),  # in no fold
    "vidD": ([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]], [[0.0, 1.0]]),  # no video file
}


def make_mosei(root: Path, labels: str = "csd") -> None:
    clip = tiny_clip(4.0)
    for vid in ("vidA", "vidB", "vidC"):
        put(root, f"Raw/Videos/Full/Combined/{vid}.mp4", clip)
    if labels == "csd":
        root.mkdir(parents=True, exist_ok=True)
        with h5py.File(root / "CMU_MOSEI_Labels.csd", "w") as f:
            data = f.create_group("All Labels").create_group("data")
            f["All Labels"].create_group("metadata")
            for vid, (feats, ivals) in MOSEI_LABELS.items():
                g = data.create_group(vid)
                g["features"] = np.asarray(feats, np.float32)
                g["intervals"] = np.asarray(ivals, np.float64)
    else:
        lines = ["video_id,segment,start,end,sentiment,happy,sad,anger,surprise,disgust,fear"]
        for vid, (feats, ivals) in MOSEI_LABELS.items():
            order = sorted(range(len(ivals)), key=lambda i: ivals[i][0])
            for k, i in enumerate(order):
                lines.append(",".join([vid, str(k), *map(str, ivals[i]), *map(str, feats[i])]))
        put(root, "mosei_labels.csv", "\n".join(lines).encode())
    put(
        root,
        "Raw/Transcript/Segmented/Combined/vidA.txt",
        "vidA___0___0.25___1.75___I am so sad — really\nvidA___1___2.0___3.5___great news\n".encode(),
    )
    put(root, "Raw/Transcript/Segmented/Combined/vidB.txt", b"vidB___0___0.6___2.4___roughly aligned\n")
    put(root, "folds.json", json.dumps({"train": ["vidA"], "valid": ["vidB"], "test": ["vidD"]}).encode())


def check_mosei(m: Manifest) -> None:
    rows = by_id(m)
    assert set(rows) == {"mosei/vidA[0]", "mosei/vidA[1]", "mosei/vidB[0]"}
    a0, a1, b0 = rows["mosei/vidA[0]"], rows["mosei/vidA[1]"], rows["mosei/vidB[0]"]
    assert m.label_space == ["happiness", "sadness", "anger", "fear", "disgust", "surprise"] and m.multilabel
    # Intensities in label-space order, from the SDK's happy, sad, anger, surprise, disgust, fear.
    np.testing.assert_allclose(a0["intensities"], [0.0, 1.5, 0.66, 0.33, 0.0, 0.0], rtol=1e-6)
    assert a0["labels"] == ["sadness", "anger", "fear"]
    np.testing.assert_allclose(a1["intensities"], [2.0, 0.0, 0.0, 0.0, 0.0, 0.33], rtol=1e-6)
    assert a1["labels"] == ["happiness", "surprise"]
    assert b0["labels"] == [] and b0["split"] == "val"
    assert (a0["start_s"], a0["end_s"], a0["split"]) == (0.25, 1.75, "train")
    assert (a1["start_s"], a1["end_s"]) == (2.0, 3.5)
    assert a0["transcript"] == "I am so sad — really" and a1["transcript"] == "great news"
    assert b0["transcript"] == "roughly aligned"  # matched by overlap (IoU 0.9)
    probs = problem_ids(m)
    assert probs["mosei/vidC[0]"].startswith("NotInFoldsError")
    assert probs["mosei/vidD[0]"].startswith("MissingClipError")


@pytest.mark.parametrize("labels", ["csd", "csv"])
def test_mosei_layout(tmp_path: Path, labels: str) -> None:
    make_mosei(tmp_path, labels)
    m = load_manifest("mosei", str(tmp_path), CFG)
    check_mosei(m)
    t = m.table()
    assert t.schema.equals(MANIFEST_SCHEMA) and t.column("intensities").type == pa.list_(pa.float32())
    # The segment decodes to its own span.
    r = by_id(m)["mosei/vidA[1]"]
    d = decode_clip(storage.read_bytes(r["video_uri"]), DECODE, start_s=r["start_s"], end_s=r["end_s"])
    assert d.duration_s == pytest.approx(1.5) and d.face_frames.shape[0] == 2 and d.n_window_frames == 24
    assert abs(d.audio.shape[0] - 24000) <= 1024


def test_mosei_folds_file_from_config_and_missing(tmp_path: Path) -> None:
    make_mosei(tmp_path / "c")
    (tmp_path / "c" / "folds.json").rename(tmp_path / "standard.json")
    with pytest.raises(CorpusLayoutError, match="folds"):
        load_manifest("mosei", str(tmp_path / "c"), CFG)
    (tmp_path / "standard.json").write_text(
        json.dumps(
            {
                "standard_train_fold": ["vidA", "vidC"],
                "standard_valid_fold": [],
                "standard_test_fold": ["vidB"],
            }
        )
    )
    cfg = load_config(overrides=[f"corpus.folds_file={tmp_path / 'standard.json'}"])
    m = load_manifest("mosei", str(tmp_path / "c"), cfg)
    assert {r["clip_id"]: r["split"] for r in m.rows} == {
        "mosei/vidA[0]": "train",
        "mosei/vidA[1]": "train",
        "mosei/vidB[0]": "test",
        "mosei/vidC[0]": "train",
    }


def test_mosei_negative_start_is_clamped_and_recorded(tmp_path: Path) -> None:
    make_mosei(tmp_path, "csv")
    with open(tmp_path / "mosei_labels.csv", "a") as f:
        f.write("\nvidB,1,-0.4875,1.0,0.0,0.5,0.0,0.0,0.0,0.0,0.0")  # as in the released labels
    m = load_manifest("mosei", str(tmp_path), CFG)
    r = by_id(m)["mosei/vidB[1]"]
    assert (r["start_s"], r["end_s"]) == (0.0, 1.0) and r["clamped_from"] == [-0.4875, 1.0]
    assert r["labels"] == ["happiness"] and r["split"] == "val"
    assert all(x["clamped_from"] is None for cid, x in by_id(m).items() if cid != "mosei/vidB[1]")
    assert any("1 segments start before their video" in n for n in m.notes)
    t = m.table()
    assert t.schema.equals(MANIFEST_SCHEMA) and t.column("clamped_from").to_pylist().count(None) == 3
    d = decode_clip(storage.read_bytes(r["video_uri"]), DECODE, start_s=r["start_s"], end_s=r["end_s"])
    assert d.duration_s == pytest.approx(1.0)


def test_mosei_interval_empty_after_clamping_is_a_problem(tmp_path: Path) -> None:
    make_mosei(tmp_path, "csv")
    with open(tmp_path / "mosei_labels.csv", "a") as f:
        f.write("\nvidB,1,-1.0,-0.2,0.0,0.5,0.0,0.0,0.0,0.0,0.0")
        f.write("\nvidB,2,-0.5,0.0,0.0,0.5,0.0,0.0,0.0,0.0,0.0")  # ends where the video starts
    m = load_manifest("mosei", str(tmp_path), CFG)
    probs = problem_ids(m)
    for seg in ("vidB[1]", "vidB[2]"):
        assert f"mosei/{seg}" not in by_id(m)
        assert probs[f"mosei/{seg}"].startswith(f"BadSegmentError: segment {seg}: "), probs[f"mosei/{seg}"]
        assert "empty after clamping" in probs[f"mosei/{seg}"]
    assert not any("start before their video" in n for n in m.notes)


# ----------------------------------------------------------------------------------- folder


def test_folder_layout_with_non_ascii_names(tmp_path: Path) -> None:
    clip = tiny_clip()
    for rel in ("id001/abc/00001.mp4", "id001/abc/00001.avi", "id002/vidéo ü/clip 1.mkv", "top.MOV"):
        put(tmp_path, rel, clip)
    put(tmp_path, "id001/abc/00001.txt", b"Identity: id001")
    m = load_manifest("folder", str(tmp_path), CFG)
    assert sorted(r["clip_id"] for r in m.rows) == [
        "id001/abc/00001.avi",
        "id001/abc/00001.mp4",
        "id002/vidéo ü/clip 1.mkv",
        "top.MOV",
    ]
    assert all(r["split"] == "unlabeled" and r["labels"] == [] and r["transcript"] is None for r in m.rows)
    assert m.label_space == [] and not m.problems
    r = by_id(m)["id002/vidéo ü/clip 1.mkv"]
    assert decode_clip(storage.read_bytes(r["video_uri"]), DECODE).n_window_frames == 16
    assert m.table().num_rows == 4


def test_unknown_corpus_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown corpus"):
        load_manifest("voxceleb", str(tmp_path), CFG)


# ----------------------------------------------------------------------------------- S3


@pytest.mark.s3
def test_loaders_from_s3(tmp_path: Path, s3_server: object) -> None:
    bucket = s3_server.bucket_uri("corpora")  # type: ignore[attr-defined]
    make_meld(tmp_path / "meld")
    make_mosei(tmp_path / "mosei")
    make_caer(tmp_path / "caer")
    for name in ("meld", "mosei", "caer"):
        storage.upload_dir(tmp_path / name, f"{bucket}/{name}")
    m = load_manifest("meld", f"{bucket}/meld", CFG)
    check_meld(m)
    assert all(r["video_uri"].startswith("s3://corpora/meld/") for r in m.rows)
    check_mosei(load_manifest("mosei", f"{bucket}/mosei/", CFG))
    assert len(load_manifest("caer", f"{bucket}/caer", CFG)) == 10
    r = by_id(m)["meld/val/dia3_utt2"]
    assert decode_clip(storage.read_bytes(r["video_uri"]), DECODE).n_window_frames == 16
