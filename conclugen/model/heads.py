"""ConCluGen heads (see docs/method.md, Heads).

Per modality a Gated Embedding Unit maps the frozen backbone feature to a representation of size
D (audio: GEU 1024→1024, then Linear(1024→D)); a projection head and a cluster head are shared by
all modalities; per-modality decoders reconstruct the backbone feature from the representation.
Any ordered subset of modalities works (ablations use two or three); ``modalities`` keeps the
order of ``input_dims``, which is also the order of the cyclic contrastive pairs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from conclugen.config import ModelConfig


class ContextGating(nn.Module):
    """``GLU([x, Linear(x)]) = x · sigmoid(Linear(x))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.glu(torch.cat([x, self.fc(x)], dim=-1), dim=-1)


class GatedEmbeddingUnit(nn.Module):
    """``fc1 → ReLU → context gating → fc2 → ReLU`` (input dim → out dim)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.gating = ContextGating(out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc2(self.gating(F.relu(self.fc1(x)))))


class ProjectionHead(nn.Module):
    """``Linear(D→D/8) → BatchNorm1d → ReLU → Linear(D/8→P) → ReLU`` (normalisation is done by
    the caller, because the cluster head needs the un-normalised output)."""

    def __init__(self, d: int, p: int) -> None:
        super().__init__()
        hidden = max(d // 8, 1)
        self.net = nn.Sequential(
            nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, p), nn.ReLU()
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """``Linear(D→R) → ReLU → Linear(R→input_dim) → ReLU``."""

    def __init__(self, d: int, r: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, r), nn.ReLU(), nn.Linear(r, out_dim), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class InputNorm(nn.Module):
    """``(x − mean) / std`` per dimension of one modality's backbone feature *(ours)*.

    Identity until :meth:`set_stats`; the statistics are buffers, so they travel with every
    checkpoint, evaluation and prediction. Our offline backbones give features of very different
    scales (audio values reach ±50, video and text stay near 0.1), which let the audio term
    dominate reconstruction; see docs/method.md, Heads."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        if tuple(mean.shape) != tuple(self.mean.shape) or tuple(std.shape) != tuple(self.std.shape):
            raise ValueError(f"input statistics of shape {tuple(mean.shape)}, expected {tuple(self.mean.shape)}")
        if not bool(torch.all(std > 0)):
            raise ValueError("input standard deviations must be > 0")
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


# The outputs ConCluGen.forward can compute besides the representations.
HEADS = ("projections", "cluster_logits", "reconstructions")


@dataclass
class ConCluGenOutput:
    representations: dict[str, Tensor]  # [B, D]
    projections: dict[str, Tensor]  # L2-normalised [B, P]
    projections_raw: dict[str, Tensor]  # un-normalised [B, P] (input of the cluster head)
    cluster_logits: dict[str, Tensor]  # cluster_head(projections_raw) [B, K]
    reconstructions: dict[str, Tensor]  # decoder_m(rep_m) [B, input_dim_m]
    # the inputs after InputNorm: what the heads read and the decoders reconstruct
    inputs: dict[str, Tensor] = field(default_factory=dict)
    # modality → L2-normalised projection [B, P] of a second view of that modality (SimCLR)
    view_projections: dict[str, Tensor] = field(default_factory=dict)


class ConCluGen(nn.Module):
    def __init__(
        self,
        input_dims: Mapping[str, int],
        d: int = 4096,
        p: int = 512,
        r: int = 512,
        k: int = 128,
        audio_geu_dim: int = 1024,
    ) -> None:
        super().__init__()
        if not input_dims:
            raise ValueError("ConCluGen needs at least one modality")
        self.modalities: list[str] = list(input_dims)
        self.input_dims = {m: int(v) for m, v in input_dims.items()}
        self.d, self.p, self.r, self.k = d, p, r, k
        self.encoders = nn.ModuleDict()
        for m, dim in self.input_dims.items():
            if m == "audio":
                # The audio head is GEU 1024→1024 then Linear(1024→D) (docs/method.md, Heads).
                self.encoders[m] = nn.Sequential(
                    GatedEmbeddingUnit(dim, audio_geu_dim), nn.Linear(audio_geu_dim, d)
                )
            else:
                self.encoders[m] = GatedEmbeddingUnit(dim, d)
        self.input_norms = nn.ModuleDict({m: InputNorm(dim) for m, dim in self.input_dims.items()})
        self.projection = ProjectionHead(d, p)
        self.cluster_head = nn.Linear(p, k, bias=False)
        self.decoders = nn.ModuleDict({m: Decoder(d, r, dim) for m, dim in self.input_dims.items()})

    @classmethod
    def from_config(cls, cfg: ModelConfig, input_dims: Mapping[str, int]) -> ConCluGen:
        """Build for ``cfg.modalities`` (in that order) with dimensions from ``input_dims``
        (e.g. the feature store's meta.json); extra entries in ``input_dims`` are ignored."""
        missing = [m for m in cfg.modalities if m not in input_dims]
        if missing:
            raise ValueError(
                f"model.modalities lists {missing} but the features only have {sorted(input_dims)}"
            )
        dims = {m: int(input_dims[m]) for m in cfg.modalities}
        return cls(dims, d=cfg.d, p=cfg.p, r=cfg.r, k=cfg.k, audio_geu_dim=cfg.audio_geu_dim)

    def _check(self, feats: Mapping[str, Tensor]) -> None:
        missing = [m for m in self.modalities if m not in feats]
        if missing:
            raise KeyError(f"missing modality features: {missing}")

    def set_input_stats(self, stats: Mapping[str, tuple[Tensor, Tensor]]) -> None:
        """Per-modality (mean, std) of the backbone features the heads standardise with."""
        for m, (mean, std) in stats.items():
            self.input_norms[m].set_stats(torch.as_tensor(mean, dtype=torch.float32),
                                          torch.as_tensor(std, dtype=torch.float32))

    def normalize_inputs(self, feats: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The model's modalities of ``feats`` after their :class:`InputNorm`."""
        self._check(feats)
        return {m: self.input_norms[m](feats[m]) for m in self.modalities}

    def represent(self, feats: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per-modality representations [B, D] (what the linear probe reads)."""
        x = self.normalize_inputs(feats)
        return {m: self.encoders[m](x[m]) for m in self.modalities}

    def load_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True, assign: bool = False):  # type: ignore[override]
        """As ``nn.Module.load_state_dict``; a state without input statistics (checkpoints written
        before InputNorm existed, imported reference models) keeps the identity ones."""
        state = dict(state_dict)
        for key, value in super().state_dict().items():
            if key.startswith("input_norms.") and key not in state:
                state[key] = value
        return super().load_state_dict(state, strict=strict, assign=assign)

    def forward(
        self,
        feats: Mapping[str, Tensor],
        views: Mapping[str, Tensor] | None = None,
        heads: Collection[str] = HEADS,
    ) -> ConCluGenOutput:
        """The representations and the outputs of ``heads`` (a subset of :data:`HEADS`) on
        ``feats``; the outputs of heads left out are empty dicts.

        Only what a loss uses is computed: under DDP with ``find_unused_parameters`` a parameter
        counts as used when it is reachable from the forward's outputs, so a head whose output
        is returned but feeds no loss would leave DDP waiting for its gradient.
        ``views`` (modality → a second view of that modality's features) also go through the
        modality's representation head and the shared projection head, on their own so that
        BatchNorm sees one view's batch (as the reference's SimCLR model does), within this one
        forward call (one DDP forward per step)."""
        unknown = set(heads) - set(HEADS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)}; choose from {HEADS}")
        inputs = self.normalize_inputs(feats)
        reps = {m: self.encoders[m](inputs[m]) for m in self.modalities}
        # The shared projection head is applied per modality, so BatchNorm statistics are those
        # of one modality's batch (as the reference does with its shared head).
        project = "projections" in heads or "cluster_logits" in heads
        raw = {m: self.projection(reps[m]) for m in self.modalities} if project else {}
        return ConCluGenOutput(
            representations=reps,
            projections={m: F.normalize(r, dim=-1) for m, r in raw.items()},
            projections_raw=raw,
            cluster_logits={m: self.cluster_head(r) for m, r in raw.items()} if "cluster_logits" in heads else {},
            reconstructions={m: self.decoders[m](reps[m]) for m in self.modalities}
            if "reconstructions" in heads else {},
            view_projections={m: F.normalize(self.projection(self.encoders[m](self.input_norms[m](x))), dim=-1)
                              for m, x in (views or {}).items()},
            inputs=inputs,
        )


def to_sync_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm → SyncBatchNorm when CUDA is available, so that the projection head's
    statistics are those of the global batch under DDP.

    On CPU the model is returned unchanged: PyTorch's SyncBatchNorm refuses CPU tensors, so CPU
    workers keep per-worker BatchNorm: training normalises with the local batch's statistics,
    and DDP's default ``broadcast_buffers=True`` makes rank 0's running statistics everyone's.
    """
    if torch.cuda.is_available():
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
