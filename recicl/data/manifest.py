"""The samples manifest: what `recicl samples build` built from what, as one typed record.

Training, evaluation, promotion, serving, the re-tune and the reports all read it. They used to
read it as an untyped dict, each with its own ``.get(...)`` defaults for keys that older builds
did not write; this model is now the one place that names the fields, their types and those
defaults. Every field has a default, so manifests written by older builds (and the partial
ones that hand-made folders carry) still load, with the types checked; ``rating_range``
remembers whether it was recorded at all; unknown keys are kept (``extra``), so a manifest from
a newer recicl loads too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from recicl.config import ConfigError


class _Record(BaseModel):
    """Read as written: unknown keys kept, nothing changed after loading."""

    model_config = ConfigDict(extra="allow", frozen=True)


class SourceFacts(_Record):
    name: str = "unknown"
    path: str = ""
    layout: str = "unknown"


class QuarantineFacts(_Record):
    total: int = 0
    by_reason: dict[str, int] = {}
    catalog: dict[str, int] = {}  # rejected catalog rows by reason


class PeriodFacts(_Record):
    """One period: its time span (ISO, UTC; open at the ends) and counts."""

    period: int
    start: str | None = None
    end: str | None = None
    first_event: str | None = None
    last_event: str | None = None
    events: int = 0
    like_rate: float | None = None
    samples: int = 0
    sample_like_rate: float | None = None


class SelectionFacts(_Record):
    """How demonstrations and histories were chosen (``recent`` before policies existed)."""

    demo_policy: str = "recent"
    history_policy: str = "recent"
    recent_share: float | None = None
    retrieval_window: int | None = None
    augmented: list[str] = []
    augment_replaces: str = "demos"
    demo_quality: dict[str, Any] | None = None
    embeddings: dict[str, Any] | None = None


class SamplesManifest(_Record):
    """``<samples folder>/manifest.json``."""

    recicl_version: str = "unknown"
    created_at: str | None = None
    config_hash: str = "none"
    content_id: str | None = None
    source: SourceFacts = SourceFacts()
    rows_read: int = 0
    events: int = 0
    #: unix seconds of the newest valid event: where the log ends (None: no valid event, or
    #: a build from before it was recorded; see :meth:`log_end_ts`)
    last_event_ts: int | None = None
    users: int = 0
    catalog_items: int = 0
    #: the rating scale the readers validated against (None: unchecked). Whether it was
    #: recorded at all: :attr:`records_rating_range`.
    rating_range: tuple[float, float] | None = None
    samples: int = 0
    like_rate: float | None = None
    quarantine: QuarantineFacts = QuarantineFacts()
    boundaries: list[str] = []
    boundaries_ts: list[int] = []
    periods: list[PeriodFacts] = []
    selection: SelectionFacts = SelectionFacts()
    item_stats: dict[str, Any] | None = None
    #: the ``data`` and ``samples`` sections of the config it was built with
    config: dict[str, Any] = {}
    seconds: float = 0.0
    warnings: list[str] = []

    # -- reading and writing -------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, where: str) -> SamplesManifest:
        """From the JSON text of ``where`` (a path or URL, named in the error)."""
        try:
            return cls.model_validate(json.loads(text))
        except ValidationError as error:  # (a ValueError too: first)
            problems = "; ".join(
                f"{'.'.join(map(str, item['loc'])) or 'the top level'}: {item['msg']} "
                f"(got {item.get('input')!r})"
                for item in error.errors()
            )
        except ValueError as error:  # not JSON
            problems = str(error)
        raise ConfigError(
            f"{where} is not a samples manifest ({problems}): rebuild the folder with "
            "`recicl samples build`"
        ) from None

    @classmethod
    def read(cls, path: Path) -> SamplesManifest:
        return cls.parse(path.read_text(), str(path))

    def write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2) + "\n")

    # -- what readers ask of it ----------------------------------------------------------------

    @property
    def records_rating_range(self) -> bool:
        """False for builds from before the rating scale was recorded (serving then falls back
        to its own config), True when it was, null (unchecked) included."""
        return "rating_range" in self.model_fields_set

    @property
    def samples_config(self) -> dict[str, Any]:
        """The ``samples`` section the folder was built with ({} when not recorded)."""
        return dict(self.config.get("samples") or {})

    def sample_counts(self) -> dict[int, int]:
        return {row.period: row.samples for row in self.periods}
