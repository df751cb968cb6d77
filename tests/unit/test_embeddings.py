"""Item embeddings without Ray or torch: the item text, WordLlama, config errors, CLI errors.

The Ray Data job (actor pool, order, determinism across concurrency, search on its output) and
the llm encoder on a tiny random Llama (torch and transformers take seconds to import) are
tested in tests/integration/test_embed_job.py.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recicl.cli import app
from recicl.config import ConfigError, build_config
from recicl.data.item_embeddings import EMBEDDINGS_FILE
from recicl.data.schema import CATALOG
from recicl.embeddings import (
    EncoderSpec,
    catalog_texts,
    embed_in_process,
    embed_items,
    item_text,
    load_encoder,
)
from recicl.embeddings.encoders import WordLlamaEncoder, wordllama_files

#: Two Star Wars films, a cooking documentary and a horror film (handmade, no genre overlap
#: between the films and the documentary).
HANDMADE = [
    ("sw4", "Star Wars: Episode IV - A New Hope (1977)", "Action|Adventure|Sci-Fi"),
    ("sw5", "Star Wars: Episode V - The Empire Strikes Back (1980)", "Action|Adventure|Sci-Fi"),
    ("chef", "Jiro Dreams of Sushi (2011)", "Documentary"),
    ("horror", "The Texas Chain Saw Massacre (1974)", "Horror"),
]


def handmade_catalog(items: list[tuple[str, str, str]] = HANDMADE) -> pa.Table:
    """A CATALOG table of (item_id, title, genres) rows."""
    rows = [
        {"item_id": item, "title": title, "attributes": [("genres", genres)]}
        for item, title, genres in items
    ]
    return pa.Table.from_pylist(rows, schema=CATALOG)


@pytest.fixture(scope="module")
def wordllama() -> WordLlamaEncoder:
    return WordLlamaEncoder()


# -- the text of an item ----------------------------------------------------------------------


def test_item_text_is_title_then_sorted_attributes() -> None:
    text = item_text("Toy Story (1995)", {"genres": "Adventure|Animation|Children"})
    assert text == "Toy Story (1995). genres: Adventure|Animation|Children"
    # Arrow map pairs and any key order give the same text; empty values are left out
    pairs = [("year", "1995"), ("genres", "Comedy"), ("tag", " ")]
    assert item_text("Heat", pairs) == "Heat. genres: Comedy. year: 1995"
    assert item_text("Heat", None) == "Heat"
    assert item_text(None, {"genres": "Drama"}) == "genres: Drama"


def test_catalog_texts_reads_the_catalog_schema() -> None:
    texts = catalog_texts(handmade_catalog())
    assert texts[2] == "Jiro Dreams of Sushi (2011). genres: Documentary"
    no_attributes = handmade_catalog().drop_columns(["attributes"])
    assert catalog_texts(no_attributes)[0] == HANDMADE[0][1]


# -- WordLlama --------------------------------------------------------------------------------


def test_wordllama_loads_and_encodes_with_the_network_blocked(monkeypatch) -> None:
    """The bundled weights and tokenizer are all it needs: any connection attempt fails here
    (wordllama's own ``WordLlama.load()`` would try to download its tokenizer)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    encoder = WordLlamaEncoder()
    vectors = encoder.encode(["Toy Story (1995). genres: Children", ""])
    assert vectors.shape == (2, 256) and vectors.dtype == np.float32
    assert np.linalg.norm(vectors[0]) > 0
    assert not vectors[1].any()  # a text without tokens has no direction


def test_wordllama_equals_the_packages_own_embedding(wordllama: WordLlamaEncoder) -> None:
    from tokenizers import Tokenizer
    from wordllama import WordLlamaInference

    texts = catalog_texts(handmade_catalog())
    reference = WordLlamaInference(
        wordllama.table.copy(), Tokenizer.from_file(str(wordllama_files()[1]))
    ).embed(texts)
    np.testing.assert_allclose(wordllama.encode(texts), reference, rtol=0, atol=1e-6)


def test_wordllama_vectors_do_not_depend_on_the_batch(wordllama: WordLlamaEncoder) -> None:
    texts = [f"{'very ' * i}long title {i}. genres: Drama" for i in range(40)]
    whole = wordllama.encode(texts)
    pieces = np.concatenate([wordllama.encode(texts[i : i + 3]) for i in range(0, 40, 3)])
    assert np.array_equal(whole, pieces)  # bit for bit


def test_wordllama_dim_keeps_the_matryoshka_prefix(wordllama: WordLlamaEncoder) -> None:
    texts = catalog_texts(handmade_catalog())
    spec = EncoderSpec.from_config(build_config({"embeddings": {"dim": 64}}))
    short = load_encoder(spec).encode(texts)
    assert short.shape == (4, 64)
    np.testing.assert_allclose(short, wordllama.encode(texts)[:, :64], rtol=0, atol=1e-7)


def test_similar_titles_are_closer() -> None:
    embeddings = embed_in_process(handmade_catalog(), build_config({}))
    assert embeddings.ids == tuple(item for item, _, _ in HANDMADE)
    sim = embeddings.matrix @ embeddings.matrix.T
    sw4, sw5, chef, horror = range(4)
    assert sim[sw4, sw5] > sim[sw4, chef] + 0.2
    assert sim[sw4, sw5] > sim[sw5, chef] + 0.2
    assert sim[sw4, sw5] > max(sim[sw4, horror], sim[sw5, horror])
    assert embeddings.metadata["encoder"] == "wordllama"
    assert embeddings.metadata["text"] == "title+attributes"
    assert embeddings.metadata["dim"] == 256


# -- configuration errors ---------------------------------------------------------------------


def test_unknown_encoder_names_the_key_and_the_choices() -> None:
    with pytest.raises(ConfigError) as error:
        build_config({"embeddings": {"encoder": "word2vec"}})
    message = str(error.value)
    assert "embeddings.encoder" in message and "word2vec" in message
    assert "wordllama" in message and "sentence-transformers" in message


@pytest.mark.parametrize(
    ("section", "model_path", "words"),
    [
        ({"dim": 100}, None, ["embeddings.dim=100", "64, 128, 256"]),
        ({"encoder": "llm"}, None, ["embeddings.model", "model.name_or_path"]),
        ({"encoder": "llm", "model": "./no/such/model"}, None, ["embeddings.model", "no/such"]),
        ({"encoder": "llm", "dim": 32}, "x", ["embeddings.dim=32", "null"]),
        ({"encoder": "sentence-transformers"}, None, ["embeddings.model", "local model folder"]),
    ],
)
def test_settings_that_cannot_work_are_one_line_errors(
    section: dict, model_path: str | None, words: list[str], monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", object())  # installed or not
    cfg = build_config({"embeddings": section, "model": {"name_or_path": model_path}})
    with pytest.raises(ConfigError) as error:
        EncoderSpec.from_config(cfg)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_missing_sentence_transformers_says_how_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails
    cfg = build_config({"embeddings": {"encoder": "sentence-transformers", "model": str(tmp_path)}})
    with pytest.raises(ConfigError, match=r"pip install sentence-transformers"):
        EncoderSpec.from_config(cfg)


def test_missing_sentence_transformers_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", object())
    cfg = build_config(
        {"embeddings": {"encoder": "sentence-transformers", "model": str(tmp_path / "nope")}}
    )
    with pytest.raises(ConfigError, match=r"embeddings\.model: no model folder at .*nope"):
        EncoderSpec.from_config(cfg)


def test_a_folder_without_catalog_fails_before_ray(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no samples/ folder.*recicl samples build"):
        embed_items(tmp_path, build_config({}))
    (tmp_path / "samples").mkdir()
    with pytest.raises(ConfigError, match=r"no catalog\.parquet"):
        embed_items(tmp_path, build_config({}))


def test_an_empty_catalog_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "samples").mkdir()
    pq.write_table(CATALOG.empty_table(), tmp_path / "catalog.parquet")
    with pytest.raises(ConfigError, match="no items"):
        embed_items(tmp_path, build_config({}))
    assert not (tmp_path / EMBEDDINGS_FILE).exists()


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["embed", "items", "--samples", str(tmp_path / "none")])
    assert missing.exit_code == 2
    assert "error:" in missing.output and "recicl samples build" in missing.output
    assert "Traceback" not in missing.output
    wrong = runner.invoke(
        app, ["embed", "items", "--samples", str(tmp_path), "--encoder", "word2vec"]
    )
    assert wrong.exit_code == 2
    assert "embeddings.encoder" in wrong.output
