"""A tiny predict bundle's inputs for the serving tests: a 7-class feature store whose meta names the
offline backbones (as extract writes it) and a checkpoint of freshly initialised heads in the exact
format Ray Train workers write — predict's job does not depend on what pretraining learned, and
this keeps a Ray Train run out of the serving tests (tests/evaluation covers that path)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conclugen.config import MELD_EMOTIONS, Config
from conclugen.features import store as F
from tests.helpers.configs import TINY_MODEL
from tests.helpers.features import write_feature_store

# The offline backbones' output sizes (test_extract checks them): video = image 128 + video3d 128.
OFFLINE_DIMS = {"video": 256, "audio": 96, "text": 384}
OFFLINE_BACKBONES = {"image": ("offline:image", 128), "video3d": ("offline:video3d", 128),
                     "audio": ("offline:audio", 96), "text": ("offline:minilm", 384), "asr": ("offline:none", 0)}
TINY_PREDICT = [*TINY_MODEL, "probe.epochs=10", "probe.batch_size=64", "extract.decode_batch_size=2",
                "extract.backbone_batch_size=4"]


def offline_store(root: str) -> F.FeatureMeta:
    """A tiny 7-class (MELD's emotions) feature store at ``root``; returns its meta."""
    write_feature_store(root, splits={"train": 70, "val": 21, "test": 21}, dims=OFFLINE_DIMS, labels=MELD_EMOTIONS)
    meta = F.read_meta(root)
    meta.corpus = "meld"
    meta.backbones = {k: F.BackboneInfo(name=n, dim=d, trained=True) for k, (n, d) in OFFLINE_BACKBONES.items()}
    F.write_meta(root, meta)
    return meta


def fresh_checkpoint(folder: Path, cfg: Config, meta: F.FeatureMeta) -> str:
    """``folder/run/checkpoint_000000`` of seeded fresh heads (run_folder.save_checkpoint_dir)."""
    from conclugen.model.heads import ConCluGen
    from conclugen.training.run_folder import save_checkpoint_dir

    torch.manual_seed(0)
    model = ConCluGen.from_config(cfg.model, meta.dims)
    ckpt = folder / "run" / "checkpoint_000000"
    save_checkpoint_dir(ckpt, {"model": model.state_dict(), "config": cfg.public_dict(), "input_dims": dict(meta.dims),
                               "meta": json.loads(meta.to_json()), "epoch": 0, "metrics": {},
                               "mlflow_run_id": None}, {"epoch": 0, "score": 1.0})
    return str(ckpt)
