"""The ``conclugen`` command. Thin: parse, load the config, call the library.

Every command goes through :func:`command`: the project's own errors (``ConCluGenError``) end as one
``error: …`` line on stderr and exit 1 (a bad config or ``--set`` exits 2, before any work), and a
command that needs Ray calls :func:`use_ray` once its fail-fast checks passed; Ray is then shut down
when the command ends, if the command started it. ``python -m conclugen`` and ``jobs/*.py`` enter
through :func:`main`, the same path as the console script.
"""

from __future__ import annotations

import contextvars
import functools
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from conclugen.config import Config, ConfigError, load_config
from conclugen.errors import ConCluGenError

app = typer.Typer(
    help="ConCluGen: multimodal self-supervised FER pretraining on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config field: section.key=value (repeatable)."),
]

P = ParamSpec("P")
R = TypeVar("R")
# What the running command must undo when it ends (Ray it started); one per command invocation.
_CLEANUP: contextvars.ContextVar[ExitStack] = contextvars.ContextVar("conclugen_cli_cleanup")


def fail(message: object, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr; returns the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def command(fn: Callable[P, R]) -> Callable[P, R]:
    """The one wrapper of every command: project errors → one line and exit 1; Ray it started
    (:func:`use_ray`) is shut down when the command ends, however it ends."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with ExitStack() as cleanup:
            token = _CLEANUP.set(cleanup)
            try:
                return fn(*args, **kwargs)
            except ConCluGenError as e:
                raise fail(e) from None
            finally:
                _CLEANUP.reset(token)

    return run


def use_ray(cfg: Config) -> None:
    """Start or join Ray (``runtime.ensure_ray``) for the rest of the running command."""
    from conclugen.runtime import ray_session

    _CLEANUP.get().enter_context(ray_session(cfg))


def _load(
    config: Path | None, overrides: list[str] | None, base: dict | None = None, **extra: object
) -> Config:
    # Explicit command-line options beat --set, which beats the file, which beats `base`.
    sets = list(overrides or [])
    sets += [f"{k}={v}" for k, v in extra.items() if v is not None]
    try:
        return load_config(config, sets, base=base)
    except ConfigError as e:
        raise fail(e, 2) from None


@config_app.command("show")
@command
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the effective config (defaults ← file ← --set) as YAML, secrets removed."""
    typer.echo(_load(config, set_).to_yaml(), nl=False)


@app.command()
@command
def synth(
    out: Annotated[str, typer.Argument(help="Output directory or s3:// URI.")],
    clips: Annotated[int, typer.Option(help="Number of clips.")] = 70,
    seed: Annotated[int, typer.Option(help="Random seed (output is byte-identical per seed).")] = 0,
    difficulty: Annotated[float, typer.Option(help="0 = every modality clear … 1 = very ambiguous.")] = 0.3,
    unlabeled: Annotated[int, typer.Option(help="Clips of an unlabeled pool for pretraining, same "
                                           "generative process (split 'unlabeled').")] = 0,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a synthetic corpus in MELD's distributed layout."""
    cfg = _load(config, set_)
    from conclugen.data.synthetic import synthesize

    summary = synthesize(out, clips=clips, seed=seed, difficulty=difficulty, storage_cfg=cfg.storage,
                         unlabeled=unlabeled)
    typer.echo(summary.describe())


@app.command()
@command
def extract(
    corpus_root: Annotated[str, typer.Argument(help="Corpus root (path or s3:// URI).")],
    out: Annotated[str, typer.Option("--out", help="Features URI.")],
    corpus: Annotated[str, typer.Option(help="meld | caer | mosei | folder")] = "meld",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Extract per-clip backbone features with Ray Data."""
    cfg = _load(config, set_, **{"corpus.name": corpus})
    from conclugen.features.extract import run_extract

    use_ray(cfg)
    run_extract(corpus_root, cfg.corpus.name, out, cfg, progress=typer.echo)


@app.command()
@command
def compact(
    features: Annotated[str, typer.Argument(help="Features URI (an `extract --out`).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Merge a feature store's small shards into files of ~extract.shard_mb MB (safe to interrupt)."""
    cfg = _load(config, set_)
    from conclugen.features.compact import run_compact

    typer.echo(run_compact(features, cfg).describe())


@app.command()
@command
def pretrain(
    features: Annotated[str, typer.Argument(help="Features URI.")],
    out: Annotated[str, typer.Option("--out", help="Run URI (checkpoints).")],
    workers: Annotated[int | None, typer.Option(help="Ray Train workers.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Pretrain the ConCluGen heads with Ray Train (re-run with the same --out to resume)."""
    cfg = _load(config, set_, **{"train.workers": workers, "train.epochs": epochs})
    from conclugen.training.driver import check_features, run_pretrain

    check_features(features, cfg)  # fail fast, before Ray starts
    use_ray(cfg)
    typer.echo(run_pretrain(features, out, cfg).describe())


@app.command()
@command
def evaluate(
    features: Annotated[str, typer.Argument(help="Features URI.")],
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", help="Checkpoint folder, or a pretraining run folder (its best checkpoint).")
    ],
    out: Annotated[str | None, typer.Option("--out", help="Report directory.")] = None,
    label_fractions: Annotated[
        str | None,
        typer.Option("--label-fractions", help="Also probe on these stratified shares of the training labels, "
                     "e.g. 0.01,0.05,0.1,0.25,1 (table, CSV and plot in OUT/label_efficiency)."),
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Repeats per label fraction (subset + probe seed).")] = 5,
    also: Annotated[
        list[str] | None,
        typer.Option("--also", help="NAME=CHECKPOINT: probe this checkpoint's heads too (repeatable)."),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Linear probe on frozen representations, with baselines (raw features, random heads).

    Writes reports, PNGs, the comparison table (95% intervals) and a predict bundle (OUT/model);
    logs an MLflow run nested under the pretraining run."""
    cfg = _load(config, set_)
    from conclugen.evaluation.evaluate import parse_also, parse_fractions, run_evaluate

    fractions = parse_fractions(label_fractions) if label_fractions else None
    result = run_evaluate(features, checkpoint, cfg, out, also=parse_also(also or []), label_fractions=fractions,
                          seeds=seeds, progress=typer.echo if fractions else None)
    typer.echo(result.describe())


@app.command()
@command
def ablate(
    features: Annotated[str, typer.Argument(help="Features URI.")],
    out: Annotated[str, typer.Option("--out", help="Output directory.")],
    rows: Annotated[
        list[str] | None, typer.Option("--row", help="Run only this row (repeatable; default: all of them).")
    ] = None,
    parallel: Annotated[int, typer.Option(help="Rows at once (0 = as many as the cluster fits).")] = 0,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Pretrain + evaluate the reference's ablation set at equal budget; one table."""
    cfg = _load(config, set_)
    from conclugen.evaluation.ablation import run_ablation

    use_ray(cfg)
    result = run_ablation(features, out, cfg, rows=rows, max_parallel=parallel, progress=typer.echo)
    typer.echo(result.describe())
    if any(r.status == "failed" for r in result.rows):
        raise typer.Exit(1)


@app.command()
@command
def tune(
    features: Annotated[str, typer.Argument(help="Features URI.")],
    space: Annotated[str, typer.Option("--space", help="Search space YAML.")],
    samples: Annotated[int | None, typer.Option(help="Trials.")] = None,
    name: Annotated[str | None, typer.Option(help="Search name (re-use to resume).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Hyperparameter search with Ray Tune (re-use --name to resume a search)."""
    cfg = _load(config, set_, **{"tune.samples": samples})
    from conclugen.search.space import load_space
    from conclugen.search.tune import run_tune
    from conclugen.training.driver import check_features

    load_space(space)  # a bad space or bad features stop here, before Ray starts
    check_features(features, cfg)
    use_ray(cfg)
    summary = run_tune(features, space, cfg, samples=samples, name=name)
    typer.echo(summary.table())
    typer.echo(summary.describe())
    if summary.best_config_path:
        typer.echo(f"best config: {summary.best_config_path}")
    if summary.best is None:
        raise fail("no trial produced an objective")


@app.command()
@command
def predict(
    videos: Annotated[list[str], typer.Argument(help="Video files, folders or s3:// URIs.")],
    model: Annotated[str, typer.Option("--model", help="Model URI: an `evaluate` output folder or its model/.")],
    out: Annotated[
        str | None, typer.Option("--out", help="Folder for predictions.csv/.json (default: WORKDIR/predict).")
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Run the stages in this process, without Ray (a few clips).")
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Emotions for new videos (files, folders, Parquet manifests; local or s3://).

    Runs as Ray Data batch inference (--local: in this process, as the served MLflow model does);
    a file that cannot be read gets an error line."""
    cfg = _load(config, set_)
    from conclugen.evaluation.bundle import bundle_dir
    from conclugen.serving.predict import predict_videos

    bundle_dir(model, cfg.storage)  # no bundle there: stop before Ray starts
    if not local:
        use_ray(cfg)
    result = predict_videos(videos, model, cfg, out=out or str(Path(cfg.workdir) / "predict"), local=local)
    typer.echo(result.table())
    if result.n_ok == 0:
        raise typer.Exit(1)


@app.command("import-reference")
@command
def import_reference(
    ckpt: Annotated[str, typer.Argument(help="The authors' released Lightning .ckpt (path or s3:// URI).")],
    corpus: Annotated[str, typer.Option("--corpus", help="caer | meld | mosei (sets the classifier's label order).")],
    out: Annotated[str, typer.Option("--out", help="Output folder: a checkpoint folder, and DIR/model for predict.")],
    backbone: Annotated[
        list[str] | None, typer.Option("--backbone", help="KIND=SPEC: the backbone predict loads (repeatable).")
    ] = None,
    backbone_dim: Annotated[
        list[str] | None, typer.Option("--backbone-dim", help="KIND=N: its vector width (repeatable).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Import a released reference model: for `evaluate --checkpoint OUT` and `predict --model OUT`."""
    cfg = _load(config, set_)
    from conclugen.training.reference_import import import_reference as run_import
    from conclugen.training.reference_import import parse_backbone_options

    specs, dims = parse_backbone_options(backbone or [], backbone_dim or [])
    typer.echo(run_import(ckpt, corpus, out, cfg, backbones=specs, backbone_dims=dims).describe())


@app.command()
@command
def demo(
    workdir: Annotated[str | None, typer.Option(help="Work directory.")] = None,
    clips: Annotated[int, typer.Option(help="Labelled synthetic clips.")] = 280,
    unlabeled: Annotated[int, typer.Option(help="Unlabeled pool clips for pretraining.")] = 140,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """The whole pipeline on the embedded defaults, offline."""
    from conclugen.demo import DEMO_BASE, run_demo

    cfg = _load(config, set_, base=DEMO_BASE, workdir=workdir)
    run_demo(cfg, clips=clips, unlabeled=unlabeled)


@app.command()
@command
def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Serve the MLflow UI for this work directory on 127.0.0.1."""
    import subprocess

    cfg = _load(config, set_)
    from conclugen.tracking import tracking_uri

    uri = tracking_uri(cfg)  # creates the work directory for the embedded sqlite default
    typer.echo(f"MLflow UI for {uri} at http://127.0.0.1:{port}")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", uri]
    raise typer.Exit(subprocess.call(cmd))


def main(args: list[str] | None = None, prog_name: str | None = None) -> None:
    """Console entry (``conclugen``, ``python -m conclugen``, ``jobs/*.py``)."""
    app(args=args, prog_name=prog_name)


if __name__ == "__main__":  # pragma: no cover
    main()
