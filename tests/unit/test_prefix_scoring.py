"""Prefix-shared scoring equals naive per-candidate scoring of the full prompts."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recicl.config import ModelConfig, PromptConfig, TinyModelSettings
from recicl.data.schema import CATALOG
from recicl.modeling import (
    answer_token_ids,
    init_tiny_model,
    load_model,
    load_tokenizer,
    prefix_sharing,
    score_prompts,
)
from recicl.modeling.prefix_sharing import CandidateScorer, ScoreJob, score_prefix_shared
from recicl.prompts import PromptBuilder

TITLES = [
    "Up",
    "Heat (1995)",
    "The Lord of the Rings: The Fellowship of the Ring (2001)",
    "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1964)",
    "Balto",
    "Casino (1995)",
    "Eternal Sunshine of the Spotless Mind (2004)",
    "Se7en",
]
GENRES = ["Animation", "Crime|Drama", "Adventure|Fantasy", "Comedy|War", "Children", "Crime",
          "Drama|Romance|Sci-Fi", "Mystery|Thriller"]  # fmt: skip
TOL = 1e-4


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("prefix")
    rows = [
        {"item_id": str(i), "title": t, "attributes": [("genres", g)]}
        for i, (t, g) in enumerate(zip(TITLES, GENRES, strict=True))
    ]
    catalog_path = folder / "catalog.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=CATALOG), catalog_path)
    path = init_tiny_model(catalog_path, folder / "model", TinyModelSettings(seed=3))
    model_cfg = ModelConfig(name_or_path=str(path))
    model = load_model(model_cfg, for_training=False)
    tokenizer = load_tokenizer(model_cfg)
    return {
        "catalog": pq.read_table(catalog_path),
        "model": model,
        "tokenizer": tokenizer,
        "tokens": answer_token_ids(tokenizer),
        "path": path,
    }


def _context(n_demos: int):
    history = ["0", "1", "2", "3"]
    demos = [
        {"item_id": str(i % 8), "label": i % 2, "timestamp": i, "history": history[: i % 4]}
        for i in range(n_demos)
    ]
    return history, demos


def _naive(model, tokenizer, tokens, prefix, suffixes):
    return score_prompts(model, tokenizer, [prefix + s for s in suffixes], 4, answer_tokens=tokens)


def test_suffix_lengths_differ_and_scores_match(world):
    builder = PromptBuilder(PromptConfig(), world["catalog"], world["tokenizer"])
    history, demos = _context(3)
    candidates = [str(i) for i in range(8)]
    suffixes = [builder.query_suffix(c) for c in candidates]
    assert len({len(s) for s in suffixes}) >= 4  # the test really covers ragged suffixes
    prefix = builder.split_prefix(history, demos)
    # untrimmed: prefix + suffix is exactly the encoded full prompt
    for c, s in zip(candidates, suffixes, strict=True):
        assert prefix + s == builder.encode(history, demos, c).input_ids
    shared = score_prefix_shared(
        world["model"], [prefix], [suffixes], world["tokens"], pad_id=0, max_rows=64
    )[0]
    naive = _naive(world["model"], world["tokenizer"], world["tokens"], prefix, suffixes)
    np.testing.assert_allclose(shared, naive, atol=TOL, rtol=0)
    assert np.ptp(naive) > 1e-4  # scores differ across candidates: a mix-up would show


def test_many_prefixes_chunks_and_order(world):
    """Several requests (prefixes of different lengths) in one call, tiny chunks, any order."""
    builder = PromptBuilder(PromptConfig(), world["catalog"], world["tokenizer"])
    tok = world["tokenizer"]
    prefixes, groups = [], []
    for n_demos, candidates in [(0, ["7", "1"]), (4, ["3", "0", "2", "6", "5"]), (1, ["4"])]:
        history, demos = _context(n_demos)
        prefixes.append(builder.split_prefix(history[: n_demos + 1], demos))
        groups.append([builder.query_suffix(c) for c in candidates])
    assert len({len(p) for p in prefixes}) == 3
    pad = tok.pad_token_id
    shared = score_prefix_shared(
        world["model"], prefixes, groups, world["tokens"], pad_id=pad, max_rows=3
    )
    for prefix, group, got in zip(prefixes, groups, shared, strict=True):
        want = _naive(world["model"], tok, world["tokens"], prefix, group)
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_lora_wrapped_model(world):
    from peft import LoraConfig, get_peft_model

    base = load_model(ModelConfig(name_or_path=str(world["path"])), for_training=False)
    lora = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero: perturb it so the adapter matters
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    lora.eval()
    builder = PromptBuilder(PromptConfig(), world["catalog"], world["tokenizer"])
    history, demos = _context(2)
    prefix = builder.split_prefix(history, demos)
    suffixes = [builder.query_suffix(str(i)) for i in range(8)]
    shared = score_prefix_shared(lora, [prefix], [suffixes], world["tokens"], pad_id=0)[0]
    naive = _naive(lora, world["tokenizer"], world["tokens"], prefix, suffixes)
    np.testing.assert_allclose(shared, naive, atol=TOL, rtol=0)
    plain = _naive(world["model"], world["tokenizer"], world["tokens"], prefix, suffixes)
    assert np.abs(naive - plain).max() > 1e-3  # the adapter changed the scores


def test_budget_reserves_the_longest_suffix(world):
    config = PromptConfig(max_length=120)
    builder = PromptBuilder(config, world["catalog"], world["tokenizer"])
    scorer = CandidateScorer(world["model"], world["tokenizer"], builder, world["tokens"])
    history, demos = _context(4)
    job = ScoreJob(history, demos, [str(i) for i in range(8)])
    prefix, suffixes = scorer.encode(job)
    untrimmed = builder.split_prefix(history, demos)
    assert len(prefix) < len(untrimmed)  # the budget forced trimming
    assert max(len(prefix) + len(s) for s in suffixes) <= config.max_length
    shared = scorer.score([job])[0]
    naive = scorer.score([job], shared=False)[0]
    np.testing.assert_allclose(shared, naive, atol=TOL, rtol=0)


def test_fallback_when_cache_is_not_plain(world, monkeypatch):
    builder = PromptBuilder(PromptConfig(), world["catalog"], world["tokenizer"])
    history, demos = _context(2)
    prefix = builder.split_prefix(history, demos)
    suffixes = [builder.query_suffix(str(i)) for i in range(5)]
    monkeypatch.setattr(prefix_sharing, "_plain_layers", lambda cache: None)
    got = score_prefix_shared(world["model"], [prefix], [suffixes], world["tokens"], pad_id=0)[0]
    want = _naive(world["model"], world["tokenizer"], world["tokens"], prefix, suffixes)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_bad_inputs(world):
    with pytest.raises(ValueError):
        score_prefix_shared(world["model"], [[]], [[[1]]], world["tokens"], pad_id=0)
    with pytest.raises(ValueError):
        score_prefix_shared(world["model"], [[1, 2]], [[[]]], world["tokens"], pad_id=0)
    empty = score_prefix_shared(world["model"], [[1, 2]], [[]], world["tokens"], pad_id=0)
    assert empty[0].shape == (0,)


def test_model_mode_is_restored(world):
    model = world["model"]
    model.train()
    try:
        score_prefix_shared(model, [[1, 2, 3]], [[[4, 5]]], world["tokens"], pad_id=0)
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize("per_row", [1, 3, 16])
def test_packed_rows_keep_candidates_apart(world, monkeypatch, per_row):
    """Several candidates share a row (a 4D mask keeps them apart): each still gets the score of
    its own full prompt, across requests with prefixes of different lengths, ragged suffixes and
    rows split over several forward passes. A leak between candidates would change the scores."""
    builder = PromptBuilder(PromptConfig(), world["catalog"], world["tokenizer"])
    calls = {"packed": 0, "single": 0}
    for name in ("packed", "single"):
        original = getattr(prefix_sharing, f"_run_{name}")

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(prefix_sharing, f"_run_{name}", counted)
    prefixes, groups = [], []
    for n_demos, count in [(3, 8), (0, 5), (1, 1)]:
        history, demos = _context(n_demos)
        prefixes.append(builder.split_prefix(history, demos))
        groups.append([builder.query_suffix(str((n_demos + k) % 8)) for k in range(count)])
    pad = world["tokenizer"].pad_token_id
    shared = score_prefix_shared(
        world["model"], prefixes, groups, world["tokens"], pad_id=pad, max_rows=2, per_row=per_row
    )
    for prefix, group, got in zip(prefixes, groups, shared, strict=True):
        want = _naive(world["model"], world["tokenizer"], world["tokens"], prefix, group)
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    assert (calls["packed"] > 0) == (per_row > 1) and (calls["single"] > 0) == (per_row == 1)


def test_kernels_without_custom_masks_get_one_candidate_per_row(world, monkeypatch):
    model = world["model"]
    assert prefix_sharing._takes_custom_masks(model)  # the tiny model runs SDPA
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    assert not prefix_sharing._takes_custom_masks(flash)
    # such a model gets one candidate per row, whatever per_row says
    monkeypatch.setattr(prefix_sharing, "_takes_custom_masks", lambda m: False)
    monkeypatch.setattr(
        prefix_sharing, "_run_packed", lambda *a, **k: pytest.fail("packed path taken")
    )
    builder = PromptBuilder(PromptConfig(), world["catalog"], world["tokenizer"])
    history, demos = _context(2)
    prefix = builder.split_prefix(history, demos)
    suffixes = [builder.query_suffix(str(i)) for i in range(6)]
    got = score_prefix_shared(model, [prefix], [suffixes], world["tokens"], pad_id=0, per_row=8)[0]
    want = _naive(model, world["tokenizer"], world["tokens"], prefix, suffixes)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# Sliding-window and hybrid caches (Gemma 3's five local layers to one global, Mistral-style
# all-local): tiny random models of those architectures, with a window far shorter than the
# prompts so that the window really cuts attention.

WINDOW = 8


def _windowed_model(world, kind: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, MistralConfig

    vocab = len(world["tokenizer"])
    common = {
        "vocab_size": vocab,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 4096,
        "sliding_window": WINDOW,
        "pad_token_id": world["tokenizer"].pad_token_id,
    }
    if kind == "hybrid":
        kinds = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
        config = Gemma3TextConfig(num_hidden_layers=4, layer_types=kinds, **common)
    else:
        config = MistralConfig(num_hidden_layers=3, **common)
    config._attn_implementation = "sdpa"
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_config(
        config, dtype=torch.float32, attn_implementation="sdpa"
    )
    return model.eval()


@pytest.mark.parametrize("kind", ["hybrid", "sliding"])
@pytest.mark.parametrize("per_row", [1, 4])
def test_sliding_window_models_share_the_prefix(world, kind, per_row):
    model = _windowed_model(world, kind)
    layout = prefix_sharing.attention_layout(model)
    assert layout.sliding and layout.window == WINDOW
    assert layout.mixed == (kind == "hybrid")
    builder = PromptBuilder(PromptConfig(), world["catalog"], world["tokenizer"])
    prefixes, groups = [], []
    for n_demos, count in [(3, 6), (0, 3)]:
        history, demos = _context(n_demos)
        prefixes.append(builder.split_prefix(history, demos))
        groups.append([builder.query_suffix(str((n_demos + k) % 8)) for k in range(count)])
    assert min(len(p) for p in prefixes) > 4 * WINDOW  # the window really cuts
    fallbacks: list[str] = []
    shared = score_prefix_shared(
        model,
        prefixes,
        groups,
        world["tokens"],
        pad_id=world["tokenizer"].pad_token_id,
        max_rows=2,
        per_row=per_row,
        on_fallback=fallbacks.append,
    )
    assert fallbacks == []
    for prefix, group, got in zip(prefixes, groups, shared, strict=True):
        want = _naive(model, world["tokenizer"], world["tokens"], prefix, group)
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    # the window matters: the same model with a global mask scores differently
    full = _naive(model, world["tokenizer"], world["tokens"], prefixes[0], groups[0])
    model.config.sliding_window = 10_000
    try:
        wide = _naive(model, world["tokenizer"], world["tokens"], prefixes[0], groups[0])
    finally:
        model.config.sliding_window = WINDOW
    assert np.abs(full - wide).max() > 1e-3


def test_fallbacks_are_reported(world, monkeypatch, caplog):
    """Layer kinds that cannot be shared, and windowed models on kernels without custom masks
    with prompts beyond the window, score the full prompts, log it and call the hook."""
    model = _windowed_model(world, "hybrid")
    builder = PromptBuilder(PromptConfig(), world["catalog"], world["tokenizer"])
    history, demos = _context(2)
    prefix = builder.split_prefix(history, demos)
    suffixes = [builder.query_suffix(str(i)) for i in range(4)]
    want = _naive(model, world["tokenizer"], world["tokens"], prefix, suffixes)
    scorer = CandidateScorer(model, world["tokenizer"], builder, world["tokens"])

    monkeypatch.setattr(prefix_sharing, "_takes_custom_masks", lambda m: False)
    with caplog.at_level("WARNING", logger="recicl.modeling.prefix_sharing"):
        got = scorer.score([ScoreJob(history, demos, [str(i) for i in range(4)])])[0]
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    assert dict(scorer.fallbacks) == {"window_without_masks": 1}
    assert "fell back" in caplog.text and "sliding window" in caplog.text

    monkeypatch.setattr(
        prefix_sharing,
        "attention_layout",
        lambda m: prefix_sharing.AttentionLayout(("linear_attention", "full_attention"), None),
    )
    seen: list[str] = []
    got = score_prefix_shared(
        model, [prefix], [suffixes], world["tokens"], pad_id=0, on_fallback=seen.append
    )[0]
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    assert len(seen) == 1 and seen[0].startswith("unsupported_layers:")
    assert "linear_attention" in seen[0]


def test_served_scores_under_a_retrieval_policy_equal_the_offline_prompts(world):
    """A version trained with semantic demos and histories: each candidate gets its own
    context; candidates whose contexts coincide share one prefix; every score equals the
    score of the prompt the sample builder makes for that candidate as the target."""
    from recicl.data.item_embeddings import ItemEmbeddings, unit_rows
    from recicl.data.samples import Selection
    from recicl.serve.api.backend import ModelJob
    from recicl.serve.serving_model import ServingModel, run_jobs
    from recicl.serve.store import Event
    from tests.unit.test_serve_context import training_context

    rng = np.random.default_rng(5)
    ids = tuple(str(i) for i in range(8))
    embeddings = ItemEmbeddings(ids, unit_rows(rng.normal(size=(8, 4))))
    selection = Selection("mixed", "semantic", recent_share=0.25, window=6, embeddings=embeddings)
    builder = PromptBuilder(PromptConfig(), world["catalog"], world["tokenizer"])
    scorer = CandidateScorer(world["model"], world["tokenizer"], builder, world["tokens"])
    served = ServingModel(
        version="1", label="recicl/1", scorer=scorer, catalog_ids=frozenset(ids),
        catalog_order=list(ids), catalog_path="catalog.parquet", num_demos=4, history_len=2,
        prompt_format="recicl", rating_range=None, selection=selection,
    )  # fmt: skip
    events = tuple(Event("u", str(i % 8), int(i % 3 == 0), 100 + i) for i in range(11))
    candidates = ("0", "3", "5", "6", "7")
    (reply,) = run_jobs(served, [ModelJob("u", events, candidates)])
    assert [item for item, _ in reply.scores] == list(candidates)
    offline = [training_context(list(events), 4, 2, c, selection) for c in candidates]
    assert len({repr(c) for c in offline}) >= 3  # the candidates really get other contexts
    prompts = [
        builder.encode(history, demos, c).input_ids
        for c, (history, demos) in zip(candidates, offline, strict=True)
    ]
    want = score_prompts(world["model"], world["tokenizer"], prompts, answer_tokens=world["tokens"])
    np.testing.assert_allclose([s for _, s in reply.scores], want, atol=TOL, rtol=0)

    # The recent policies: one shared context for every candidate, the same scores.
    served.selection = Selection()
    (reply,) = run_jobs(served, [ModelJob("u", events, candidates)])
    history, demos = training_context(list(events), 4, 2, "0")
    prompts = [builder.encode(history, demos, c).input_ids for c in candidates]
    want = score_prompts(world["model"], world["tokenizer"], prompts, answer_tokens=world["tokens"])
    np.testing.assert_allclose([s for _, s in reply.scores], want, atol=TOL, rtol=0)


def test_served_scores_with_item_statistics_equal_the_offline_prompts(world):
    """A version whose prompts show item statistics and taste codes: served scores (shared
    prefix, candidates after the cut) equal the scores of the prompts the evaluation builds for
    the same events, demonstrations inside the counted periods leaving their own answers out in
    both."""
    from recicl.data.samples import Selection
    from recicl.serve.api.backend import ModelJob
    from recicl.serve.serving_model import ServingModel, run_jobs
    from recicl.serve.store import Event
    from tests.unit.test_item_stats import stats_table
    from tests.unit.test_serve_context import training_context

    ids = tuple(str(i) for i in range(8))
    counts = {str(i): (10 + i, 3 + i) for i in range(6)}  # items 6 and 7 are new
    codes = {"0": "10110010", "3": "01100101", "5": "11110000"}  # 1, 2, 4: too few events
    stats = stats_table(counts, until=106, codes=codes)  # events at 100..105 are counted
    config = PromptConfig(item_stats=True, item_codes=True)
    builder = PromptBuilder(config, world["catalog"], world["tokenizer"], item_stats=stats)
    scorer = CandidateScorer(world["model"], world["tokenizer"], builder, world["tokens"])
    served = ServingModel(
        version="1", label="recicl/1", scorer=scorer, catalog_ids=frozenset(ids),
        catalog_order=list(ids), catalog_path="catalog.parquet", num_demos=4, history_len=2,
        prompt_format="recicl", rating_range=None, selection=Selection(),
    )  # fmt: skip
    events = tuple(Event("u", str(i % 8), int(i % 3 == 0), 100 + i) for i in range(8))
    candidates = ("0", "3", "5", "6", "7")
    (reply,) = run_jobs(served, [ModelJob("u", events, candidates)])
    history, demos = training_context(list(events), 4, 2, "0")
    assert any(d["timestamp"] < 106 for d in demos) and any(d["timestamp"] >= 106 for d in demos)
    after = (200, 1)  # the candidates' own (future) events: after the cut, nothing removed
    prompts = [builder.encode(history, demos, c, query_event=after).input_ids for c in candidates]
    want = score_prompts(world["model"], world["tokenizer"], prompts, answer_tokens=world["tokens"])
    np.testing.assert_allclose([s for _, s in reply.scores], want, atol=TOL, rtol=0)
    text = builder.render(history, demos, "6")
    assert "new: no ratings yet" in text and "viewers liked it" in text
    assert "taste code unknown" in text  # a new item has no code either
    assert "taste code 1111 0000" in builder.render(history, demos, "5")
    plain = PromptBuilder(PromptConfig(), world["catalog"], world["tokenizer"])
    assert plain.encode(history, demos, "0").input_ids != prompts[0]  # the statistics are in


def test_hidden_states_are_the_ones_the_model_answers_from(world):
    """hidden_states_at (the LRGD alignment's input): the last layer's state at the query's
    last position, put through the model's LM head, gives the P(Yes) score_prompts gives; at
    a demonstration's question it is a different state (the positions are honoured)."""
    from recicl.modeling import hidden_states_at

    model, tokenizer, tokens = world["model"], world["tokenizer"], world["tokens"]
    builder = PromptBuilder(PromptConfig(), world["catalog"], tokenizer)
    history, demos = _context(4)
    encoded = builder.encode(history, demos, "5")
    answers = list(encoded.demo_answer_positions)
    assert len(answers) == 4
    model.train()
    states = hidden_states_at(model, encoded.input_ids, [a - 1 for a in answers] + [-1])
    assert model.training  # the mode is put back
    assert states.shape == (5, model.config.hidden_size) and states.dtype == np.float64
    with torch.no_grad():
        logits = model.lm_head(torch.as_tensor(states[-1:], dtype=torch.float32))[0]
    two = torch.softmax(logits[[tokens.no, tokens.yes]].double(), -1)[1].item()
    want = score_prompts(model, tokenizer, [encoded.input_ids], 1, answer_tokens=tokens)[0]
    assert two == pytest.approx(want, abs=1e-5)
    assert not np.allclose(states[0], states[-1])
