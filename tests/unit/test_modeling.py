"""Model side: tiny-model factory, loading, answer tokens, and the P(Yes) scorer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from recicl.config import ModelConfig, PromptConfig, TinyModelSettings
from recicl.data.schema import CATALOG
from recicl.errors import ReciclError
from recicl.modeling import (
    AnswerTokenError,
    ModelLoadError,
    answer_logits,
    answer_token_ids,
    init_tiny_model,
    left_align,
    load_model,
    load_tokenizer,
    p_yes,
    score_prompts,
)
from recicl.modeling.loading import cut_head_to_answers
from recicl.modeling.prefix_sharing import score_prefix_shared
from recicl.prompts import AnswerTokens, PromptBuilder

TITLES = ["Toy Story (1995)", "Heat (1995)", "Sabrina (1995)", "Casino (1995)", "Balto (1995)"]


def write_catalog(folder: Path) -> Path:
    rows = [
        {"item_id": str(i), "title": t, "attributes": [("genres", "Drama|Comedy")]}
        for i, t in enumerate(TITLES)
    ]
    path = folder / "catalog.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=CATALOG), path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    return init_tiny_model(write_catalog(folder), folder / "model", TinyModelSettings())


@pytest.fixture(scope="module")
def tokenizer(tiny: Path):
    return load_tokenizer(ModelConfig(name_or_path=str(tiny)))


@pytest.fixture(scope="module")
def prompts(tiny: Path, tokenizer) -> list[list[int]]:
    """Encoded prompts of clearly different lengths."""
    catalog = pq.read_table(tiny.parent / "catalog.parquet")
    builder = PromptBuilder(PromptConfig(), catalog, tokenizer)
    demos = [{"item_id": "1", "label": 1, "history": ["0"]}, {"item_id": "2", "label": 0}]
    return [
        builder.encode(["0", "1", "2", "3"], demos, "4").input_ids,
        builder.encode([], [], "3").input_ids,
        builder.encode(["0"], demos[:1], "2").input_ids,
    ]


def reference_p_yes(model, ids: list[int], tokens) -> float:
    """P(Yes) from the full-vocabulary logits of one unpadded row (what the scorer must equal)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return torch.softmax(logits[[tokens.no, tokens.yes]].double(), -1)[1].item()


# ---------------------------------------------------------------------------------------------
# tiny factory and loading


def test_init_tiny_round_trip_with_auto_classes(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = {p.name for p in tiny.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert tok.convert_ids_to_tokens(tok("Answer:")["input_ids"])[0] == "<s>"
    tokens = answer_token_ids(tok)
    assert tok.decode([tokens.yes]) == " Yes" and tok.decode([tokens.no]) == " No"
    assert json.loads((tiny / "recicl_tiny.json").read_text())["settings"]["seed"] == 0


def test_init_tiny_is_deterministic_by_seed(tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path)
    small = TinyModelSettings(hidden_size=32, num_heads=2, intermediate_size=64)
    a = init_tiny_model(catalog, tmp_path / "a", small)
    b = init_tiny_model(catalog, tmp_path / "b", small)
    c = init_tiny_model(catalog, tmp_path / "c", small.model_copy(update={"seed": 1}))
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_cli_init_tiny(tmp_path: Path) -> None:
    from recicl.cli import app

    catalog = write_catalog(tmp_path)
    runner = CliRunner()
    result = runner.invoke(
        app, ["model", "init-tiny", "--catalog", str(catalog), "--output", str(tmp_path / "m")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "model.safetensors").is_file()
    missing = runner.invoke(
        app, ["model", "init-tiny", "--catalog", str(tmp_path / "no.parquet"), "--output", "x"]
    )
    assert missing.exit_code == 2


def test_load_tokenizer_pads_left(tokenizer) -> None:
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None


def test_load_model_errors(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="name_or_path is not set"):
        load_model(ModelConfig(), for_training=False)
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "absent")), for_training=False)
    bad_lora = ModelConfig.model_validate(
        {"name_or_path": str(tiny), "lora": {"target_modules": ["nope_proj"]}}
    )
    with pytest.raises(ModelLoadError, match="q_proj"):
        load_model(bad_lora, for_training=True)


def test_load_model_refuses_missing_weights(tiny: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((tiny / name).read_bytes())
    weights = load_file(tiny / "model.safetensors")
    dropped = next(k for k in weights if "layers.1.mlp" in k)
    del weights[dropped]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="missing_keys"):
        load_model(ModelConfig(name_or_path=str(broken)), for_training=False)


def test_load_model_lora_and_full(tiny: Path) -> None:
    cfg = ModelConfig(name_or_path=str(tiny))
    lora = load_model(cfg, for_training=True, gradient_checkpointing=True)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and lora.training
    no_lora = ModelConfig.model_validate({"name_or_path": str(tiny), "lora": {"enabled": False}})
    full = load_model(no_lora, for_training=True)
    assert all(p.requires_grad for p in full.parameters())
    evaluation = load_model(cfg, for_training=False)
    assert not evaluation.training and not hasattr(evaluation, "peft_config")


def test_load_model_with_saved_adapter(tiny: Path, tmp_path: Path, prompts, tokenizer) -> None:
    cfg = ModelConfig(name_or_path=str(tiny))
    trained = load_model(cfg, for_training=True)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    trained.save_pretrained(tmp_path / "adapter")
    reloaded = load_model(cfg, for_training=False, adapter=tmp_path / "adapter")
    np.testing.assert_allclose(
        score_prompts(reloaded, tokenizer, prompts),
        score_prompts(trained, tokenizer, prompts),
        atol=1e-6,
    )
    with pytest.raises(ModelLoadError, match="not a peft adapter"):
        load_model(cfg, for_training=False, adapter=tmp_path)


# ---------------------------------------------------------------------------------------------
# answer tokens


def test_answer_token_error_when_yes_is_not_one_token() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=280,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<s>"],
        show_progress=False,
    )
    raw.train_from_iterator(["the cat sat on the mat"] * 10, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, name_or_path="no-yes-tokenizer")
    with pytest.raises(AnswerTokenError, match="no-yes-tokenizer") as info:
        answer_token_ids(tok)
    assert isinstance(info.value, ReciclError)
    with pytest.raises(AnswerTokenError):
        PromptBuilder(PromptConfig(), pa.table({"item_id": ["1"], "title": ["t"]}), tok)


# ---------------------------------------------------------------------------------------------
# scorer


def test_score_prompts_equals_full_logits_softmax(tiny: Path, tokenizer, prompts) -> None:
    model = load_model(ModelConfig(name_or_path=str(tiny)), for_training=False)
    tokens = answer_token_ids(tokenizer)
    assert len({len(p) for p in prompts}) == len(prompts)  # unequal lengths → padding
    expected = [reference_p_yes(model, p, tokens) for p in prompts]
    for batch_size in (1, 2, 3):
        scores = score_prompts(model, tokenizer, prompts, batch_size=batch_size)
        np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert scores.dtype == np.float64 and scores.shape == (3,)
    assert score_prompts(model, tokenizer, []).shape == (0,)


def test_answer_logits_right_padding_matches_left(tiny: Path, tokenizer, prompts) -> None:
    model = load_model(ModelConfig(name_or_path=str(tiny)), for_training=False)
    tokens = answer_token_ids(tokenizer)
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id
    left = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    right = torch.tensor([p + [pad] * (width - len(p)) for p in prompts])
    left_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    right_mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
    with torch.no_grad():
        a = answer_logits(model, left, left_mask, tokens)
        b = answer_logits(model, right, right_mask, tokens)
        probs = p_yes(model, right, right_mask, tokens)
    assert a.shape == (3, 2) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    expected = [reference_p_yes(model, p, tokens) for p in prompts]
    np.testing.assert_allclose(probs.numpy(), expected, atol=1e-5)


def test_scorer_padding_safe_with_absolute_positions(tokenizer, prompts) -> None:
    """GPT-2 style learned positions (unlike RoPE) change if padding shifts positions: the
    scorer's explicit position ids must keep left padding invisible."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=512)
    model = GPT2LMHeadModel(config).eval()
    tokens = answer_token_ids(tokenizer)
    expected = [reference_p_yes(model, p, tokens) for p in prompts]
    np.testing.assert_allclose(score_prompts(model, tokenizer, prompts), expected, atol=1e-5)


def test_lm_head_runs_on_one_position_only(tiny: Path, tokenizer, prompts) -> None:
    model = load_model(ModelConfig(name_or_path=str(tiny)), for_training=False)
    seen: list[tuple[int, ...]] = []
    model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    score_prompts(model, tokenizer, prompts, batch_size=3)
    assert seen == [(3, 1, 64)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_head_cut_to_the_answers_scores_the_same(tiny: Path, tokenizer, prompts, dtype) -> None:
    """Scorers cut the LM head to the [no, yes] rows (cut_head_to_answers): the same scores on
    both scoring paths, from a head of two rows."""
    cfg = ModelConfig(name_or_path=str(tiny), dtype=dtype)
    full, cut = load_model(cfg, for_training=False), load_model(cfg, for_training=False)
    tokens = answer_token_ids(tokenizer)
    columns = cut_head_to_answers(cut, tokens)
    assert columns == (0, 1)
    head = cut.get_output_embeddings()
    assert tuple(head.weight.shape) == (2, 64) and head.weight.dtype == torch.float32
    assert cut_head_to_answers(cut, tokens) == columns  # once cut, the same answers: same columns
    with pytest.raises(ValueError, match="cut to the answers"):
        cut_head_to_answers(cut, AnswerTokens(no=tokens.yes, yes=tokens.no))
    np.testing.assert_allclose(
        score_prompts(cut, tokenizer, prompts, answer_tokens=columns),
        score_prompts(full, tokenizer, prompts, answer_tokens=tokens),
        atol=1e-6,
    )
    prefix, suffixes = prompts[0][:12], [prompts[1][-3:], prompts[2][-5:], prompts[0][-2:]]

    def shared(model, answers):
        return score_prefix_shared(model, [prefix], [suffixes], answers, pad_id=0, per_row=2)[0]

    np.testing.assert_allclose(shared(cut, columns), shared(full, tokens), atol=1e-6)


def test_a_16_bit_scoring_head_copies_to_float32_only_when_it_runs(tiny: Path) -> None:
    """The float32 copy of a bfloat16 LM head (the whole vocabulary: 0.7 GB for Gemma 3 270M)
    is made on the head's first forward call: a scorer cuts the head to two rows before it runs,
    so loading for scoring never holds the copy. Run uncut, the head computes in float32."""
    cfg = ModelConfig(name_or_path=str(tiny), dtype="bfloat16")
    model = load_model(cfg, for_training=False)
    head = model.get_output_embeddings()
    assert head.weight.dtype == torch.bfloat16 and head._weight32 is None  # nothing copied yet
    hidden = torch.randn(2, 3, head.in_features, dtype=torch.bfloat16)
    with torch.no_grad():
        logits = head(hidden)
    assert logits.dtype == torch.float32 and head._weight32 is not None
    expected = hidden.float() @ head.weight.detach().float().T
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_scorer_on_lora_model_matches_and_trains(tiny: Path, tokenizer, prompts) -> None:
    model = load_model(ModelConfig(name_or_path=str(tiny)), for_training=True)
    with torch.no_grad():  # non-zero B so that the adapter changes the output
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    tokens = answer_token_ids(tokenizer)
    model.eval()
    expected = [reference_p_yes(model, p, tokens) for p in prompts]
    base = load_model(ModelConfig(name_or_path=str(tiny)), for_training=False)
    base_scores = score_prompts(base, tokenizer, prompts)
    scores = score_prompts(model, tokenizer, prompts, batch_size=2)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert np.abs(scores - base_scores).max() > 1e-4  # the adapter is really applied
    model.train()
    assert model.training  # score_prompts restored the mode
    ids = torch.tensor([prompts[1], prompts[1]])
    mask = torch.ones_like(ids)
    logits = answer_logits(model, ids, mask, tokens)
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0])).backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_left_align() -> None:
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out_ids, out_mask = left_align(ids, mask)
    assert out_ids.tolist() == [[0, 1, 2, 3], [0, 0, 4, 5]]
    assert out_mask.tolist() == [[0, 1, 1, 1], [0, 0, 1, 1]]
    assert left_align(out_ids, out_mask)[0] is out_ids
    with pytest.raises(ValueError, match="contiguous"):
        left_align(ids, torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0]]))
    with pytest.raises(ValueError, match="no real token"):
        left_align(ids, torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0]]))


# ---------------------------------------------------------------------------------------------
# training objective: query + every demonstration answer in one pass


def test_training_logits_match_truncated_prompts(tiny: Path, tokenizer) -> None:
    """Each demonstration's logits equal the answer logits of the prompt cut just before that
    demonstration's answer; the query's equal answer_logits; labels are the in-context answers;
    padding side does not matter; the LM head runs at the kept positions only."""
    from recicl.modeling import training_logits
    from recicl.train.batching import pad_batch

    catalog = pq.read_table(tiny.parent / "catalog.parquet")
    builder = PromptBuilder(PromptConfig(), catalog, tokenizer)
    demos = [
        {"item_id": "1", "label": 1, "history": ["0"]},
        {"item_id": "2", "label": 0},
        {"item_id": "3", "label": 1},
    ]
    encoded = [
        builder.encode(["0", "1"], demos, "4"),
        builder.encode([], [], "3"),  # no demonstrations at all
        builder.encode(["0"], demos[1:2], "2"),
    ]
    positions = [e.demo_answer_positions for e in encoded]
    assert [len(p) for p in positions] == [3, 0, 1]
    model = load_model(ModelConfig(name_or_path=str(tiny)), for_training=False)
    tokens = answer_token_ids(tokenizer)
    seen: list[tuple[int, ...]] = []
    model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    for side in ("left", "right"):
        ids, mask = (
            torch.from_numpy(a) for a in pad_batch([e.input_ids for e in encoded], 0, side=side)
        )
        with torch.no_grad():
            out = training_logits(model, ids, mask, tokens, positions)
            query = answer_logits(model, ids, mask, tokens)
        torch.testing.assert_close(out.query, query, atol=1e-5, rtol=0)
        assert out.demo_labels.tolist() == [1, 0, 1, 0]
        expected = []
        for e, rows in zip(encoded, positions, strict=True):
            for p in rows:
                cut = torch.tensor([e.input_ids[:p]])
                with torch.no_grad():
                    expected.append(answer_logits(model, cut, torch.ones_like(cut), tokens)[0])
        torch.testing.assert_close(out.demos, torch.stack(expected), atol=1e-5, rtol=0)
    assert (4 + 3, 64) in seen  # 4 demo answers + 3 queries: never the whole sequence
    # without positions: the plain objective, no demonstration terms
    plain = training_logits(model, ids, mask, tokens)
    assert plain.demos.shape == (0, 2) and plain.query.shape == (3, 2)
    with pytest.raises(ValueError, match="Yes/No"):
        training_logits(model, ids, mask, tokens, [[2], [], []])
    with pytest.raises(ValueError, match="rows"):
        training_logits(model, ids, mask, tokens, [[]])


def test_a_version_finds_its_base_on_another_node(tiny: Path, tmp_path: Path, prompts, tokenizer):
    """A LoRA version names a local base by folder name and import checksum: moved to another
    node, where the base sits elsewhere, it loads from there (under model.models_root) and
    scores as on the training node; a base with another checksum, or none, is a clear error."""
    import shutil

    from recicl.modeling.packaged import (
        BaseModelRef,
        PackagedModelError,
        VersionManifest,
        load_packaged_model,
    )

    node_a = tmp_path / "node-a" / "models" / "base-lm"
    shutil.copytree(tiny, node_a)
    (node_a / "recicl_import.json").write_text(json.dumps({"sha256": "abc123"}))
    cfg = ModelConfig(name_or_path=str(node_a))
    trained = load_model(cfg, for_training=True)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    version = tmp_path / "version"
    trained.save_pretrained(version / "adapter")
    tokenizer.save_pretrained(version / "tokenizer")
    ref = BaseModelRef.of(cfg)
    assert ref == BaseModelRef(folder_name="base-lm", sha256="abc123")
    VersionManifest(
        base_model=str(node_a), base_ref=ref, weights="lora", prompt={}, model=cfg.model_dump()
    ).write(version)
    want = score_prompts(load_packaged_model(version).model, tokenizer, prompts)

    node_b = tmp_path / "node-b" / "models"
    node_b.mkdir(parents=True)
    shutil.move(str(node_a), str(node_b / "base-lm"))  # the training node's path is gone
    elsewhere = ModelConfig(models_root=str(node_b))
    got = score_prompts(load_packaged_model(version, model_cfg=elsewhere).model, tokenizer, prompts)
    np.testing.assert_allclose(got, want, atol=1e-6)

    (node_b / "base-lm" / "recicl_import.json").write_text(json.dumps({"sha256": "other"}))
    with pytest.raises(
        PackagedModelError, match=r"base model 'base-lm' sha256 abc123.*models_root"
    ):
        load_packaged_model(version, model_cfg=elsewhere)
    with pytest.raises(PackagedModelError, match="copy it to"):
        load_packaged_model(version, model_cfg=ModelConfig(models_root=str(tmp_path / "none")))


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_if_native_loads_what_the_cpu_computes_fast(
    tiny: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], native: bool
) -> None:
    """model.dtype bfloat16-if-native: bfloat16 weights on a CPU with bf16 units, float32
    elsewhere (where torch emulates bf16, slower than float32), and the choice is logged."""
    from recicl.modeling import hardware

    monkeypatch.setattr(hardware, "native_bf16", lambda on_gpu: native)  # CPU or GPU box
    cfg = ModelConfig(name_or_path=str(tiny), dtype="bfloat16-if-native")
    model = load_model(cfg, for_training=False)
    want = torch.bfloat16 if native else torch.float32
    assert {p.dtype for p in model.model.parameters()} == {want}  # the decoder's weights
    assert f"bfloat16-if-native: {'bfloat16' if native else 'float32'}" in capsys.readouterr().out
