"""The step object: one run_epoch path for training and validation, the NaN check, resumable
state, cluster statistics (in-process, no Ray)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conclugen.config import load_config
from conclugen.model.losses import nt_xent
from conclugen.training.data import CLIP_KEY, second_view_key
from conclugen.training.errors import NonFiniteLossError, PretrainError
from conclugen.training.step import Stepper, cluster_stats, seed_all
from tests.helpers.configs import TINY

DIMS = {"video": 8, "audio": 6}


def tiny_cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*TINY, f"workdir={tmp_path / 'work'}", "model.modalities=[video, audio]", *extra])


def batches(n: int, rows: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{m: torch.rand(rows, d, generator=g) for m, d in DIMS.items()} for _ in range(n)]


def test_cluster_stats():
    s = cluster_stats(torch.tensor([5.0, 5.0, 0.0, 0.0], dtype=torch.float64))
    assert s["cluster_occupancy"] == 0.5
    assert s["cluster_entropy"] == pytest.approx(math.log(2) / math.log(4))
    assert cluster_stats(torch.zeros(4, dtype=torch.float64)) == {}


def test_train_and_validation_epochs(tmp_path):
    seed_all(0)
    st = Stepper(tiny_cfg(tmp_path), DIMS)
    data = batches(3)
    before = {k: v.clone() for k, v in st.model.state_dict().items()}
    lr0 = st.lr
    train = st.run_epoch(data, 0, train=True)
    assert list(train) == ["contrastive", "clustering", "reconstruction", "loss"]
    assert all(math.isfinite(v) for v in train.values())
    assert st.scheduler.last_epoch == 1 and st.lr != lr0  # one scheduler step per training epoch
    assert float(st.counts.sum()) == 3 * 16 and st.cluster_stats()["cluster_occupancy"] > 0
    assert any(not torch.equal(v, before[k]) for k, v in st.model.state_dict().items())

    after_train = {k: v.clone() for k, v in st.model.state_dict().items()}
    val = st.run_epoch(data, 0, train=False)
    assert list(val) == list(train) and all(math.isfinite(v) for v in val.values())
    assert not st.module.training and float(st.counts.sum()) == 3 * 16  # validation counts nothing
    for k, v in st.model.state_dict().items():
        assert torch.equal(v, after_train[k]), k
    assert st.scheduler.last_epoch == 1


def test_clustering_off_before_its_start_epoch(tmp_path):
    st = Stepper(tiny_cfg(tmp_path, "losses.kmeans_start_epoch=1"), DIMS)
    assert st.find_unused()
    assert list(st.run_epoch(batches(2), 0, train=True)) == ["contrastive", "reconstruction", "loss"]
    assert "clustering" in st.run_epoch(batches(2), 1, train=False)


def test_non_finite_loss_names_epoch_and_step_before_updating(tmp_path):
    st = Stepper(tiny_cfg(tmp_path), DIMS)
    data = batches(3)
    data[1]["video"][:, 0] = float("nan")
    first: list[int] = []
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1: .*nan") as e:
        st.run_epoch(data, 2, train=True, after_first_step=lambda: first.append(1))
    assert (e.value.epoch, e.value.step) == (2, 1) and first == [1]
    steps = {int(s["step"]) for s in st.optimizer.state.values()}
    assert steps == {1}  # the optimizer stepped for batch 0 only
    assert st.scheduler.last_epoch == 0


def test_state_dict_resumes_model_optimizer_and_schedule(tmp_path):
    cfg = tiny_cfg(tmp_path)
    seed_all(0)
    a = Stepper(cfg, DIMS)
    a.run_epoch(batches(2), 0, train=True)
    seed_all(1)
    b = Stepper(cfg, DIMS)
    b.load_state_dict(a.state_dict())
    assert b.lr == a.lr and b.scheduler.last_epoch == a.scheduler.last_epoch == 1
    for k, v in b.model.state_dict().items():
        assert torch.equal(v, a.model.state_dict()[k]), k
    assert set(a.state_dict()) == {"model", "optimizer", "scheduler", "kmeans"}  # k-means: resume-exact refits


SIMCLR = ["model.modalities=[video]", "losses.contrastive=0", "losses.clustering=0", "losses.reconstruction=0",
          "losses.simclr=1"]


def test_simclr_contrasts_the_second_video_version_through_the_shared_heads(tmp_path):
    seed_all(0)
    st = Stepper(tiny_cfg(tmp_path, *SIMCLR, "losses.simclr_temperature=0.2"), {"video": 8})
    assert st.names == ["simclr"] and st.second_views == ("video",) and st.find_unused()
    g = torch.Generator().manual_seed(1)
    feats = {"video": torch.rand(16, 8, generator=g), second_view_key("video"): torch.rand(16, 8, generator=g)}
    st.model.train()
    got = st.losses(feats, 0, train=True)["simclr"]
    # The reference's SimCLR model: each view through the representation head, then the shared
    # projection head (BatchNorm on that view's batch), then L2-normalised.
    with torch.no_grad():
        z = [st.model.projection(st.model.encoders["video"](feats[k])) for k in ("video", second_view_key("video"))]
    assert got.item() == pytest.approx(nt_xent(*z, temperature=0.2).item(), rel=1e-5)
    train = st.run_epoch([feats, feats], 0, train=True)
    assert list(train) == ["simclr", "loss"] and train["simclr"] == pytest.approx(train["loss"])  # one active loss
    # Validation reads the plain version only: both views are that vector.
    val = st.run_epoch([{"video": feats["video"]}], 0, train=False)
    assert list(val) == ["simclr", "loss"] and math.isfinite(val["loss"])
    with pytest.raises(PretrainError, match="extract.augmentations"):
        st.losses({"video": feats["video"]}, 0, train=True)


def test_simclr_is_one_more_active_loss_in_the_weighted_mean(tmp_path):
    seed_all(0)
    st = Stepper(tiny_cfg(tmp_path, "losses.simclr=0.5"), DIMS)
    # SimCLR uses the heads the other losses use: no parameter goes without a gradient.
    assert st.names == ["contrastive", "clustering", "reconstruction", "simclr"] and not st.find_unused()
    feats = {**batches(1)[0], second_view_key("video"): torch.rand(16, DIMS["video"])}
    losses = st.losses(feats, 0, train=True)
    want = (losses["contrastive"] + losses["clustering"] + losses["reconstruction"] + 0.5 * losses["simclr"]) / 4
    assert st.total(losses).item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(PretrainError, match="'video' in model.modalities"):
        Stepper(tiny_cfg(tmp_path, "model.modalities=[audio]", *SIMCLR[1:]), {"audio": 6})


class _Recorder(torch.nn.Module):
    """The model's forward, recording each output (what DDP would search for used parameters)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.outputs = model, []

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        self.outputs.append(out)
        return out


@pytest.mark.parametrize(("extra", "want"), [
    ([], {"projections", "cluster_logits", "reconstructions"}),
    (["losses.contrastive=0", "losses.clustering=0"], {"reconstructions"}),
    (["losses.reconstruction=0", "losses.kmeans_start_epoch=1"], {"projections"}),
])
def test_the_forward_returns_only_what_the_losses_use(tmp_path, extra, want):
    # Under DDP an output that feeds no loss leaves its head's gradient missing (the run fails).
    st = Stepper(tiny_cfg(tmp_path, *extra), DIMS)
    st.wrap(_Recorder)
    st.run_epoch(batches(1), 0, train=True)
    out = st.module.outputs[-1]
    got = {h for h in ("projections", "cluster_logits", "reconstructions") if getattr(out, h)}
    assert got == want and set(out.representations) == set(DIMS)


def test_reconstruction_targets_the_standardised_input(tmp_path):
    """With input statistics the decoders reconstruct (x − mean) / std, the input the heads read."""
    seed_all(0)
    g = torch.Generator().manual_seed(3)
    stats = {m: (torch.randn(d, generator=g) * 5, torch.rand(d, generator=g) * 4 + 1) for m, d in DIMS.items()}
    st = Stepper(tiny_cfg(tmp_path, "losses.contrastive=0", "losses.clustering=0"), DIMS, input_stats=stats)
    st.model.eval()
    x = batches(1)[0]
    with torch.no_grad():
        got = st.losses(x, 0, train=False)["reconstruction"]
        want = 0.0
        for m in DIMS:
            z = (x[m] - stats[m][0]) / stats[m][1]
            rec = st.model.decoders[m](st.model.represent(x)[m])
            want += float(((rec - z) ** 2).mean())
    assert float(got) == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------------------- memory bank

BANK = ["losses.kmeans_schedule=memory_bank", "losses.kmeans_start_epoch=1"]


def keyed(data: list[dict[str, torch.Tensor]], first_key: int = 0) -> list[dict[str, torch.Tensor]]:
    """The batches with consecutive clip keys from ``first_key`` (as WorkerBatches(keys=True))."""
    out, k = [], first_key
    for b in data:
        n = next(iter(b.values())).shape[0]
        out.append({**b, CLIP_KEY: torch.arange(k, k + n)})
        k += n
    return out


def _np_clustering_ce(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray, margin: float) -> float:
    """Mean over rows of CE(S, label) with S = x Cᵀ and S[label] −= margin (docs/method.md, Losses)."""
    s = x @ centroids.T
    s[np.arange(len(x)), labels] -= margin
    m = s.max(1, keepdims=True)
    logp = s - m - np.log(np.exp(s - m).sum(1, keepdims=True))
    return float(-logp[np.arange(len(x)), labels].mean())


def test_memory_bank_fill_is_side_effect_free_and_needed_once(tmp_path):
    seed_all(0)
    st = Stepper(tiny_cfg(tmp_path, *BANK), DIMS)
    data = keyed(batches(3))
    assert not st.needs_bank_fill(0)  # no clustering before kmeans_start_epoch
    st.run_epoch(data, 0, train=True)
    assert len(st.bank) == 0 and st.needs_bank_fill(1)
    before = {k: v.clone() for k, v in st.model.state_dict().items()}
    st.fill_bank(data)
    for k, v in st.model.state_dict().items():  # BatchNorm running statistics restored
        assert torch.equal(v, before[k]), k
    keys, vecs = st.bank.shard()
    assert keys.tolist() == list(range(48)) and vecs.shape == (48, st.cfg.model.k)
    assert not st.needs_bank_fill(1)
    st.run_epoch(data, 1, train=True)
    assert len(st.bank) == 48 and not st.needs_bank_fill(2)  # the epoch recorded its rows
    resumed = Stepper(tiny_cfg(tmp_path, *BANK), DIMS)
    resumed.load_state_dict(st.state_dict())
    assert resumed.needs_bank_fill(2)  # the bank is not checkpointed: a resume refills it
    n = len(st.bank)
    st.run_epoch(data, 2, train=False)  # validation clusters per batch and leaves the bank alone
    assert len(st.bank) == n


def test_memory_bank_step_trains_against_the_banks_labels_and_skips_unknown_clips(tmp_path):
    from conclugen.model.memory_bank import cluster_bank

    cfg = tiny_cfg(tmp_path, *BANK)
    seed_all(0)
    st = Stepper(cfg, DIMS)
    st.fill_bank(keyed(batches(1, seed=1)))  # clips 0..15
    fill_keys, fill_vecs = st.bank.shard()
    batch = keyed(batches(1, seed=2), first_key=8)  # clips 8..23: 16..23 are not in the bank
    probe = Stepper(cfg, DIMS)
    probe.load_state_dict(st.state_dict())
    with torch.no_grad():
        out = probe.model(batch[0], heads=["cluster_logits"])
    fused = torch.stack([out.cluster_logits[m] for m in DIMS]).mean(0).numpy()
    got = st.run_epoch(batch, 1, train=True)["clustering"]
    L = cfg.losses
    want_clusters = cluster_bank(fill_keys, fill_vecs, cfg.model.k, iters=L.kmeans_iters, tol=L.kmeans_tol,
                                 seed=cfg.train.seed + 1)
    c = st.bank.clusters
    assert torch.equal(c.table_keys, torch.arange(16)) and torch.equal(c.table_labels, want_clusters.table_labels)
    assert torch.allclose(c.centroids, want_clusters.centroids)
    labels = c.table_labels[8:16].numpy()
    want = _np_clustering_ce(fused[:8].astype(np.float64), c.centroids.numpy().astype(np.float64), labels,
                             L.cluster_margin)
    assert got == pytest.approx(want, rel=1e-5)
    assert float(st.counts.sum()) == 8  # only the clips with a label count


def test_memory_bank_without_known_clips_or_keys(tmp_path):
    st = Stepper(tiny_cfg(tmp_path, *BANK), DIMS)
    st.fill_bank(keyed(batches(1)))
    got = st.run_epoch(keyed(batches(1, seed=3), first_key=100), 1, train=True)  # no clip known
    assert got["clustering"] == 0.0
    grad = st.model.cluster_head.weight.grad
    assert grad is not None and float(grad.abs().max()) == 0.0  # in the graph (DDP), no signal
    with pytest.raises(PretrainError, match="clip keys"):
        st.run_epoch(batches(1), 2, train=True)
