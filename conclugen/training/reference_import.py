"""Import the authors' released PyTorch Lightning checkpoints (docs/method.md, Released models).

A released checkpoint (``tub-cv-group/conclugen``, Lightning 2.0.9) becomes a checkpoint folder
OUT (``checkpoint.pt`` + ``info.json``, what ``conclugen evaluate --checkpoint OUT`` reads) and,
when it has a classifier, a predict bundle OUT/model (what ``conclugen predict --model OUT``
reads; the classifier is its probe, rows in our label order). ``OUT/import.json`` records what
was loaded, what was initialised (seeded) and the label mapping. The names and orders of the
reference are in :mod:`conclugen.training.reference_layout`.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from conclugen import storage
from conclugen.config import ModelConfig
from conclugen.errors import ConCluGenError
from conclugen.evaluation.bundle import BUNDLE_DIR, write_bundle
from conclugen.evaluation.encoders import random_heads
from conclugen.evaluation.probe_model import ProbeModel
from conclugen.features.store import BackboneInfo, FeatureMeta
from conclugen.training.reference_layout import (
    CLASSIFIER,
    LOSS_BUFFER,
    OUR_LABELS,
    REFERENCE_BACKBONES,
    REFERENCE_LABELS,
    REFERENCE_MODALITIES,
    our_key,
)
from conclugen.training.run_folder import save_checkpoint_dir

if TYPE_CHECKING:
    from conclugen.config import Config

IMPORT_FILE = "import.json"
PROBE_FILE = "probe.npz"


class ReferenceImportError(ConCluGenError, ValueError):
    """A released checkpoint cannot be imported; the message names the file and the key."""


class NotLightningCheckpointError(ReferenceImportError):
    """The file is not a PyTorch Lightning checkpoint (no ``state_dict``)."""


class CheckpointKindError(ReferenceImportError):
    """A Lightning checkpoint, but not of a ConCluGen model (no representation heads), or with
    modules this import does not support."""


class CheckpointShapeError(ReferenceImportError):
    """Tensor shapes that do not fit together or do not fit the corpus."""


class UnknownCorpusError(ReferenceImportError):
    """A corpus whose reference label order is not known."""


class _StandIn:
    """An inert stand-in for a class of the training code pickled into a checkpoint."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _stand_in(qualified: str) -> type:
    module, _, qual = qualified.rpartition(".")
    return type(qual.rsplit(".", 1)[-1], (_StandIn,), {"__module__": module, "__qualname__": qual})


def read_lightning_checkpoint(uri: str, cfg: Config | None = None) -> dict[str, Any]:
    """The checkpoint dict, loaded with ``weights_only``: objects of the training code (hyper-
    parameters, callback state) become inert stand-ins, never imported or run."""
    data = storage.read_bytes(str(uri), cfg.storage if cfg else None)
    try:
        try:
            ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
            with torch.serialization.safe_globals([_stand_in(n) for n in names]):
                ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is "not a checkpoint"
        raise NotLightningCheckpointError(f"{uri}: not a PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise NotLightningCheckpointError(f"{uri}: not a PyTorch Lightning checkpoint (no 'state_dict' key)")
    return dict(ckpt)


def _modalities(state: Mapping[str, Any], hparams: Mapping[str, Any], uri: str) -> list[str]:
    """The reference's modality order: its ``modalities`` hyper-parameter, else the heads' order
    in the state dict (the ModuleDict is built in that list's order)."""
    heads: list[str] = []
    for k in state:
        if k.startswith("_representation_heads.heads."):
            m = k.split(".")[2]
            if m not in heads:
                heads.append(m)
    if not heads:
        raise CheckpointKindError(f"{uri}: no representation heads (no '_representation_heads.heads.*' key): "
                                  "not a ConCluGen checkpoint")
    unknown = [m for m in heads if m not in REFERENCE_MODALITIES]
    if unknown:
        raise CheckpointKindError(f"{uri}: representation heads for {unknown} (key '_representation_heads.heads."
                                  f"{unknown[0]}.*'); supported: {', '.join(REFERENCE_MODALITIES)}")
    order = hparams.get("modalities")
    if isinstance(order, list | tuple) and sorted(map(str, order)) == sorted(heads):
        return [str(m) for m in order]
    return heads


def _shape(state: Mapping[str, torch.Tensor], key: str, uri: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointKindError(f"{uri}: missing key '{key}'")
    return tuple(state[key].shape)


def _head_dims(state: Mapping[str, torch.Tensor], ref_mods: list[str], uri: str) -> tuple[dict[str, int], int, int]:
    """(our input dims, D, audio GEU width G) from the representation heads' shapes."""
    input_dims: dict[str, int] = {}
    outs: dict[str, int] = {}
    g = 0
    for rm in ref_mods:
        base = f"_representation_heads.heads.{rm}."
        if rm == "audio_spectrograms":
            g, input_dims["audio"] = _shape(state, base + "0.fc1.weight", uri)
            key = base + "1.weight"
            outs[key], g_in = _shape(state, key, uri)
            if g_in != g:
                raise CheckpointShapeError(f"{uri}: '{key}' takes {g_in} inputs, the audio GEU gives {g}")
        else:
            key = base + "fc1.weight"
            outs[key], input_dims[REFERENCE_MODALITIES[rm]] = _shape(state, key, uri)
    if len(set(outs.values())) != 1:
        raise CheckpointShapeError(f"{uri}: the representation heads disagree about D: {outs}")
    return input_dims, next(iter(outs.values())), g


def _pretraining_dims(state: Mapping[str, torch.Tensor], model_cfg: ModelConfig, uri: str) -> dict[str, int]:
    """P, R, K from the pretraining heads present; the config's values for those absent."""
    dims = {"p": model_cfg.p, "r": model_cfg.r, "k": model_cfg.k}
    proj = "_pretraining_heads.projection_head.3.weight"
    if proj in state:
        dims["p"] = int(state[proj].shape[0])
    clu = "_pretraining_heads.cluster_classification_head.weight"
    if clu in state:
        dims["k"], p = (int(v) for v in state[clu].shape)
        if proj in state and p != dims["p"]:
            raise CheckpointShapeError(f"{uri}: '{clu}' takes {p} inputs, '{proj}' gives {dims['p']}")
        dims["p"] = p
    for k, v in state.items():
        if k.startswith("_pretraining_heads.reconstruction_heads.") and k.endswith(".0.weight"):
            dims["r"] = int(v.shape[0])
    return dims


def _load_into(model: torch.nn.Module, mapped: Mapping[str, tuple[str, torch.Tensor]], uri: str) -> list[str]:
    """Copy the mapped tensors into ``model``; returns our keys left at their initial values."""
    own = model.state_dict()
    for ours, (ref, t) in mapped.items():
        if ours not in own:
            raise CheckpointKindError(f"{uri}: key '{ref}' has no counterpart in the model ({ours})")
        if tuple(own[ours].shape) != tuple(t.shape):
            raise CheckpointShapeError(f"{uri}: '{ref}' has shape {list(t.shape)}, expected {list(own[ours].shape)}")
        own[ours] = t.detach().to(own[ours].dtype).clone()
    model.load_state_dict(own)
    # input_norms stay the identity: the reference feeds raw backbone features to its heads
    return [k for k in own if k not in mapped and not k.startswith("input_norms.")]


def _initialised_groups(keys: list[str], uri: str) -> list[str]:
    """Our untouched keys → head names; a representation head must never be among them."""
    groups: list[str] = []
    for k in keys:
        parts = k.split(".")
        if parts[0] == "encoders":
            raise CheckpointKindError(f"{uri}: the {parts[1]} representation head is incomplete (no tensor for {k})")
        name = {"projection": "projection head", "cluster_head": "cluster head"}.get(parts[0], f"decoder {parts[1]}")
        if name not in groups:
            groups.append(name)
    return groups


def _probe(state: Mapping[str, torch.Tensor], corpus: str, n_in: int, uri: str) -> ProbeModel | None:
    """The classifier as our probe, its rows in our label order (our row j is the reference's row
    of the same label); None without a classifier."""
    w_key, b_key = CLASSIFIER + "weight", CLASSIFIER + "bias"
    extra = [k for k in state if k.startswith("_classifier.") and not k.startswith(CLASSIFIER)]
    if extra:
        raise CheckpointKindError(f"{uri}: unsupported classifier module '{extra[0]}' (only one linear layer "
                                  "on concatenated representations is supported)")
    if w_key not in state:
        return None
    _shape(state, b_key, uri)
    w, b = state[w_key].detach().float().numpy(), state[b_key].detach().float().numpy()
    ref = [ours for _, ours in REFERENCE_LABELS[corpus]]
    if w.shape[0] != len(ref) or b.shape != (len(ref),):
        raise CheckpointShapeError(f"{uri}: '{w_key}' has {w.shape[0]} rows, {corpus} has {len(ref)} labels")
    if w.shape[1] != n_in:
        raise CheckpointShapeError(f"{uri}: '{w_key}' takes {w.shape[1]} inputs, the representation heads give "
                                   f"{n_in} (|M|·D; only concat fusion is supported)")
    labels = OUR_LABELS[corpus]
    perm = [ref.index(lab) for lab in labels]
    # Raw GEU outputs (no standardisation); threshold 0.5 as the reference's
    # logits_binarization_threshold (configs/model/conclu/concat/conclu_multi.yaml).
    return ProbeModel(label_space=labels, multilabel=corpus == "mosei", mean=np.zeros(n_in, np.float32),
                      std=np.ones(n_in, np.float32), weight=w[perm].copy(), bias=b[perm].copy(), threshold=0.5)


def _loss_weights(state: Mapping[str, torch.Tensor], corpus: str) -> dict[str, dict[str, float] | list[float]]:
    """Class weights / pos_weight buffers of the reference's losses, by label name when they have
    one value per label (in the reference's row order)."""
    names = [ours for _, ours in REFERENCE_LABELS[corpus]]
    out: dict[str, dict[str, float] | list[float]] = {}
    for k, v in state.items():
        if LOSS_BUFFER.match(k) and isinstance(v, torch.Tensor) and v.ndim == 1:
            vals = [float(f"{float(x):.6g}") for x in v]
            out[k] = dict(zip(names, vals, strict=True)) if len(vals) == len(names) else vals
    return out


@dataclass
class ImportResult:
    source: str
    out_dir: str
    corpus: str
    lightning_version: str | None
    epoch: int | None
    reference_modalities: list[str]
    model_cfg: dict[str, Any]
    input_dims: dict[str, int]
    loaded: dict[str, list[int]]  # reference key → shape
    initialised: list[str]
    label_mapping: list[dict[str, Any]]  # reference row → our row
    loss_weights: dict[str, Any]
    ignored: list[str]
    backbones: dict[str, dict[str, Any]]
    bundle_dir: str | None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        m = self.model_cfg
        kind = "probe checkpoint (classifier)" if self.bundle_dir else "pretraining checkpoint (no classifier)"
        lines = [f"import-reference: {self.source} (Lightning {self.lightning_version}, epoch {self.epoch}) "
                 f"→ {self.out_dir}", f"kind: {kind}; corpus {self.corpus}",
                 "modalities (concatenation order): " + ", ".join(
                     f"{r} → {REFERENCE_MODALITIES[r]} ({self.input_dims[REFERENCE_MODALITIES[r]]}-d in)"
                     for r in self.reference_modalities),
                 f"D {m['d']}, P {m['p']}, R {m['r']}, K {m['k']}, audio GEU {m['audio_geu_dim']}",
                 f"loaded: {len(self.loaded)} tensors"]
        lines += [f"  {k} {v}" for k, v in self.loaded.items() if k.endswith("weight")]
        lines.append("initialised (seeded, not from the checkpoint): " + (", ".join(self.initialised) or "nothing"))
        if self.label_mapping:
            lines.append("labels (reference row → our row): " + ", ".join(
                f"{x['row']} {x['reference']} → {x['ours_row']} {x['ours']}" for x in self.label_mapping))
        lines += [f"loss weights {k}: {json.dumps(v)}" for k, v in self.loss_weights.items()]
        if self.ignored:
            lines.append(f"ignored: {len(self.ignored)} keys (e.g. {self.ignored[0]})")
        lines.append(f"checkpoint folder: {self.out_dir}  (conclugen evaluate FEATURES --checkpoint {self.out_dir})")
        if self.bundle_dir:
            lines.append(f"predict bundle: {self.bundle_dir}  (conclugen predict VIDEOS --model {self.out_dir})")
        lines.append("features must come from the reference's backbones: " + "; ".join(
            f"{k} {b['what']} ({b['dim']}-d) as {b['spec']}" for k, b in self.backbones.items() if b["dim"]))
        return "\n".join(lines + self.notes)


def _backbones(input_dims: Mapping[str, int], overrides: Mapping[str, str], dims: Mapping[str, int],
               uri: str) -> dict[str, dict[str, Any]]:
    out = {k: {"spec": overrides.get(k, spec), "dim": int(dims.get(k, dim)), "what": what}
           for k, (spec, dim, what) in REFERENCE_BACKBONES.items()}
    want = {"video": out["image"]["dim"] + out["video3d"]["dim"], "audio": out["audio"]["dim"],
            "text": out["text"]["dim"]}
    for m, d in input_dims.items():
        if want[m] != d:
            raise CheckpointShapeError(f"{uri}: the {m} head takes {d}-d features, the backbones give {want[m]} "
                                       "(set their dims with --backbone-dim KIND=N)")
    return out


def parse_backbone_options(specs: Sequence[str], dims: Sequence[str]) -> tuple[dict[str, str], dict[str, int]]:
    """``--backbone KIND=SPEC`` and ``--backbone-dim KIND=N`` → dicts; a bad option names itself."""
    def split(opt: str, flag: str, numeric: bool) -> tuple[str, str]:
        kind, sep, value = opt.partition("=")
        if not sep or kind not in REFERENCE_BACKBONES or not value or (numeric and not value.isdigit()):
            raise ReferenceImportError(f"{flag} {opt!r}: expected KIND={'N' if numeric else 'SPEC'}, "
                                       f"KIND one of {', '.join(REFERENCE_BACKBONES)}")
        return kind, value

    return (dict(split(o, "--backbone", False) for o in specs),
            {k: int(v) for k, v in (split(o, "--backbone-dim", True) for o in dims)})


def import_reference(
    ckpt_uri: str, corpus: str, out_dir: str, cfg: Config, *,
    backbones: Mapping[str, str] | None = None, backbone_dims: Mapping[str, int] | None = None,
) -> ImportResult:
    """Convert a released checkpoint into a checkpoint folder (``out_dir``, for ``conclugen
    evaluate``) and, when it has a classifier, a predict bundle (``out_dir/model``)."""
    if corpus not in REFERENCE_LABELS:
        raise UnknownCorpusError(f"corpus {corpus!r}: the reference label order is known for "
                                 f"{', '.join(REFERENCE_LABELS)}")
    ckpt = read_lightning_checkpoint(ckpt_uri, cfg)
    state = {k: v for k, v in ckpt["state_dict"].items() if isinstance(v, torch.Tensor)}
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt.get("hyper_parameters"), Mapping) else {}
    ref_mods = _modalities(state, hparams, ckpt_uri)
    input_dims, d, g = _head_dims(state, ref_mods, ckpt_uri)
    input_dims = {REFERENCE_MODALITIES[r]: input_dims[REFERENCE_MODALITIES[r]] for r in ref_mods}
    model_cfg = ModelConfig.model_validate({
        **cfg.model.model_dump(), "modalities": list(input_dims), "d": d,
        "audio_geu_dim": g or cfg.model.audio_geu_dim, "input_norm": "none",  # the reference reads raw features
        **_pretraining_dims(state, cfg.model, ckpt_uri)})
    mapped = {ours: (k, v) for k, v in state.items() if (ours := our_key(k))}
    model = random_heads(model_cfg, input_dims, cfg.train.seed)
    initialised = _initialised_groups(_load_into(model, mapped, ckpt_uri), ckpt_uri)
    probed = _probe(state, corpus, len(input_dims) * d, ckpt_uri)
    bb = _backbones(input_dims, backbones or {}, backbone_dims or {}, ckpt_uri)
    used = {k for k, _ in mapped.values()} | {CLASSIFIER + "weight", CLASSIFIER + "bias"}
    loss_weights = _loss_weights(state, corpus)
    ref_rows = REFERENCE_LABELS[corpus]
    result = ImportResult(
        source=str(ckpt_uri), out_dir=str(out_dir), corpus=corpus,
        lightning_version=ckpt.get("pytorch-lightning_version"), epoch=_int(ckpt.get("epoch")),
        reference_modalities=ref_mods, model_cfg=model_cfg.model_dump(), input_dims=input_dims,
        loaded={k: list(v.shape) for k, v in state.items() if k in used},
        initialised=initialised,
        label_mapping=[] if probed is None else [
            {"row": i, "reference": r, "ours": ours, "ours_row": OUR_LABELS[corpus].index(ours)}
            for i, (r, ours) in enumerate(ref_rows)],
        loss_weights=loss_weights, ignored=sorted(k for k in state if k not in used and k not in loss_weights),
        backbones=bb, bundle_dir=None if probed is None else storage.join(str(out_dir), BUNDLE_DIR),
    )
    if initialised:
        result.notes.append(f"initialised heads use seed train.seed = {cfg.train.seed}; their sizes "
                            "(P, R, K where absent) come from the config")
    stand_ins = [k for k, b in bb.items() if b["spec"].startswith("reference:")]
    if probed is not None and stand_ins:
        result.notes.append(f"predict: {', '.join(stand_ins)} name no runnable model here; pass --backbone "
                            "KIND=SPEC (a saved model that gives the reference's features) before predicting")
    _write(result, model, model_cfg, probed, cfg)
    return result


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int) else None


def _write(result: ImportResult, model: torch.nn.Module, model_cfg: ModelConfig, probe: ProbeModel | None,
           cfg: Config) -> None:
    """The checkpoint folder (+ probe and bundle) under ``result.out_dir``, local or s3://."""
    out = result.out_dir
    remote = storage.is_s3(out)
    local = Path(tempfile.mkdtemp(prefix="conclugen-import-")) if remote else Path(storage.resolve(out)[1])
    try:
        labels = OUR_LABELS[result.corpus]
        meta = FeatureMeta(corpus=result.corpus, dims=dict(result.input_dims), label_space=labels,
                           multilabel=result.corpus == "mosei",
                           backbones={k: BackboneInfo(name=b["spec"], dim=b["dim"], details={"reference": b["what"]})
                                      for k, b in result.backbones.items()})
        report = {k: v for k, v in asdict(result).items() if k != "notes"}
        config = cfg.public_dict() | {"model": json.loads(model_cfg.model_dump_json())}
        payload = {"model": model.state_dict(), "config": config, "input_dims": dict(result.input_dims),
                   "meta": asdict(meta), "epoch": result.epoch, "metrics": {}, "mlflow_run_id": None,
                   "imported": report}
        save_checkpoint_dir(local, payload, {"epoch": result.epoch, "score": None, "metrics": {},
                                             "stopped_early": False, "imported": report})
        (local / IMPORT_FILE).write_text(json.dumps(report, indent=2))
        if probe is not None:
            probe.save(str(local / PROBE_FILE))
            write_bundle(local, str(local), meta, cfg.extract, features_uri="", modalities=list(result.input_dims),
                         input_dims=result.input_dims, probe_file=local / PROBE_FILE, pretrain_run_id=None)
        else:  # a bundle left by an earlier import into this folder would not match these heads
            shutil.rmtree(local / BUNDLE_DIR, ignore_errors=True)
            (local / PROBE_FILE).unlink(missing_ok=True)
        if remote:
            storage.upload_dir(local, out, cfg.storage)
    finally:
        if remote:
            shutil.rmtree(local, ignore_errors=True)
