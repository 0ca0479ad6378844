"""ConCluGen heads: shapes, structure, and a numpy forward written from docs/method.md, Heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conclugen.config import ModelConfig
from conclugen.model.heads import ConCluGen, ConCluGenOutput, to_sync_batchnorm

DIMS = {"video": 24, "audio": 16, "text": 12}


def _model(dims: dict[str, int] = DIMS, **kw: int) -> ConCluGen:
    torch.manual_seed(0)
    args = {"d": 32, "p": 8, "r": 10, "k": 5, "audio_geu_dim": 20} | kw
    return ConCluGen(dims, **args).double()


def _feats(dims: dict[str, int], b: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {m: torch.randn(b, d, generator=g, dtype=torch.float64) for m, d in dims.items()}


def test_output_shapes_and_normalisation() -> None:
    model = _model()
    out = model(_feats(DIMS))
    assert isinstance(out, ConCluGenOutput)
    assert model.modalities == ["video", "audio", "text"]
    for m, dim in DIMS.items():
        assert out.representations[m].shape == (6, 32)
        assert out.projections[m].shape == (6, 8)
        assert out.projections_raw[m].shape == (6, 8)
        assert out.cluster_logits[m].shape == (6, 5)
        assert out.reconstructions[m].shape == (6, dim)
        norms = out.projections[m].norm(dim=1)
        assert torch.allclose(norms[norms > 0], torch.ones_like(norms[norms > 0]))
        assert torch.allclose(
            out.projections[m] * out.projections_raw[m].norm(dim=1, keepdim=True), out.projections_raw[m]
        )
    reps = model.represent(_feats(DIMS))
    for m in DIMS:
        assert torch.equal(reps[m], out.representations[m])


def _np_lin(layer: nn.Linear, x: np.ndarray) -> np.ndarray:
    y = x @ layer.weight.detach().numpy().T
    return y + layer.bias.detach().numpy() if layer.bias is not None else y


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def _np_geu(geu: nn.Module, x: np.ndarray) -> np.ndarray:
    h = _relu(_np_lin(geu.fc1, x))
    g = _np_lin(geu.gating.fc, h)
    h = h * (1 / (1 + np.exp(-g)))  # GLU over [h, Linear(h)]
    return _relu(_np_lin(geu.fc2, h))


def test_forward_matches_numpy_in_eval_mode() -> None:
    model = _model()
    # Non-trivial BatchNorm running statistics, then eval mode (BN uses them).
    bn = model.projection.net[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    feats = _feats(DIMS)
    out = model(feats)
    for m in DIMS:
        x = feats[m].numpy()
        if m == "audio":
            rep = _np_lin(model.encoders[m][1], _np_geu(model.encoders[m][0], x))
        else:
            rep = _np_geu(model.encoders[m], x)
        np.testing.assert_allclose(out.representations[m].detach().numpy(), rep, rtol=1e-10, atol=1e-12)
        net = model.projection.net
        h = _np_lin(net[0], rep)
        h = (h - bn.running_mean.numpy()) / np.sqrt(bn.running_var.numpy() + bn.eps)
        h = _relu(h * bn.weight.detach().numpy() + bn.bias.detach().numpy())
        raw = _relu(_np_lin(net[3], h))
        np.testing.assert_allclose(out.projections_raw[m].detach().numpy(), raw, rtol=1e-10, atol=1e-12)
        unit = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
        np.testing.assert_allclose(out.projections[m].detach().numpy(), unit, rtol=1e-10, atol=1e-12)
        cl = raw @ model.cluster_head.weight.detach().numpy().T
        np.testing.assert_allclose(out.cluster_logits[m].detach().numpy(), cl, rtol=1e-10, atol=1e-12)
        dec = model.decoders[m].net
        rec = _relu(_np_lin(dec[2], _relu(_np_lin(dec[0], rep))))
        np.testing.assert_allclose(out.reconstructions[m].detach().numpy(), rec, rtol=1e-10, atol=1e-12)


def test_layer_dimensions_follow_method() -> None:
    model = ConCluGen({"video": 4096, "audio": 1024, "text": 768})  # the sizes of docs/method.md, Heads
    assert model.encoders["video"].fc1.in_features == 4096
    assert model.encoders["video"].fc2.out_features == 4096
    audio_geu, audio_lin = model.encoders["audio"]
    assert (audio_geu.fc1.in_features, audio_geu.fc2.out_features) == (1024, 1024)
    assert (audio_lin.in_features, audio_lin.out_features) == (1024, 4096)
    net = model.projection.net
    assert (net[0].in_features, net[0].out_features, net[3].out_features) == (4096, 512, 512)
    assert isinstance(net[1], nn.BatchNorm1d)
    assert model.cluster_head.bias is None
    assert (model.cluster_head.in_features, model.cluster_head.out_features) == (512, 128)
    assert model.decoders["text"].net[0].out_features == 512
    assert model.decoders["text"].net[2].out_features == 768


def test_from_config_keeps_config_modalities_in_order() -> None:
    cfg = ModelConfig(modalities=["text", "video"], d=16, p=4, r=6, k=3, audio_geu_dim=8)
    model = ConCluGen.from_config(cfg, {"video": 10, "audio": 7, "text": 5}).double()
    assert model.modalities == ["text", "video"]
    assert set(model.encoders) == {"text", "video"}
    out = model(_feats({"text": 5, "video": 10}, b=4) | {"audio": torch.zeros(4, 7, dtype=torch.float64)})
    assert list(out.projections) == ["text", "video"]
    with pytest.raises(ValueError, match="audio"):
        ConCluGen.from_config(ModelConfig(modalities=["video", "audio"]), {"video": 10})
    with pytest.raises(KeyError, match="text"):
        model({"video": torch.zeros(4, 10)})


def test_gradients_reach_every_head() -> None:
    from conclugen.model.losses import clustering, mms_contrastive, reconstruction

    model = _model()
    feats = _feats(DIMS)
    out = model(feats)
    centroids = torch.randn(5, 5, dtype=torch.float64)
    labels = torch.arange(6) % 5
    loss = (
        mms_contrastive(out.projections)
        + clustering(out.cluster_logits, centroids, labels)
        + reconstruction(out.reconstructions, feats)
    )
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_to_sync_batchnorm_on_cpu_keeps_batchnorm() -> None:
    model = _model()
    converted = to_sync_batchnorm(model)
    kinds = {type(m) for m in converted.modules()}
    if torch.cuda.is_available():  # pragma: no cover - no GPU here
        assert nn.SyncBatchNorm in kinds
    else:
        assert nn.BatchNorm1d in kinds and nn.SyncBatchNorm not in kinds


def test_input_norm_standardises_what_every_head_reads_and_travels_with_the_state() -> None:
    model = _model().eval()
    feats = _feats(DIMS)
    g = torch.Generator().manual_seed(5)
    stats = {m: (torch.randn(d, generator=g, dtype=torch.float64),
                 torch.rand(d, generator=g, dtype=torch.float64) + 0.5) for m, d in DIMS.items()}
    plain = model(feats)
    model.set_input_stats(stats)
    out = model(feats)
    for m in DIMS:
        z = (feats[m].numpy() - stats[m][0].numpy()) / stats[m][1].numpy()
        np.testing.assert_allclose(out.inputs[m].detach().numpy(), z, rtol=1e-6, atol=1e-6)
        geu = model.encoders[m][0] if m == "audio" else model.encoders[m]
        rep = _np_geu(geu, z)
        if m == "audio":
            rep = _np_lin(model.encoders[m][1], rep)
        np.testing.assert_allclose(out.representations[m].detach().numpy(), rep, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(out.representations[m], plain.representations[m])
        assert torch.equal(plain.inputs[m], feats[m])  # identity until set
    # the statistics are part of the state: a copy loaded from it represents identically
    copy = _model()
    copy.load_state_dict(model.state_dict())
    copy.eval()
    for m in DIMS:
        assert torch.equal(copy.represent(feats)[m], model.represent(feats)[m])
    # a state written before input statistics existed keeps the identity
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("input_norms.")}
    legacy = _model()
    legacy.load_state_dict(old)
    assert torch.equal(legacy.input_norms["video"].std, torch.ones(DIMS["video"], dtype=torch.float64))
    with pytest.raises(ValueError, match="> 0"):
        model.set_input_stats({"video": (torch.zeros(24), torch.zeros(24))})
    with pytest.raises(ValueError, match="shape"):
        model.set_input_stats({"video": (torch.zeros(3), torch.ones(3))})
