"""Sections for the data stage: where logs come from (``data``) and how samples are cut."""

from __future__ import annotations

import itertools
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from recicl.config.base import StrictModel

SourceName = Literal["movielens", "amazon", "parquet", "csv"]
#: Which earlier events become demonstrations (recicl.data.retrieval explains each).
DemoPolicy = Literal["recent", "semantic", "mixed", "quality"]
#: Which earlier liked events make up a history.
HistoryPolicy = Literal["recent", "semantic"]
#: What an augmented copy (``samples.augment``) chooses by its policy.
AugmentTarget = Literal["demos", "history", "both"]
TimestampUnit = Literal["s", "ms", "us", "iso"]

#: The MovieLens latest-small copy shipped in the wheel: the default source, no download.
BUNDLED_MOVIELENS = Path(__file__).parents[1] / "datasets" / "ml-latest-small"


class ColumnMapping(StrictModel):
    """Where the canonical event fields live in a generic Parquet/CSV source."""

    user_id: str = Field("user_id", description="Column holding the user id.")
    item_id: str = Field("item_id", description="Column holding the item id.")
    rating: str | None = Field(
        "rating", description="Column holding the rating; null if the source has only labels."
    )
    label: str | None = Field(
        None, description="Column holding an explicit 0/1 label; overrides the like threshold."
    )
    timestamp: str = Field("timestamp", description="Column holding the event time.")


class CatalogMapping(StrictModel):
    """Where the catalog fields live in a generic Parquet/CSV catalog file."""

    item_id: str = Field("item_id", description="Column holding the item id.")
    title: str = Field("title", description="Column holding the item title.")
    attributes: list[str] = Field(
        default_factory=lambda: ["genres"],
        description="Extra columns kept as attributes (e.g. genres, author); missing ones are "
        "ignored. List values are joined with '|'.",
    )


class DataConfig(StrictModel):
    """Where interaction logs come from and what counts as a valid event."""

    source: SourceName = Field(
        "movielens", description="Log format: movielens, amazon, parquet or csv."
    )
    path: str = Field(
        str(BUNDLED_MOVIELENS),
        description="Folder holding the source files (layout detected for movielens/amazon). "
        "Default: the bundled MovieLens latest-small.",
    )
    like_threshold: float = Field(
        4.0, description="label = 1 when rating >= like_threshold (unless labels are explicit)."
    )
    rating_range: tuple[float, float] | None = Field(
        None,
        description="Valid [min, max] rating; null = the source's scale (MovieLens 0.5-5, "
        "Amazon 1-5, generic: unchecked).",
    )
    min_date: date = Field(
        date(1990, 1, 1), description="Events before this date are quarantined as absurd."
    )
    max_date: date | None = Field(
        None, description="Events after this date are quarantined; null = tomorrow (UTC)."
    )
    timestamp_unit: TimestampUnit = Field(
        "s", description="Generic sources only: unit of the timestamp column (s, ms, us, iso)."
    )
    events_glob: str = Field(
        "events*", description="Generic sources only: file or folder name pattern of the events."
    )
    catalog_glob: str = Field(
        "catalog*", description="Generic sources only: file name pattern of the catalog."
    )
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    catalog_columns: CatalogMapping = Field(default_factory=CatalogMapping)
    served_dir: str | None = Field(
        None,
        description="Folder of events and catalog items exported from the interaction store "
        "(`recicl retune` writes it): added to the source before validation. null = the log only.",
    )

    @field_validator("rating_range")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"rating_range min {value[0]} is above max {value[1]}")
        return value

    def time_bounds(self) -> tuple[int, int]:
        """Valid event time range in unix seconds, [low, high)."""
        low = datetime.combine(self.min_date, datetime.min.time(), tzinfo=timezone.utc)
        if self.max_date is None:
            high_ts = int(datetime.now(timezone.utc).timestamp()) + 86_400
        else:
            high = datetime.combine(self.max_date, datetime.min.time(), tzinfo=timezone.utc)
            high_ts = int(high.timestamp()) + 86_400
        return int(low.timestamp()), high_ts


class SamplesConfig(StrictModel):
    """How events become in-context-learning samples."""

    num_demos: int = Field(
        4, ge=0, le=64, description="Demonstrations per sample (latest earlier events)."
    )
    history_len: int = Field(
        10, ge=0, le=200, description="Liked items per history (latest earlier likes)."
    )
    min_demos: int = Field(
        1, ge=0, description="A sample needs at least this many earlier events of its user."
    )
    periods: int = Field(
        10, ge=1, le=1000, description="Cut the timeline into N periods of equal event counts."
    )
    boundaries: list[date] | None = Field(
        None,
        description="Explicit period start dates (ISO); overrides `periods`. N dates give N+1 "
        "periods: before the first date is period 0.",
    )
    num_partitions: int | None = Field(
        None,
        ge=1,
        description="Shuffle partitions for the group-by-user stage; null = Ray's default.",
    )
    output: str | None = Field(None, description="Output folder; required to build.")
    item_stats_until: int | None = Field(
        None,
        ge=0,
        description="Last period whose events the item statistics count (item_stats.parquet, "
        "shown by prompt.item_stats): every period up to and including it. Set it to the last "
        "training period, never to an evaluated one (evaluation refuses that); null = the last "
        "of experiment.train_periods.",
    )
    item_code_bits: int = Field(
        8,
        ge=0,
        le=64,
        description="Bits of each item's taste code (prompt.item_codes): the rank of the "
        "factorization of the knowledge periods' like/dislike matrix; one bit per factor. "
        "Each bit is about one token per asked-about item (Gemma: 8 bits add 10 tokens, 16 "
        "add 20); on MovieLens 8 and 16 bits carried the same signal (docs/quality.md). "
        "More bits separate more audiences on larger catalogs. 0 = build no codes (the "
        "factorization gathers the counted events on the driver).",
    )
    item_code_min_events: int = Field(
        10,
        ge=1,
        description="Items with fewer counted events get no taste code ('unknown'): a factor "
        "fitted on a handful of ratings is noise, and the fewer the ratings, the more a "
        "training question's own answer moves its item's code.",
    )
    demo_policy: DemoPolicy = Field(
        "recent",
        description="Which earlier events are demonstrations: recent (the latest), semantic "
        "(the most similar to the target item, ties by recency; ReLLa's SUBR), mixed "
        "(recent_share of the slots recent, the rest semantic) or quality (the highest "
        "estimated help, see demo_quality). Shown in time order.",
    )
    history_policy: HistoryPolicy = Field(
        "recent",
        description="Which earlier likes make up a history: recent (the latest) or semantic "
        "(the most similar to the event's item). Shown in time order.",
    )
    recent_share: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="mixed policy: share of the demonstration slots kept for the latest events "
        "(rounded to the nearest slot).",
    )
    retrieval_window: int = Field(
        200,
        ge=1,
        le=10_000,
        description="semantic/mixed: candidates are the user's latest N earlier events (likes, "
        "for histories); bounds the cost per sample. Serving reads serve.context_events events, "
        "so keep this at or below it for identical offline and online prompts.",
    )
    augment: list[DemoPolicy] = Field(
        default_factory=list,
        description="Retrieval-enhanced tuning (ReLLa): also write every sample with each listed "
        "demonstration policy, under augmented/policy=NAME/; training mixes them in, "
        "evaluation and serving use demo_policy only. augment_replaces says what each copy "
        "chooses by its policy.",
    )
    augment_replaces: AugmentTarget = Field(
        "demos",
        description="What an augmented copy chooses by its policy: demos (the demonstrations; "
        "histories as history_policy says), history (every history in the prompt, the "
        "target's and each demonstration's; demonstrations as demo_policy says: what changes "
        "a TALLRec prompt, which shows likes only) or both. history and both take the history "
        "policies (recent, semantic). ReLLa's prompt (prompt.format rella) shows the rated "
        "earlier events, the demonstrations: its ReiT copies are demos copies.",
    )
    embeddings: str | None = Field(
        None,
        description="item_embeddings.parquet for semantic/mixed/quality policies; null = the "
        "build embeds the catalog with the `embeddings` section and stores the file in the "
        "output.",
    )
    demo_quality: str | None = Field(
        None,
        description="quality policy: the fitted estimator of a demonstration's help (JSON "
        "written by `recicl samples demo-quality`); copied into the output.",
    )

    @model_validator(mode="after")
    def _window_holds_the_slots(self) -> SamplesConfig:
        if self.needs_embeddings() and self.retrieval_window < max(
            self.num_demos, self.history_len
        ):
            raise ValueError(
                f"retrieval_window {self.retrieval_window} is below num_demos {self.num_demos} "
                f"or history_len {self.history_len}: raise it (the policies choose among that "
                "many earlier events)"
            )
        return self

    @model_validator(mode="after")
    def _quality_needs_an_estimator(self) -> SamplesConfig:
        if "quality" in {self.demo_policy, *self.augment} and not self.demo_quality:
            raise ValueError(
                "the quality demo policy needs samples.demo_quality: fit one with `recicl "
                "samples demo-quality --samples DIR --model M` and point demo_quality at it"
            )
        return self

    @model_validator(mode="after")
    def _history_copies_take_history_policies(self) -> SamplesConfig:
        if self.augment_replaces == "demos":
            return self
        wrong = [p for p in self.augment if p not in ("recent", "semantic")]
        if wrong:
            raise ValueError(
                f"augment {wrong} with augment_replaces {self.augment_replaces!r}: a history "
                "is chosen by recent or semantic; list those, or set augment_replaces: demos"
            )
        if self.history_len == 0:
            raise ValueError(
                f"augment_replaces {self.augment_replaces!r} with history_len 0: there is no "
                "history to replace; raise samples.history_len or set augment_replaces: demos"
            )
        return self

    def needs_embeddings(self) -> bool:
        """Whether any policy of this build retrieves by similarity."""
        policies = {self.demo_policy, self.history_policy, *self.augment}
        return bool(policies - {"recent"})

    @field_validator("augment")
    @classmethod
    def _distinct_policies(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"augment lists a policy twice: {value}")
        return value

    @field_validator("boundaries")
    @classmethod
    def _increasing(cls, value: list[date] | None) -> list[date] | None:
        if value is not None:
            if not value:
                raise ValueError("boundaries is empty: give at least one date or use `periods`")
            if any(b <= a for a, b in itertools.pairwise(value)):
                raise ValueError("boundaries must be strictly increasing dates")
        return value
