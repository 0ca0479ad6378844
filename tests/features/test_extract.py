"""The Ray Data extraction pipeline end to end: a synthetic MELD corpus from a local directory and
from SeaweedFS S3, the idempotent re-run, and the bad-input suite (every manifest row ends in
exactly one of features / errors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conclugen import storage
from conclugen.config import Config, load_config
from conclugen.data.corpora.manifest import Manifest, row
from conclugen.features.decode_stage import read_and_decode
from conclugen.features.extract import ExtractError, run_extract
from conclugen.features.rows import unpack
from conclugen.features.store import aug_column, load_arrays, read_meta, read_table, shard_name
from conclugen.features.versions import augmented_views

pytestmark = [pytest.mark.ray]

N_CLIPS = 8


def _cfg(*sets: str) -> Config:
    return load_config(None, ["extract.decode_batch_size=2", "extract.backbone_batch_size=4", "extract.decode_tasks=2", *sets])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conclugen.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(str(root), clips=N_CLIPS, seed=3, workers=1)
    return root


def _ids(uri: str, sub: str) -> list[str]:
    t = read_table(storage.join(uri, sub), columns=["clip_id"])
    return t.column("clip_id").to_pylist() if t.num_rows else []


@pytest.mark.slow
def test_pipeline_local_then_idempotent_resume(ray_cluster: None, corpus: Path, tmp_path: Path) -> None:
    from conclugen.data.corpora import load_manifest
    from conclugen.features.backbones import load_backbone

    out = str(tmp_path / "features")
    cfg = _cfg()
    said: list[str] = []
    s = run_extract(str(corpus), "meld", out, cfg, shard_rows=3, progress=said.append)
    assert s.accounted and s.manifest_clips == N_CLIPS and s.processed == N_CLIPS
    assert s.features + s.errors == N_CLIPS and s.features == N_CLIPS  # synthetic clips are all good
    # written by the workers: shards of at most shard_rows rows, named by their clip_ids
    for f in storage.list_files(storage.join(out, "features"), suffixes=(".parquet",)):
        ids = pq.read_table(f).column("clip_id").to_pylist()
        assert 1 <= len(ids) <= 3 and f.endswith(shard_name(ids))
    # progress: one completion per finished batch, counting up to every clip; the final line said
    assert [n for _, n in s.completions] == sorted(n for _, n in s.completions)
    assert s.completions[-1][1] == N_CLIPS and s.first_output_rows == s.completions[0][1] > 0
    assert f"extract done: {N_CLIPS}/{N_CLIPS} clips" in "\n".join(said)
    assert not storage.list_files(storage.join(out, "manifest"))  # the run's manifest file is cleared
    feats = _ids(out, "features")
    assert sorted(feats) == sorted({r["clip_id"] for r in load_manifest("meld", str(corpus), cfg).rows})

    meta = read_meta(out)
    assert meta.corpus == load_manifest("meld", str(corpus), cfg).corpus  # the loader's name ("synthetic")
    assert meta.dims == {"video": 128 + 128, "audio": 96, "text": 384}
    assert meta.backbones["video3d"].trained is True and meta.backbones["text"].trained is True
    assert meta.backbones["video3d"].details["video_training"].startswith("none")  # inflated 2D weights
    assert meta.augmentations == 0 and meta.augmentation == {}
    assert not [c for c in read_table(storage.join(out, "features")).column_names if c.endswith("_aug")]
    assert "versions per clip     1 plain + 0 augmented" in s.describe()
    arrays = load_arrays(out)
    for m in ("video", "audio", "text"):
        assert arrays[m].shape == (N_CLIPS, meta.dims[m]) and np.isfinite(arrays[m]).all()
    table = read_table(storage.join(out, "features"))
    assert min(table.column("n_faces").to_pylist()) >= 0 and max(table.column("n_faces").to_pylist()) > 0
    assert all(g == [] for g in table.column("gaps").to_pylist())  # speech + transcript everywhere

    # one clip recomputed here, sequentially, equals what the pipeline wrote
    man = load_manifest("meld", str(corpus), cfg)
    r0 = man.rows[0]
    d = read_and_decode(r0, cfg, cfg.storage)
    k = arrays["clip_id"].index(r0["clip_id"])
    image = load_backbone("image", "offline:image").embed([unpack(d["faces"])])[0]
    v3d = load_backbone("video3d", "offline:video3d").embed([unpack(d["windows"])])[0]
    audio = load_backbone("audio", "offline:audio").embed([unpack(d["audio"])])[0]
    text = load_backbone("text", "offline:minilm").embed([r0["transcript"]])[0]
    np.testing.assert_allclose(arrays["video"][k], np.concatenate([image, v3d]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(arrays["audio"][k], audio, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(arrays["text"][k], text, rtol=1e-4, atol=1e-4)

    # re-run: nothing to do
    s2 = run_extract(str(corpus), "meld", out, cfg, shard_rows=3, progress=None)
    assert s2.processed == 0 and s2.skipped == N_CLIPS and s2.accounted

    # lose one whole shard and two rows of another: exactly those clips are redone
    lost = _lose_rows(out)
    s3 = run_extract(str(corpus), "meld", out, cfg, shard_rows=3, progress=None)
    assert s3.processed == len(lost) and s3.skipped == N_CLIPS - len(lost) and s3.accounted
    assert sorted(_ids(out, "features")) == sorted(feats)
    again = load_arrays(out)
    np.testing.assert_allclose(again["video"], arrays["video"], rtol=1e-4, atol=1e-4)  # deterministic

    # a different backbone into the same store is refused, not mixed in
    with pytest.raises(ExtractError, match="already holds"):
        run_extract(str(corpus), "meld", out, _cfg("extract.backbones.image=offline:seeded-image"), progress=None)


def _lose_rows(out: str) -> list[str]:
    """Delete one whole features shard and two rows of another; the clip_ids lost."""
    shards = storage.list_files(storage.join(out, "features"), suffixes=(".parquet",))
    assert len(shards) >= 3
    lost = pq.read_table(shards[0]).column("clip_id").to_pylist()
    Path(shards[0]).unlink()
    t1 = pq.read_table(shards[1])
    lost += t1.column("clip_id").to_pylist()[:2]
    pq.write_table(t1.slice(2), shards[1])
    return lost


@pytest.mark.slow
def test_pipeline_with_augmented_versions_and_resume(ray_cluster: None, corpus: Path, tmp_path: Path) -> None:
    from conclugen.data.corpora import load_manifest
    from conclugen.data.media.augment import augment_frames, rng_for, swap_words
    from conclugen.features.backbones import load_backbone

    n = 2
    out = str(tmp_path / "features-aug")
    cfg = _cfg(f"extract.augmentations={n}")
    s = run_extract(str(corpus), "meld", out, cfg, shard_rows=3, progress=None)
    assert s.accounted and s.features == N_CLIPS and s.augmentations == n
    assert f"versions per clip     1 plain + {n} augmented" in s.describe()
    meta = read_meta(out)
    assert meta.augmentations == n and set(meta.augmentation) == {"video", "audio", "text"}
    assert "frequency masking" in meta.augmentation["audio"]  # offline:audio masks its own mel spectrogram
    arrays = load_arrays(out)
    table = read_table(storage.join(out, "features")).sort_by("clip_id")
    views = {m: augmented_views(table.column(aug_column(m)).to_pylist(), n, meta.dims[m]) for m in meta.dims}
    for m, dim in meta.dims.items():
        assert all(len(x) == n * dim for x in table.column(aug_column(m)).to_pylist())
        assert np.isfinite(views[m]).all()
    # video: every version of every clip differs from the plain one
    assert (np.abs(views["video"] - arrays["video"][:, None]).max(axis=2) > 1e-4).all()
    assert (np.abs(views["audio"] - arrays["audio"][:, None]).max(axis=2) > 1e-6).mean() > 0.8
    man = {r["clip_id"]: r for r in load_manifest("meld", str(corpus), cfg).rows}
    for k, cid in enumerate(arrays["clip_id"]):  # text: plain exactly where the swap left the transcript
        for v in range(1, n + 1):
            same = swap_words(man[cid]["transcript"], rng_for(cid, v, "text")) == man[cid]["transcript"]
            assert np.array_equal(views["text"][k, v - 1], arrays["text"][k]) == same

    # one clip's version 2 recomputed here, sequentially, from its decoded frames
    cid = arrays["clip_id"][0]
    d = read_and_decode(man[cid], cfg, cfg.storage)
    image = load_backbone("image", "offline:image").embed([augment_frames(unpack(d["faces"]), rng_for(cid, 2, "image"))])
    v3d = load_backbone("video3d", "offline:video3d").embed(
        [augment_frames(unpack(d["windows"]), rng_for(cid, 2, "video3d"))])
    np.testing.assert_allclose(views["video"][0, 1], np.concatenate([image[0], v3d[0]]), rtol=1e-4, atol=1e-4)

    # resume after losing rows: those clips redone, every clip exactly once, the same versions
    lost = _lose_rows(out)
    s2 = run_extract(str(corpus), "meld", out, cfg, shard_rows=3, progress=None)
    assert s2.processed == len(lost) and s2.accounted
    ids = _ids(out, "features")
    assert len(ids) == N_CLIPS and sorted(ids) == sorted(arrays["clip_id"])
    again = read_table(storage.join(out, "features")).sort_by("clip_id")
    for m, dim in meta.dims.items():
        np.testing.assert_allclose(augmented_views(again.column(aug_column(m)).to_pylist(), n, dim), views[m],
                                   rtol=1e-4, atol=1e-4)
    with pytest.raises(ExtractError, match="augmented versions"):  # another N into this store: refused
        run_extract(str(corpus), "meld", out, _cfg("extract.augmentations=1"), progress=None)


@pytest.mark.slow
@pytest.mark.s3
def test_pipeline_from_and_to_s3(ray_cluster: None, s3_server, corpus: Path) -> None:
    src = storage.join(s3_server.bucket_uri("corpus"), "meld")
    storage.upload_dir(corpus, src)
    out = storage.join(s3_server.bucket_uri("features"), "run1")
    cfg = _cfg("extract.backbones.text=offline:minilm")
    s = run_extract(src, "meld", out, cfg, shard_rows=4, progress=None)
    assert s.accounted and s.features == N_CLIPS and s.errors == 0
    arrays = load_arrays(out)
    assert arrays["video"].shape == (N_CLIPS, 256)
    assert all(u.startswith("s3://") for u in storage.list_files(storage.join(out, "features")))
    s2 = run_extract(src, "meld", out, cfg, shard_rows=4, progress=None)
    assert s2.processed == 0 and s2.accounted


def _bad_corpus(root: Path, good: bytes) -> Manifest:
    """One clip per kind of bad input; returns the manifest that lists them."""
    from conclugen.data.media import encode_clip

    rng = np.random.default_rng(0)
    t = np.arange(16000 * 3) / 16000
    tone = (0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    noise = lambda n, h=96, w=96: rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8)  # noqa: E731
    files: dict[str, bytes | None] = {
        "good": good,
        "zero_byte": b"",
        "truncated": good[: len(good) // 3],
        "not_a_video": b"this is a text file, not a video\n" * 20,
        "no_audio": encode_clip(noise(30), 15),
        "no_audio_no_text": encode_clip(noise(30), 15),
        "no_video": encode_clip(None, 15, tone),
        "no_face": encode_clip(noise(20), 10, tone[:16000 * 2]),
        "one_frame": encode_clip(noise(1), 25, tone[:800]),
        "long": encode_clip(noise(90), 15, tone.repeat(2)),  # 6 s, capped at 2 s
        "odd_fps": encode_clip(noise(21), 7, tone),
        "ntsc_fps": encode_clip(noise(60), 30000 / 1001, tone[: 16000 * 2]),
        "non_ascii_é_測試": good,
        "missing": None,
        "corrupt_middle": good[:2000] + bytes(rng.integers(0, 255, len(good) - 4000, dtype=np.uint8)) + good[-2000:],
    }
    rows = []
    for name, data in files.items():
        path = root / f"{name}.mp4"
        if data is not None:
            path.write_bytes(data)
        text = "Ça va? 日本語 — ok" if "non_ascii" in name else f"clip {name}"
        if name in ("no_face", "no_audio_no_text"):
            text = ""  # no transcript: ASR when there is audio, else the gap "text"
        rows.append(row(name, str(path), "train", "meld", ["joy"], transcript=text or None))
    # (an unreachable S3 is not a bad clip: it stops the run, see test_extract_faults.py)
    problems = [{"clip_id": "unknown_label", "video_uri": str(root / "good.mp4"), "stage": "manifest",
                 "error": "UnknownLabelError: unknown emotion 'bored'"}]
    return Manifest(rows=rows, problems=problems, label_space=["joy"], multilabel=False, corpus="meld")


@pytest.mark.slow
def test_bad_input_suite(ray_cluster: None, corpus: Path, tmp_path: Path) -> None:
    from tests.helpers.tiny_models import build_tiny_models

    asr = build_tiny_models(tmp_path / "models")["s2t"]  # a tiny Speech2Text for clips without text
    good = next(corpus.rglob("*.mp4")).read_bytes()
    (tmp_path / "clips").mkdir()
    manifest = _bad_corpus(tmp_path / "clips", good)
    out = str(tmp_path / "features")
    cfg = _cfg("corpus.max_clip_seconds=2", f"extract.backbones.asr=hf:{asr}")
    s = run_extract(str(tmp_path / "clips"), "meld", out, cfg, shard_rows=5, progress=None, manifest=manifest)
    every = {r["clip_id"] for r in manifest.rows} | {"unknown_label"}
    feats = read_table(storage.join(out, "features")).to_pylist()
    errs = read_table(storage.join(out, "errors")).to_pylist()
    f_ids, e_ids = {f["clip_id"] for f in feats}, {e["clip_id"] for e in errs}
    assert s.accounted and f_ids | e_ids == every and not f_ids & e_ids
    assert len(feats) + len(errs) == len(every)  # no duplicates either
    outcome = {f["clip_id"]: ("features", ",".join(f["gaps"])) for f in feats}
    outcome |= {e["clip_id"]: (e["stage"], e["error"]) for e in errs}
    for cid in sorted(outcome):  # the table for the report (pytest -s)
        print(f"{cid:18s} {outcome[cid][0]:14s} {outcome[cid][1][:90]}")
    by_id = {f["clip_id"]: f for f in feats}

    assert outcome["zero_byte"][0].startswith("decode") and "empty_file" in outcome["zero_byte"][1]
    assert outcome["not_a_video"][0].startswith("decode") and "not_a_video" in outcome["not_a_video"][1]
    assert outcome["no_video"][0].startswith("decode") and "no_video_stream" in outcome["no_video"][1]
    assert outcome["missing"][0] == "read" and outcome["missing"][1].startswith("StorageNotFoundError")
    assert outcome["unknown_label"][0] == "manifest"
    assert outcome["truncated"][0] != "features" or by_id["truncated"]["n_frames"] >= 1
    assert by_id["no_audio"]["gaps"] == ["audio"] and not any(by_id["no_audio"]["audio"])
    assert by_id["no_face"]["n_faces"] == 0 and by_id["no_face"]["gaps"] == []
    assert by_id["no_face"]["transcript_source"] == "asr" and any(by_id["no_face"]["text"])
    assert by_id["no_audio_no_text"]["gaps"] == ["audio", "text"]
    assert by_id["no_audio_no_text"]["transcript_source"] == "none" and not any(by_id["no_audio_no_text"]["text"])
    assert by_id["good"]["transcript_source"] == "manifest"
    assert by_id["one_frame"]["n_frames"] == 1 and by_id["one_frame"]["n_windows"] == 1
    assert by_id["long"]["truncated_to_s"] == pytest.approx(2.0) and by_id["long"]["n_frames"] == 2
    # 3 s at 7 fps and 2.002 s at 29.97 fps, both cut to the 2 s cap: 2 face frames, 32 window frames
    assert by_id["odd_fps"]["n_frames"] == 2 and by_id["odd_fps"]["n_windows"] == 2
    assert by_id["ntsc_fps"]["n_frames"] == 2 and by_id["ntsc_fps"]["n_windows"] == 2
    assert by_id["non_ascii_é_測試"]["gaps"] == [] and any(by_id["non_ascii_é_測試"]["text"])
    for f in feats:
        for m in ("video", "audio", "text"):
            assert np.isfinite(f[m]).all()
    # the summary groups errors by stage and reason
    assert any(k.startswith("read / StorageNotFoundError") for k in s.errors_by_reason)
    assert sum(s.errors_by_reason.values()) == len(errs)


def test_ray_data_defaults_make_a_lost_node_survivable() -> None:
    """The pipeline relies on Ray Data 2.60's defaults (extract.py's docstring): tasks retried
    on worker / node loss, actors restarted with their tasks retried. A Ray upgrade that changed
    them would make a lost node fatal, so this pins them."""
    from ray.data import DataContext
    from ray.data._internal.execution.operators.actor_pool_map_operator import ActorPoolMapOperator
    from ray.data._internal.remote_fn import cached_remote_fn

    args = ActorPoolMapOperator._apply_default_remote_args({}, DataContext.get_current())
    assert args["max_restarts"] == -1 and args["max_task_retries"] == -1
    assert cached_remote_fn(_ids)._default_options["max_retries"] == -1


def test_missing_corpus_layout_is_an_error_not_a_partial_run(tmp_path: Path) -> None:
    from conclugen.data.corpora import CorpusLayoutError

    with pytest.raises(CorpusLayoutError):
        run_extract(str(tmp_path / "nothing"), "meld", str(tmp_path / "out"), _cfg(), progress=None)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_extract(ray_cluster: None, corpus: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from conclugen.cli import app

    out = tmp_path / "cli-features"
    args = ["extract", str(corpus), "--corpus", "meld", "--out", str(out), "--set", "extract.decode_tasks=2",
            "--set", "extract.backbones.image=offline:seeded-image", "--set", "extract.backbone_stages=separate"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "all accounted for" in res.output and f"features written      {N_CLIPS}" in res.output
    assert read_meta(str(out)).backbones["image"].trained is False
    # shards cut by extract.shard_mb (128 MB of vectors): a small corpus is one file
    assert len(list((out / "features").glob("*.parquet"))) == 1
    bad = CliRunner().invoke(app, ["extract", str(tmp_path / "none"), "--corpus", "meld", "--out", str(out)])
    assert bad.exit_code == 1 and "error:" in bad.output


@pytest.mark.slow
def test_two_cli_extracts_into_one_output(ray_cluster: None, corpus: Path, tmp_path: Path) -> None:
    """Concurrent ``conclugen extract`` runs into one --out do not corrupt each other.

    Deterministic part: while another process holds the output (a live holder), extract stops with
    exit 1 naming it; once that holder is dead (SIGKILL, its lock left behind) the next extract
    takes the stale lock over and writes the store. Then two extracts started at once: whatever
    the timing (one refused, or the second finding the work done), the store holds every clip
    exactly once and no lock is left.
    """
    import os
    import signal
    import subprocess
    import sys

    import ray

    from conclugen.data.corpora import load_manifest
    from conclugen.locks import LOCK_FILE

    def extract(out: Path, n: int = 1) -> list[tuple[int, int, str, str]]:
        cmd = [str(Path(sys.executable).parent / "conclugen"), "extract", str(corpus), "--corpus", "meld",
               "--out", str(out), "--set", "extract.decode_tasks=2", "--set", "extract.decode_batch_size=2",
               "--set", "extract.backbone_batch_size=4"]
        # Join the session's cluster (two Ray start-ups at once on 2 cores time out); it is bound to
        # 127.0.0.1 and ensure_ray joins a loopback address in Ray's single-node mode.
        env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(n)]
        outs = [p.communicate(timeout=900) for p in procs]
        return [(p.pid, p.returncode, *o) for p, o in zip(procs, outs, strict=True)]

    def complete(out: Path) -> None:
        every = {r["clip_id"] for r in load_manifest("meld", str(corpus), load_config(None, [])).rows}
        feats, errs = _ids(str(out), "features"), _ids(str(out), "errors")
        assert sorted(feats + errs) == sorted(every)  # each clip exactly once, in one of the two
        assert not (out / LOCK_FILE).exists()  # released

    out = tmp_path / "features"
    holder = subprocess.Popen(  # another run holding --out until it is killed
        [sys.executable, "-c", "import sys, time; from conclugen.locks import output_lock\n"
         f"with output_lock({str(out)!r}, 'extract'):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    [(_, rc, _, err)] = extract(out)
    assert rc == 1
    assert f"error: {out} is in use by extract (pid {holder.pid} on host " in err, err
    assert f"remove {out / LOCK_FILE} if that process is gone" in err
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert (out / LOCK_FILE).exists()  # left behind by the dead holder
    [(_, rc, stdout, err)] = extract(out)
    assert rc == 0, err
    assert "all accounted for" in stdout and f"features written      {N_CLIPS}" in stdout
    complete(out)

    out2 = tmp_path / "features-at-once"
    res = extract(out2, n=2)
    codes = sorted(r[1] for r in res)
    assert codes in ([0, 0], [0, 1]), res
    if codes == [0, 1]:
        (win_pid, _, _, _), (_, _, _, lose_err) = sorted(res, key=lambda r: r[1])
        assert f"error: {out2} is in use by extract (pid {win_pid} on host " in lose_err, lose_err
    complete(out2)
