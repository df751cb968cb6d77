"""The ``recicl`` command line: one library call per command, errors as one readable line.

Commands parse flags into config overrides (flags win over the YAML file) and call exactly one
library function; anything heavier belongs in the library so that ``ray_jobs/*.py`` and tests can
call the same code.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from recicl.config import ReciclConfig, load_config, with_overrides
from recicl.errors import ReciclError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
samples_app = typer.Typer(no_args_is_help=True, help="Build ICL samples from interaction logs.")
data_app = typer.Typer(no_args_is_help=True, help="Data utilities (synthetic logs).")
app.add_typer(samples_app, name="samples")
app.add_typer(data_app, name="data")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configuration.")
app.add_typer(config_app, name="config")
model_app = typer.Typer(no_args_is_help=True, help="Model utilities (tiny local model).")
app.add_typer(model_app, name="model")

console = Console(stderr=True)


@app.callback()
def _quiet_ray_logs() -> None:
    """Ray Data logs every execution at INFO; progress bars and our summary say enough."""
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")


F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn expected, user-fixable errors into one red line and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ReciclError as error:
            console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def resolve_config(config_file: Path | None, overrides: dict[str, Any]) -> ReciclConfig:
    """Config file (or defaults) with the flags that were given applied on top."""
    return with_overrides(load_config(config_file), overrides)


@config_app.command("show")
@friendly_errors
def config_show(config: Path | None = typer.Option(None, "--config", help="YAML file.")) -> None:
    """Print the resolved configuration (file + defaults) as YAML."""
    import yaml

    print(yaml.safe_dump(load_config(config).model_dump(mode="json"), sort_keys=False), end="")


@config_app.command("reference")
def config_reference() -> None:
    """Print every config key with its default and meaning (Markdown)."""
    from recicl.config import reference_markdown

    print(reference_markdown())


@samples_app.command("build")
@friendly_errors
def samples_build(
    source: str | None = typer.Option(
        None, help="movielens | amazon | parquet | csv (default: config, else movielens)"
    ),
    path: str | None = typer.Option(None, help="Folder with the source files."),
    output: str | None = typer.Option(None, help="Output folder for samples/manifest."),
    config: Path | None = typer.Option(None, "--config", help="YAML config file."),
    periods: int | None = typer.Option(None, help="Number of equal-count periods."),
    num_demos: int | None = typer.Option(None, help="Demonstrations per sample."),
    history_len: int | None = typer.Option(None, help="Liked items per history."),
    min_demos: int | None = typer.Option(None, help="Minimum earlier events for a sample."),
    like_threshold: float | None = typer.Option(None, help="Rating at or above = liked."),
) -> None:
    """Read logs, validate and quarantine, cut periods and write ICL samples (Ray Data)."""
    from recicl.data.pipeline import build_samples, print_summary

    cfg = resolve_config(
        config,
        {
            "data.source": source,
            "data.path": path,
            "data.like_threshold": like_threshold,
            "samples.output": output,
            "samples.periods": periods,
            "samples.num_demos": num_demos,
            "samples.history_len": history_len,
            "samples.min_demos": min_demos,
        },
    )
    if periods is not None:
        cfg.samples.boundaries = None
    manifest = build_samples(cfg)
    print_summary(manifest)


@data_app.command("synth")
@friendly_errors
def data_synth(
    output: Path = typer.Option(..., help="Folder to write events.parquet and catalog.parquet."),
    users: int = typer.Option(500, min=1, help="Number of users."),
    events_per_user: int = typer.Option(40, min=1, help="Events per user."),
    seed: int = typer.Option(0, help="Random seed; same seed, same data."),
    drift_at: float = typer.Option(
        0.6, min=0.0, max=1.0, help="Where on the timeline (0-1) preferences switch, on average."
    ),
) -> None:
    """Write a synthetic log whose users switch genre preference at a planted time."""
    from recicl.data.synth import SynthSpec, write_synthetic

    spec = SynthSpec(users=users, events_per_user=events_per_user, seed=seed, drift_at=drift_at)
    summary = write_synthetic(spec, output)
    console.print(
        f"wrote {summary['events']:,} events of {summary['users']:,} users over "
        f"{summary['items']:,} items to {output}"
    )


@model_app.command("init-tiny")
@friendly_errors
def model_init_tiny(
    catalog: Path = typer.Option(..., help="catalog.parquet written by `recicl samples build`."),
    output: Path = typer.Option(..., help="Folder for the model + tokenizer (HF format)."),
    config: Path | None = typer.Option(None, "--config", help="YAML config file."),
) -> None:
    """Make a tiny random Llama + BPE tokenizer from a catalog (no download; seconds on CPU)."""
    from recicl.modeling.tiny import init_tiny_model

    cfg = resolve_config(config, {})
    path = init_tiny_model(catalog, output, cfg.model.tiny, cfg.prompt)
    console.print(f"wrote a tiny model to {path}; use it with model.name_or_path: {path}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
