"""Answer token ids: the single tokens of " Yes" / " No" after the cue, and leading specials.

Shared by the builder (demonstration answers) and the scorer (the logits it reads), so the two
always agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from recicl.prompts.wording import ANSWER_CUE, PromptError, answer_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class AnswerTokenError(PromptError):
    """The tokenizer cannot express the answers "Yes"/"No" as single tokens after ``Answer:``."""


class AnswerTokens(NamedTuple):
    """Vocabulary ids of the two answers; scorer columns are in this order: [no, yes]."""

    no: int
    yes: int


def _tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def encode_plain(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _answer_id(tokenizer: Any, cue_text: str, word: str) -> int | None:
    # Preferred: the token that follows the cue when the answer is written in running text,
    # i.e. what a pretrained model has seen after such cues.
    cue = encode_plain(tokenizer, cue_text)
    full = encode_plain(tokenizer, cue_text + word)
    if len(full) == len(cue) + 1 and full[: len(cue)] == cue:
        return full[-1]
    for variant in (word, word.strip()):
        ids = encode_plain(tokenizer, variant)
        if len(ids) == 1:
            return ids[0]
    return None


def answer_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    cue: str = ANSWER_CUE,
    words: tuple[str, str] = (answer_text(1), answer_text(0)),
) -> AnswerTokens:
    """Resolve the single-token ids of " Yes" and " No" as they follow ``Answer:`` (or
    ``words`` = (yes, no) after another ``cue``, e.g. "Yes"/"No" after an Alpaca-style
    "### Response:" line).

    Why single tokens: the score is P(Yes) from the logits of one next-token position. The
    builder writes exactly these ids as demonstration answers, so the answers the model sees in
    context are the ones it is scored on. Raises :class:`AnswerTokenError` naming the tokenizer.
    """
    yes, no = _answer_id(tokenizer, cue, words[0]), _answer_id(tokenizer, cue, words[1])
    if yes is None or no is None or yes == no:
        shown = {
            w: tokenizer.convert_ids_to_tokens(encode_plain(tokenizer, cue + w)) for w in words
        }
        raise AnswerTokenError(
            f"tokenizer {_tokenizer_name(tokenizer)!r} has no single token for the answers "
            f"{words[0].strip()!r}/{words[1].strip()!r} after {cue!r} (tokens: {shown}); use a "
            "model whose vocabulary holds ' Yes' and ' No' (or 'Yes'/'No') as single tokens"
        )
    return AnswerTokens(no=no, yes=yes)


def leading_special_ids(tokenizer: Any) -> list[int]:
    """Special ids the tokenizer puts before a text (e.g. BOS); trailing ones (EOS) are left
    out on purpose, since the answer must be the next token after ``Answer:``."""
    probe = "Answer"
    plain = encode_plain(tokenizer, probe)
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []
