"""`recicl retune` end to end on CPU: a tiny champion, a planted taste change in the store.

The log: every user likes Comedy and Drama films and dislikes Horror and Western. After the log
ends, serving stores the opposite (a global taste change the champion never saw). A warm
re-tune must export exactly the stored events, rebuild the samples with the log's periods kept
and the stored events cut into a trained and a held-out part, continue the champion's adapter,
beat the champion on the held-out events, and enter the new version as the shadow arm. Bad
input (no champion, no new events, another base model) stops before anything is registered; a
failure after registering removes the version, and the same run name then resumes.

Real Ray Data, Ray Train (DDP, one CPU worker), MLflow (SQLite) and the SQLite store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from recicl.cli import app
from recicl.config import ConfigError, ReciclConfig, TinyModelSettings, build_config
from recicl.data.samples_folder import SamplesFolder
from recicl.data.synth import GENRE_WORDS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GENRES = ["Comedy", "Drama", "Horror", "Western"]
LIKED_BEFORE = {"Comedy", "Drama"}
USERS, ITEMS_PER_GENRE = 48, 10
LOG_EVENTS, SERVED_EVENTS = 16, 12  # per user
START = 1_600_000_000


def _liked(genre: str, changed: bool) -> int:
    return int((genre in LIKED_BEFORE) != changed)


def _write_world(root: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The log folder (generic Parquet source) and the events serving will store later."""
    rng = np.random.default_rng(0)
    items = [(f"{g[:1]}{k}", g) for g in GENRES for k in range(ITEMS_PER_GENRE)]
    words = {g: GENRE_WORDS[g] for g in GENRES}
    log = root / "log"
    log.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "item_id": [i for i, _ in items],
                "title": [f"The {words[g][k % 6]} {k}" for k, (_, g) in enumerate(items)],
                "genres": [g for _, g in items],
            }
        ),
        log / "catalog.parquet",
    )
    rows, served = [], []
    for u in range(USERS):
        picks = rng.choice(len(items), LOG_EVENTS + SERVED_EVENTS, replace=False)
        for n, index in enumerate(picks):
            item, genre = items[int(index)]
            changed = n >= LOG_EVENTS
            event = {"user_id": f"u{u}", "item_id": item, "label": _liked(genre, changed),
                     "timestamp": START + 3600 * n + u}  # fmt: skip
            (served if changed else rows).append(event)
    pq.write_table(pa.Table.from_pylist(rows), log / "events.parquet")
    return log, served


def _config(root: Path, log: Path, model: Path, **retune: Any) -> ReciclConfig:
    return build_config(
        {
            "workdir": str(root / "work"),
            "data": {
                "source": "parquet",
                "path": str(log),
                "columns": {"rating": None, "label": "label"},
                "catalog_columns": {"attributes": ["genres"]},
            },
            "samples": {
                "periods": 3,
                "num_demos": 2,
                "history_len": 0,
                "min_demos": 1,
                "output": str(root / "samples"),
            },
            "model": {"name_or_path": str(model), "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "prompt": {"max_length": 192},
            "train": {
                "strategy": "ddp",
                "num_workers": 1,
                "cpus_per_worker": 1,
                "batch_size": 16,
                "epochs": 3,
                "lr": 1e-2,
                "warmup_ratio": 0.1,
                "max_train_samples": 384,
                "seed": 0,
            },
            "evaluate": {"replicas": 1, "batch_size": 64},
            "mlflow": {"experiment": "test-retune"},
            "retune": {"min_new_events": 50, **retune},
        }
    )


@pytest.fixture(scope="module")
def world(ray_local, tmp_path_factory) -> dict[str, Any]:
    """Log samples, a tiny model, a champion tuned on the log; the store holds the change."""
    from recicl.data.pipeline import build_samples
    from recicl.modeling import init_tiny_model
    from recicl.promotion import move_alias
    from recicl.registry import client, resolve_tracking_uri
    from recicl.serve.settings import resolve_store_url
    from recicl.serve.store import Event, open_store
    from recicl.train import train

    root = tmp_path_factory.mktemp("retune")
    log, served = _write_world(root)
    settings = TinyModelSettings(hidden_size=64, num_layers=2, num_heads=4, vocab_size=600)
    model = init_tiny_model(log / "catalog.parquet", root / "tiny-model", settings)
    cfg = _config(root, log, model)
    build_samples(cfg, dashboard=False)
    champion_cfg = cfg.model_copy(
        update={
            "train": cfg.train.model_copy(update={"run_name": "champion", "train_periods": [0, 1]})
        }
    )
    champion = train(champion_cfg)
    assert champion.version is not None
    mlc = client(resolve_tracking_uri(cfg))
    move_alias(mlc, cfg.mlflow.registered_model, "champion", None, champion.version, {})
    return {"root": root, "log": log, "model": model, "cfg": cfg, "served": served,
            "champion": champion.version, "store_url": resolve_store_url(cfg),
            "Event": Event, "open_store": open_store}  # fmt: skip


def _versions(cfg: ReciclConfig) -> list[str]:
    from recicl.registry import client, resolve_tracking_uri

    found = client(resolve_tracking_uri(cfg)).search_model_versions(
        f"name='{cfg.mlflow.registered_model}'"
    )
    return sorted(str(v.version) for v in found)


def _fill_store(world: dict[str, Any]) -> None:
    Event = world["Event"]
    with world["open_store"](world["store_url"]) as store:
        store.append([Event(e["user_id"], e["item_id"], e["label"], e["timestamp"])
                      for e in world["served"]])  # fmt: skip


def test_bad_input_stops_before_anything_is_registered(world, tmp_path) -> None:
    from recicl.registry import client, resolve_tracking_uri
    from recicl.updates.retune import RetuneError, run_retune

    cfg: ReciclConfig = world["cfg"]
    before = _versions(cfg)
    with pytest.raises(RetuneError, match=r"no new events to re-tune on: .* 0 event\(s\)"):
        run_retune(cfg, "no-events")  # the store is still empty
    other_alias = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"alias": "gold"})})
    with pytest.raises(RetuneError, match="has no alias 'gold'; promote a version first"):
        run_retune(other_alias, "no-champion")
    other_base = cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"name_or_path": str(tmp_path)})}
    )
    with pytest.raises(ConfigError, match="warm-start from a version of the same base"):
        run_retune(other_base, "other-base")
    result = CliRunner().invoke(app, ["retune", "--config", str(_yaml(cfg, tmp_path))])
    assert result.exit_code == 2, result.output
    assert "no new events" in result.output and "Traceback" not in result.output
    assert _versions(cfg) == before
    tags = client(resolve_tracking_uri(cfg)).get_registered_model("recicl").tags
    assert not [k for k in tags if k.startswith("recicl.traffic")]


def _yaml(cfg: ReciclConfig, folder: Path) -> Path:
    import yaml

    path = folder / "retune.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_warm_retune_learns_the_change_and_enters_as_shadow(world, monkeypatch) -> None:
    import recicl.updates.retune as retune_module
    from recicl.registry import client, resolve_tracking_uri
    from recicl.serve.traffic import TRAFFIC_TAG, decode_override

    cfg: ReciclConfig = world["cfg"]
    _fill_store(world)
    before = _versions(cfg)

    # A failure after registering removes the version; the checkpoint stays for the resume.
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("evaluation cluster went away")

    monkeypatch.setattr(retune_module, "_evaluate_and_enter", broken)
    with pytest.raises(RuntimeError, match="went away"):
        retune_module.run_retune(cfg, "retune-1")
    assert _versions(cfg) == before
    monkeypatch.undo()

    # Resumed by name, it keeps the champion it pinned, even with the alias gone meanwhile
    mlc = client(resolve_tracking_uri(cfg))
    mlc.delete_registered_model_alias("recicl", "champion")
    result = retune_module.run_retune(cfg, "retune-1")
    mlc.set_registered_model_alias("recicl", "champion", world["champion"])
    assert "export" in result.stages_resumed  # the same frozen export, not a second one
    assert result.exported_events == len(world["served"])
    served = pq.read_table(Path(cfg.workdir) / "retune" / "retune-1" / "served" / "events.parquet")
    assert sorted(served["timestamp"].to_pylist()) == sorted(
        e["timestamp"] for e in world["served"]
    )

    manifest = SamplesFolder(Path(result.samples_dir)).require_manifest()
    log_manifest = SamplesFolder(world["root"] / "samples").require_manifest()
    assert manifest.boundaries_ts[:2] == log_manifest.boundaries_ts  # the log's periods
    assert manifest.events == log_manifest.events + len(world["served"])
    assert manifest.quarantine.total == 0
    newest = [e for e in world["served"] if e["timestamp"] >= manifest.boundaries_ts[-1]]
    assert result.newest_period == 4 and result.train_periods == [2, 3]
    assert manifest.periods[4].events == len(newest)

    version = mlc.get_model_version("recicl", result.version)
    assert version.tags["recicl.retune.from"] == world["champion"]
    params = mlc.get_run(version.run_id).data.params
    # the adapter trained on is the champion's (resolved to its downloaded version folder)
    assert f"/models/recicl/{world['champion']}-" in params["train.init_from"]
    assert result.candidate_auc is not None and result.champion_auc is not None
    assert result.champion_auc < 0.5 < result.candidate_auc, result  # it learned the change

    traffic = decode_override(mlc.get_registered_model("recicl").tags[f"{TRAFFIC_TAG}.champion"])
    assert traffic is not None and traffic.shadow.version == int(result.version)
    assert traffic.shadow.share == cfg.retune.share
    assert str(mlc.get_model_version_by_alias("recicl", "champion").version) == world["champion"]

    # Finished: running it again trains, registers and routes nothing
    mlc.delete_registered_model_tag("recicl", f"{TRAFFIC_TAG}.champion")  # e.g. withdrawn
    again = retune_module.run_retune(cfg, "retune-1")
    assert again.done and again.version == result.version
    assert f"{TRAFFIC_TAG}.champion" not in mlc.get_registered_model("recicl").tags
    assert _versions(cfg) == [*before, result.version]
