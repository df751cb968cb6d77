"""Request and response bodies of the HTTP API.

The module-level classes say which fields exist and what type each has (the routes are typed
against them); :func:`request_schemas` derives from them the classes that actually validate
requests, with the limits of ``cfg.serve`` (longest id, most candidates, ...), because those
limits are configuration, not code. Every request class forbids unknown fields, so a typo
(``userid``) is a 422 naming it instead of a silently ignored field.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    field_validator,
    model_validator,
)

from recicl.config import ReciclConfig, TrafficConfig

#: No control characters in ids (they would break the one-line layout of prompts and logs).
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
#: ``name@alias`` or ``name/<version>``.
MODEL_REF_PATTERN = r"^[A-Za-z0-9_.\-]+(@[A-Za-z0-9_.\-]+|/[0-9]+)$"
#: Static bounds of any rating; the served version's own scale is checked by the routes.
RATING_BOUND = 1e9
#: Longest title or attribute value of an added catalog item (prompts cut titles much shorter,
#: ``prompt.max_title_chars``); most attributes per item.
MAX_ITEM_TEXT = 1000
MAX_ITEM_ATTRIBUTES = 32

Label = Annotated[int, Field(strict=True, ge=0, le=1, description="1 = liked, 0 = not.")]
Timestamp = Annotated[
    int, Field(strict=True, ge=0, le=2**53, description="Unix seconds; omitted = now.")
]
Rating = Annotated[
    float,
    Field(
        strict=True,
        allow_inf_nan=False,
        ge=-RATING_BOUND,
        le=RATING_BOUND,
        description="Rating on the served version's scale; label = rating >= "
        "data.like_threshold when no label is given.",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Labelled(_Strict):
    label: Label | None = None
    rating: Rating | None = None
    timestamp: Timestamp | None = None

    @model_validator(mode="after")
    def _label_or_rating(self) -> Any:
        if self.label is None and self.rating is None:
            raise ValueError("give `label` (0/1) or `rating`")
        return self


class EventIn(_Labelled):
    """One interaction: a label (0/1) or a rating, optional timestamp (default now)."""

    user_id: str
    item_id: str


class HistoryEvent(_Labelled):
    """An event of the request's user, used as context instead of the stored events."""

    item_id: str


class ScoreRequest(_Strict):
    user_id: str
    candidates: list[str]
    history: list[HistoryEvent] | None = None
    model: str | None = None


class RecommendRequest(_Strict):
    user_id: str
    k: int = 10
    candidates: list[str] | None = None
    model: str | None = None


class CatalogItemIn(_Strict):
    """A catalog item to add or update (``POST /admin/items``): what its prompts show."""

    item_id: str
    title: str = Field(max_length=MAX_ITEM_TEXT, description="The text prompts quote.")
    attributes: dict[str, Annotated[str, Field(strict=True, max_length=MAX_ITEM_TEXT)]] = Field(
        default_factory=dict,
        max_length=MAX_ITEM_ATTRIBUTES,
        description='Text attributes as in the catalog (e.g. {"genres": "Drama|Comedy"}: '
        "lists joined by '|'); shown in prompts as prompt.include_attributes says.",
    )

    @field_validator("title")
    @classmethod
    def _has_text(cls, title: str) -> str:
        if not title.strip() or any(ord(c) < 32 and c not in "\t" for c in title):
            raise ValueError("give a non-empty one-line title (the text the item's prompts quote)")
        return title

    # the store refuses a blank id and NUL characters (recicl.serve.store.items.checked_items):
    # refused here first, as a 422 naming the field, not a 500 from the store
    @field_validator("item_id")
    @classmethod
    def _id_not_blank(cls, item_id: str) -> str:
        if not item_id.strip():
            raise ValueError("give a non-blank item id (not only spaces)")
        return item_id

    @field_validator("attributes")
    @classmethod
    def _keys(cls, attributes: dict[str, str]) -> dict[str, str]:
        for key, value in attributes.items():
            if not key.strip() or len(key) > 64 or "\x00" in key:
                raise ValueError(
                    f"attribute name {key!r}: use 1 to 64 characters, not blank, no NUL"
                )
            if "\x00" in value:
                raise ValueError(f"attribute {key!r}: its value contains a NUL character")
        return attributes


class ItemsRequest(_Strict):
    items: list[CatalogItemIn]


class ItemsResponse(BaseModel):
    items_revision: int = Field(description="Store revision of the write (replicas catch up).")
    added: list[str] = Field(description="Item ids written (new or updated).")
    served: dict[str, Any] | None = Field(
        description="The answering model replica after it caught up: its version, the added "
        "items it holds, how many got a vector (similarity policies only) and an embedding "
        "error, if any; {error} when it could not take them now (they are stored all the same, and "
        "every replica reads them from the store when it loads a version or scores a job that "
        "needs them)."
    )


class ItemScore(BaseModel):
    item_id: str
    score: float = Field(description="P(Yes): probability that the user likes the item.")


REQUEST_ID_DOC = (
    "Id of this request: the X-Request-ID header when the client or Ray Serve's proxy sent one, "
    "else a new one (and returned in X-Request-ID). The scores are logged under it."
)
ARM_DOC = (
    "How the request was routed to the version that answered: 'champion' (the served alias), "
    "'candidate' (a split sent this user to a candidate version) or 'explicit' (the request "
    "named a model)."
)


class ScoreResponse(BaseModel):
    model_version: str
    model: str
    scores: list[ItemScore]
    context_events: int = Field(description="Events the prompt context was built from.")
    request_id: str = Field(description=REQUEST_ID_DOC)
    arm: str = Field(description=ARM_DOC)


class RecommendResponse(BaseModel):
    model_version: str
    model: str
    items: list[ItemScore]
    context_events: int
    candidates_scored: int
    request_id: str = Field(description=REQUEST_ID_DOC)
    arm: str = Field(description=ARM_DOC)


class LiveArm(BaseModel):
    """One version and arm over the window (scores served in it)."""

    version: str
    arm: str
    served: int
    joined: int = Field(description="Scores joined with the user's event for that item.")
    pending: int = Field(description="Scores whose attribution window is still open.")
    unjoined: int = Field(description="Scores whose window closed without an event.")
    late: int = Field(description="Events matched to these scores after their window.")
    duplicate: int = Field(description="Events matched to these scores after their join.")
    like_rate: float | None = Field(description="Share of joined scores liked (null: none).")
    auc: float | None = Field(description="ROC AUC of the joined scores (null: one class).")
    logloss: float | None = Field(description="LogLoss of the joined scores (null: none).")


class LiveTotalsArm(BaseModel):
    """Counters of one version and arm since the store was created."""

    version: str
    arm: str
    served: int
    joined: int
    late: int
    duplicate: int
    expired: int = Field(description="Scores whose window closed without an event.")
    evicted: int = Field(description="Scores deleted by the row cap while still open.")


class LiveTotals(BaseModel):
    unscored: int = Field(description="Events for items no arm had scored for that user.")
    arms: list[LiveTotalsArm]


class LiveMetricsResponse(BaseModel):
    window_seconds: int
    since: int = Field(description="Unix seconds: scores served from here on are counted.")
    now: int
    attribution_window_seconds: int
    arms: list[LiveArm]
    totals: LiveTotals


class EventsResponse(BaseModel):
    accepted: int
    new: int = Field(description="Events not already stored (exact repeats count once).")
    model_version: str | None = Field(description="Served version last seen by this ingress.")


class ErrorResponse(BaseModel):
    error: str
    detail: str


@dataclass(frozen=True)
class RequestSchemas:
    """The validating request classes for one configuration (subclasses of the static ones)."""

    event: type[EventIn]
    history_event: type[HistoryEvent]
    score: type[ScoreRequest]
    recommend: type[RecommendRequest]
    items: type[ItemsRequest]
    #: PUT /admin/traffic: the fields of serve.traffic, validated by the config's own class
    traffic: type[TrafficConfig] = TrafficConfig

    def all(self) -> list[type[BaseModel]]:
        return [
            self.event,
            self.history_event,
            self.score,
            self.recommend,
            self.items,
            self.traffic,
        ]


def request_schemas(cfg: ReciclConfig) -> RequestSchemas:
    """Request classes with the limits of ``cfg.serve`` (their OpenAPI names are the static
    classes' names)."""
    sc = cfg.serve

    def text_id(what: str) -> Any:
        return Annotated[
            str,
            StringConstraints(min_length=1, max_length=sc.max_string_length, pattern=ID_PATTERN),
            Field(description=what),
        ]

    item_id = text_id("Item id as in the catalog.")
    user_id = text_id("User id (any string; new users are scored cold-start).")
    # field specs built at run time: Any, as pydantic's stubs type them for literal annotations
    model_ref: tuple[Any, Any] = (
        str | None,
        Field(
            None,
            max_length=sc.max_string_length,
            pattern=MODEL_REF_PATTERN,
            description="'name@alias' or 'name/<version>'; default = the served alias. Only "
            "the served alias and what serve.selectable_models lists may be named (else 403).",
        ),
    )
    item_list: Any = types.GenericAlias(list, (item_id,))
    optional_item_list: Any = item_list | None
    event = create_model(
        "EventIn", __base__=EventIn, __doc__=EventIn.__doc__, user_id=user_id, item_id=item_id
    )
    history_event = create_model(
        "HistoryEvent", __base__=HistoryEvent, __doc__=HistoryEvent.__doc__, item_id=item_id
    )
    optional_history: Any = types.GenericAlias(list, (history_event,)) | None
    score = create_model(
        "ScoreRequest",
        __base__=ScoreRequest,
        user_id=user_id,
        candidates=(
            item_list,
            Field(min_length=1, max_length=sc.max_candidates, description="Items to score."),
        ),
        history=(
            optional_history,
            Field(
                None,
                max_length=sc.max_history_events,
                description="Context to use instead of the user's stored events (list order = "
                "time order for events without timestamp).",
            ),
        ),
        model=model_ref,
    )
    recommend = create_model(
        "RecommendRequest",
        __base__=RecommendRequest,
        user_id=user_id,
        k=(
            int,
            Field(10, strict=True, ge=1, le=sc.max_candidates, description="Items returned."),
        ),
        candidates=(
            optional_item_list,
            Field(
                None,
                min_length=1,
                max_length=sc.max_candidates,
                description="Items to rank; omitted = recent popular items the user has not "
                "seen, topped up from the catalog.",
            ),
        ),
        model=model_ref,
    )
    catalog_item = create_model(
        "CatalogItemIn", __base__=CatalogItemIn, __doc__=CatalogItemIn.__doc__, item_id=item_id
    )
    item_rows: Any = types.GenericAlias(list, (catalog_item,))
    items = create_model(
        "ItemsRequest",
        __base__=ItemsRequest,
        items=(
            item_rows,
            Field(
                min_length=1,
                max_length=sc.max_events_per_request,
                description="Items to add or update, all or none (at most "
                "serve.max_events_per_request per request).",
            ),
        ),
    )
    return RequestSchemas(event, history_event, score, recommend, items)
