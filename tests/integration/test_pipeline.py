"""The Ray Data pipeline end to end: equals the brute-force reference, whatever the parallelism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray
from typer.testing import CliRunner

from recicl.cli import app
from recicl.config import ConfigError, PerturbConfig, build_config
from recicl.data.item_embeddings import ItemEmbeddings, unit_rows
from recicl.data.pipeline import build_samples
from recicl.data.samples_folder import SamplesFolder
from recicl.data.synth import SynthSpec, generate, write_synthetic
from tests.reference import reference_samples

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    write_synthetic(SynthSpec(users=120, events_per_user=30, seed=3), folder)
    # Plant exact duplicates and a tie so that the pipeline has to handle both.
    events = pq.read_table(folder / "events.parquet")
    pq.write_table(pa.concat_tables([events, events.slice(0, 25)]), folder / "events.parquet")
    return folder


def _config(source_dir, output, partitions, **samples):
    return build_config(
        {
            "data": {"source": "parquet", "path": str(source_dir)},
            "samples": {"output": str(output), "periods": 5, "num_partitions": partitions,
                        **samples},
        }
    )  # fmt: skip


def test_pipeline_equals_reference_and_is_deterministic(synth_dir, tmp_path, ray_local):
    first = build_samples(_config(synth_dir, tmp_path / "a", 2))
    second = build_samples(_config(synth_dir, tmp_path / "b", 7))
    table_a = SamplesFolder.at(tmp_path / "a").read_table().sort_by("sample_id")
    table_b = SamplesFolder.at(tmp_path / "b").read_table().sort_by("sample_id")
    assert table_a.equals(table_b)  # identical rows whatever the parallelism
    assert first.boundaries == second.boundaries

    events = pq.read_table(synth_dir / "events.parquet").to_pylist()
    for event in events:
        event["label"] = int(event["rating"] >= 4.0)
    expected, duplicates = reference_samples(events, num_demos=4, history_len=10, min_demos=1)
    got = {row.pop("sample_id"): row for row in table_a.to_pylist()}
    periods = {sid: row.pop("period") for sid, row in got.items()}
    for row in expected.values():
        row.pop("sample_id")
    assert got == expected
    assert duplicates == 25
    assert first.quarantine.by_reason == {"duplicate_event": 25}
    assert first.events == len(events) - 25
    assert first.samples == len(expected)

    # Periods: counts in the manifest match the data, boundaries split them evenly.
    counts = [p.events for p in first.periods]
    assert sum(counts) == first.events
    assert max(counts) - min(counts) <= 0.02 * first.events
    sample_counts = np.bincount(list(periods.values()), minlength=5).tolist()
    assert sample_counts == [p.samples for p in first.periods]
    ts = np.array([row["timestamp"] for row in got.values()])
    bounds = first.boundaries_ts
    for sid, row in got.items():
        period = periods[sid]
        assert period == int(np.searchsorted(bounds, row["timestamp"], side="right"))
    assert len(ts) == len(got)


def _reference_rows(synth_dir, **rules):
    events = pq.read_table(synth_dir / "events.parquet").to_pylist()
    for event in events:
        event["label"] = int(event["rating"] >= 4.0)
    expected, _ = reference_samples(events, num_demos=4, history_len=10, min_demos=1, **rules)
    for row in expected.values():
        row.pop("sample_id")
    return expected


def _rows(table):
    rows = {row.pop("sample_id"): row for row in table.to_pylist()}
    for row in rows.values():
        row.pop("period")
    return rows


def test_retrieval_policies_and_augmentation_equal_the_reference(synth_dir, tmp_path, ray_local):
    """Recent histories + mixed demos, with an augmented copy whose demos and histories are
    semantic (augment_replaces: both), built by the Ray Data job on 3 partitions from a vectors
    file: each equals the brute-force reading (tests/unit/test_samples.py reads every
    augment_replaces against it)."""
    catalog = pq.read_table(synth_dir / "catalog.parquet")
    ids = [str(i) for i in catalog["item_id"].to_pylist()]
    rng = np.random.default_rng(7)
    vectors = ItemEmbeddings(tuple(ids[:-5]), unit_rows(rng.normal(size=(len(ids) - 5, 16))))
    vectors_path = vectors.save(tmp_path / "vectors.parquet")  # 5 items without a vector
    cfg = _config(
        synth_dir, tmp_path / "out", 3, demo_policy="mixed", history_policy="recent",
        recent_share=0.5, retrieval_window=12, augment=["semantic"],
        augment_replaces="both", embeddings=str(vectors_path),
    )  # fmt: skip
    manifest = build_samples(cfg)
    folder = SamplesFolder.at(tmp_path / "out")
    loaded = ItemEmbeddings.load(folder.embeddings_path)  # the vectors travel with the samples
    assert loaded.ids == vectors.ids and np.array_equal(loaded.matrix, vectors.matrix)
    assert folder.augmented_policies() == ["semantic"]

    def similarity(a, b):
        va, vb = vectors.vectors([a])[0], vectors.vectors([b])[0]
        return sum(float(x) * float(y) for x, y in zip(va, vb, strict=True))

    rules = {"recent_share": 0.5, "window": 12, "similarity": similarity}
    expected = _reference_rows(synth_dir, demo_policy="mixed", history_policy="recent", **rules)
    assert _rows(folder.read_table()) == expected
    augmented = folder.read_table(policy="semantic")
    copy = _reference_rows(synth_dir, demo_policy="semantic", history_policy="semantic", **rules)
    assert _rows(augmented) == copy
    recent = _reference_rows(synth_dir)  # the policies changed something
    assert sum(copy[s]["demos"] != recent[s]["demos"] for s in recent) > len(recent) // 4
    assert sum(copy[s]["history"] != recent[s]["history"] for s in recent) > len(recent) // 4
    assert manifest.selection.demo_policy == "mixed"
    assert manifest.selection.augmented == ["semantic"]
    assert manifest.selection.augment_replaces == "both"
    assert manifest.selection.embeddings["items"] == len(ids) - 5
    assert manifest.content_id == folder.content_id()

    # Training mixes the augmented copy in (training periods only), with its own shuffle keys;
    # validation and `use_augmented: false` read the main samples only.
    from recicl.modeling import init_tiny_model
    from recicl.train.data import encoded_datasets, training_rows

    tiny = init_tiny_model(folder.catalog_path, tmp_path / "tiny")
    train_cfg = cfg.model_copy(deep=True)
    train_cfg.model.name_or_path = str(tiny)
    counts = manifest.sample_counts()
    train, val = encoded_datasets(train_cfg, folder.root, [0, 1, 2], [3])
    assert val is not None and val.count() == counts[3]
    rows = train.take_all()
    assert len(rows) == 2 * (counts[0] + counts[1] + counts[2])
    assert len({int(r["shuffle_key"]) for r in rows}) == len(rows)
    # the training plan counts the rows it trains on (steps per epoch), copies included, also
    # for a subset whose periods overlap validation (validated periods are read whole, and the
    # copies come from the other periods only)
    assert training_rows(folder, train_cfg.train, [0, 1, 2], [3]) == len(rows)
    half = train_cfg.model_copy(deep=True)
    half.train.max_train_samples = 0.5
    overlap, _ = encoded_datasets(half, folder.root, [0, 1, 2], [2])
    assert training_rows(folder, half.train, [0, 1, 2], [2]) == overlap.count() < len(rows)
    train_cfg.train.use_augmented = False
    train, clean_val = encoded_datasets(train_cfg, folder.root, [0, 1, 2], [3])
    assert train.count() == counts[0] + counts[1] + counts[2]

    # train.perturb: every training demonstration's label flipped in each row's twin (the
    # answer tokens the loss reads after each demonstration flip Yes <-> No), beside the clean
    # context, which stays as it was; validation rows have no twin
    def answers(rows: list[dict], twin: str = "") -> Counter:
        return Counter(
            int(r[f"{twin}input_ids"][p]) for r in rows for p in r[f"{twin}demo_answers"]
        )

    clean = answers(train.take_all())
    train_cfg.train.perturb = PerturbConfig(share=1.0, label_flip=1.0)
    twinned_train, twinned_val = encoded_datasets(train_cfg, folder.root, [0, 1, 2], [3])
    twinned = twinned_train.take_all()
    flipped = answers(twinned, twin="twin_")
    yes, no = sorted(clean)  # the two answer token ids
    assert clean[yes] != clean[no]  # so that a flip is visible in the counts
    assert (flipped[yes], flipped[no]) == (clean[no], clean[yes])
    assert answers(twinned) == clean
    val_rows = twinned_val.take_all()
    assert answers(val_rows) == answers(clean_val.take_all())
    assert all(r["twin_length"] == 0 for r in val_rows)


def test_quality_policy_fitted_with_a_model_builds_the_reference_samples(
    synth_dir, tmp_path, ray_local
):
    """`recicl samples demo-quality` end to end on a tiny model: measure leave-one-out help on
    recent samples, fit, build with the quality policy; the build equals the brute-force
    reading with the fitted weights, and the estimator travels with the samples."""
    from recicl.experiments.demo_quality import fit_from_samples
    from recicl.modeling import init_tiny_model

    build_samples(_config(synth_dir, tmp_path / "recent", 2))
    recent = SamplesFolder.at(tmp_path / "recent")
    catalog = pq.read_table(recent.catalog_path)
    ids = tuple(str(i) for i in catalog["item_id"].to_pylist())
    vectors = ItemEmbeddings(ids, unit_rows(np.random.default_rng(3).normal(size=(len(ids), 8))))
    vectors_path = vectors.save(tmp_path / "vectors.parquet")
    tiny = init_tiny_model(recent.catalog_path, tmp_path / "tiny")
    cfg = _config(synth_dir, tmp_path / "quality", 2, embeddings=str(vectors_path))
    cfg.model.name_or_path = str(tiny)
    cfg.experiment.train_periods = "0-2"
    quality, path = fit_from_samples(cfg, recent.root, None, samples=12, seed=1)
    saved = json.loads(path.read_text())
    assert path == recent.demo_quality_path and saved["measured_samples"] == 12
    assert saved["measured_demos"] >= 24 and saved["periods"] == [0, 1, 2]
    assert any(w != 0 for w in quality.weights)
    # the LRGD view's report (the model's own hidden states), measured on the same draw by
    # both fits: the lrgd estimator ranks by similarity alone
    from recicl.experiments.demo_quality import LRGD_REPORT

    assert saved["metric"] == "ridge" and saved["aligned_share"] > 0.5
    lrgd, _ = fit_from_samples(cfg, recent.root, None, samples=12, seed=1,
                               output=tmp_path / "lrgd.json", metric="lrgd")  # fmt: skip
    assert lrgd.weights == (1.0, 0.0, 0.0, 0.0) and lrgd.fitted["metric"] == "lrgd"
    for key in LRGD_REPORT:
        assert lrgd.fitted[key] == pytest.approx(saved[key], nan_ok=True), key
    assert np.isfinite(saved["rho_push"]) and -1 <= saved["rho_push"] <= 1

    cfg = _config(
        synth_dir, tmp_path / "quality", 2, demo_policy="quality", demo_quality=str(path),
        embeddings=str(vectors_path),
    )  # fmt: skip
    manifest = build_samples(cfg)
    folder = SamplesFolder.at(tmp_path / "quality")
    assert json.loads(folder.demo_quality_path.read_text())["weights"] == list(quality.weights)
    assert manifest.selection.demo_quality["weights"] == list(quality.weights)
    # a tiny random model's help is noise: the build says the estimator explains nothing
    warned = [w for w in manifest.warnings if w.startswith("samples.demo_quality")]
    assert len(warned) == (quality.weakness() is not None)

    def similarity(a, b):
        va, vb = vectors.vectors([a])[0], vectors.vectors([b])[0]
        return sum(float(x) * float(y) for x, y in zip(va, vb, strict=True))

    expected = _reference_rows(
        synth_dir, demo_policy="quality", similarity=similarity, quality=quality.weights
    )
    assert _rows(folder.read_table()) == expected
    with pytest.raises(ConfigError, match="recent policy"):
        fit_from_samples(cfg, folder.root, None, samples=4)  # needs recent demos (their ages)


def test_a_retrieval_policy_without_vectors_is_a_config_error(synth_dir, tmp_path, ray_local):
    cfg = _config(synth_dir, tmp_path / "out", 2, demo_policy="semantic")
    with pytest.raises(ConfigError, match=r"samples\.embeddings"):
        build_samples(cfg)  # no vectors file and no embedder
    other = ItemEmbeddings(("not-an-item",), unit_rows(np.ones((1, 4))))
    cfg = _config(
        synth_dir, tmp_path / "out", 2, demo_policy="semantic",
        embeddings=str(other.save(tmp_path / "other.parquet")),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="another catalog"):
        build_samples(cfg)


def test_read_samples_dataset_matches_table(synth_dir, tmp_path, ray_local):
    build_samples(_config(synth_dir, tmp_path / "out", 3))
    table = SamplesFolder.at(tmp_path / "out").read_table(periods=[1, 3])
    ds = SamplesFolder.at(tmp_path / "out").read_dataset(periods=[1, 3])
    from_ray = pa.concat_tables([ray.get(ref) for ref in ds.to_arrow_refs()])
    assert from_ray.schema == table.schema
    assert from_ray.sort_by("sample_id").equals(table.sort_by("sample_id"))
    assert set(pc.unique(table["period"]).to_pylist()) == {1, 3}


def test_explicit_boundaries_and_rerun_replaces_outputs(synth_dir, tmp_path, ray_local):
    truth = generate(SynthSpec(users=120, events_per_user=30, seed=3))["events"]
    assert truth.num_rows == 3600
    cfg = _config(synth_dir, tmp_path / "out", 2, boundaries=["2020-04-01", "2020-08-01"])
    manifest = build_samples(cfg)
    assert [p.start for p in manifest.periods] == [
        None, "2020-04-01T00:00:00Z", "2020-08-01T00:00:00Z",
    ]  # fmt: skip
    cfg = _config(synth_dir, tmp_path / "out", 2, periods=2)
    manifest = build_samples(cfg)
    folders = sorted(p.name for p in (tmp_path / "out" / "samples").iterdir())
    assert folders == ["period=0", "period=1"]  # no leftovers from the 3-period build
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert saved["config_hash"] == manifest.config_hash
    # the build records the identity of exactly what it wrote (what evaluations are cached by)
    assert saved["content_id"] == SamplesFolder.at(tmp_path / "out").content_id()
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind


def test_a_failed_rebuild_leaves_the_previous_samples_whole(
    synth_dir, tmp_path, ray_local, monkeypatch
):
    """A rebuild writes into a staging folder: when it fails, the previous build (what serving
    reads its catalog from) is still all there, and the next build cleans the staging up."""
    from recicl.data import pipeline

    cfg = _config(synth_dir, tmp_path / "out", 2, periods=2)
    build_samples(cfg)
    folder = SamplesFolder.at(tmp_path / "out")
    before = {p.relative_to(folder.root): p.stat().st_mtime_ns for p in folder.root.rglob("*")}

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline, "_write_quarantine", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        build_samples(_config(synth_dir, tmp_path / "out", 3, periods=3))
    after = {p.relative_to(folder.root): p.stat().st_mtime_ns for p in folder.root.rglob("*")}
    assert (
        after == before
        and folder.content_id() == json.loads(folder.manifest_path.read_text())["content_id"]
    )
    monkeypatch.undo()
    build_samples(_config(synth_dir, tmp_path / "out", 3, periods=3))
    assert sorted(p.name for p in folder.samples_root.iterdir())[-1] == "period=2"
    assert not list(tmp_path.glob(".out.*"))


def test_cli_build_prints_summary_and_rejects_bad_config(
    synth_dir, tmp_path, ray_local, monkeypatch
):
    env_python = sys.executable
    bad = tmp_path / "bad.yaml"
    bad.write_text("samples:\n  num_demo: 2\n")
    result = subprocess.run(
        [env_python, "-m", "recicl.cli", "samples", "build", "--config", str(bad),
         "--output", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "samples.num_demo" in result.stderr and "Traceback" not in result.stderr

    result = subprocess.run(
        [env_python, "-m", "recicl.cli", "samples", "build", "--source", "parquet",
         "--path", str(synth_dir), "--output", str(tmp_path / "cli"), "--periods", "3",
         "--num-demos", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "samples" in result.stdout and "D2" in result.stdout
    manifest = SamplesFolder.at(tmp_path / "cli").require_manifest()
    assert manifest.samples_config["num_demos"] == 2
    demos = SamplesFolder.at(tmp_path / "cli").read_table()["demos"].to_pylist()
    assert max(len(d) for d in demos) == 2

    # A retrieval policy from the command line: the build embeds the catalog itself (WordLlama,
    # offline) and keeps the vectors with the samples. (In this process, on the session's Ray:
    # the fresh-process start is the run above.)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(
        app,
        ["samples", "build", "--source", "parquet", "--path", str(synth_dir),
         "--output", str(tmp_path / "semantic"), "--periods", "3",
         "--demo-policy", "semantic", "--history-policy", "semantic"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-2000:]
    assert "demos semantic, history semantic" in result.output
    folder = SamplesFolder.at(tmp_path / "semantic")
    vectors = folder.require_manifest().selection.embeddings
    assert vectors is not None and vectors["encoder"] == "wordllama"
    assert len(ItemEmbeddings.load(folder.embeddings_path)) == vectors["items"]
    recent = SamplesFolder.at(tmp_path / "cli").read_table().sort_by("sample_id")
    semantic = folder.read_table().sort_by("sample_id")
    assert recent["sample_id"].equals(semantic["sample_id"])  # the same samples...
    assert recent["history"].to_pylist() != semantic["history"].to_pylist()  # ...other context

    missing = subprocess.run(
        [env_python, "-m", "recicl.cli", "samples", "build", "--source", "movielens",
         "--path", str(tmp_path / "nowhere"), "--output", str(tmp_path / "y")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_a_parquet_read_starts_as_many_footer_readers_as_sized(synth_dir, ray_local):
    """Ray Data starts ``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS`` footer readers for every Parquet
    read (32 by default); ensure_ray sizes that for the cluster. Counted from Ray's own actor
    table, so a Ray upgrade that renames the knob fails here instead of silently bringing back
    32 processes per read."""

    from ray.util.state import list_actors

    from recicl.config import RayConfig
    from recicl.raycluster import FOOTER_ACTORS_ENV, ensure_ray

    def footer_readers() -> set[str]:
        actors = list_actors(
            address=ray.get_runtime_context().gcs_address,  # this session's Ray, not another
            filters=[("class_name", "=", "FooterReader")],
            limit=10_000,
        )
        return {actor.actor_id for actor in actors}

    ensure_ray(RayConfig(parquet_footer_actors=2))
    try:
        assert os.environ[FOOTER_ACTORS_ENV] == "2"
        before = footer_readers()
        rows = ray.data.read_parquet(str(synth_dir / "events.parquet")).materialize().count()
        assert rows == pq.read_metadata(synth_dir / "events.parquet").num_rows
        assert len(footer_readers() - before) == 2
    finally:
        ensure_ray(RayConfig())  # back to the size the rest of the session uses
    assert os.environ[FOOTER_ACTORS_ENV] == "1"  # 4 logical CPUs: one reader


def test_item_stats_count_the_knowledge_periods_only(synth_dir, tmp_path, ray_local):
    """item_stats.parquet equals a plain count (and the codes a factorisation) over the
    deduplicated events of periods up to samples.item_stats_until, and labels of later periods
    cannot change either (no leak)."""
    from recicl.data.item_stats import item_codes, item_stats_meta, read_item_stats

    manifest = build_samples(_config(synth_dir, tmp_path / "a", 3, item_stats_until=2))
    folder = SamplesFolder.at(tmp_path / "a")
    got = read_item_stats(folder.item_stats_path)
    bounds = manifest.boundaries_ts
    assert item_stats_meta(got) == {"until_period": 2, "until_ts": bounds[2], "code_bits": 8}
    assert manifest.item_stats["until_period"] == 2

    events = pq.read_table(synth_dir / "events.parquet").to_pylist()
    seen, want = set(), {}
    for e in events:
        key = (e["user_id"], e["item_id"], e["timestamp"], e["rating"])
        if key in seen:  # the planted exact duplicates are not counted twice
            continue
        seen.add(key)
        if int(np.searchsorted(bounds, e["timestamp"], side="right")) <= 2:
            n, likes = want.get(e["item_id"], (0, 0))
            want[e["item_id"]] = (n + 1, likes + int(e["rating"] >= 4.0))
    rows = {r["item_id"]: (r["events"], r["likes"]) for r in got.to_pylist()}
    assert rows == want and sum(n for n, _ in want.values()) < len(seen)
    # taste codes: the factorisation of exactly those events (8 bits, >= 10 events)
    counted = [
        (e["user_id"], e["item_id"], int(e["rating"] >= 4.0))
        for e in {
            (e["user_id"], e["item_id"], e["timestamp"], e["rating"]): e for e in events
        }.values()
        if int(np.searchsorted(bounds, e["timestamp"], side="right")) <= 2
    ]
    users, items, labels = (np.array(column) for column in zip(*counted, strict=True))
    want_codes, _ = item_codes(users, items, labels, bits=8, min_events=10)
    got_codes = {r["item_id"]: r["code"] for r in got.to_pylist() if r["code"]}
    assert got_codes == want_codes and len(got_codes) > 1
    assert manifest.item_stats["coded_items"] == len(got_codes)

    # flip every rating after the cut: the statistics do not move
    table = pq.read_table(synth_dir / "events.parquet")
    later = pc.greater_equal(table["timestamp"], bounds[2])
    flipped = pc.if_else(later, pc.subtract(6.0, table["rating"]), table["rating"])
    source = tmp_path / "flipped"
    source.mkdir()
    for extra in synth_dir.iterdir():
        if extra.name != "events.parquet":
            (source / extra.name).write_bytes(extra.read_bytes())
    pq.write_table(table.set_column(table.schema.get_field_index("rating"), "rating", flipped),
                   source / "events.parquet")  # fmt: skip
    build_samples(_config(source, tmp_path / "b", 3, item_stats_until=2))
    assert read_item_stats(SamplesFolder.at(tmp_path / "b").item_stats_path).equals(got)
