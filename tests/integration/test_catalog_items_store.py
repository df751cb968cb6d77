"""Catalog items added while serving, on real backends (a SQLite file, a private redis-server).

Every case runs on both backends: revisions, last write wins, all-or-nothing batches, a reopen
(a restart) keeps what was acknowledged, and concurrent writers never hide an item from a reader
that catches up by revision (the property replicas rely on).
"""

from __future__ import annotations

import threading

import pytest

from recicl.serve.store import CatalogItem, InvalidItemError, open_store


def test_revisions_last_write_wins_and_a_reopen_keeps_them(url: str) -> None:
    with open_store(url) as store:
        assert store.items_since(0) == (0, [])
        assert store.put_items([]) == 0  # nothing to write: no revision taken
        first = [CatalogItem.of("a", "Alpha", {"genres": "Drama"}), CatalogItem.of("b", "Beta")]
        assert store.put_items(first) == 1
        alpha2 = CatalogItem.of("a", "Alpha II", {"genres": "Comedy|Drama"})
        assert store.put_items([alpha2]) == 2
        assert store.items_since(2) == (2, [])  # a current reader reads nothing
        assert store.items_since(1) == (2, [alpha2])
    with open_store(url) as reopened:  # a restart
        revision, items = reopened.items_since(0)
        assert revision == 2
        assert items == [CatalogItem.of("b", "Beta"), alpha2]  # oldest write first
        assert reopened.put_items([CatalogItem.of("c", "Gamma")]) == 3


@pytest.mark.parametrize(
    "bad",
    [
        CatalogItem("", "No id"),
        CatalogItem("x", "   "),
        CatalogItem("x", "T", (("genres", 3),)),  # type: ignore[arg-type]  # the point
        CatalogItem("x\x00y", "NUL"),
        CatalogItem("a", "Again"),  # repeats the first item of the batch
    ],
)
def test_an_invalid_item_writes_nothing_of_its_batch(url: str, bad: CatalogItem) -> None:
    with open_store(url) as store:
        with pytest.raises(InvalidItemError):
            store.put_items([CatalogItem.of("a", "Alpha"), bad])
        assert store.items_since(0) == (0, [])


def test_a_reader_catching_up_by_revision_misses_no_concurrent_write(url: str) -> None:
    """Four writers and a reader that, like a replica, remembers only the revision it reached:
    at the end it has read every item, each in its final version."""
    writers, per_writer = 4, 25
    with open_store(url) as store:
        seen: dict[str, str] = {}
        done = threading.Event()

        def write(w: int) -> None:
            with open_store(url) as own:
                for k in range(per_writer):
                    own.put_items([CatalogItem.of(f"w{w}-{k}", f"title {k}")])

        def read() -> None:
            revision = 0
            while True:
                finished = done.is_set()
                revision, items = store.items_since(revision)
                seen.update((i.item_id, i.title) for i in items)
                if finished:
                    return

        reader = threading.Thread(target=read)
        reader.start()
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done.set()
        reader.join()
        assert len(seen) == writers * per_writer
        assert store.items_since(0)[0] == writers * per_writer
