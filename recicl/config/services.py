"""Sections for what runs around training: Ray, MLflow, serving, evaluation, experiments."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from recicl.config.access import AccessConfig
from recicl.config.base import StrictModel


class RayConfig(StrictModel):
    """How to reach Ray. Production: set RAY_ADDRESS; locally an embedded runtime starts."""

    address: str | None = Field(None, description="Ray address; null = $RAY_ADDRESS or local.")
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of a local runtime; null = max(4, cores)."
    )
    parquet_footer_actors: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Processes Ray Data's Parquet reader starts to read file footers on every "
        "read (Ray's default: 32, seconds of fixed cost per read on a small machine); null = "
        "one per 16 cluster CPUs, 1 to 32. $RAY_DATA_PARQUET_FOOTER_NUM_ACTORS, when set, wins.",
    )


class MLflowConfig(StrictModel):
    """Where runs, artifacts and model versions are recorded."""

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; null = $MLFLOW_TRACKING_URI, else "
        "sqlite:///<workdir>/mlflow.db with artifacts in <workdir>/mlartifacts.",
    )
    experiment: str = Field("recicl", description="MLflow experiment name.")
    registered_model: str = Field(
        "recicl", description="Registered model that training adds a version to."
    )
    register_version: bool = Field(
        True, description="Register a model version at the end of training."
    )


class FeedbackConfig(StrictModel):
    """The feedback log: every served score, joined with the user's next event for that item.

    Live metrics (AUC, LogLoss, like rate per version and arm) are computed from it, so how long
    scores wait for their outcome and how long they are kept decide what the metrics can see.
    """

    attribution_window_seconds: int = Field(
        86_400,
        ge=1,
        le=30 * 86_400,
        description="A served score takes the outcome of the user's event for that item when the "
        "event is stamped at most this long after the score was served (and arrives before the "
        "window closes); later events are counted as late, never joined, so a score's label "
        "cannot change once its window has closed.",
    )
    retention_seconds: int = Field(
        7 * 86_400,
        ge=1,
        description="Served scores are deleted this long after serving (at least the attribution "
        "window, so no score is dropped while it can still be joined); bounds the store, and "
        "is the longest window /v1/metrics/live can report.",
    )
    max_rows: int = Field(
        1_000_000,
        ge=1,
        description="Most served scores kept (oldest deleted first, counted as evicted when their "
        "window was still open): a hard bound on the store's memory under any traffic.",
    )
    metrics_window_seconds: int = Field(
        3600,
        ge=1,
        description="Default window of GET /v1/metrics/live and of the exported Prometheus "
        "gauges: recent enough to show a regression within the hour, long enough to hold "
        "joined scores of both labels.",
    )
    metrics_refresh_seconds: float = Field(
        30.0,
        ge=0,
        description="Each ingress recomputes the Prometheus gauges at most this often, after "
        "events arrive (each computation reads the window's scores from the store); 0 = only "
        "when /v1/metrics/live is called.",
    )

    @model_validator(mode="after")
    def _retention_covers_the_window(self) -> FeedbackConfig:
        if self.retention_seconds < self.attribution_window_seconds:
            raise ValueError(
                f"retention_seconds ({self.retention_seconds}) must be at least "
                f"attribution_window_seconds ({self.attribution_window_seconds}): a score deleted "
                "before its window closes could never be joined"
            )
        if self.metrics_window_seconds > self.retention_seconds:
            raise ValueError(
                f"metrics_window_seconds ({self.metrics_window_seconds}) is longer than "
                f"retention_seconds ({self.retention_seconds}): scores that old are deleted"
            )
        return self


class ShadowConfig(StrictModel):
    """A candidate scored beside the champion, never answering: live evidence at no risk."""

    version: int | None = Field(
        None,
        ge=1,
        description="Registry version scored in shadow on champion-answered requests, after the "
        "answer is computed and off its latency path; its scores go to the feedback log under "
        "arm 'shadow', paired with the champion's on the same request (what `recicl promote "
        "--live` compares). null = no shadow.",
    )
    share: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of champion-answered requests also scored in shadow (chosen by a hash "
        "of the request id): shadow scoring uses model replicas, so below 1 it costs less.",
    )
    max_in_flight: int = Field(
        16,
        ge=1,
        description="Shadow scorings running at once per ingress; past it a request's shadow is "
        "skipped and counted as dropped, so a slow candidate cannot pile up work behind the "
        "champion.",
    )


class SplitConfig(StrictModel):
    """A candidate answering a fixed share of users: the A/B read-out of /v1/metrics/live."""

    version: int | None = Field(
        None,
        ge=1,
        description="Registry version that answers the users the hash assigns to it (arm "
        "'candidate'; the rest get the served alias, arm 'champion'). null = no split.",
    )
    share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of users sent to the candidate: a user goes there when "
        "sha256(salt, user id) falls below it, so a user always sees the same arm and raising "
        "the share only adds users.",
    )


class TrafficConfig(StrictModel):
    """How requests for the served alias are shared between the champion and candidates.

    PUT /admin/traffic sets the same fields at run time (the admin setting wins until DELETE).
    """

    shadow: ShadowConfig = Field(
        default_factory=ShadowConfig, description="A candidate scored in shadow (never answers)."
    )
    split: SplitConfig = Field(
        default_factory=SplitConfig, description="A candidate answering a share of users."
    )
    salt: str = Field(
        "recicl",
        min_length=1,
        max_length=64,
        description="Mixed into the split's user hash and the shadow's request hash: change it "
        "to draw another set of users (the same salt keeps every user in its arm across "
        "restarts and replicas).",
    )

    @model_validator(mode="after")
    def _one_role_per_version(self) -> TrafficConfig:
        if self.shadow.version is not None and self.shadow.version == self.split.version:
            raise ValueError(
                f"shadow.version and split.version are both {self.shadow.version}: a version "
                "either answers a share of users (split) or is scored beside the champion "
                "(shadow), not both; clear one of them"
            )
        return self


class ServeConfig(StrictModel):
    """The Ray Serve HTTP API: which model version, where events live, request limits, scaling."""

    model_name: str | None = Field(
        None, description="Registered model to serve; null = mlflow.registered_model."
    )
    alias: str = Field(
        "champion", description="Registry alias served by default (moved by `recicl promote`)."
    )
    alias_poll_seconds: float = Field(
        10.0,
        gt=0,
        description="How often each model replica checks the alias and hot-swaps to a newly "
        "promoted version (in-flight requests finish on the old one).",
    )
    registry_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="How long the ingress waits for one MLflow registry call (model "
        "references, the traffic tag, the versions listing) before serving its last known "
        "answer, or 503 registry_unavailable for a reference it never resolved; a late answer "
        "is still taken. Refreshes run in the background every alias_poll_seconds. Model "
        "replicas bound their alias poll by it too (they keep the version they serve).",
    )
    selectable_models: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="What a request's `model` field may name besides the served alias (always "
        "allowed: the same as leaving it out): aliases ('challenger') and version numbers "
        "('3'), matched as written (model@challenger, model/3). Anything else is refused with "
        "403 before any registry lookup or model load, so clients cannot make replicas load "
        "arbitrary versions. Default [] = clients cannot pick a version; traffic arms reach "
        "their users through serve.traffic, not by name.",
    )
    store_url: str | None = Field(
        None,
        description="Interaction store: sqlite:////abs/events.db or redis://host:6379/0; "
        "null = $RECICL_STORE_URL, else sqlite:///<workdir>/events.db.",
    )
    max_events_per_user: int | None = Field(
        1000, ge=1, description="Events kept per user in the store (oldest dropped); null = all."
    )
    feedback: FeedbackConfig = Field(
        default_factory=FeedbackConfig,
        description="The feedback log of served scores and their outcomes (live metrics).",
    )
    traffic: TrafficConfig = Field(
        default_factory=TrafficConfig,
        description="Shadow and split roll-out of candidate versions beside the served alias.",
    )
    host: str = Field(
        "127.0.0.1", description="HTTP bind address (0.0.0.0 exposes the API on every interface)."
    )
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    route_prefix: str = Field("/", description="URL prefix of the API routes.")
    num_demos: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Demonstrations per prompt at serve time; null = what the served version "
        "was trained with (its samples manifest), else samples.num_demos.",
    )
    history_len: int | None = Field(
        None,
        ge=0,
        le=200,
        description="Liked items per history at serve time; null = the served version's "
        "samples manifest, else samples.history_len.",
    )
    context_events: int = Field(
        200,
        ge=1,
        le=10000,
        description="Newest stored events read per request to build demonstrations and "
        "histories (older events cannot affect the prompt beyond this window).",
    )
    catalog_path: str | None = Field(
        None,
        description="catalog.parquet used to render titles and validate item ids; null = the "
        "catalog of the samples folder the served version was trained on.",
    )
    allow_unknown_items: bool = Field(
        False,
        description="Accept item ids missing from the catalog (rendered as 'item <id>'); "
        "false = reject them with 422 listing the unknown ids.",
    )
    max_candidates: int = Field(
        200, ge=1, le=10000, description="Most candidates per score/recommend request (and max k)."
    )
    max_events_per_request: int = Field(
        1000, ge=1, description="Most events in one POST /v1/events body."
    )
    max_history_events: int = Field(
        200, ge=0, description="Most events in the optional `history` of a score request."
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest accepted request body (bytes); larger = 413."
    )
    max_string_length: int = Field(256, ge=8, description="Longest user/item id (characters).")
    access: AccessConfig = Field(
        default_factory=AccessConfig, description="Write credential, client rates, quotas."
    )
    admin_token: str | None = Field(
        None,
        description="Bearer token for /admin routes; null = $RECICL_ADMIN_TOKEN, and with "
        "neither the admin routes are disabled (404). Several separated by ',' are all valid "
        "(rotation: add the new one, move callers, drop the old).",
    )
    recent_window_seconds: int = Field(
        7 * 86_400,
        ge=1,
        description="/v1/recommend without candidates: items with events in this window "
        "(popular right now) form the candidate pool.",
    )
    candidate_pool_size: int = Field(
        100,
        ge=1,
        description="/v1/recommend without candidates: pool size (recent popular items the "
        "user has not seen, topped up from the catalog); at most max_candidates.",
    )
    recent_cache_seconds: float = Field(
        5.0, ge=0, description="How long the recent-popular item list is cached per ingress."
    )
    max_batch_size: int = Field(
        8, ge=1, description="Score requests batched together by @serve.batch (per replica)."
    )
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, description="Longest wait for a batch to fill before it runs."
    )
    score_batch_rows: int = Field(
        64,
        ge=1,
        description="Rows per forward pass on the shared prefix cache, each holding up to "
        "candidates_per_row candidates (bounds the memory of the repeated KV cache).",
    )
    candidates_per_row: int = Field(
        4,
        ge=1,
        le=256,
        description="Candidates of one request packed into one row on the shared prefix cache, "
        "kept apart by a 4D attention mask: fewer cache copies and forward rows, for some "
        "attention over masked-out neighbours. 1 = one candidate per row (always so for "
        "FlashAttention, which takes no custom masks).",
    )
    num_replicas: int = Field(1, ge=1, description="Model replicas (without autoscaling).")
    max_replicas: int | None = Field(
        None,
        ge=1,
        description="Autoscale model replicas between num_replicas and this; null = fixed.",
    )
    target_ongoing_requests: float = Field(
        4.0, gt=0, description="Autoscaling target of in-flight requests per model replica."
    )
    upscale_delay_seconds: float = Field(
        30.0,
        ge=0,
        description="Autoscaling: load above target for this long before a replica is added "
        "(Ray Serve's default).",
    )
    downscale_delay_seconds: float = Field(
        600.0,
        ge=0,
        description="Autoscaling: load below target for this long before a replica is removed "
        "(Ray Serve's default: a replica that took minutes to load a model is not dropped at "
        "the first lull).",
    )
    ingress_replicas: int = Field(1, ge=1, description="HTTP ingress (FastAPI) replicas.")
    num_cpus: float = Field(0.5, ge=0, description="Logical CPUs per model replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per model replica (> 0 scores on CUDA).")
    ingress_num_cpus: float = Field(0.5, ge=0, description="Logical CPUs per ingress replica.")

    @field_validator("selectable_models", mode="before")
    @classmethod
    def _model_refs(cls, entries: object) -> object:
        """Version numbers normalized ('03', or 3 unquoted in YAML → '3'): requests are matched
        against the entries as text."""
        if not isinstance(entries, list):
            return entries  # pydantic's own error names the expected list
        out = []
        for raw in entries:
            entry = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
            if not isinstance(entry, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", entry):
                raise ValueError(
                    f"{raw!r}: list aliases (e.g. challenger) or version numbers (e.g. 3), "
                    "without the model name"
                )
            out.append(str(int(entry)) if entry.isdigit() else entry)
        return out


class LivePromotionConfig(StrictModel):
    """`recicl promote --live`: champion and candidate compared on the same live requests.

    The pairs are the scores both gave on the same request and item (the candidate in shadow),
    joined with the user's event; the gate is a paired bootstrap of candidate AUC - champion AUC
    that resamples users, and the alias moves when its lower bound is at least
    -evaluate.promotion_tolerance.
    """

    confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1.0,
        description="One-sided confidence that the candidate is not worse: the lower bound is "
        "the (1 - confidence) quantile of the bootstrap differences.",
    )
    min_pairs: int = Field(
        200,
        ge=2,
        description="Fewest joined pairs to decide on: with fewer the interval says little, so "
        "the gate refuses and says how many there are.",
    )
    resamples: int = Field(
        2000,
        ge=100,
        le=100_000,
        description="Bootstrap resamples (more: a steadier bound, linear in time).",
    )
    seed: int = Field(0, description="Seed of the resampling: the same data, the same decision.")
    window_seconds: int | None = Field(
        None,
        ge=1,
        description="Pairs served in this many seconds before now; null = every pair the store "
        "keeps (serve.feedback.retention_seconds).",
    )


class MonitorConfig(StrictModel):
    """`recicl monitor`: when the champion's live figures say re-tune or roll back.

    Thresholds are AUC points. They compare like with like: live AUC over joined feedback
    (which holds one user's candidates and many users) is not the offline AUC of one period, so
    the drop allowed against the offline figure is wider than against the previous window.
    """

    window_seconds: int = Field(
        3600,
        ge=60,
        description="The window judged (scores served in the last this many seconds); the "
        "previous window of the same length is the drift reference.",
    )
    min_joined: int = Field(
        200,
        ge=10,
        description="Fewer joined scores in the window: no decision (exit code 12), not a "
        "guess from noise (200 joined scores resolve AUC to about +-0.04).",
    )
    max_drop_vs_offline: float = Field(
        0.08,
        ge=0,
        le=1,
        description="Re-tune when the live AUC is this far below the champion's latest offline "
        "evaluation (the mean of its periods' AUC).",
    )
    max_drop_vs_previous: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Re-tune when the live AUC fell this far below the previous window's (drift).",
    )
    rollback_within_seconds: int = Field(
        86_400,
        ge=0,
        description="Roll back (exit code 11), instead of re-tuning, when the AUC drop against "
        "the previous window follows an alias move this recent: the new champion, not the "
        "users, changed.",
    )


class RetuneConfig(StrictModel):
    """`recicl retune`: the champion re-tuned on the log plus what serving stored since.

    The samples are rebuilt on the grown log with the log's own periods kept as they were (the
    champion's) and the stored events cut into two more: the older part is trained on, the
    newest ``holdout_share`` is held out, and candidate and champion are both scored on it, so
    the candidate is judged only on events newer than everything it learned from. A warm
    re-tune continues the champion's LoRA adapter; optimizer state and learning-rate schedule
    start fresh, warm-up included (Adam's moments are not part of a version).
    """

    warm: bool = Field(
        True,
        description="Continue the champion's adapter (true) or tune a new one from the base "
        "model on every period but the held-out one (false).",
    )
    recent_periods: int | None = Field(
        2,
        ge=1,
        description="Warm re-tunes train on this many periods before the held-out one: 2 = the "
        "stored events' older part and the log's newest period (which the champion was "
        "validated on, not trained on); null = all (a cold re-tune always trains on all).",
    )
    holdout_share: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="Newest share of the stored events held out to score candidate and champion.",
    )
    min_new_events: int = Field(
        100,
        ge=2,
        description="Refuse to re-tune (nothing registered) when the store holds fewer events "
        "newer than the log than this: too few to learn from or to score the candidate on.",
    )
    enter_as: Literal["shadow", "split", "none"] = Field(
        "shadow",
        description="How the new version meets users: shadow (scored beside the champion, never "
        "answers), split (answers a share of users), none (registered only).",
    )
    share: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Shadow: share of champion requests also scored; split: share of users.",
    )


class EvaluateConfig(StrictModel):
    """Batch evaluation and the registry's promotion gate."""

    replicas: int = Field(2, ge=1, description="Model replicas in the scoring actor pool.")
    use_gpu: bool = Field(False, description="One GPU per scoring replica.")
    batch_size: int = Field(32, ge=1, description="Prompts per forward pass in a replica.")
    max_samples: int | None = Field(
        None,
        ge=1,
        description="Evaluate at most this many samples per period (a fixed random subset, the "
        "same for every model, so the promotion gate compares like with like); null = all.",
    )
    promotion_tolerance: float = Field(
        0.0,
        ge=0.0,
        description="Promote when candidate AUC >= champion AUC - tolerance on the newest "
        "evaluated period.",
    )
    live: LivePromotionConfig = Field(
        default_factory=LivePromotionConfig,
        description="`recicl promote --live`: the gate on joined live feedback.",
    )
