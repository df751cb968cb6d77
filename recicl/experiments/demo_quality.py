"""Fit the ``quality`` demonstration policy: how much does each demonstration help?

The estimator (ICL as implicit fine-tuning: demonstrations are not equally useful):

1. **Measure.** On ``n`` training samples (a seeded draw by sample id from the training periods
   of a samples folder), score the full prompt and, for each demonstration ``j``, the prompt
   without it, with one model (by default the base LLM: the reader whose use of context we want
   to improve). The *help* of ``j`` is how far it moved the Yes/No margin toward the right answer:
   ``help_j = (margin(all) - margin(all but j)) * (+1 if the target was liked else -1)``, with
   ``margin = log P(Yes) - log P(No)``.
2. **Fit.** A ridge regression of ``help`` on the features the policy can compute for *any*
   earlier event without knowing the answer (:data:`recicl.data.retrieval.QUALITY_FEATURES`):
   similarity of the two items, age (events between the demonstration and the query, divided by
   ``samples.retrieval_window``), the demonstration's label, and similarity x label. Features
   are centered per sample (only the ranking within one prompt matters), there is no intercept,
   and the weights are rounded to 1e-6 so offline and online rankings agree exactly.
3. **Report.** The weights, 5-fold cross-validated R^2 (how much of the help the features
   explain; it is small: most of a demonstration's effect depends on content the features do not
   see) and the count of measured demonstrations, saved as JSON next to the samples.

**The LRGD view** (``metric="lrgd"``). Read as gradient descent on a dual linear model, a
prompt's attention adds to the query's output ``sum_j (W_V x_j)(W_K x_j)^T q``: demonstration
``j`` updates the dual model by its value times the alignment of its key with the query. For a
Yes/No readout the value carries the demonstration's label, so the predicted push of ``j`` on the
query's margin is ``label_j * alignment_j`` (``label`` = +1 liked, -1 not), and ``alignment_j``
is how much it moves the answer at all. Measured here from the model's own hidden states: the
cosine of the last layer's state where the model reads demonstration ``j``'s question (the
position before its answer) with the state where it answers the query, in the full prompt. What
a policy can use before the target's label is known is the alignment alone: picking by label as
well tilts the demonstrations' like rate, the strongest signal a reader has (the ridge fit's
collapse on Gemma). Its build-time form, computable for every candidate without a forward pass
of the prompt, is the similarity of the two items in the model's own item vectors
(``embeddings.encoder: llm``): the ``lrgd`` estimator ranks by similarity only. The report gives
the rank correlations (within each prompt, averaged) that say whether each step holds.

The measured samples use the demonstrations the folder was built with (usually the recent ones),
so the ages seen in fitting are 0 .. num_demos - 1: the fit says how help falls with age in that
range and extrapolates linearly beyond it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from recicl.config import ConfigError, ReciclConfig, parse_periods
from recicl.data.item_embeddings import ItemEmbeddings, similarities
from recicl.data.retrieval import QUALITY_FEATURES, DemoQuality
from recicl.data.samples_folder import SamplesFolder, sample_keys
from recicl.modeling.packaged import load_packaged_model
from recicl.prompts import PromptBuilder

log = logging.getLogger(__name__)


#: per measured demonstration, besides the features: its help (margin change toward the right
#: answer), push (toward Yes), the LRGD alignment, and its sample
MEASURED = ("help", "push", "alignment", "group")
#: the fits: a ridge regression of help on the features, or LRGD's alignment (module doc)
METRICS = ("ridge", "lrgd")
#: what lrgd_agreement reports
LRGD_REPORT = (
    "rho_push", "rho_influence", "rho_help_alignment", "rho_help_similarity", "aligned_share",
)  # fmt: skip


def _alignments(model: Any, encoded: Any, demos: int) -> np.ndarray:
    """LRGD alignment of every demonstration with the query (module doc): the cosine of the
    last hidden state before each demonstration's answer with the one the query is answered
    from. NaN for every demonstration where the prompt kept fewer than ``demos`` of them."""
    from recicl.modeling import hidden_states_at

    answers = list(encoded.demo_answer_positions)
    if len(answers) != demos:  # trimmed to fit: which one is missing is not ours to guess
        return np.full(demos, np.nan)
    states = hidden_states_at(model, encoded.input_ids, [a - 1 for a in answers] + [-1])
    states = states / np.maximum(np.linalg.norm(states, axis=1, keepdims=True), 1e-12)
    return states[:-1] @ states[-1]


def _within_prompt_rho(groups: np.ndarray, first: np.ndarray, second: np.ndarray) -> float:
    """Spearman correlation of two per-demonstration values within each measured prompt,
    averaged over prompts (a policy ranks the candidates of one prompt); NaN rows and prompts
    where either value is constant are left out."""
    from scipy.stats import spearmanr

    rhos = []
    for g in np.unique(groups):
        rows = (groups == g) & np.isfinite(first) & np.isfinite(second)
        if rows.sum() >= 3 and np.ptp(first[rows]) > 0 and np.ptp(second[rows]) > 0:
            rhos.append(float(spearmanr(first[rows], second[rows]).statistic))
    return round(float(np.mean(rhos)), 4) if rhos else float("nan")


def lrgd_agreement(measured: dict[str, np.ndarray]) -> dict[str, float]:
    """How far each step of the LRGD view (module doc) holds on the measured demonstrations:
    rank correlations within a prompt, averaged over prompts.

    - ``rho_push``: the predicted push (label x alignment) against the measured push toward Yes;
    - ``rho_influence``: the alignment against how far the demonstration moved the answer;
    - ``rho_help_alignment``: the alignment against the help (what a label-blind policy ranks);
    - ``rho_help_similarity``: the build-time form (item similarity) against the help.
    """
    groups = measured["group"].astype(np.int64)
    alignment, push = measured["alignment"], measured["push"]
    label = 2.0 * measured["liked"] - 1.0
    return {
        "rho_push": _within_prompt_rho(groups, label * alignment, push),
        "rho_influence": _within_prompt_rho(groups, alignment, np.abs(push)),
        "rho_help_alignment": _within_prompt_rho(groups, alignment, measured["help"]),
        "rho_help_similarity": _within_prompt_rho(groups, measured["similarity"], measured["help"]),
        "aligned_share": round(float(np.isfinite(alignment).mean()), 4),
    }


def _margins(p_yes: np.ndarray) -> np.ndarray:
    p = np.clip(p_yes, 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def measure_demo_help(
    cfg: ReciclConfig,
    folder: SamplesFolder,
    model_dir: str | Path,
    embeddings: ItemEmbeddings,
    *,
    periods: list[int],
    samples: int,
    seed: int,
    batch_size: int = 8,
) -> dict[str, np.ndarray]:
    """Leave-one-out help of every demonstration of ``samples`` training samples, with the
    features the estimator is fitted on (``group``: which sample a demonstration came from)."""
    from tqdm.auto import tqdm

    from recicl.modeling import score_prompts

    table = folder.read_table(periods)
    with_demos = np.flatnonzero([len(d) >= 2 for d in table["demos"].to_pylist()])
    if not len(with_demos):
        raise ConfigError(f"periods {periods} of {folder.root} have no sample with 2+ demos")
    # drawn by sample id (seeded keys), so a rebuild that orders rows differently measures the
    # same samples
    keys = sample_keys(table["sample_id"].to_numpy(zero_copy_only=False)[with_demos], seed)
    chosen = np.sort(with_demos[np.argsort(keys, kind="stable")[:samples]])
    rows = table.take(chosen).to_pylist()
    packaged = load_packaged_model(model_dir, prompt=cfg.prompt, model_cfg=cfg.model)
    answers = packaged.answer_columns()
    catalog = pq.read_table(folder.catalog_path)
    builder = PromptBuilder(
        packaged.prompt,
        catalog,
        packaged.tokenizer,
        item_stats=packaged.prompt_item_stats(folder.root),
    )
    window = float(cfg.samples.retrieval_window)
    out: dict[str, list[float]] = {name: [] for name in (*QUALITY_FEATURES, *MEASURED)}
    for group, row in enumerate(tqdm(rows, desc="demo help", unit="sample")):
        demos = row["demos"]
        variants = [demos] + [demos[:j] + demos[j + 1 :] for j in range(len(demos))]
        own = (row["timestamp"], row["label"])
        encoded = [
            builder.encode(row["history"], d, row["item_id"], query_event=own) for d in variants
        ]
        prompts = [e.input_ids for e in encoded]
        p_yes = score_prompts(
            packaged.model,
            packaged.tokenizer,
            prompts,
            batch_size,
            answer_tokens=answers,
        )
        margins = _margins(p_yes)
        sign = 1.0 if row["label"] == 1 else -1.0
        target = embeddings.vectors([row["item_id"]])
        sims = similarities(target, embeddings.vectors([d["item_id"] for d in demos]))[0]
        alignment = _alignments(packaged.model, encoded[0], len(demos))
        for j, demo in enumerate(demos):
            liked = float(demo["label"])
            out["similarity"].append(float(sims[j]))
            out["age"].append((len(demos) - 1 - j) / window)
            out["liked"].append(liked)
            out["similarity_x_liked"].append(float(sims[j]) * liked)
            out["help"].append(float((margins[0] - margins[j + 1]) * sign))
            out["push"].append(float(margins[0] - margins[j + 1]))  # toward Yes
            out["alignment"].append(float(alignment[j]))
            out["group"].append(group)
    return {name: np.asarray(values) for name, values in out.items()}


def fit_demo_quality(
    measured: dict[str, np.ndarray], alpha: float = 1.0, metric: str = "ridge"
) -> DemoQuality:
    """``ridge``: weights of the help on the per-sample-centered features; ``lrgd``: the item
    similarity alone (the LRGD view's build-time form). Both report the view's rank
    correlations on the measured demonstrations (see the module doc)."""
    if metric not in METRICS:
        raise ConfigError(f"demo quality metric {metric!r}: use one of {', '.join(METRICS)}")
    agreement = lrgd_agreement(measured) if "alignment" in measured else {}
    if metric == "lrgd":
        fitted = {
            "metric": "lrgd",
            "measured_demos": len(measured["help"]),
            "measured_samples": len(np.unique(measured["group"])),
            "mean_help": round(float(measured["help"].mean()), 4),
            **agreement,
        }
        return DemoQuality((1.0, 0.0, 0.0, 0.0), fitted)  # similarity: label-blind, no age
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold, cross_val_score

    features = np.column_stack([measured[name] for name in QUALITY_FEATURES])
    groups = measured["group"].astype(np.int64)
    centered = features.copy()
    target = measured["help"].astype(np.float64).copy()
    for g in np.unique(groups):
        rows = groups == g
        centered[rows] -= centered[rows].mean(axis=0)
        target[rows] -= target[rows].mean()
    model = Ridge(alpha=alpha, fit_intercept=False).fit(centered, target)
    folds = min(5, len(np.unique(groups)))
    r2 = (
        cross_val_score(
            Ridge(alpha=alpha, fit_intercept=False),
            centered,
            target,
            groups=groups,
            cv=GroupKFold(n_splits=folds),
            scoring="r2",
        )
        if folds >= 2
        else np.array([np.nan])
    )
    weights = tuple(round(float(w), 6) for w in model.coef_)
    fitted = {
        "measured_demos": len(target),
        "measured_samples": len(np.unique(groups)),
        "r2_cv": round(float(np.mean(r2)), 4),
        "mean_help": round(float(measured["help"].mean()), 4),
        "ridge_alpha": alpha,
        "metric": "ridge",
        **agreement,
    }
    return DemoQuality(weights, fitted)


def fit_from_samples(
    cfg: ReciclConfig,
    samples_dir: str | Path,
    model_dir: str | Path | None,
    *,
    samples: int = 200,
    seed: int = 0,
    output: str | Path | None = None,
    metric: str = "ridge",
) -> tuple[DemoQuality, Path]:
    """Measure on the training periods of ``samples_dir`` (``experiment.train_periods``),
    fit, and write the estimator JSON (default: ``<samples_dir>/demo_quality.json``)."""
    if metric not in METRICS:  # before minutes of measuring, not after
        raise ConfigError(f"--metric {metric!r}: use one of {', '.join(METRICS)}")
    folder = SamplesFolder.at(samples_dir)
    manifest = folder.manifest()
    built = manifest.selection.demo_policy if manifest else "recent"
    if built != "recent":
        raise ConfigError(
            f"{folder.root} was built with demo_policy {built!r}: measure on samples built with "
            "the recent policy (the fit needs each demonstration's age)"
        )
    model = model_dir or cfg.model.name_or_path
    if not model:
        raise ConfigError("no model to measure with: pass --model DIR or set model.name_or_path")
    vectors = cfg.samples.embeddings or (
        folder.embeddings_path if folder.embeddings_path.is_file() else None
    )
    if vectors:
        embeddings = ItemEmbeddings.load(Path(vectors).expanduser())
    else:
        from recicl.embeddings import embed_catalog

        embeddings = embed_catalog(pq.read_table(folder.catalog_path), cfg)
    periods = parse_periods(cfg.experiment.train_periods) or folder.periods()
    started = time.perf_counter()
    measured = measure_demo_help(
        cfg, folder, model, embeddings, periods=periods, samples=samples, seed=seed
    )
    quality = fit_demo_quality(measured, metric=metric)
    quality = DemoQuality(
        quality.weights,
        {
            **quality.fitted,
            "model": str(model),
            "samples_dir": str(folder.root),
            "periods": periods,
            "seed": seed,
            "retrieval_window": cfg.samples.retrieval_window,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    path = Path(output) if output else folder.demo_quality_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(quality.to_json(), indent=2) + "\n")
    report = {k: quality.fitted.get(k) for k in ("metric", "r2_cv", *LRGD_REPORT)}
    log.info("demo quality weights %s (%s)", quality.weights, report)
    return quality, path


def describe(quality: DemoQuality) -> list[tuple[str, Any]]:
    """(name, value) rows for a printed summary."""
    rows: list[tuple[str, Any]] = list(zip(QUALITY_FEATURES, quality.weights, strict=True))
    shown = ("metric", "r2_cv", "measured_demos", *LRGD_REPORT)
    rows += [(k, v) for k, v in quality.fitted.items() if k in shown]
    return rows
