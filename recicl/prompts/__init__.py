"""THE prompt builder: ICL sample (ids) → text → token ids within a budget.

Training, evaluation and serving all call :class:`PromptBuilder`, so the model is scored on
exactly the token sequences it was tuned on (no train/serve skew).

Layout (RecICL format; ``tallrec`` is the same without the demonstration blocks)::

    <instruction>

    The user liked these movies: "A", "B".
    Will the user enjoy the movie "X" (Action, Comedy)? Answer: Yes

    The user liked these movies: "A", "B", "X".
    Will the user enjoy the movie "T" (Drama)? Answer:

With ``prompt.demo_history_len: 0`` the demonstrations are bare solved questions, one per line,
and only the query block shows the user's history (a third of the tokens)::

    <instruction>
    Will the user enjoy the movie "X" (Action, Comedy)? Answer: Yes
    Will the user enjoy the movie "Y" (Horror)? Answer: No

    The user liked these movies: "A", "B", "X".
    Will the user enjoy the movie "T" (Drama)? Answer:

Each demonstration is a solved example (its own history, its item, its answer); the query comes
last and the prompt ends with ``Answer:`` so the next token is the answer. The query's history
sits *before* the query item: everything up to the query item is a per-user prefix that serving
can compute once and share across candidates (:meth:`PromptBuilder.split_prefix`,
:meth:`PromptBuilder.query_suffix`).

Tokenization choice: a prompt is cut into pieces (instruction, block heads, one piece per history
item, the question, the answer) and the token ids are the *concatenation of per-piece
tokenizations* (plus the tokenizer's leading special tokens such as BOS). Why: trimming to the
budget then costs additions of cached per-piece lengths instead of re-tokenizing the prompt again
and again, item pieces repeat across blocks and users (so they are tokenized once and cached),
and prefix + suffix is exactly the full prompt. For BPE tokenizers whose pieces start at a space
(GPT-2/Llama-3/Qwen style) this equals tokenizing :meth:`PromptBuilder.render` as one string up to
rare merges across piece boundaries; for others it may differ by a few tokens. That is harmless
because nobody tokenizes the rendered text: training, evaluation and serving all use
:meth:`PromptBuilder.encode`. Demonstration answers are the exact answer token ids the scorer
reads (:func:`answer_token_ids`), so the in-context answers and the scored answer always agree.

Budget (``max_length``, special tokens included): the instruction and the query item are never
cut. Over budget, (1) history items are dropped, oldest first, always from the currently longest
history (ties: the oldest block first, so the query's history goes last), keeping at least one
item per history; (2) if that is not enough, whole demonstrations are dropped, oldest first (and
the freed room goes back to histories); (3) with no demonstrations left, the query's last history
item may go too. A prompt whose instruction + query alone exceed the budget is a
:class:`PromptError`.

Modules: :mod:`~recicl.prompts.wording` (templates, safe titles, the answer cue),
:mod:`~recicl.prompts.answers` (answer token ids), :mod:`~recicl.prompts.encoded` (results and
counters), :mod:`~recicl.prompts.budget` (trimming arithmetic), :mod:`~recicl.prompts.builder`
(:class:`PromptBuilder`). Import from ``recicl.prompts``; except
:mod:`~recicl.prompts.instructions`, the other prompt format: published Alpaca/TALLRec Yes/No
records, read, rendered and encoded alike for training and evaluation (import from it).
"""

from recicl.prompts.answers import AnswerTokenError, AnswerTokens, answer_token_ids
from recicl.prompts.builder import PASSTHROUGH_COLUMNS, PromptBuilder
from recicl.prompts.encoded import EncodedPrompt, TrimStats
from recicl.prompts.wording import (
    ANSWER_CUE,
    PromptError,
    Template,
    answer_text,
    clean_text,
    template_for,
)

__all__ = [
    "ANSWER_CUE",
    "PASSTHROUGH_COLUMNS",
    "AnswerTokenError",
    "AnswerTokens",
    "EncodedPrompt",
    "PromptBuilder",
    "PromptError",
    "Template",
    "TrimStats",
    "answer_text",
    "answer_token_ids",
    "clean_text",
    "template_for",
]
