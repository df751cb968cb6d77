"""The streaming protocol of the RecICL paper: tune once on periods ≤ t, then evaluate every later
period with **no update**, for several variants side by side.

* ``zero-shot``  the base model with RecICL prompts, no tuning;
* ``tallrec``    tuned on prompts without demonstrations (history only): the baseline;
* ``tallrec+demos`` the ``tallrec`` model given the same demonstrations as ``recicl`` at
  inference: RecICL's claim is that a model tuned without the ICL format cannot use them;
* ``recicl``     tuned on prompts with demonstrations (the user's newest events);
* ``recicl+stats`` the same, with each asked-about item's statistics frozen at the end of the
  training periods in its question ("72% of 140 viewers liked it", ``prompt.item_stats``):
  collaborative knowledge a reader of one user's events cannot have;
* ``recicl+codes`` / ``recicl+stats+codes`` the same with each asked-about item's taste code
  (BinLLM-style bits of its collaborative-filtering factors, ``prompt.item_codes``), alone or
  with the statistics. The named LLM variants set ``prompt.item_stats`` and
  ``prompt.item_codes`` themselves (off, except in these); few-shot and retrained variants
  follow the config;
* ``<format>@N`` (``experiment.few_shot``) tuned on only N training samples (or a fraction),
  the few-shot settings of TALLRec (16/64/256) and ReLLa (< 10 % of the data);
* ``classical``  logistic regression on user/item/genre features (scikit-learn), same periods;
* ``demo-rate``  no model at all: the share of Yes among the sample's demonstrations (the user's
  recent like rate). On MovieLens this alone is a strong signal, so it shows how much of an
  LLM's AUC is "reads the user's recent like rate" and how much is more;
* ``rella``     tuned on ReLLa's prompt (``prompt.format: rella``: one history of earlier rated
  items, liked or not, no solved examples) with the original samples only;
* ``zero-shot+subr`` the base model with ReLLa's prompt whose rated history is retrieved by
  similarity to the asked-about item (ReLLa's SUBR: the ``semantic`` demonstrations of an
  augmented copy, or of the main samples when ``samples.demo_policy`` is semantic);
* ``reit``       ReLLa's retrieval-enhanced instruction tuning: ReLLa's prompt tuned on the
  originals plus their SUBR copies, scored with SUBR histories;
* ``retrained``  ``recicl`` re-tuned on all periods before each evaluated one: the costly upper
  bound that RecICL tries to approach without retraining;
* ``tallrec-full``, ``recicl-full``, ``tallrec-warm``, ``recicl-warm``  update strategies,
  re-tuned from the base or from the previous adapter every ``experiment.update_every``
  evaluated periods (recicl/experiments/updates.py);
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
from recicl.experiments.rella import (
    RELLA_VARIANTS,
    SUBR_POLICY,
    SUBR_VARIANTS,
    check_subr_samples,
    subr_table,
)
from recicl.experiments.updates import UPDATE_VARIANTS, update_schedule
from recicl.modeling.importing import ensure_base_model
from recicl.registry import Workspace
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


#: The RecICL variants with frozen item knowledge in their prompts: (item_stats, item_codes).
KNOWLEDGE_VARIANTS: dict[str, tuple[bool, bool]] = {
    "recicl": (False, False),
    "recicl+stats": (True, False),
    "recicl+codes": (False, True),
    "recicl+stats+codes": (True, True),
}


def _train_variant(
    cfg: ReciclConfig,
    workspace: Workspace,
    base: str,
    prompt_format: str,
    periods: list[int],
    run_name: str,
    max_train_samples: int | float | None = None,
    knowledge: tuple[bool, bool] | None = None,
    init_from: Path | None = None,
    use_augmented: bool | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Tune one variant; return its packaged model folder and training facts.
    ``knowledge``: (item statistics, taste codes) in its prompts (None: as the config says);
    ``init_from``: a model folder whose LoRA adapter is continued (a warm update);
    ``use_augmented``: whether the augmented copies are mixed in (None: as the config says)."""

    raw = cfg.model_dump(mode="json")
    raw["model"]["name_or_path"] = base
    raw["prompt"]["format"] = prompt_format
    if knowledge is not None:
        raw["prompt"]["item_stats"], raw["prompt"]["item_codes"] = knowledge
    raw["train"]["train_periods"] = periods
    raw["train"]["val_periods"] = []
    raw["train"]["run_name"] = run_name
    raw["train"]["init_from"] = str(init_from) if init_from is not None else None
    if max_train_samples is not None:
        raw["train"]["max_train_samples"] = max_train_samples
    if use_augmented is not None:
        raw["train"]["use_augmented"] = use_augmented
    variant_cfg = ReciclConfig.model_validate(raw)
    result = train(variant_cfg, workspace=workspace)
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


#: A variant runner's result: its per-period report and the facts its child run is tagged with.
_Outcome = tuple[dict[str, Any], dict[str, Any]]


class StreamingExperiment:
    """One run of the streaming protocol: set up once (periods, the evaluated draw, the MLflow
    parent run), then one runner per variant from :attr:`runners` (a table, so that a new
    variant is one method and one entry, not a branch in a long loop). Every runner returns
    (report, facts): a ``metrics_by_period``-style report and what to tag the child run with.
    The parent run is marked FAILED when a variant raises, so MLflow never shows a crashed
    experiment as running."""

    def __init__(self, cfg: ReciclConfig) -> None:
        from recicl.raycluster import ensure_ray

        self.cfg = cfg
        exp = cfg.experiment
        self.samples = SamplesFolder.from_config(cfg)
        self.samples.require_manifest()
        self.available = sorted(p for p, n in self.samples.sample_counts().items() if n)
        self.train_periods = parse_periods(exp.train_periods) or []
        self.eval_periods = parse_periods(exp.eval_periods) or [
            p for p in self.available if p > max(self.train_periods, default=-1)
        ]
        self._check_periods()
        self.workspace = Workspace.of(cfg)
        self.workdir = self.workspace.folder
        self.output = (
            Path(exp.output).expanduser()
            if exp.output
            else self.workdir / "experiments" / "streaming"
        )
        self.output.mkdir(parents=True, exist_ok=True)
        for variant in exp.variants:  # refuse before minutes of tuning, not after
            if any(KNOWLEDGE_VARIANTS.get(variant, ())):
                stats = read_item_stats(self.samples.item_stats_path)
                until = item_stats_meta(stats).get("until_period")
                check_no_leak(until, self.eval_periods, variant)
        check_subr_samples(self.samples, exp.variants)
        ensure_ray(cfg.ray)
        self.seed = cfg.train.seed
        self.eval_table = subsample_per_period(
            self.samples.read_table(self.eval_periods), exp.max_eval_samples, self.seed
        )
        self.catalog = pq.read_table(self.samples.catalog_path)
        self.recicl_prompt = cfg.prompt.model_copy(
            update={"format": "recicl", "item_stats": False, "item_codes": False}
        )
        self.rella_prompt = self.recicl_prompt.model_copy(update={"format": "rella"})
        self.few_shot = {few_shot_name(exp.few_shot_format, n): n for n in exp.few_shot}
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self._base: str | None = None
        self._tuned: dict[str, tuple[Path, dict[str, Any]]] = {}
        #: how each variant scored the whole evaluated draw (model, prompt, forced): what its
        #: perturbed rows (experiment.perturbations) are scored with
        self._scored_with: dict[str, tuple[Path, Any, bool]] = {}
        self._perturbed: dict[str, pa.Table] = {}
        self.runners: dict[str, Any] = {
            "zero-shot": self._zero_shot,
            "tallrec": self._tuned_variant,
            **{name: self._tuned_variant for name in KNOWLEDGE_VARIANTS},
            "tallrec+demos": self._tallrec_with_demos,
            **{name: self._few_shot_variant for name in self.few_shot},
            "classical": self._classical,
            **{name: self._baseline for name in (*BASELINES, *RETRAINED_BASELINES)},
            "demo-rate": self._demo_rate,
            "retrained": self._retrained,
            **{name: self._rella for name in RELLA_VARIANTS},
            "zero-shot+subr": self._zero_shot_subr,
            **{name: self._updated for name in UPDATE_VARIANTS},
        }

    def _check_periods(self) -> None:
        train, evaluated = self.train_periods, self.eval_periods
        missing = sorted(set(train + evaluated) - set(self.available))
        if missing or not train or not evaluated:
            raise ConfigError(
                f"experiment periods: train {train}, eval {evaluated}; available "
                f"{self.available}{f', missing {missing}' if missing else ''}"
            )
        if min(evaluated) <= max(train):
            raise ConfigError(
                "experiment.eval_periods must all come after experiment.train_periods"
            )

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run every configured variant and return {"rows", "variants", paths}."""
        from mlflow.entities import RunStatus

        self.mlc = self.workspace.client()
        self.experiment_id = self.workspace.ensure_experiment()
        self.parent = self.mlc.create_run(
            self.experiment_id,
            tags={"mlflow.runName": f"streaming-{self.stamp}", "recicl.kind": "streaming"},
        ).info.run_id
        try:
            result = self._run_variants()
        except BaseException:
            self.mlc.set_terminated(self.parent, RunStatus.to_string(RunStatus.FAILED))
            raise
        self.mlc.set_terminated(self.parent)
        return result

    def _run_variants(self) -> dict[str, Any]:
        mlc, parent = self.mlc, self.parent
        mlc.log_param(parent, "train_periods", ",".join(map(str, self.train_periods)))
        mlc.log_param(parent, "eval_periods", ",".join(map(str, self.eval_periods)))
        mlc.log_param(parent, "samples_hash", self.samples.content_id())  # content, as SAMPLES_TAG
        variants: list[str] = list(self.cfg.experiment.variants)
        variants += [name for name in self.few_shot if name not in variants]
        reports: dict[str, dict[str, Any]] = {}
        facts: dict[str, dict[str, Any]] = {}
        for variant in variants:
            started = time.perf_counter()
            log.info("streaming: variant %s", variant)
            reports[variant], facts[variant] = self.runners[variant](variant)
            if "mean_prompt_tokens" in reports[variant]:
                tokens = round(reports[variant]["mean_prompt_tokens"], 1)
                facts[variant]["mean_prompt_tokens"] = tokens
            facts[variant]["seconds"] = round(time.perf_counter() - started, 1)
            self._log_child(variant, reports[variant], facts[variant])
            if "llm_alone" in reports[variant]:  # train.blend: the same model's unblended row
                row = f"{variant}~no-blend"
                reports[row], facts[row] = reports[variant].pop("llm_alone"), {"of": variant}
                self._log_child(row, reports[row], facts[row])
            for name in self.cfg.experiment.perturbations if variant in self._scored_with else ():
                row = f"{variant}~{name}"
                started = time.perf_counter()
                reports[row] = self._perturbed_report(variant, name)
                facts[row] = {"of": variant, "perturbation": name,
                              "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
                self._log_child(row, reports[row], facts[row])
        return self._write(reports, facts)

    def _perturbed_report(self, variant: str, name: str) -> dict[str, Any]:
        """``variant``'s model on the evaluated draw with every context perturbed by ``name``
        (recicl/data/perturb.py PRESETS): the same samples, targets and labels as its clean
        rows, so the difference is what the perturbation costs."""
        from recicl.data.perturb import PRESETS, perturb_table

        if name not in self._perturbed:
            self._perturbed[name] = perturb_table(self.eval_table, PRESETS[name], self.seed)
        model_dir, prompt, force = self._scored_with[variant]
        return self._llm_report(
            model_dir, prompt, self._perturbed[name], f"{variant}~{name}", force
        )

    def _log_child(self, variant: str, report: dict[str, Any], facts: dict[str, Any]) -> None:
        child = self.mlc.create_run(
            self.experiment_id,
            tags={
                "mlflow.runName": f"{variant}",
                "mlflow.parentRunId": self.parent,
                "recicl.kind": "streaming-variant",
                "recicl.variant": variant,
            },
        ).info.run_id
        for period, values in report["periods"].items():
            for key in ("auc", "uauc", "logloss"):
                if values.get(key) is not None:
                    self.mlc.log_metric(child, f"p{period}_{key}", float(values[key]))
        for key, value in facts.items():
            self.mlc.set_tag(child, f"recicl.{key}", str(value))
        self.mlc.set_terminated(child)

    def _write(
        self, reports: dict[str, dict[str, Any]], facts: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        """streaming.csv / .json / .png in the output folder, logged to the parent run."""
        rows = [
            {
                "variant": variant,
                "period": int(period),
                **{k: values.get(k) for k in ("auc", "uauc", "logloss", "count", "like_rate")},
            }
            for variant, report in reports.items()
            for period, values in sorted(report["periods"].items(), key=lambda kv: int(kv[0]))
        ]
        output = self.output
        with (output / "streaming.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        result = {
            "train_periods": self.train_periods,
            "eval_periods": self.eval_periods,
            "rows": rows,
            "variants": facts,
            "mlflow_parent_run_id": self.parent,
        }
        (output / "streaming.json").write_text(json.dumps(result, indent=2) + "\n")
        first, last = self.train_periods[0], self.train_periods[-1]
        plot = plot_by_period(
            reports, output / "streaming.png", title=f"streaming: tuned on periods {first}-{last}"
        )
        for path in (output / "streaming.csv", output / "streaming.json", plot):
            self.mlc.log_artifact(self.parent, str(path))
        result["paths"] = {"csv": str(output / "streaming.csv"), "plot": str(plot)}
        return result

    # -- helpers ----------------------------------------------------------------------------

    @property
    def base(self) -> str:
        """The base LLM, resolved (imported or built) only when an LLM variant needs it."""
        if self._base is None:
            self._base = _base_model(self.cfg, self.samples.root, self.workdir)
        return self._base

    def _tuned_once(self, key: str) -> tuple[Path, dict[str, Any]]:
        """One tuning per key: tallrec is tuned once, whether tallrec, tallrec+demos or both
        are asked for."""
        if key not in self._tuned:
            self._tuned[key] = _train_variant(
                self.cfg,
                self.workspace,
                self.base,
                key.split("+")[0],
                self.train_periods,
                f"streaming-{self.stamp}-{key}",
                knowledge=KNOWLEDGE_VARIANTS.get(key, (False, False)),
            )
        return self._tuned[key]

    def _llm_report(
        self,
        model_dir: Path,
        prompt_override: Any,
        table: pa.Table,
        label: str,
        force: bool = False,
    ) -> dict[str, Any]:
        import ray.data

        if table is self.eval_table:
            self._scored_with[label] = (model_dir, prompt_override, force)
        evaluate = self.cfg.evaluate
        scores = score_samples(
            model_dir,
            self.samples.root,
            None,
            prompt=prompt_override,
            replicas=evaluate.replicas,
            batch_size=evaluate.batch_size,
            use_gpu=evaluate.use_gpu,
            samples=ray.data.from_arrow(table),
            force_prompt=force,
            label=label,
            model=self.cfg.model,  # the zero-shot base loads with the tuned variants' dtype
        )
        report = report_from_scores(scores)
        report["mean_prompt_tokens"] = report["prompts"]["mean_tokens"]
        if table is self.eval_table:
            self._keep_scores(label, scores)
        return report

    def _keep_scores(self, label: str, scores: pa.Table) -> None:
        """``<output>/scores/<label>.parquet``: every evaluated sample's score (sample id,
        period, user, label), so that rows can be compared sample by sample afterwards
        (paired tests, blends of an LLM row with a non-LLM one) without scoring again."""
        folder = self.output / "scores"
        folder.mkdir(exist_ok=True)
        columns = ["sample_id", "period", "user_id", "label", "score"]
        pq.write_table(scores.select(columns).sort_by("sample_id"), folder / f"{label}.parquet")
        if "llm_score" in scores.column_names:  # train.blend: the LLM's own, as <label>~no-blend
            alone = scores.select(columns[:-1]).append_column("score", scores["llm_score"])
            pq.write_table(alone.sort_by("sample_id"), folder / f"{label}~no-blend.parquet")

    def _scored(self, scores: np.ndarray, label: str | None = None) -> dict[str, Any]:
        """The per-period report of scores for the evaluated draw (non-LLM variants; kept as
        ``scores/<label>.parquet`` when ``label`` is given)."""
        table = self.eval_table
        if label is not None:
            self._keep_scores(
                label,
                table.select(["sample_id", "period", "user_id", "label"]).append_column(
                    "score", pa.array(np.asarray(scores, dtype=np.float64))
                ),
            )
        return metrics_by_period(
            table["period"].to_numpy(),
            table["user_id"].to_numpy(zero_copy_only=False),
            table["label"].to_numpy(),
            scores,
        )

    # -- the variants -----------------------------------------------------------------------

    def _zero_shot(self, variant: str) -> _Outcome:
        report = self._llm_report(Path(self.base), self.recicl_prompt, self.eval_table, variant)
        return report, {"base": self.base}  # the untuned model (a tiny one when none is set)

    def _tuned_variant(self, variant: str) -> _Outcome:
        model_dir, trained = self._tuned_once(variant)
        return self._llm_report(model_dir, None, self.eval_table, variant), dict(trained)

    def _tallrec_with_demos(self, variant: str) -> _Outcome:
        model_dir, trained = self._tuned_once("tallrec")
        facts = {"model": "the tallrec variant", "version": trained.get("version")}
        report = self._llm_report(model_dir, self.recicl_prompt, self.eval_table, variant, True)
        return report, facts

    def _few_shot_variant(self, variant: str) -> _Outcome:
        model_dir, facts = _train_variant(
            self.cfg,
            self.workspace,
            self.base,
            self.cfg.experiment.few_shot_format,
            self.train_periods,
            f"streaming-{self.stamp}-{variant.replace('@', '-').replace('%', 'pct')}",
            max_train_samples=self.few_shot[variant],
        )
        return self._llm_report(model_dir, None, self.eval_table, variant), facts

    def _classical(self, variant: str) -> _Outcome:
        train_table = self.samples.read_table(self.train_periods)
        model = fit_classical(train_table, self.catalog)
        scores = model.score(self.eval_table, self.catalog)
        return self._scored(scores, variant), {"train_samples": train_table.num_rows}

    def _baseline(self, variant: str) -> _Outcome:
        if variant in RETRAINED_BASELINES:  # refitted on every period before each evaluated one
            scores, facts = retrained_scores(
                variant,
                self.samples.read_table,
                self.available,
                self.eval_table,
                self.catalog,
                seed=self.seed,
            )
            return self._scored(scores, variant), facts
        train_table = self.samples.read_table(self.train_periods)  # fitted once, frozen
        fit_started, fit_cpu = time.perf_counter(), time.process_time()
        baseline = fit_baseline(variant, train_table, self.catalog, seed=self.seed)
        facts = {
            "train_rows": train_table.num_rows,
            "fit_seconds": round(time.perf_counter() - fit_started, 1),
            "fit_cpu_seconds": round(time.process_time() - fit_cpu, 1),
        }
        return self._scored(baseline.score(self.eval_table, self.catalog), variant), facts

    def _demo_rate(self, variant: str) -> _Outcome:
        return self._scored(demo_like_rate(self.eval_table), variant), {}

    def _zero_shot_subr(self, variant: str) -> _Outcome:
        report = self._llm_report(
            Path(self.base), self.rella_prompt, subr_table(self.samples, self.eval_table), variant
        )
        return report, {"policy": SUBR_POLICY}

    def _rella(self, variant: str) -> _Outcome:
        """ReLLa's prompt tuned once, on the originals (rella) or with their SUBR copies mixed
        in and scored with SUBR histories (reit)."""
        if variant not in self._tuned:
            self._tuned[variant] = _train_variant(
                self.cfg, self.workspace, self.base, "rella", self.train_periods,
                f"streaming-{self.stamp}-{variant}", knowledge=(False, False),
                use_augmented=RELLA_VARIANTS[variant],
            )  # fmt: skip
        model_dir, trained = self._tuned[variant]
        table = (
            subr_table(self.samples, self.eval_table)
            if variant in SUBR_VARIANTS
            else self.eval_table
        )
        return self._llm_report(model_dir, None, table, variant), dict(trained)

    def _retrained(self, variant: str) -> _Outcome:
        per_period: dict[str, Any] = {"periods": {}}
        versions: dict[str, Any] = {}
        for period in self.eval_periods:
            history = [p for p in self.available if p < period]
            run_name = f"streaming-{self.stamp}-retrained-{period}"
            model_dir, trained = _train_variant(
                self.cfg, self.workspace, self.base, "recicl", history, run_name
            )
            versions[str(period)] = trained.get("version")
            table = self.eval_table.filter(pc.equal(self.eval_table["period"], period))
            report = self._llm_report(model_dir, None, table, f"retrained-D{period}")
            per_period["periods"].update(report["periods"])
        return per_period, {"versions": versions}

    def _updated(self, variant: str) -> _Outcome:
        """An update strategy (recicl/experiments/updates.py): each model of its schedule
        scores only the evaluated periods after everything it was tuned on."""
        prompt_format, warm = UPDATE_VARIANTS[variant]
        schedule = update_schedule(
            self.train_periods,
            self.eval_periods,
            self.available,
            self.cfg.experiment.update_every,
            warm,
        )
        per_period: dict[str, Any] = {"periods": {}}
        models: list[dict[str, Any]] = []
        model_dir: Path | None = None
        for index, update in enumerate(schedule):
            if index == 0:  # the plain variant's model: tuned once on the training periods
                model_dir, trained = self._tuned_once(prompt_format)
            else:
                model_dir, trained = _train_variant(
                    self.cfg, self.workspace, self.base, prompt_format, update.train,
                    f"streaming-{self.stamp}-{variant}-{update.scores[0]}",
                    init_from=model_dir if update.warm else None,
                )  # fmt: skip
            scored = time.perf_counter()
            table = self.eval_table.filter(
                pc.is_in(self.eval_table["period"], pa.array(update.scores))
            )
            report = self._llm_report(model_dir, None, table, f"{variant}-D{update.scores[0]}")
            per_period["periods"].update(report["periods"])
            models.append({"train_periods": update.train, "scores": update.scores,
                           "warm": update.warm, "version": trained.get("version"),
                           "train_seconds": trained.get("train_seconds"),
                           "score_seconds": round(time.perf_counter() - scored, 1)})  # fmt: skip
        facts = {
            "update_every": self.cfg.experiment.update_every,
            "updates": len(schedule) - 1,
            "train_seconds": round(sum(m["train_seconds"] or 0 for m in models[1:]), 1),
            "models": models,
        }
        return per_period, facts


def run_streaming(cfg: ReciclConfig) -> dict[str, Any]:
    """Run every configured variant and return {"rows": [...], "variants": {...}, paths}."""
    return StreamingExperiment(cfg).run()
