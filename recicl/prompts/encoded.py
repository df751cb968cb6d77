"""What encoding returns (:class:`EncodedPrompt`) and how often trimming was needed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class EncodedPrompt:
    """Token ids of one prompt, and how much was dropped to fit the budget.

    ``prefix_length``: number of leading ids that depend only on the user (instruction, demos,
    query history); ``input_ids[prefix_length:]`` is the query question.
    """

    input_ids: list[int]
    trimmed_history: int = 0  # history items dropped from kept blocks
    trimmed_demos: int = 0  # whole demonstrations dropped
    prefix_length: int = 0
    #: index in ``input_ids`` of every kept demonstration's answer token (oldest first); training
    #: can supervise them too (``train.demo_loss_weight``): each is a solved example
    demo_answer_positions: list[int] = field(default_factory=list)

    @property
    def trimmed(self) -> bool:
        return bool(self.trimmed_history or self.trimmed_demos)


@dataclass
class TrimStats:
    """How often the budget forced trimming; callers report it (e.g. in manifests, MLflow)."""

    prompts: int = 0
    trimmed_prompts: int = 0
    history_items_dropped: int = 0
    demos_dropped: int = 0
    unknown_items: int = 0  # item ids missing from the catalog, rendered as "item <id>"
    max_tokens: int = 0  # longest encoded prompt seen

    def record(self, encoded: EncodedPrompt, unknown: int) -> None:
        self.prompts += 1
        self.trimmed_prompts += int(encoded.trimmed)
        self.history_items_dropped += encoded.trimmed_history
        self.demos_dropped += encoded.trimmed_demos
        self.unknown_items += unknown
        self.max_tokens = max(self.max_tokens, len(encoded.input_ids))

    @property
    def trimmed_fraction(self) -> float:
        return self.trimmed_prompts / self.prompts if self.prompts else 0.0

    def merge(self, other: TrimStats) -> TrimStats:
        """Sum of two counters (e.g. from several Ray actors)."""
        return TrimStats(
            prompts=self.prompts + other.prompts,
            trimmed_prompts=self.trimmed_prompts + other.trimmed_prompts,
            history_items_dropped=self.history_items_dropped + other.history_items_dropped,
            demos_dropped=self.demos_dropped + other.demos_dropped,
            unknown_items=self.unknown_items + other.unknown_items,
            max_tokens=max(self.max_tokens, other.max_tokens),
        )

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "trimmed_fraction": self.trimmed_fraction}
