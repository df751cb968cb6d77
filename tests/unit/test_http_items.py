"""Catalog items added while serving (``POST /admin/items``), through the real routes and ingress.

The HTTP routes and the Serve ingress's own backend (:class:`IngressBackend`, built without
Serve) run as in production over a real SQLite store; only the model replica is a stand-in. It
follows the replica's rule (catch up from the store when a batch needs it, ``behind``, then
``run_jobs``) on a real :class:`ServingModel` whose prompt builder is real and whose scorer
renders each candidate's prompt instead of running an LLM, so a test reads the prompt a
candidate was scored with. Two ingress replicas, each with its own model replica, share the
store: what is added through one must be scoreable through the other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from recicl.config import PromptConfig, build_config
from recicl.data.samples import Selection
from recicl.data.schema import CATALOG
from recicl.prompts import PromptBuilder
from recicl.serve.api.backend import ModelJob
from recicl.serve.api.routes import create_api
from recicl.serve.catalog_items import CatalogOverlay, behind, catch_up
from recicl.serve.serving_model import ServingModel, run_jobs
from recicl.serve.store import CatalogItem, InteractionStore, SQLiteStore

ADMIN = {"Authorization": "Bearer items-token"}
TRAINED = [
    ("m1", "Quiet Garden Romance", "Romance|Drama"),
    ("m2", "Kitchen Stories", "Documentary"),
    ("m3", "Harbor Lights", "Drama"),
    ("m4", "Laugh Track", "Comedy"),
    ("m5", "Galaxy Raiders", "Sci-Fi|Action"),
]
NEW = {"item_id": "n1", "title": "Galaxy Raiders II", "attributes": {"genres": "Sci-Fi|Action"}}


class RenderingScorer:
    """The scorer's interface (``builder``, ``score``): renders prompts, scores 0.5."""

    layout = SimpleNamespace(kinds=("full_attention",), window=None)

    def __init__(self, builder: PromptBuilder) -> None:
        self.builder = builder
        self.fallbacks: Counter[str] = Counter()
        self.prompts: dict[str, str] = {}  # candidate → the prompt it was last scored with

    def score(self, jobs: Sequence[Any]) -> list[np.ndarray]:
        for job in jobs:
            for item in job.candidates:
                self.prompts[item] = self.builder.render(job.history, job.demos, item)
        return [np.full(len(job.candidates), 0.5) for job in jobs]


def trained_version(folder: Path, selection: Selection, num_demos: int = 2) -> ServingModel:
    """Version 1 as a replica loads it: the trained catalog from its parquet file, no item
    added yet (``catch_up`` adds them, as ``ModelServer._load`` does)."""
    rows = [{"item_id": i, "title": t, "attributes": [("genres", g)]} for i, t, g in TRAINED]
    catalog = pa.Table.from_pylist(rows, schema=CATALOG)
    path = folder / "catalog.parquet"
    pq.write_table(catalog, path)
    catalog = pq.read_table(path)

    def make_builder(table: pa.Table) -> PromptBuilder:
        return PromptBuilder(PromptConfig(), table)

    order = [i for i, _, _ in TRAINED]
    return ServingModel(
        version="1", label="recicl/1", scorer=RenderingScorer(make_builder(catalog)),  # type: ignore[arg-type]  # a stand-in
        catalog_ids=frozenset(order), catalog_order=list(order), catalog_path=str(path),
        num_demos=num_demos, history_len=2, prompt_format="recicl", rating_range=None,
        selection=selection, overlay=CatalogOverlay(catalog, order, make_builder, build_config({})),
    )  # fmt: skip


class Replica:
    """One model replica's methods the ingress calls (``recicl.serve.model_deployment``)."""

    def __init__(self, model: ServingModel, store: InteractionStore) -> None:
        self.model, self.store = model, store
        catch_up(model, store)  # on load

    async def score(self, job: ModelJob) -> Any:
        if behind(self.model, [job]):
            catch_up(self.model, self.store)
        return run_jobs(self.model, [job])[0]

    async def info(self) -> dict[str, Any]:
        return {"model_version": "1", "catalog_path": self.model.catalog_path}

    async def add_items(self, revision: int) -> dict[str, Any]:
        return {"model_version": "1", **catch_up(self.model, self.store)}


class Handle:
    """A DeploymentHandle's calling convention: ``await handle.method.remote(...)``."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def options(self, **_: Any) -> Handle:
        return self

    def __getattr__(self, name: str) -> Any:
        return SimpleNamespace(remote=getattr(self.replica, name))


@dataclass
class Cluster:
    """Two ingress replicas (``a``, ``b``), each over its own model replica, one store."""

    a: Any
    b: Any
    replicas: list[Replica]
    store: SQLiteStore

    def prompt(self, replica: int, item: str) -> str:
        scorer = self.replicas[replica].model.scorer
        assert isinstance(scorer, RenderingScorer)
        return scorer.prompts[item]


def start(tmp_path: Path, selection: Selection, num_demos: int = 2) -> Callable[[], Any]:
    """A context manager factory: the cluster over ``tmp_path``'s store (a restart = again)."""
    from contextlib import ExitStack, contextmanager

    from recicl.serve.ingress import IngressBackend
    from recicl.serve.settings import resolve_settings

    cfg = build_config({"workdir": str(tmp_path), "serve": {"max_string_length": 64}})
    settings = resolve_settings(cfg)

    @contextmanager
    def cluster() -> Any:
        store = SQLiteStore(tmp_path / "events.db")
        with ExitStack() as stack:
            clients, replicas = [], []
            for _ in range(2):
                replica = Replica(trained_version(tmp_path, selection, num_demos), store)
                backend = IngressBackend(Handle(replica), settings)
                backend._read_traffic_tag = lambda: None  # type: ignore[method-assign]  # no registry here
                app = create_api(backend, cfg, admin_token="items-token")
                clients.append(stack.enter_context(TestClient(app)))
                stack.callback(backend.store.close)
                replicas.append(replica)
            yield Cluster(clients[0], clients[1], replicas, store)
        store.close()

    return cluster


def score(http: Any, user: str, candidates: list[str]) -> Any:
    return http.post("/v1/score", json={"user_id": user, "candidates": candidates})


def test_an_added_item_is_scored_at_once_on_every_replica_and_survives_a_restart(tmp_path):
    cluster = start(tmp_path, Selection())
    with cluster() as c:
        for http in (c.a, c.b):  # every replica knows the trained catalog only
            assert score(http, "u", ["n1"]).status_code == 422
            assert score(http, "u", ["n1"]).json()["unknown"] == ["n1"]
        reply = c.a.post("/admin/items", json={"items": [NEW]}, headers=ADMIN)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["added"] == ["n1"] and body["items_revision"] == 1
        # the recent policies read no vector: nothing is embedded, no encoder is loaded
        assert body["served"]["items"] == 1 and body["served"]["embedded"] == 0
        assert c.replicas[0].model.overlay.encoder is None  # type: ignore[union-attr]
        # ingress b and its replica learn it from the store when a request names it
        for index, http in enumerate((c.a, c.b)):
            scored = score(http, "u", ["m1", "n1"])
            assert scored.status_code == 200, scored.text
            assert [s["item_id"] for s in scored.json()["scores"]] == ["m1", "n1"]
            assert '"Galaxy Raiders II" (Sci-Fi, Action)' in c.prompt(index, "n1")
        # events for it are accepted and shape the next prompt (its title in the history)
        event = {"user_id": "u", "item_id": "n1", "label": 1, "timestamp": 1_700_000_000}
        assert c.b.post("/v1/events", json=event).status_code == 200
        assert score(c.a, "u", ["m5"]).status_code == 200
        assert '"Galaxy Raiders II"' in c.prompt(0, "m5")
        # an update replaces the title (a trained item can be retitled too): at once through
        # the ingress that took it (its jobs carry the new revision) ...
        update = [{**NEW, "title": "Galaxy Raiders Returns"}, {"item_id": "m2", "title": "Chefs"}]
        assert c.a.post("/admin/items", json={"items": update}, headers=ADMIN).status_code == 200
        assert score(c.a, "u", ["n1", "m2"]).status_code == 200
        assert '"Galaxy Raiders Returns"' in c.prompt(0, "n1")
        assert '"Chefs"' in c.prompt(0, "m2") and "Kitchen Stories" not in c.prompt(0, "m2")
        # ... and elsewhere on the replica's next alias poll (ids it knows send it no signal)
        assert score(c.b, "u", ["n1"]).status_code == 200
        assert '"Galaxy Raiders II"' in c.prompt(1, "n1")
        catch_up(c.replicas[1].model, c.store)  # what ModelServer._poll does
        assert score(c.b, "u", ["n1"]).status_code == 200
        assert '"Galaxy Raiders Returns"' in c.prompt(1, "n1")
    with cluster() as c:  # a restart: new ingresses and replicas, the same store file
        assert c.replicas[1].model.overlay.revision == 2  # type: ignore[union-attr]
        assert "n1" in c.replicas[1].model.catalog_order
        assert score(c.b, "v", ["n1"]).status_code == 200
        assert '"Galaxy Raiders Returns"' in c.prompt(1, "n1")
        recommended = c.b.post("/v1/recommend", json={"user_id": "v", "k": 10}).json()
        assert "n1" in [i["item_id"] for i in recommended["items"]]  # in the default pool too


@pytest.mark.parametrize(
    ("bad", "field", "hint"),
    [
        ({"item_id": "n2", "title": "  "}, "items[1].title", "non-empty"),
        ({"item_id": "n2"}, "items[1].title", "Field required"),
        ({"item_id": "n2", "title": "T", "attributes": {"genres": 3}},
         "items[1].attributes.genres", "string"),
        ({"item_id": "", "title": "T"}, "items[1].item_id", "at least 1"),
        ({"item_id": "n2", "title": "T", "year": 1999}, "items[1].year", "Extra inputs"),
        ({**NEW, "title": "again"}, "items[1].item_id", "already in this request"),
    ],
)  # fmt: skip
def test_a_malformed_item_is_a_422_naming_the_field_and_nothing_is_added(
    tmp_path: Path, bad: dict[str, Any], field: str, hint: str
) -> None:
    with start(tmp_path, Selection())() as c:
        reply = c.a.post("/admin/items", json={"items": [NEW, bad]}, headers=ADMIN)
        assert reply.status_code == 422, reply.text
        assert reply.json()["fields"][0]["field"] == field and hint in reply.json()["detail"]
        assert c.store.items_since(0) == (0, [])  # the good item of the request is not stored
        assert score(c.a, "u", ["n1"]).status_code == 422


def test_items_route_needs_the_admin_token(tmp_path: Path) -> None:
    with start(tmp_path, Selection())() as c:
        for headers, status in [({}, 401), ({"Authorization": "Bearer nope"}, 403)]:
            reply = c.a.post("/admin/items", json={"items": [NEW]}, headers=headers)
            assert reply.status_code == status
        empty = c.a.post("/admin/items", json={"items": []}, headers=ADMIN)
        assert empty.status_code == 422 and empty.json()["fields"][0]["field"] == "items"
        assert c.store.items_since(0) == (0, [])


def test_a_semantic_version_embeds_added_items_and_retrieves_them(tmp_path: Path) -> None:
    """A version whose demonstrations are chosen by similarity: the added item is embedded
    with the encoder that made the version's vectors (WordLlama, bundled) and, as the user's
    event most similar to the candidate, becomes the one demonstration although it is the
    user's oldest event (recency would pick the newest)."""
    from recicl.data.item_embeddings import similarities
    from recicl.embeddings import embed_in_process

    trained = pa.Table.from_pylist(
        [{"item_id": i, "title": t, "attributes": [("genres", g)]} for i, t, g in TRAINED],
        schema=CATALOG,
    )
    vectors = embed_in_process(trained, build_config({}))
    assert vectors.metadata["encoder"] == "wordllama"
    selection = Selection("semantic", "recent", embeddings=vectors)
    with start(tmp_path, selection, num_demos=1)() as c:
        reply = c.a.post("/admin/items", json={"items": [NEW]}, headers=ADMIN)
        assert reply.status_code == 200, reply.text
        assert reply.json()["served"]["embedded"] == 1 and reply.json()["served"]["error"] is None
        events = [
            {"user_id": "u", "item_id": item, "label": 1, "timestamp": 1_700_000_000 + k}
            for k, item in enumerate(["n1", "m1", "m2", "m3"])  # n1 oldest
        ]
        assert c.b.post("/v1/events", json=events).status_code == 200
        assert score(c.b, "u", ["m5"]).status_code == 200  # replica 1 embeds on catch-up
        embeddings = c.replicas[1].model.selection.embeddings
        assert embeddings is not None and "n1" in embeddings.ids
        near = similarities(embeddings.vectors(["m5"]), embeddings.vectors(["n1", "m1", "m2"]))
        assert near[0, 0] > near[0, 1:].max()  # a real vector, in the trained items' space
        demo_question = c.prompt(1, "m5").split("?")[0]  # the one demonstration's question
        assert '"Galaxy Raiders II"' in demo_question, c.prompt(1, "m5")


def test_catch_up_reads_only_what_is_new(tmp_path: Path) -> None:
    """A replica current with the store costs one empty read per check; behind, it takes the
    newer items only, and an item's latest write wins."""
    with SQLiteStore(tmp_path / "events.db") as store:
        model = trained_version(tmp_path, Selection())
        assert catch_up(model, store)["revision"] == 0
        store.put_items([CatalogItem.of("a", "A"), CatalogItem.of("b", "B")])
        store.put_items([CatalogItem.of("a", "A2", {"genres": "Drama"})])
        state = catch_up(model, store)
        assert (state["revision"], state["items"], state["new"]) == (2, 2, 2)
        assert catch_up(model, store) == {**model.overlay.describe()}  # type: ignore[union-attr]
        assert model.catalog_order[-2:] == ["a", "b"]
        assert model.scorer.builder.render([], [], "a").count('"A2" (Drama)') == 1
