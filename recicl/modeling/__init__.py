"""Model side of recicl: load HF model + tokenizer (LoRA via peft), score P(Yes), tiny models.

Heavy imports (torch, transformers, peft) happen when a name is first used, so that importing
``recicl.modeling`` for a type or a constant stays cheap (CLI start-up, Ray Data workers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recicl.lazy import lazy_exports
from recicl.prompts import AnswerTokenError, AnswerTokens, answer_token_ids

if TYPE_CHECKING:
    from recicl.modeling.loading import ModelLoadError, load_model, load_tokenizer
    from recicl.modeling.scoring import (
        answer_logits,
        hidden_states_at,
        left_align,
        p_yes,
        score_prompts,
        training_logits,
    )
    from recicl.modeling.tiny import init_tiny_model

__all__ = [
    "AnswerTokenError",
    "AnswerTokens",
    "ModelLoadError",
    "answer_logits",
    "answer_token_ids",
    "hidden_states_at",
    "init_tiny_model",
    "left_align",
    "load_model",
    "load_tokenizer",
    "p_yes",
    "score_prompts",
    "training_logits",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ModelLoadError": "loading",
        "load_model": "loading",
        "load_tokenizer": "loading",
        "answer_logits": "scoring",
        "hidden_states_at": "scoring",
        "left_align": "scoring",
        "p_yes": "scoring",
        "score_prompts": "scoring",
        "training_logits": "scoring",
        "init_tiny_model": "tiny",
    },
)
