"""What a prompt says: the answer cue, the template of each domain/format, safe item text."""

from __future__ import annotations

import re
from dataclasses import dataclass

from recicl.config import PromptConfig
from recicl.errors import ReciclError

#: The text every question ends with; the answer token follows it.
ANSWER_CUE = "Answer:"


class PromptError(ReciclError):
    """A sample that cannot become a prompt (bad field, or the query alone exceeds the budget)."""


#: How a rated item of a ``rella`` history says its label (ReLLa shows stars; labels are binary).
RATED = {1: "liked", 0: "not liked"}


def answer_text(label: int) -> str:
    """The answer as it follows ``Answer:`` in demonstrations: " Yes" (label 1) or " No"."""
    return " Yes" if label else " No"


# --------------------------------------------------------------------------------------------
# Templates


@dataclass(frozen=True)
class Template:
    """Wording of one domain/format. Every piece keeps its own leading whitespace, so that the
    prompt is the plain concatenation of pieces (see the ``recicl.prompts`` docstring)."""

    instruction: str
    history_head: str  # starts a block: blank line, then the history sentence
    question: str  # "{item}" is the quoted item; ends with ANSWER_CUE
    empty_history: str  # replaces the list when a history is empty

    def __post_init__(self) -> None:
        if not self.question.endswith(ANSWER_CUE):
            raise ValueError("a question template must end with the answer cue")


#: Who the item statistics count, per domain ("72% of 140 viewers liked it").
PEOPLE = {"movie": "viewers", "book": "readers", "generic": "users"}

_NOUNS = {
    "movie": ("a movie", "movie", "movies"),
    "book": ("a book", "book", "books"),
    "generic": ("an item", "item", "items"),
}


def template_for(config: PromptConfig) -> Template:
    """The template of ``config.domain`` in ``config.format``."""
    a_noun, noun, plural = _NOUNS[config.domain]
    instruction = (
        f"Predict whether the user will enjoy {a_noun}, given the {plural} they liked before."
    )
    history_head = f"\n\nThe user liked these {plural}:"
    if config.format == "recicl":
        instruction += " The user's earlier decisions come first, as solved examples."
    elif config.format == "rella":  # ReLLa: one history of rated items, no solved examples
        instruction = (
            f"Predict whether the user will enjoy {a_noun}, given how they rated the "
            f"{plural} they saw before."
        )
        history_head = f"\n\nThe user rated these {plural}, oldest first:"
    instruction += " Answer Yes or No."
    return Template(
        instruction=instruction,
        history_head=history_head,
        question=f"\nWill the user enjoy the {noun} {{item}}? {ANSWER_CUE}",
        empty_history=" none.",
    )


# --------------------------------------------------------------------------------------------
# Safe text

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")
# "Answer:" inside a title would fake the prompt's answer cue; lookalike colons count too.
_FAKE_CUE = re.compile(r"(answer)\s*[:\uff1a\ufe55\ufe13\u2236]", re.IGNORECASE)


def clean_text(text: str, max_chars: int) -> str:
    """Make untrusted catalog text safe to place between double quotes in a prompt.

    Why each step: newlines/control characters would break the one-block-per-line layout, so all
    whitespace runs become one space; double quotes would end the quoted title early, so they
    become single quotes; "Answer:" would plant a fake answer cue, so its colon becomes " -";
    very long texts would eat the budget, so they are cut to ``max_chars`` with an ellipsis.
    """
    text = str(text)[: max_chars * 8 + 256]  # bound the regex work on absurd inputs
    text = _CONTROL.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    text = text.replace('"', "'")
    text = _FAKE_CUE.sub(r"\1 -", text)
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + "…"
    return text
