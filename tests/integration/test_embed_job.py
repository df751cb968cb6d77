"""The item-embedding job on Ray Data: catalog order, the same bits at any concurrency, exact
search on its output, and the llm encoder on a tiny random Llama (`recicl model init-tiny`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recicl.cli import app
from recicl.config import build_config
from recicl.data.item_embeddings import EMBEDDINGS_FILE, GRID, ItemEmbeddings, unit_rows
from recicl.data.pipeline import build_samples
from recicl.data.synth import SynthSpec, write_synthetic
from recicl.embeddings import (
    EncoderSpec,
    catalog_texts,
    embed_catalog,
    embed_in_process,
    embed_items,
    load_encoder,
)
from recicl.embeddings.encoders import LLMEncoder
from tests.unit.test_embeddings import handmade_catalog as unit_catalog

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory: pytest.TempPathFactory, ray_local) -> Path:
    """A samples folder built from a small synthetic log (13 genres x 6 items = 78 items)."""
    root = tmp_path_factory.mktemp("embed")
    write_synthetic(
        SynthSpec(users=20, events_per_user=10, items_per_genre=6, seed=4), root / "log"
    )
    output = root / "samples"
    cfg = build_config(
        {
            "data": {"source": "parquet", "path": str(root / "log")},
            "samples": {"output": str(output), "periods": 2},
        }
    )
    build_samples(cfg, dashboard=False)
    return output


@pytest.fixture(scope="module")
def catalog(samples_dir: Path) -> pa.Table:
    return pq.read_table(samples_dir / "catalog.parquet")


@pytest.fixture(scope="module")
def pool_of_two(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The job's output with two replicas and batches of 10 (several per replica)."""
    cfg = build_config({"embeddings": {"concurrency": 2, "batch_size": 10}})
    output = tmp_path_factory.mktemp("out") / "vectors.parquet"
    path, summary = embed_items(samples_dir, cfg, output)
    return ItemEmbeddings.load(path), summary


def test_job_output_follows_the_catalog_and_equals_one_process(catalog, pool_of_two) -> None:
    embeddings, summary = pool_of_two
    assert catalog.num_rows > 20
    assert embeddings.ids == tuple(catalog["item_id"].to_pylist())
    assert (summary["items"], summary["dim"], summary["replicas"]) == (catalog.num_rows, 256, 2)
    assert summary["encoder"] == "wordllama" and summary["items_per_s"] > 0
    assert {"encoder", "model", "dim", "text", "recicl_version"} <= set(embeddings.metadata)
    assert embeddings.metadata["text"] == "title+attributes"
    local = embed_in_process(catalog, build_config({}))
    assert np.array_equal(embeddings.matrix, local.matrix)  # bit for bit
    assert np.allclose(np.linalg.norm(embeddings.matrix, axis=1), 1.0, atol=1e-4)


def test_same_bits_at_any_concurrency_and_on_every_run(samples_dir, catalog, pool_of_two) -> None:
    embeddings, _ = pool_of_two
    one = embed_catalog(catalog, build_config({"embeddings": {"concurrency": 1}}))
    assert one.ids == embeddings.ids
    assert np.array_equal(one.matrix, embeddings.matrix)
    # the CLI: default replicas and batch size, default output next to the catalog
    result = CliRunner().invoke(app, ["embed", "items", "--samples", str(samples_dir)])
    assert result.exit_code == 0, result.output
    assert f"embedded {catalog.num_rows} items" in result.output and "wordllama" in result.output
    again = ItemEmbeddings.load(samples_dir / EMBEDDINGS_FILE)
    assert again.ids == embeddings.ids
    assert np.array_equal(again.matrix, embeddings.matrix)


def test_exact_search_agrees_with_brute_force(pool_of_two) -> None:
    """Queries go through the format's own normalization (``unit_rows``: unit length on the
    file's fixed-point grid), then every similarity is computed exactly in float64."""
    embeddings, _ = pool_of_two
    rng = np.random.default_rng(0)
    own = embeddings.matrix[::5]
    queries = np.concatenate([own, rng.normal(size=(8, embeddings.dim)).astype(np.float32)])
    k = 7
    scores, rows = embeddings.search(queries, k)
    brute = unit_rows(queries).astype(np.float64) @ embeddings.matrix.astype(np.float64).T
    expected = -np.sort(-brute, axis=1)[:, :k]
    assert scores.shape == rows.shape == (len(queries), k)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)  # the k best scores
    found = np.take_along_axis(brute, rows, axis=1)  # from rows that really have them
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-6)
    assert len(set(rows[0])) == k
    np.testing.assert_allclose(scores[: len(own), 0], 1.0, atol=1e-4)  # an item finds itself


# -- the llm encoder on a tiny random Llama ---------------------------------------------------


HANDMADE = [
    ("short", "Heat (1995)", "Crime"),
    ("long", "Star Wars: Episode V - The Empire Strikes Back (1980)", "Action|Adventure|Sci-Fi"),
    ("doc", "Jiro Dreams of Sushi (2011)", "Documentary"),
]


def handmade_catalog() -> pa.Table:
    return unit_catalog(HANDMADE)


@pytest.fixture(scope="module")
def tiny_model(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("tiny") / "model"
    result = CliRunner().invoke(
        app,
        ["model", "init-tiny", "--catalog", str(samples_dir / "catalog.parquet"), "--output",
         str(output)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return output


def llm_config(model: Path, **section) -> object:
    return build_config({"embeddings": {"encoder": "llm", "model": str(model), **section}})


@pytest.fixture(scope="module")
def llm(tiny_model: Path) -> LLMEncoder:
    encoder = load_encoder(EncoderSpec.from_config(llm_config(tiny_model)))
    assert isinstance(encoder, LLMEncoder)
    return encoder


def test_llm_vector_is_the_mean_of_the_last_hidden_layer(llm: LLMEncoder) -> None:
    import torch

    text = catalog_texts(handmade_catalog())[1]
    ids = torch.tensor([llm.tokenizer(text, truncation=True, max_length=64)["input_ids"]])
    with torch.inference_mode():
        out = llm.model(input_ids=ids, output_hidden_states=True)
    expected = out.hidden_states[-1][0].mean(dim=0).numpy()
    assert llm.dim == expected.shape[0] == 64  # the tiny model's hidden size
    np.testing.assert_allclose(llm.encode([text])[0], expected, rtol=0, atol=1e-5)


def test_llm_left_padding_does_not_change_a_vector(llm: LLMEncoder) -> None:
    short, longer, _ = catalog_texts(handmade_catalog())
    lengths = [len(llm.tokenizer(t)["input_ids"]) for t in (short, longer)]
    assert lengths[0] < lengths[1]  # the short one is padded in the pair
    alone = llm.encode([short])[0]
    together = llm.encode([longer, short])
    np.testing.assert_allclose(together[1], alone, rtol=0, atol=1e-5)
    assert np.abs(together[0] - alone).max() > 1e-3  # different texts, different vectors


def test_llm_text_is_cut_to_max_text_tokens(tiny_model: Path) -> None:
    encoder = load_encoder(EncoderSpec.from_config(llm_config(tiny_model, max_text_tokens=4)))
    text = catalog_texts(handmade_catalog())[1]
    ids = encoder.tokenizer(text, truncation=True, max_length=4)["input_ids"]
    prefix = encoder.tokenizer.decode(ids, skip_special_tokens=True)
    assert len(prefix) < len(text)
    np.testing.assert_allclose(encoder.encode([text]), encoder.encode([prefix]), atol=1e-5)


def test_llm_job_equals_one_process(tiny_model: Path) -> None:
    cfg = llm_config(tiny_model, concurrency=2, batch_size=2)
    job = embed_catalog(handmade_catalog(), cfg)
    local = embed_in_process(handmade_catalog(), cfg)
    assert job.ids == ("short", "long", "doc") and job.dim == 64
    assert job.metadata["encoder"] == "llm" and job.metadata["model"] == str(tiny_model)
    # unit vectors on the file's grid: a last-bit difference may move a component one step
    np.testing.assert_allclose(job.matrix, local.matrix, rtol=0, atol=2 * GRID)
