"""Reading a synthetic corpus together with its unlabeled pool (``synthesize(unlabeled=N)``).

MELD has no unlabeled split, so the MELD loader reads the three labelled CSVs only. This loader
adds the pool's rows (``POOL``: ``unlabeled_sent_emo.csv`` and ``unlabeled/unlabeled_splits/``)
as split ``unlabeled`` with no labels and the CSV's transcript, so that one extraction gives one
feature store whose ``unlabeled`` rows pretraining uses and the probe ignores (the paper's
protocol: pretrain on an unlabeled corpus, probe on a labelled one; docs/method.md, Corpora).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conclugen import storage
from conclugen.data.corpora.manifest import Manifest, MissingClipError, fix_mojibake, problem, relative, row
from conclugen.data.corpora.meld import load_meld, read_meld_csv
from conclugen.data.synthetic.plan import POOL, UNLABELED

if TYPE_CHECKING:
    from conclugen.config import Config


def load_synthetic(root: str, cfg: Config) -> Manifest:
    """The MELD manifest of ``root`` plus its pool's rows (split ``unlabeled``), when it has one."""
    manifest = load_meld(root, cfg)
    csv_name, folder = POOL
    csv_uri = storage.join(root, csv_name)
    if not storage.exists(csv_uri, cfg.storage):
        return manifest
    present = {relative(root, f) for f in storage.list_files(storage.join(root, folder), cfg.storage)}
    rows, problems = [], []
    for rec in read_meld_csv(storage.read_bytes(csv_uri, cfg.storage), csv_uri):
        dia, utt = rec["Dialogue_ID"].strip(), rec["Utterance_ID"].strip()
        rel = f"{folder}/dia{dia}_utt{utt}.mp4"
        clip_id, uri = f"meld/{UNLABELED}/dia{dia}_utt{utt}", storage.join(root, *rel.split("/"))
        if rel not in present:
            problems.append(problem(clip_id, uri, MissingClipError(f"listed in {csv_name} but not found: {uri}")))
            continue
        rows.append(row(clip_id, uri, UNLABELED, manifest.corpus, transcript=fix_mojibake(rec["Utterance"]).strip()))
    notes = [*manifest.notes, f"{csv_uri}: {len(rows)} unlabeled pool clips (pretraining only)"]
    return Manifest(manifest.rows + rows, manifest.problems + problems, manifest.label_space,
                    multilabel=manifest.multilabel, corpus=manifest.corpus, notes=notes)
