"""MLflow: tracking-URI resolution, experiments, runs, per-epoch metrics and the representation
pyfunc model (the served video → emotion model is :mod:`conclugen.serving.mlflow_model`).

Everything goes through an explicit tracking URI and ``MlflowClient`` so that library code keeps
no global MLflow state (Ray Train workers log to a run the driver opened; only world rank 0
logs). The one exception is :func:`log_representation_model`, which needs MLflow's fluent API and
is called from the driver. Credentials never reach MLflow: params come from
``Config.flat_params()`` and the config artifact from ``Config.to_yaml()``, both secret-free.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conclugen import storage

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from conclugen.config import Config

# MLflow 3's client sends usage telemetry off the machine from a background thread unless told
# not to: off unless the user set it (the server started by devtools.mlflow_server does the same).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# MLflow's param values are capped (6000 chars in MLflow 3); longer values are cut, not rejected.
_MAX_PARAM = 6000


def tracking_uri(cfg: Config) -> str:
    """cfg.tracking.uri, else MLFLOW_TRACKING_URI, else ``sqlite:///<workdir>/mlflow.db``.
    For the embedded sqlite default the work directory is created."""
    uri = cfg.tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def client(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Beside the sqlite file (MLflow's default would be ./mlruns in the current directory);
    None for a server, which decides itself."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts" / experiment).resolve().as_uri()
    return None


# MLflow 3's experiment kind: "custom_model_development" is its "Machine learning" (training runs)
# kind, as opposed to "genai_development". Set on every experiment of ours: UIs that read it open
# such an experiment on its Runs tab and do not ask which kind it is (mlflow/mlflow#20744). The UI
# of MLflow 3.17 (workflow-based navigation, mlflow/mlflow#20158, #20161) chooses the tabs from
# the workflow type instead — the sidebar's switch, kept in the browser, or ``?workflowType=`` in
# the URL, which :func:`experiment_ui_url` sets to ``machine_learning``.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def get_or_create_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name``, created when missing (race-safe: a concurrent creator wins),
    tagged as a training-runs experiment (:data:`EXPERIMENT_KIND`; an experiment of ours from
    before that tag, or one created elsewhere without a kind, gets it too)."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            return c.create_experiment(name, artifact_location=_artifact_location(uri, name),
                                       tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # another process created it between the two calls
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in exp.tags:  # never overrides a kind a user chose
        c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def experiment_ui_url(uri: str, experiment_id: str) -> str | None:
    """The MLflow UI page of an experiment on its training runs (the "Machine learning" workflow),
    for a tracking server at ``http(s)://``; None for a local store (``mlflow ui`` serves it)."""
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def start_run(
    cfg: Config,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    uri: str | None = None,
) -> str:
    """Open a run in ``cfg.tracking.experiment``: the whole config as params (no secrets) and the
    config YAML as the artifact ``config.yaml``. Returns the run id."""
    from mlflow.entities import Param

    uri = uri or tracking_uri(cfg)
    c = client(uri)
    exp_id = get_or_create_experiment(uri, cfg.tracking.experiment)
    run = c.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
    run_id = run.info.run_id
    params = [Param(k, str(v)[:_MAX_PARAM]) for k, v in sorted(cfg.flat_params().items())]
    for i in range(0, len(params), 100):  # log_batch takes at most 100 params per call
        c.log_batch(run_id, params=params[i : i + 100])
    log_text(uri, run_id, cfg.to_yaml(), "config.yaml")
    return run_id


def log_text(uri: str, run_id: str, text: str, artifact_file: str) -> None:
    client(uri).log_text(run_id, text, artifact_file)


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Log finite numeric metrics at ``step`` in one call (non-finite values are skipped:
    MLflow stores them but its UI charts break on them)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [
        Metric(k, float(v), now, step)
        for k, v in sorted(metrics.items())
        if isinstance(v, int | float) and math.isfinite(float(v))
    ]
    if batch:
        client(uri).log_batch(run_id, metrics=batch)


def set_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark the run FINISHED / FAILED / KILLED."""
    client(uri).set_terminated(run_id, status=status)


def reopen_run(uri: str, run_id: str) -> bool:
    """Mark an existing run RUNNING again (resume); False when the run does not exist there."""
    c = client(uri)
    try:
        c.get_run(run_id)
    except Exception:
        return False
    c.update_run(run_id, status="RUNNING")
    return True


@dataclass
class TrackedRun:
    """The run a :func:`tracked_run` block logs to. Set ``status`` to end it other than FINISHED
    (e.g. FAILED for an ablation with a failed row) without raising."""

    uri: str
    run_id: str
    reopened: bool
    status: str = "FINISHED"


@contextmanager
def tracked_run(
    cfg: Config,
    *,
    run_name: str,
    tags: Mapping[str, str] | None = None,
    state_uri: str | None = None,
    state_key: str = "mlflow_run_id",
    uri: str | None = None,
) -> Iterator[TrackedRun]:
    """Open an MLflow run for one command, and always end it.

    With ``state_uri`` (a JSON file in the command's output), a run recorded there for the same
    tracking store is reopened instead of creating another (a resumed pretraining or search logs
    to the run it started); a new run is recorded there. On exit the run is marked as
    ``TrackedRun.status`` (FINISHED unless the block changed it), FAILED when the block raised and
    KILLED on Ctrl-C; a failure to end the run never hides the block's own error.
    """
    uri = uri or tracking_uri(cfg)
    run: TrackedRun | None = None
    if state_uri and storage.exists(state_uri, cfg.storage):
        state = json.loads(storage.read_text(state_uri, cfg.storage))
        if state.get("tracking_uri") == uri and reopen_run(uri, state[state_key]):
            run = TrackedRun(uri, state[state_key], reopened=True)
    if run is None:
        run = TrackedRun(uri, start_run(cfg, run_name=run_name, tags=tags, uri=uri), reopened=False)
        if state_uri:
            storage.write_text(state_uri, json.dumps({state_key: run.run_id, "tracking_uri": uri}), cfg.storage)
    with ended(run):
        yield run


@contextmanager
def ended(run: TrackedRun) -> Iterator[TrackedRun]:
    """End ``run`` when the block ends: as ``run.status`` (FINISHED unless the block changed it),
    FAILED when the block raised, KILLED on Ctrl-C. A failure to end the run never hides the
    block's own error."""
    try:
        yield run
    except KeyboardInterrupt:
        run.status = "KILLED"
        raise
    except BaseException:
        run.status = "FAILED"
        raise
    finally:
        try:
            end_run(run.uri, run.run_id, run.status)
        except Exception:  # noqa: BLE001
            if run.status == "FINISHED":  # nothing else went wrong: say so
                raise


# ----------------------------------------------------------------------------- the MLflow model


def _python_model_class() -> type:
    """The pyfunc model class, defined on first use so that importing this module does not
    import mlflow; it loads the checkpoint through the run folder (which imports nothing of
    this module)."""
    import mlflow.pyfunc

    class ConCluGenRepresentations(mlflow.pyfunc.PythonModel):
        """pyfunc model: per-modality features → per-modality representations.

        Input: a dict modality → float32 array [N, dim] (or a pandas DataFrame whose columns hold
        one vector per row). Output: a dict modality → float32 array [N, D].
        """

        def load_context(self, context: Any) -> None:
            from conclugen.training.run_folder import load_checkpoint

            self.model, self.info = load_checkpoint(context.artifacts["checkpoint"])
            self.model.eval()

        def predict(self, context, model_input, params=None):  # noqa: ANN001 - untyped for MLflow
            import numpy as np
            import torch

            feats = {}
            for m in self.model.modalities:
                col = model_input[m]
                arr = np.stack([np.asarray(v, dtype=np.float32) for v in col]) if not isinstance(
                    col, np.ndarray
                ) else col.astype(np.float32, copy=False)
                feats[m] = torch.from_numpy(arr.reshape(arr.shape[0], -1))
            with torch.no_grad():
                reps = self.model.represent(feats)
            return {m: r.numpy() for m, r in reps.items()}

    return ConCluGenRepresentations


@contextmanager
def scoped_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` for the block, then restored exactly — including
    the MLFLOW_TRACKING_URI variable, which ``mlflow.set_tracking_uri`` exports as a side effect
    (restoring the default that way would pin every later ``Config.tracking_uri()`` in this
    process to ./mlflow.db of the current directory)."""
    import mlflow
    import mlflow.tracking._tracking_service.utils as mlflow_uri

    previous, previous_env = mlflow_uri._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def log_representation_model(
    uri: str,
    run_id: str,
    checkpoint_file: str | Path,
    input_dims: Mapping[str, int],
    d: int,
    name: str = "model",
) -> str:
    """Log the checkpoint as an MLflow pyfunc model with a tensor signature
    (inputs: one float32 [-1, dim] tensor per modality; outputs: float32 [-1, D] per modality).
    Returns the model URI (``runs:/<run_id>/<name>``)."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(v)), name=m) for m, v in input_dims.items()]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(d)), name=m) for m in input_dims]),
    )
    # start_run(run_id=…) ends the run as FINISHED on exit; the caller decides the final status.
    with scoped_tracking_uri(uri), mlflow.start_run(run_id=run_id, log_system_metrics=False):
        mlflow.pyfunc.log_model(
            name=name,
            python_model=_python_model_class()(),
            artifacts={"checkpoint": str(checkpoint_file)},
            signature=signature,
        )
    return f"runs:/{run_id}/{name}"


def local_copy(uri: str) -> str:
    """A local file holding the object at ``uri`` (the path itself when already local)."""
    if not storage.is_s3(uri):
        fs, path = storage.resolve(uri)
        return path
    fd, tmp = tempfile.mkstemp(suffix=Path(uri).suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(storage.read_bytes(uri))
    return tmp
