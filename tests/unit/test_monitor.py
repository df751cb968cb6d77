"""`recicl monitor` fires after a planted drift and not before it, rolls back when the drop
follows an alias move, says no-data without data, and logs each decision to MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from recicl.cli import app
from recicl.config import build_config
from recicl.promotion import move_alias
from recicl.registry import client
from recicl.serve.store import Event, FeedbackSettings, ServedScore, SQLiteStore
from recicl.updates.monitor import EXIT_CODES, decide, run_monitor

NOW = 1_900_000_000
WINDOW = 3600


def plant(store: SQLiteStore, version: str, n: int, served_at: int, signal: float, seed: int):
    """``n`` champion scores of ``version`` at ``served_at``, each joined to an event; the
    scores separate the labels with strength ``signal`` (0: a coin)."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.5
    scores = 1 / (1 + np.exp(-(signal * np.where(labels, 1.0, -1.0) + rng.normal(size=n))))
    served = [
        ServedScore(f"r{seed}-{i}", f"u{seed}-{i % 50}", f"i{seed}-{i}", version, "champion",
                    "recent/recent", float(scores[i]), served_at)
        for i in range(n)
    ]  # fmt: skip
    store.record_served(served, served_at)
    events = [
        Event(s.user_id, s.item_id, int(y), served_at + 5)
        for s, y in zip(served, labels, strict=True)
    ]
    store.record_outcomes(events, served_at + 10)


@pytest.fixture
def world(tmp_path: Path) -> Any:
    raw = {
        "workdir": str(tmp_path / "work"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "serve": {"store_url": f"sqlite:///{tmp_path / 'events.db'}"},
        "monitor": {"window_seconds": WINDOW, "min_joined": 100},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = build_config(raw)
    mlc = client(str(cfg.mlflow.tracking_uri))
    mlc.create_registered_model("recicl")
    for _ in range(2):
        mlc.create_model_version("recicl", (tmp_path / "v").as_uri())
    move_alias(mlc, "recicl", "champion", None, "1", {"kind": "promotion"})
    store = SQLiteStore(
        tmp_path / "events.db", feedback=FeedbackSettings.from_config(cfg.serve.feedback)
    )
    return cfg, mlc, store, tmp_path


def test_fires_after_a_planted_drift_and_not_before(world):
    cfg, _, store, _ = world
    assert run_monitor(cfg, now=NOW).decision == "no-data"  # nothing served yet
    plant(store, "1", 300, NOW - 2 * WINDOW + 60, signal=2.0, seed=1)  # previous window
    plant(store, "1", 300, NOW - WINDOW + 60, signal=2.0, seed=2)  # this window: as good
    before = run_monitor(cfg, now=NOW)
    assert before.decision == "ok", before.reasons
    assert before.figures["current"]["joined"] == before.figures["previous"]["joined"] == 300
    # the drift: in the next window the scores stop separating the users' answers
    plant(store, "1", 300, NOW + 60, signal=0.0, seed=3)
    after = run_monitor(cfg, now=NOW + WINDOW)
    assert after.decision == "retune", after.reasons  # the promotion is long past: not a rollback
    assert "drift" in after.reasons[0] and after.exit_code == 10
    assert after.figures["current"]["auc"] < after.figures["previous"]["auc"] - 0.2


def test_rules_on_figures(world):
    cfg = world[0]
    good = {"joined": 300, "auc": 0.80}
    assert decide(cfg, good, good, 0.82, None).decision == "ok"
    bad = {"joined": 300, "auc": 0.55}
    retune = decide(cfg, bad, good, 0.82, moved_seconds_ago=10 * 86_400)
    assert retune.decision == "retune" and "drift" in retune.reasons[0]
    assert "decay" in retune.reasons[1] and retune.exit_code == EXIT_CODES["retune"] == 10
    rollback = decide(cfg, bad, good, 0.82, moved_seconds_ago=3600)
    assert rollback.decision == "rollback" and "recicl rollback" in rollback.reasons[0]
    # decay alone (no previous window): retune, not rollback
    alone = decide(cfg, bad, {"joined": 0, "auc": None}, 0.82, moved_seconds_ago=60)
    assert alone.decision == "retune" and "decay" in alone.reasons[0]
    few = decide(cfg, {"joined": 99, "auc": 0.9}, good, 0.82, None)
    assert few.decision == "no-data" and few.exit_code == 12


def test_the_cli_exits_with_the_decision_and_mlflow_has_it(world):
    cfg, mlc, _, root = world
    result = CliRunner().invoke(app, ["monitor", "--config", str(root / "config.yaml")])
    assert result.exit_code == EXIT_CODES["no-data"], result.output
    assert "no-data" in result.output
    experiment = mlc.get_experiment_by_name(f"{cfg.mlflow.experiment}-monitor")
    runs = mlc.search_runs([experiment.experiment_id])
    assert [r.data.tags["recicl.decision"] for r in runs] == ["no-data"]


def test_offline_auc_is_the_latest_evaluation_of_that_version(world):
    from recicl.registry import EVAL_KIND_TAG, MODEL_NAME_TAG, MODEL_VERSION_TAG
    from recicl.updates.monitor import offline_auc

    _, mlc, _, _ = world
    assert offline_auc(mlc, "recicl", "1") is None  # never evaluated
    experiment = mlc.create_experiment("evals")
    for version, aucs in (("1", (0.70, 0.80)), ("2", (0.50, 0.50))):
        tags = {EVAL_KIND_TAG: "evaluation", MODEL_NAME_TAG: "recicl", MODEL_VERSION_TAG: version}
        run = mlc.create_run(experiment, tags=tags).info.run_id
        mlc.log_metric(run, "p6_auc", aucs[0])
        mlc.log_metric(run, "p7_auc", aucs[1])
        mlc.log_metric(run, "p7_logloss", 0.9)  # not an AUC: left out
    assert offline_auc(mlc, "recicl", "1") == pytest.approx(0.75)
