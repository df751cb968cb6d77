"""SamplesFolder: the one reader of the samples-folder layout (no Ray: tables by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recicl.config import ConfigError, build_config
from recicl.data.manifest import SamplesManifest
from recicl.data.samples_folder import SamplesFolder, configured_samples_dir
from recicl.data.schema import SAMPLES


def _rows(period: int, count: int) -> pa.Table:
    rows = [
        {
            "sample_id": f"s{period}-{k}",
            "user_id": f"u{k}",
            "item_id": f"i{k}",
            "timestamp": 1_000 * period + k,
            "period": period,
            "label": k % 2,
            "history": [f"i{k + 1}"],
            "demos": [],
        }
        for k in range(count)
    ]
    return pa.Table.from_pylist(rows, schema=SAMPLES).drop_columns(["period"])


def make_folder(root: Path, counts: dict[int, int], *, manifest: bool = True) -> Path:
    for period, count in counts.items():
        part = root / "samples" / f"period={period}"
        part.mkdir(parents=True)
        pq.write_table(_rows(period, count), part / "part-0.parquet")
    catalog = pa.table({"item_id": ["i0", "i1"], "title": ["A", "B"]})
    pq.write_table(catalog, root / "catalog.parquet")
    if manifest:
        periods = [{"period": p, "samples": n} for p, n in sorted(counts.items())]
        (root / "manifest.json").write_text(json.dumps({"periods": periods, "config_hash": "c"}))
    return root


def test_periods_tables_and_the_newest_period(tmp_path: Path):
    folder = SamplesFolder.at(make_folder(tmp_path, {2: 3, 0: 2, 5: 0}))
    assert folder.periods() == [0, 2, 5]
    assert folder.sample_counts() == {0: 2, 2: 3, 5: 0}
    assert folder.newest_period() == 2  # period 5 has a partition folder but no samples
    table = folder.read_table([2, 0])
    assert table.schema == SAMPLES
    assert table["period"].to_pylist() == [2, 2, 2, 0, 0]
    assert table["sample_id"].to_pylist()[:3] == ["s2-0", "s2-1", "s2-2"]
    with pytest.raises(
        ConfigError, match=r"periods \[7\] have no samples .* available: \[0, 2, 5\]"
    ):
        folder.period_paths([0, 7])


def test_without_a_manifest_periods_come_from_disk(tmp_path: Path):
    folder = SamplesFolder.at(make_folder(tmp_path, {1: 2, 3: 1}, manifest=False))
    assert folder.manifest() is None and folder.sample_counts() == {}
    assert folder.newest_period() == 3
    with pytest.raises(ConfigError, match=r"has no manifest\.json: run `recicl samples build"):
        folder.require_manifest()


def test_missing_parts_are_errors_that_name_the_fix(tmp_path: Path):
    with pytest.raises(ConfigError, match="has no samples/ folder: run `recicl samples build"):
        SamplesFolder.at(tmp_path)
    (tmp_path / "samples").mkdir()
    with pytest.raises(ConfigError, match=r"has no catalog\.parquet"):
        SamplesFolder.at(tmp_path).require_catalog()


def test_content_id_follows_the_bytes_not_the_config(tmp_path: Path):
    root = make_folder(tmp_path / "a", {0: 2, 1: 2})
    first = SamplesFolder.at(root).content_id()
    assert SamplesFolder.at(root).content_id() == first  # stable, and per content not object
    # the same files elsewhere: the same identity (paths are relative to the folder)
    twin = make_folder(tmp_path / "b", {0: 2, 1: 2})
    assert SamplesFolder.at(twin).content_id() == first
    # the manifest (config hash, counts) is not content: editing it changes nothing
    (root / "manifest.json").write_text(json.dumps({"config_hash": "other", "periods": []}))
    assert SamplesFolder.at(root).content_id() == first
    # new samples with the same config: a new identity
    pq.write_table(_rows(1, 3), root / "samples" / "period=1" / "part-0.parquet")
    rebuilt = SamplesFolder.at(root).content_id()
    assert rebuilt != first
    # so does another catalog
    pq.write_table(pa.table({"item_id": ["i0"], "title": ["A"]}), root / "catalog.parquet")
    assert SamplesFolder.at(root).content_id() not in (first, rebuilt)


def test_from_config_prefers_the_flag_then_train_then_samples(tmp_path: Path):
    a = make_folder(tmp_path / "a", {0: 1})
    b = make_folder(tmp_path / "b", {0: 1})
    c = make_folder(tmp_path / "c", {0: 1})
    both = build_config({"train": {"samples_dir": str(a)}, "samples": {"output": str(b)}})
    assert configured_samples_dir(both) == str(a)
    assert SamplesFolder.from_config(both).root == a.resolve()
    assert SamplesFolder.from_config(both, override=c).root == c.resolve()
    only_output = build_config({"samples": {"output": str(b)}})
    assert SamplesFolder.from_config(only_output).root == b.resolve()
    with pytest.raises(ConfigError, match=r"no samples folder: set train\.samples_dir"):
        SamplesFolder.from_config(build_config({"samples": {"output": None}}))


def test_replace_outputs_swaps_every_build_output_and_keeps_other_files(tmp_path: Path):
    target = SamplesFolder(tmp_path / "s")
    (target.samples_root / "period=0").mkdir(parents=True)
    (target.samples_root / "period=0" / "old.parquet").write_text("old")
    (target.root / "augmented").mkdir()  # the old build had augmented samples, the new one not
    target.catalog_path.write_text("old catalog")
    target.manifest_path.write_text("{}")
    (target.root / "notes.txt").write_text("mine")  # not a build output: kept

    staging = target.staging()
    assert staging.root.parent == target.root.parent and not any(staging.root.iterdir())
    (staging.samples_root / "period=1").mkdir(parents=True)
    (staging.samples_root / "period=1" / "new.parquet").write_text("new")
    staging.catalog_path.write_text("new catalog")
    staging.manifest_path.write_text('{"new": true}')
    target.replace_outputs(staging)

    files = sorted(p.relative_to(target.root).as_posix() for p in target.root.rglob("*"))
    assert files == [
        "catalog.parquet", "manifest.json", "notes.txt", "samples", "samples/period=1",
        "samples/period=1/new.parquet",
    ]  # fmt: skip
    assert target.catalog_path.read_text() == "new catalog"
    assert json.loads(target.manifest_path.read_text()) == {"new": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # staging and trash removed
    # a staging folder left by a crashed build is emptied by the next one
    (target.staging().root / "junk").write_text("x")
    assert not any(target.staging().root.iterdir())


def test_the_manifest_reads_old_partial_and_newer_builds(tmp_path: Path):
    """Typed, yet lenient where builds changed: an old manifest (no rating scale, no last
    event, no boundaries) loads with the documented defaults; a newer one keeps keys this
    version does not know; the rating scale remembers whether it was recorded at all."""
    root = make_folder(tmp_path, {0: 2, 1: 3}, manifest=False)
    old = {
        "config_hash": "h1",
        "source": {"name": "movielens", "path": "/data", "layout": "movielens:csv"},
        "events": 9,
        "periods": [
            {"period": 0, "samples": 2, "last_event": "2020-01-02T00:00:00Z"},
            {"period": 1, "samples": 3, "last_event": "2020-03-04T05:06:07Z"},
        ],
        "config": {"samples": {"num_demos": 3}},
    }
    (root / "manifest.json").write_text(json.dumps(old))
    manifest = SamplesFolder.at(root).require_manifest()
    assert (manifest.source.layout, manifest.events, manifest.config_hash) == (
        "movielens:csv", 9, "h1",
    )  # fmt: skip
    assert manifest.selection.demo_policy == "recent" and manifest.boundaries_ts == []
    assert manifest.samples_config == {"num_demos": 3}
    assert not manifest.records_rating_range and manifest.rating_range is None
    assert manifest.sample_counts() == {0: 2, 1: 3}
    # no last_event_ts: the newest period's ISO last event stands in
    assert SamplesFolder(root).last_event_ts() == 1583298367

    newer = {**old, "rating_range": None, "last_event_ts": 77, "added_later": {"x": 1}}
    (root / "manifest.json").write_text(json.dumps(newer))
    manifest = SamplesFolder(root).require_manifest()
    assert manifest.records_rating_range and manifest.rating_range is None  # null: unchecked
    assert manifest.model_extra == {"added_later": {"x": 1}}
    assert SamplesFolder(root).last_event_ts() == 77
    # what a build writes reads back equal
    manifest.write(tmp_path / "again.json")
    assert SamplesManifest.read(tmp_path / "again.json") == manifest


@pytest.mark.parametrize(
    ("text", "field"),
    [("{not json", "Expecting property name"), ('{"events": "many"}', "events")],
)
def test_a_broken_manifest_is_one_error_naming_the_rebuild(tmp_path: Path, text, field):
    root = make_folder(tmp_path, {0: 1}, manifest=False)
    (root / "manifest.json").write_text(text)
    with pytest.raises(ConfigError, match=f"not a samples manifest.*{field}.*recicl samples build"):
        SamplesFolder(root).manifest()
