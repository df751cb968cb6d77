"""Load the tokenizer and causal LM named in :class:`~recicl.config.ModelConfig`.

Padding side: **left**. Why: the answer is read at the last real token of each row; with left
padding that is position -1 for every row, so the LM head runs on one position only
(``logits_to_keep=1``) and the same forward call works through peft, DDP and DeepSpeed wrappers.
The scorer passes explicit position ids, so left padding changes no result
(:mod:`recicl.modeling.scoring`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from recicl.config import ModelConfig
from recicl.errors import ReciclError
from recicl.prompts.answers import AnswerTokens

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PADDING_SIDE = "left"


class ModelLoadError(ReciclError):
    """The model or tokenizer cannot be loaded as configured (path, weights, LoRA targets)."""


def _require_path(model_cfg: ModelConfig) -> str:
    if not model_cfg.name_or_path:
        raise ModelLoadError(
            "model.name_or_path is not set: give a Hugging Face model id or a local folder "
            "(`recicl model init-tiny --catalog ... --output DIR` makes a small local one)"
        )
    return model_cfg.name_or_path


def load_tokenizer(model_cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer, left-padding, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    path = _require_path(model_cfg)
    try:
        # B615: model.name_or_path is the operator's folder or Hub id, and a Hub id is not
        # pinned to a revision yet (there is no model.revision setting)
        tokenizer = AutoTokenizer.from_pretrained(  # nosec B615  # see the comment above
            path, trust_remote_code=model_cfg.trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load the tokenizer of {path!r}: {error}") from error
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer of {path!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = PADDING_SIDE
    return tokenizer


def _torch_dtype(name: str) -> Any:
    """``model.dtype`` as transformers takes it; ``bfloat16-if-native`` resolved for this
    machine (:mod:`recicl.modeling.hardware`), and logged, since it decides speed and numerics."""
    import torch

    if name == "bfloat16-if-native":
        from recicl.modeling.hardware import native_bf16

        on_gpu = torch.cuda.is_available()
        native = native_bf16(on_gpu)
        print(
            f"[recicl] model.dtype bfloat16-if-native: {'bfloat16' if native else 'float32'} "
            f"({'this GPU' if on_gpu else 'this CPU'} {'has' if native else 'has no'} bf16 "
            "units)",
            flush=True,
        )
        return torch.bfloat16 if native else torch.float32
    return {
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "auto": "auto",
    }[name]


def load_model(
    model_cfg: ModelConfig,
    *,
    for_training: bool,
    gradient_checkpointing: bool = False,
    adapter: str | Path | None = None,
) -> Any:
    """Load the causal LM; for training wrap it with a fresh LoRA adapter (``lora.enabled``).

    Returns a transformers ``PreTrainedModel``, or a peft ``PeftModel`` wrapping one when an
    adapter is attached (typed ``Any``: the two share the call interface but no base class).

    ``adapter``: a saved peft adapter folder to put on top instead (evaluation, serving, or
    continued training when ``for_training``). Under DeepSpeed ZeRO-3 create
    ``HfDeepSpeedConfig`` *before* calling this, so that weights are loaded sharded.
    Raises :class:`ModelLoadError` when any weight is missing or has the wrong shape: transformers
    would otherwise initialise it randomly without failing.
    """
    from transformers import AutoModelForCausalLM

    path = _require_path(model_cfg)
    kwargs: dict[str, Any] = {
        "dtype": _torch_dtype(model_cfg.dtype),
        "trust_remote_code": model_cfg.trust_remote_code,
        "output_loading_info": True,
    }
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    try:
        # output_loading_info=True makes it return (model, info); the stubs know only the model
        loaded = AutoModelForCausalLM.from_pretrained(path, **kwargs)  # nosec B615  # as the tokenizer
        model, info = cast("tuple[Any, dict[str, Any]]", loaded)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load the model {path!r}: {error}") from error
    problems = {
        kind: list(info.get(kind) or [])
        for kind in ("missing_keys", "mismatched_keys")
        if info.get(kind)
    }
    if problems:
        shown = "; ".join(f"{kind}: {', '.join(map(str, v[:5]))}" for kind, v in problems.items())
        raise ModelLoadError(
            f"loading {path!r} left weights uninitialised ({shown}); the checkpoint does not "
            "match the model class (under ZeRO-3, create HfDeepSpeedConfig before loading)"
        )

    if for_training:
        model.config.use_cache = False  # the KV cache is useless in training and costs memory
        if gradient_checkpointing:
            kwargs_ = {"use_reentrant": False}  # reentrant checkpointing breaks with frozen inputs
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs_)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs_)
            # With a frozen base (LoRA) the embeddings output must require grad, or the
            # checkpointed blocks would get no gradient path.
            model.enable_input_require_grads()
    if adapter is not None:
        model = _load_adapter(model, adapter, trainable=for_training)
    elif for_training and model_cfg.lora.enabled:
        model = _add_lora(model, model_cfg)
    if not for_training:
        _float32_head(model)
    model.train(for_training)
    return model


def _float32_head(model: Any) -> None:
    """Scoring with 16-bit weights: compute the LM head in float32.

    Why: P(Yes) is a softmax over the difference of two logits. In bfloat16 a logit carries 8
    significant bits, so the scores of a bf16 model fall on a coarse grid (Gemma 3 270M served
    0.3486, 0.3775, 0.4073 and nothing in between: candidates tie and rankings break ties by
    catalog order). The decoder keeps its 16-bit weights (that is where the time goes); the head
    upcasts its input, and its weight through a float32 copy made on the *first forward call*,
    not here. Every scorer cuts the head to the two answer rows before it scores
    (:func:`cut_head_to_answers`), and the embedding encoder runs only the decoder, so for them
    the full copy (Gemma 3 270M: 0.7 GB, the whole vocabulary) is never made: a copy made here
    raised every load's peak memory by that much, to be dropped a moment later.
    """
    import torch
    from torch import nn

    head = model.get_output_embeddings()
    if head is None or not isinstance(head, nn.Linear):
        return
    if head.weight.dtype == torch.float32:
        return

    class _Float32Head(nn.Linear):
        _weight32: torch.Tensor | None = None  # the float32 copy, made on first use

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            weight = self._weight32
            if weight is None or weight.device != self.weight.device:
                weight = self._weight32 = self.weight.detach().float()
            bias = None if self.bias is None else self.bias.detach().float()
            return nn.functional.linear(hidden.float(), weight, bias)

    upcast = _Float32Head(
        head.in_features, head.out_features, bias=head.bias is not None, device="meta"
    )
    upcast.weight = head.weight  # the 16-bit weight itself (tied to the input embeddings)
    if head.bias is not None:
        upcast.bias = head.bias
    model.set_output_embeddings(upcast)


#: The columns of a cut head's logits (see :func:`cut_head_to_answers`).
ANSWER_COLUMNS = AnswerTokens(no=0, yes=1)


def cut_head_to_answers(model: Any, tokens: AnswerTokens) -> AnswerTokens:
    """Replace a scoring model's LM head by one that computes only the two answer logits, in
    float32; returns the columns to read from the model's logits now, :data:`ANSWER_COLUMNS`.

    Why: a score is the softmax of the [no, yes] pair, so the other vocabulary rows are work
    thrown away, and with Gemma's 262,144 rows they are not small: 0.34 GFLOP of float32 per
    answer position (a 100-candidate recommendation: 34 GFLOP beside ~380 of bfloat16 for the
    rest of the model; docs/performance.md), and a 0.7 GB float32 copy per replica. Each of
    the two rows is the same dot product as before, so the scores are unchanged (to float
    rounding). A cut model answers nothing else: only scorers call this, on models they loaded
    for scoring. A head that is not a plain ``nn.Linear`` is left as it is (``tokens`` back).
    """
    from torch import nn

    head = model.get_output_embeddings()
    cut_to = getattr(head, "answer_tokens", None)
    if cut_to is not None:
        if cut_to != tokens:
            raise ValueError(f"the head was cut to the answers {cut_to}, not to {tokens}")
        return ANSWER_COLUMNS
    if head is None or not isinstance(head, nn.Linear):
        return tokens

    class _AnswerHead(nn.Linear):
        answer_tokens = tokens

        def forward(self, hidden: Any) -> Any:
            return super().forward(hidden.float())

    index = [tokens.no, tokens.yes]
    cut = _AnswerHead(head.in_features, 2, bias=head.bias is not None, device="meta")
    cut.weight = nn.Parameter(head.weight.detach()[index].float().clone(), requires_grad=False)
    if head.bias is not None:
        cut.bias = nn.Parameter(head.bias.detach()[index].float().clone(), requires_grad=False)
    model.set_output_embeddings(cut)
    return ANSWER_COLUMNS


def _add_lora(model: Any, model_cfg: ModelConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = model_cfg.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        with _quiet_peft():
            return get_peft_model(model, config)
    except ValueError as error:
        linear = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, mod in model.named_modules()
                if type(mod).__name__ == "Linear"
            }
        )
        raise ModelLoadError(
            f"model.lora.target_modules={lora.target_modules!r} does not fit "
            f"{model_cfg.name_or_path!r}: {error}. Linear modules of this model: "
            f"{', '.join(linear) or 'none'} (or use 'all-linear')"
        ) from error


def _load_adapter(model: Any, adapter: str | Path, *, trainable: bool) -> Any:
    from peft import PeftModel

    if not Path(adapter, "adapter_config.json").is_file():
        raise ModelLoadError(f"{adapter} is not a peft adapter folder (no adapter_config.json)")
    with _quiet_peft():
        wrapped = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    if trainable:
        return wrapped
    # Scoring: fold the adapter into the base weights. An unmerged LoRA runs two extra matmuls
    # per adapted layer, in the adapter's float32 even on a bfloat16 base (peft upcasts them),
    # which made a LoRA-tuned Gemma score several times slower than the base on CPUs.
    return wrapped.merge_and_unload()


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft probes a deprecated transformers attribute; the warning is not actionable."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        yield
