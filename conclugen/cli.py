"""The ``conclugen`` command. Thin: parse, load the config, call the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from conclugen.config import Config, ConfigError, load_config

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


def _load(
    config: Path | None, overrides: list[str] | None, base: dict | None = None, **extra: object
) -> Config:
    # Explicit command-line options beat --set, which beats the file, which beats `base`.
    sets = list(overrides or [])
    sets += [f"{k}={v}" for k, v in extra.items() if v is not None]
    try:
        return load_config(config, sets, base=base)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _not_built(name: str) -> None:
    typer.echo(f"error: `conclugen {name}` is not built yet (see the open issues).", err=True)
    raise typer.Exit(3)


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the effective config (defaults ← file ← --set) as YAML, secrets removed."""
    typer.echo(_load(config, set_).to_yaml(), nl=False)


@app.command()
def synth(
    out: Annotated[str, typer.Argument(help="Output directory or s3:// URI.")],
    clips: Annotated[int, typer.Option(help="Number of clips.")] = 70,
    seed: Annotated[int, typer.Option(help="Random seed (output is byte-identical per seed).")] = 0,
    difficulty: Annotated[float, typer.Option(help="0 = every modality clear … 1 = very ambiguous.")] = 0.3,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a synthetic corpus in MELD's distributed layout."""
    cfg = _load(config, set_)
    from conclugen.corpora.synthetic import synthesize

    summary = synthesize(out, clips=clips, seed=seed, difficulty=difficulty, storage_cfg=cfg.storage)
    typer.echo(summary.describe())


@app.command()
def extract(
    corpus_root: Annotated[str, typer.Argument(help="Corpus root (path or s3:// URI).")],
    out: Annotated[str, typer.Option("--out", help="Features URI.")],
    corpus: Annotated[str, typer.Option(help="meld | caer | mosei | folder")] = "meld",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Extract per-clip backbone features with Ray Data."""
    _load(config, set_, **{"corpus.name": corpus})
    _not_built("extract")


@app.command()
def pretrain(
    features: Annotated[str, typer.Argument(help="Features URI.")],
    out: Annotated[str, typer.Option("--out", help="Run URI (checkpoints).")],
    workers: Annotated[int | None, typer.Option(help="Ray Train workers.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Pretrain the ConCluGen heads with Ray Train."""
    _load(config, set_, **{"train.workers": workers, "train.epochs": epochs})
    _not_built("pretrain")


@app.command()
def evaluate(
    features: Annotated[str, typer.Argument(help="Features URI.")],
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="Checkpoint URI.")],
    out: Annotated[str | None, typer.Option("--out", help="Report directory.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Linear probe on frozen representations, with baselines."""
    _load(config, set_)
    _not_built("evaluate")


@app.command()
def ablate(
    features: Annotated[str, typer.Argument(help="Features URI.")],
    out: Annotated[str, typer.Option("--out", help="Output directory.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Pretrain + evaluate the reference's ablation set; one table."""
    _load(config, set_)
    _not_built("ablate")


@app.command()
def tune(
    features: Annotated[str, typer.Argument(help="Features URI.")],
    space: Annotated[str, typer.Option("--space", help="Search space YAML.")],
    samples: Annotated[int | None, typer.Option(help="Trials.")] = None,
    name: Annotated[str | None, typer.Option(help="Search name (re-use to resume).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Hyperparameter search with Ray Tune."""
    _load(config, set_, **{"tune.samples": samples})
    _not_built("tune")


@app.command()
def predict(
    videos: Annotated[list[str], typer.Argument(help="Video files, folders or s3:// URIs.")],
    model: Annotated[str, typer.Option("--model", help="Model URI.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Emotions for new videos."""
    _load(config, set_)
    _not_built("predict")


@app.command()
def demo(
    workdir: Annotated[str | None, typer.Option(help="Work directory.")] = None,
    clips: Annotated[int, typer.Option(help="Synthetic clips.")] = 70,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """The whole pipeline on the embedded defaults, offline."""
    from conclugen.demo import DEMO_BASE, run_demo

    cfg = _load(config, set_, base=DEMO_BASE, workdir=workdir)

    run_demo(cfg, clips=clips)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Serve the MLflow UI for this work directory on 127.0.0.1."""
    import subprocess

    cfg = _load(config, set_)
    uri = cfg.tracking_uri()
    typer.echo(f"MLflow UI for {uri} at http://127.0.0.1:{port}")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", uri]
    raise typer.Exit(subprocess.call(cmd))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
