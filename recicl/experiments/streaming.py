"""The streaming protocol of the RecICL paper: tune once on periods ≤ t, then evaluate every later
period with **no update**, for several variants side by side.

* ``zero-shot``  the base model with RecICL prompts, no tuning;
* ``tallrec``    tuned on prompts without demonstrations (history only): the baseline;
* ``tallrec+demos`` the ``tallrec`` model given the same demonstrations as ``recicl`` at
  inference: RecICL's claim is that a model tuned without the ICL format cannot use them;
* ``recicl``     tuned on prompts with demonstrations (the user's newest events);
* ``recicl+stats`` the same, with each asked-about item's statistics frozen at the end of the
  training periods in its question ("72% of 140 viewers liked it", ``prompt.item_stats``):
  collaborative knowledge a reader of one user's events cannot have. The named LLM variants
  above set ``prompt.item_stats`` themselves (off, except this one); few-shot and retrained
  variants follow the config;
* ``<format>@N`` (``experiment.few_shot``) tuned on only N training samples (or a fraction),
  the few-shot settings of TALLRec (16/64/256) and ReLLa (< 10 % of the data);
* ``classical``  logistic regression on user/item/genre features (scikit-learn), same periods;
* ``demo-rate``  no model at all: the share of Yes among the sample's demonstrations (the user's
  recent like rate). On MovieLens this alone is a strong signal, so it shows how much of an
  LLM's AUC is "reads the user's recent like rate" and how much is more;
* ``retrained``  ``recicl`` re-tuned on all periods before each evaluated one: the costly upper
  bound that RecICL tries to approach without retraining;
* ``logistic``, ``boosted-trees``, ``mf``, ``sasrec``, ``din``  non-LLM baselines fitted on the
  training periods (recicl/evaluate/baselines.py, docs/baselines.md), and ``<name>-retrained``,
  each refitted on all periods before each evaluated one.

Output: one table (variant × period: AUC, UAUC, LogLoss, count) printed and saved as CSV + JSON,
one plot, and an MLflow parent run with one child run per variant.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recicl.config import ConfigError, ReciclConfig, parse_periods
from recicl.data.item_stats import check_no_leak, item_stats_meta, read_item_stats
from recicl.data.samples_folder import SamplesFolder
from recicl.evaluate.baselines import (
    BASELINES,
    RETRAINED_BASELINES,
    fit_baseline,
    retrained_scores,
)
from recicl.evaluate.batch import report_from_scores, score_samples, subsample_per_period
from recicl.evaluate.classical import fit_classical
from recicl.evaluate.metrics import metrics_by_period
from recicl.evaluate.plots import plot_by_period
from recicl.modeling.importing import ensure_base_model
from recicl.registry import client, ensure_experiment, resolve_tracking_uri
from recicl.train import train

log = logging.getLogger(__name__)


def _base_model(cfg: ReciclConfig, samples_dir: Path, workdir: Path) -> str:
    """The configured base model, or a tiny one built from the catalog (nothing downloaded)."""
    if cfg.model.name_or_path:
        ensure_base_model(cfg.model)
        local = Path(cfg.model.name_or_path).expanduser()
        return str(local.resolve()) if local.exists() else cfg.model.name_or_path

    target = workdir / "tiny-model"
    if not (target / "config.json").is_file():
        from recicl.modeling import init_tiny_model

        init_tiny_model(SamplesFolder(samples_dir).catalog_path, target, cfg.model.tiny, cfg.prompt)
    return str(target)


def demo_like_rate(table: pa.Table) -> np.ndarray:
    """Share of Yes among each sample's demonstrations (0.5 without any)."""
    out = np.full(table.num_rows, 0.5)
    for row, demos in enumerate(table["demos"].to_pylist()):
        if demos:
            out[row] = float(np.mean([d["label"] for d in demos]))
    return out


def few_shot_name(prompt_format: str, size: int | float) -> str:
    """Row name of a few-shot variant: 'recicl@256', 'recicl@10%'."""
    if isinstance(size, float) and not size.is_integer():
        return f"{prompt_format}@{100 * size:g}%"
    return f"{prompt_format}@{int(size)}"


def _train_variant(
    cfg: ReciclConfig,
    base: str,
    prompt_format: str,
    periods: list[int],
    run_name: str,
    max_train_samples: int | float | None = None,
    item_stats: bool | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Tune one variant; return its packaged model folder and training facts.
    ``item_stats``: show item statistics in its prompts (None: as the config says)."""

    raw = cfg.model_dump(mode="json")
    raw["model"]["name_or_path"] = base
    raw["prompt"]["format"] = prompt_format
    if item_stats is not None:
        raw["prompt"]["item_stats"] = item_stats
    raw["train"]["train_periods"] = periods
    raw["train"]["val_periods"] = []
    raw["train"]["run_name"] = run_name
    if max_train_samples is not None:
        raw["train"]["max_train_samples"] = max_train_samples
    variant_cfg = ReciclConfig.model_validate(raw)
    result = train(variant_cfg)
    if result.model_dir is None:
        raise ConfigError(f"training {run_name} produced no model folder")
    facts = {
        "train_run_id": result.run_id,
        "version": result.version,
        "train_seconds": round(result.seconds, 1),
        "model_dir": str(result.model_dir),
        "train_samples": int(result.plan.get("train_rows", 0)),
        "steps": int(result.plan.get("total_steps", 0)),
    }
    return Path(result.model_dir), facts


def run_streaming(cfg: ReciclConfig) -> dict[str, Any]:
    """Run every configured variant and return {"rows": [...], "variants": {...}, paths}."""
    import ray.data

    from recicl.raycluster import ensure_ray

    exp = cfg.experiment
    samples = SamplesFolder.from_config(cfg)
    samples.require_manifest()
    samples_dir = samples.root
    available = sorted(p for p, n in samples.sample_counts().items() if n)
    train_periods = parse_periods(exp.train_periods) or []
    eval_periods = parse_periods(exp.eval_periods) or [
        p for p in available if p > max(train_periods, default=-1)
    ]
    missing = sorted(set(train_periods + eval_periods) - set(available))
    if missing or not train_periods or not eval_periods:
        raise ConfigError(
            f"experiment periods: train {train_periods}, eval {eval_periods}; available "
            f"{available}{f', missing {missing}' if missing else ''}"
        )
    if min(eval_periods) <= max(train_periods):
        raise ConfigError("experiment.eval_periods must all come after experiment.train_periods")

    workdir = Path(cfg.workdir).expanduser().resolve()
    output = Path(exp.output).expanduser() if exp.output else workdir / "experiments" / "streaming"
    output.mkdir(parents=True, exist_ok=True)
    ensure_ray(cfg.ray)
    seed = cfg.train.seed
    eval_table = subsample_per_period(samples.read_table(eval_periods), exp.max_eval_samples, seed)
    catalog = pq.read_table(samples.catalog_path)

    tracking_uri = resolve_tracking_uri(cfg)
    mlc = client(tracking_uri)
    experiment_id = ensure_experiment(cfg, tracking_uri)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent = mlc.create_run(
        experiment_id,
        tags={"mlflow.runName": f"streaming-{stamp}", "recicl.kind": "streaming"},
    ).info.run_id
    mlc.log_param(parent, "train_periods", ",".join(map(str, train_periods)))
    mlc.log_param(parent, "eval_periods", ",".join(map(str, eval_periods)))
    mlc.log_param(parent, "samples_hash", samples.content_id())  # content, as SAMPLES_TAG

    def llm_report(
        model_dir: Path, prompt_override: Any, table: pa.Table, label: str, force: bool = False
    ) -> dict[str, Any]:
        scores = score_samples(
            model_dir,
            samples_dir,
            None,
            prompt=prompt_override,
            replicas=cfg.evaluate.replicas,
            batch_size=cfg.evaluate.batch_size,
            use_gpu=cfg.evaluate.use_gpu,
            samples=ray.data.from_arrow(table),
            force_prompt=force,
            label=label,
            model=cfg.model,  # the zero-shot base loads with the tuned variants' dtype
        )
        report = report_from_scores(scores)
        report["mean_prompt_tokens"] = report["prompts"]["mean_tokens"]
        return report

    if "recicl+stats" in exp.variants:  # refuse before minutes of tuning, not after
        stats = read_item_stats(samples.item_stats_path)
        check_no_leak(item_stats_meta(stats).get("until_period"), eval_periods, "recicl+stats")
    base = _base_model(cfg, samples_dir, workdir)
    recicl_prompt = cfg.prompt.model_copy(update={"format": "recicl", "item_stats": False})
    tuned: dict[str, tuple[Path, dict[str, Any]]] = {}

    def tuned_once(prompt_format: str, item_stats: bool = False) -> tuple[Path, dict[str, Any]]:
        """tallrec is tuned once, whether tallrec, tallrec+demos or both are asked for."""
        key = f"{prompt_format}+stats" if item_stats else prompt_format
        if key not in tuned:
            tuned[key] = _train_variant(
                cfg,
                base,
                prompt_format,
                train_periods,
                f"streaming-{stamp}-{key}",
                item_stats=item_stats,
            )
        return tuned[key]

    variants: list[str] = list(exp.variants)
    few_shot = {few_shot_name(exp.few_shot_format, n): n for n in exp.few_shot}
    variants += [name for name in few_shot if name not in variants]
    reports: dict[str, dict[str, Any]] = {}
    facts: dict[str, dict[str, Any]] = {}
    for variant in variants:
        started = time.perf_counter()
        log.info("streaming: variant %s", variant)
        if variant == "zero-shot":
            reports[variant] = llm_report(Path(base), recicl_prompt, eval_table, variant)
            facts[variant] = {}
        elif variant in ("tallrec", "recicl", "recicl+stats"):
            model_dir, trained = tuned_once(variant.split("+")[0], variant.endswith("+stats"))
            facts[variant] = dict(trained)
            reports[variant] = llm_report(model_dir, None, eval_table, variant)
        elif variant == "tallrec+demos":
            model_dir, trained = tuned_once("tallrec")
            facts[variant] = {"model": "the tallrec variant", "version": trained.get("version")}
            reports[variant] = llm_report(model_dir, recicl_prompt, eval_table, variant, True)
        elif variant in few_shot:
            model_dir, facts[variant] = _train_variant(
                cfg,
                base,
                exp.few_shot_format,
                train_periods,
                f"streaming-{stamp}-{variant.replace('@', '-').replace('%', 'pct')}",
                max_train_samples=few_shot[variant],
            )
            reports[variant] = llm_report(model_dir, None, eval_table, variant)
        elif variant == "classical":
            train_table = samples.read_table(train_periods)
            model = fit_classical(train_table, catalog)
            scores = model.score(eval_table, catalog)
            reports[variant] = metrics_by_period(
                eval_table["period"].to_numpy(),
                eval_table["user_id"].to_numpy(zero_copy_only=False),
                eval_table["label"].to_numpy(),
                scores,
            )
            facts[variant] = {"train_samples": train_table.num_rows}
        elif variant in BASELINES or variant in RETRAINED_BASELINES:
            if variant in BASELINES:  # fitted once on the training periods, frozen
                train_table = samples.read_table(train_periods)
                fit_started, fit_cpu = time.perf_counter(), time.process_time()
                baseline = fit_baseline(variant, train_table, catalog, seed=seed)
                facts[variant] = {
                    "train_rows": train_table.num_rows,
                    "fit_seconds": round(time.perf_counter() - fit_started, 1),
                    "fit_cpu_seconds": round(time.process_time() - fit_cpu, 1),
                }
                scores = baseline.score(eval_table, catalog)
            else:  # refitted on every period before each evaluated one
                scores, facts[variant] = retrained_scores(
                    variant, samples.read_table, available, eval_table, catalog, seed=seed
                )
            reports[variant] = metrics_by_period(
                eval_table["period"].to_numpy(),
                eval_table["user_id"].to_numpy(zero_copy_only=False),
                eval_table["label"].to_numpy(),
                scores,
            )
        elif variant == "demo-rate":
            scores = demo_like_rate(eval_table)
            reports[variant] = metrics_by_period(
                eval_table["period"].to_numpy(),
                eval_table["user_id"].to_numpy(zero_copy_only=False),
                eval_table["label"].to_numpy(),
                scores,
            )
            facts[variant] = {}
        elif variant == "retrained":
            per_period: dict[str, Any] = {"periods": {}}
            versions: dict[str, Any] = {}
            for period in eval_periods:
                history = [p for p in available if p < period]
                model_dir, trained = _train_variant(
                    cfg, base, "recicl", history, f"streaming-{stamp}-retrained-{period}"
                )
                versions[str(period)] = trained.get("version")
                table = eval_table.filter(pc.equal(eval_table["period"], period))
                report = llm_report(model_dir, None, table, f"retrained-D{period}")
                per_period["periods"].update(report["periods"])
            reports[variant] = per_period
            facts[variant] = {"versions": versions}
        if "mean_prompt_tokens" in reports[variant]:
            facts[variant]["mean_prompt_tokens"] = round(reports[variant]["mean_prompt_tokens"], 1)
        facts[variant]["seconds"] = round(time.perf_counter() - started, 1)
        child = mlc.create_run(
            experiment_id,
            tags={
                "mlflow.runName": f"{variant}",
                "mlflow.parentRunId": parent,
                "recicl.kind": "streaming-variant",
                "recicl.variant": variant,
            },
        ).info.run_id
        for period, values in reports[variant]["periods"].items():
            for key in ("auc", "uauc", "logloss"):
                if values.get(key) is not None:
                    mlc.log_metric(child, f"p{period}_{key}", float(values[key]))
        for key, value in facts[variant].items():
            mlc.set_tag(child, f"recicl.{key}", str(value))
        mlc.set_terminated(child)

    rows = [
        {
            "variant": variant,
            "period": int(period),
            **{k: values.get(k) for k in ("auc", "uauc", "logloss", "count", "like_rate")},
        }
        for variant, report in reports.items()
        for period, values in sorted(report["periods"].items(), key=lambda kv: int(kv[0]))
    ]
    with (output / "streaming.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = {
        "train_periods": train_periods,
        "eval_periods": eval_periods,
        "rows": rows,
        "variants": facts,
        "mlflow_parent_run_id": parent,
    }
    (output / "streaming.json").write_text(json.dumps(result, indent=2) + "\n")
    plot = plot_by_period(
        reports,
        output / "streaming.png",
        title=f"streaming: tuned on periods {train_periods[0]}-{train_periods[-1]}",
    )
    for path in (output / "streaming.csv", output / "streaming.json", plot):
        mlc.log_artifact(parent, str(path))
    mlc.set_terminated(parent)
    result["paths"] = {"csv": str(output / "streaming.csv"), "plot": str(plot)}
    return result
