"""The ``experiment`` section: the streaming protocol's variants, periods and test-time
perturbations. Its own module because the variant list grows with every baseline and protocol."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recicl.config.base import StrictModel

#: The test-time perturbations of the robustness evaluation (recicl/data/perturb.py, PRESETS).
PerturbationName = Literal["flip25", "shuffle", "drop-half", "foreign"]

StreamingVariant = Literal[
    "zero-shot",
    "tallrec",
    "tallrec+demos",
    "recicl",
    "recicl+stats",
    "recicl+codes",
    "recicl+stats+codes",
    "classical",
    "demo-rate",
    "retrained",
    # ReLLa (prompt.format rella): tuned on the originals; untuned and tuned with SUBR histories
    "rella",
    "zero-shot+subr",
    "reit",
    # update strategies (recicl/experiments/updates.py): re-tuned every experiment.update_every
    "tallrec-full",
    "tallrec-warm",
    "recicl-full",
    "recicl-warm",
    # the baselines of recicl/evaluate/baselines.py (BASELINES), and each refitted per period
    "logistic",
    "boosted-trees",
    "mf",
    "sasrec",
    "din",
    "logistic-retrained",
    "boosted-trees-retrained",
    "mf-retrained",
    "sasrec-retrained",
    "din-retrained",
]
#: Typed once here so that the default list is checked against :data:`StreamingVariant`.
DEFAULT_STREAMING_VARIANTS: tuple[StreamingVariant, ...] = (
    "zero-shot",
    "tallrec",
    "recicl",
    "classical",
)


class ExperimentConfig(StrictModel):
    """The streaming protocol: train once on early periods, evaluate every later one unchanged."""

    train_periods: str | list[int] = Field(
        "0-5", description="Periods the variants are tuned on (e.g. '0-5')."
    )
    eval_periods: str | list[int] | None = Field(
        None, description="Periods evaluated without any update; null = every later period."
    )
    variants: list[StreamingVariant] = Field(
        default_factory=lambda: list(DEFAULT_STREAMING_VARIANTS),
        description="Variants side by side: zero-shot, tallrec, tallrec+demos (the "
        "TALLRec-tuned model given the same demonstrations at inference), recicl, recicl+stats "
        "(recicl with frozen item statistics in its prompts, prompt.item_stats), recicl+codes and "
        "recicl+stats+codes (taste codes, prompt.item_codes, alone or with them), classical, "
        "demo-rate (no model: the share of Yes among the sample's demonstrations, i.e. the "
        "user's recent like rate), retrained (recicl re-tuned up to each period: the costly "
        "upper bound); rella (tuned on ReLLa's prompt, prompt.format rella, with the original "
        "samples), zero-shot+subr (the base model with ReLLa's prompt and semantically "
        "retrieved rated histories, ReLLa's SUBR) and reit (ReLLa's prompt tuned on the "
        "originals plus their SUBR copies, scored with SUBR); the SUBR rows need "
        "samples.augment: [semantic] or samples.demo_policy: semantic; "
        "tallrec-full, recicl-full, tallrec-warm and recicl-warm (update "
        "strategies, see update_every); non-LLM baselines fitted on the training periods "
        "(docs/baselines.md): "
        "logistic and boosted-trees (leak-free like-rate signals), mf (matrix factorization), "
        "sasrec, din; '<baseline>-retrained' refits one per evaluated period on every period "
        "before it.",
    )
    update_every: int = Field(
        1,
        ge=1,
        description="Update strategies (tallrec-full, recicl-full, tallrec-warm, recicl-warm): "
        "evaluated periods between two re-tunes (full: from the base on every earlier period; "
        "warm: from the previous adapter on the periods it has not seen).",
    )
    few_shot: list[int | float] = Field(
        default_factory=list,
        description="Extra variants tuned on only this many training samples each (counts, or "
        "fractions in (0, 1); train.max_train_samples), e.g. [16, 64, 256, 0.1]: rows "
        "'<format>@16' ... in the table.",
    )
    few_shot_format: Literal["recicl", "tallrec"] = Field(
        "recicl", description="Prompt format the few-shot variants are tuned on."
    )
    max_eval_samples: int | None = Field(
        None, ge=1, description="Cap on evaluated samples per period (random, seeded); null = all."
    )
    output: str | None = Field(
        None, description="Folder for the table/plot; null = <workdir>/experiments/streaming."
    )
    perturbations: list[PerturbationName] = Field(
        default_factory=list,
        description="Score every LLM variant tuned once (and zero-shot) again with each of "
        "these perturbed contexts, beside its clean rows: flip25 (a quarter of the "
        "demonstration labels flipped), shuffle (demonstrations out of time order), drop-half "
        "(half of them dropped), foreign (another user's, older than the target). Rows "
        "'<variant>~<perturbation>'; [] = clean only.",
    )
