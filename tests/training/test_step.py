"""The step object: one run_epoch path for training and validation, the NaN check, resumable
state, cluster statistics (in-process, no Ray)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conclugen.config import load_config
from conclugen.model.losses import nt_xent
from conclugen.training.data import second_view_key
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
    assert set(a.state_dict()) == {"model", "optimizer", "scheduler"}


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
