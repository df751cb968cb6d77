"""`recicl promote --live` and `recicl rollback` on a real feedback store and a real registry.

Feedback is planted directly in a SQLite interaction store (served champion and shadow scores of
the same requests, joined with events through the store's own join) and the versions are dummy
folders registered in a temporary MLflow SQLite registry: what the gate reads and what it moves
are the real things, only the models are missing. The paired bootstrap is checked against
scikit-learn and against its own definition.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from recicl.cli import app
from recicl.config import ConfigError, build_config
from recicl.evaluate.paired import PairedScores, _RankedAuc, paired_bootstrap
from recicl.promotion import previous_holder, promote, rollback
from recicl.registry import RegistryError, alias_version, client
from recicl.serve.live_metrics import read_live_evidence, shadow_pairs
from recicl.serve.store import Event, FeedbackSettings, ServedScore, SQLiteStore

NAME = "recicl"
#: Signal strength of each version's scores (the champion is version 1): 2 is worse, 3 better.
SIGNAL = {"1": 0.6, "2": 0.1, "3": 1.6, "4": 1.6}
PAIRS = {"2": 300, "3": 300, "4": 20}  # version 4: too few pairs to decide on


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def plant(store: SQLiteStore, candidate: str, n: int, served_at: int) -> None:
    """``n`` requests of one item each, scored by the champion (v1) and by ``candidate`` in
    shadow, then answered by an event that the store joins to both."""
    rng = np.random.default_rng(int(candidate))
    labels = rng.random(n) < 0.5
    signs = np.where(labels, 1.0, -1.0)
    scores = {
        version: _sigmoid(SIGNAL[version] * signs + rng.normal(size=n))
        for version in ("1", candidate)
    }
    served, events = [], []
    for i in range(n):
        user, item, request = f"{candidate}-u{i % 40}", f"item{i}", f"{candidate}-r{i}"
        for arm, version in (("champion", "1"), ("shadow", candidate)):
            served.append(
                ServedScore(request, user, item, version, arm, "recent/recent",
                            float(scores[version][i]), served_at)
            )  # fmt: skip
        events.append(Event(user, item, int(labels[i]), served_at + 5))
    store.record_served(served, served_at)
    counts = store.record_outcomes(events, served_at + 10)
    assert counts[("joined", "1", "champion")] == counts[("joined", candidate, "shadow")] == n


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import time

    root = tmp_path_factory.mktemp("live")
    raw = {
        "workdir": str(root / "work"),
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
        "serve": {"store_url": f"sqlite:///{root / 'events.db'}", "alias_poll_seconds": 0.05},
        "evaluate": {"live": {"min_pairs": 100, "resamples": 500}},
    }
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = build_config(raw)
    mlc = client(cfg.mlflow.tracking_uri or "")
    mlc.create_registered_model(NAME)
    source = (root / "version").as_uri()  # dummy versions: the gate never loads a model
    versions = [str(mlc.create_model_version(NAME, source).version) for _ in range(4)]
    assert versions == ["1", "2", "3", "4"]
    store = SQLiteStore(
        root / "events.db", feedback=FeedbackSettings.from_config(cfg.serve.feedback)
    )
    for candidate, n in PAIRS.items():
        plant(store, candidate, n, int(time.time()) - 3600)
    store.close()
    return cfg, config, mlc


def _tags(mlc: Any) -> dict[str, dict[str, str]]:
    return {v.version: dict(v.tags) for v in mlc.search_model_versions(f"name='{NAME}'")}


def _records(mlc: Any, version: str, prefix: str) -> list[dict[str, Any]]:
    tags = mlc.get_model_version(NAME, version).tags
    found = [json.loads(v) for k, v in tags.items() if k.startswith(prefix)]
    return sorted(found, key=lambda r: r["when_ms"])


# -- the bootstrap ----------------------------------------------------------------------------


def test_weighted_auc_is_the_auc_of_the_repeated_rows() -> None:
    """A resample weighs each example by its draws: the AUC of those weights must be the AUC of
    the rows repeated that often (ties count one half, as in scikit-learn)."""
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(200), 1)  # many ties
    labels = (rng.random(200) < scores).astype(int)
    ranked = _RankedAuc(scores, labels)
    assert ranked(np.ones(200)) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    weights = rng.integers(0, 4, 200)
    repeated = roc_auc_score(np.repeat(labels, weights), np.repeat(scores, weights))
    assert ranked(weights.astype(float)) == pytest.approx(repeated, abs=1e-12)


def test_paired_bootstrap_numbers_and_resampling_unit() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(400) < 0.5).astype(int)
    champion = _sigmoid((2 * labels - 1) * 0.5 + rng.normal(size=400))
    candidate = _sigmoid((2 * labels - 1) * 0.8 + rng.normal(size=400))
    users = np.array([f"u{i % 50}" for i in range(400)], dtype=object)
    pairs = PairedScores(labels, champion, candidate, users)
    result = paired_bootstrap(pairs, resamples=400, confidence=0.9, seed=3)
    assert result.champion_auc == pytest.approx(roc_auc_score(labels, champion))
    assert result.candidate_auc == pytest.approx(roc_auc_score(labels, candidate))
    assert result.delta == pytest.approx(result.candidate_auc - result.champion_auc)
    assert result.lower < result.delta and (result.pairs, result.users) == (400, 50)
    assert result == paired_bootstrap(pairs, resamples=400, confidence=0.9, seed=3)  # seeded
    same = paired_bootstrap(
        PairedScores(labels, champion, champion, users), resamples=200, confidence=0.9, seed=0
    )
    assert (same.delta, same.lower) == (0.0, 0.0)
    # users are the unit: repeating each user's pairs adds no evidence, new users do
    repeated = PairedScores(*(np.repeat(a, 5) for a in (labels, champion, candidate, users)))
    again = paired_bootstrap(repeated, resamples=400, confidence=0.9, seed=3)
    assert again.lower == pytest.approx(result.lower, abs=1e-12)
    distinct = PairedScores(
        *(np.repeat(a, 5) for a in (labels, champion, candidate)),
        np.array([f"{u}-{k}" for u in users for k in range(5)], dtype=object),
    )
    assert paired_bootstrap(distinct, resamples=400, confidence=0.9, seed=3).lower > result.lower


def test_pairs_are_the_same_request_joined_with_the_same_event(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    t = 1_700_000_000

    def served(request: str, item: str, arm: str, version: str, score: float) -> ServedScore:
        return ServedScore(request, "u", item, version, arm, "p", score, t)

    store.record_served(
        [served("r1", "a", "champion", "1", 0.9), served("r1", "a", "shadow", "2", 0.4),
         served("r1", "b", "champion", "1", 0.2), served("r1", "b", "shadow", "2", 0.3),
         served("r1", "c", "champion", "1", 0.5),  # the shadow did not score c
         served("r2", "d", "champion", "1", 0.5), served("r2", "d", "shadow", "2", 0.5)],
        t,
    )  # fmt: skip
    store.record_outcomes([Event("u", "a", 1, t + 1), Event("u", "b", 0, t + 1)], t + 2)
    store.record_outcomes([Event("u", "c", 1, t + 1)], t + 2)  # d: no event, pending
    pairs = shadow_pairs(store.feedback_rows(0, now=t + 3))
    assert list(pairs) == [("1", "2")]
    found = pairs[("1", "2")]
    assert found.labels.tolist() == [1, 0]
    assert (found.champion.tolist(), found.candidate.tolist()) == ([0.9, 0.2], [0.4, 0.3])
    store.close()


def test_rollback_history_is_a_stack() -> None:
    def move(a: str | None, b: str, kind: str = "promote") -> dict[str, Any]:
        return {"from": a, "to": b, "kind": kind}

    history = [move(None, "1"), move("1", "2"), move("2", "3")]
    assert previous_holder(history) == ("2", "3")
    assert previous_holder([*history, move("3", "2", "rollback")]) == ("1", "2")
    back_twice = [*history, move("3", "2", "rollback"), move("2", "1", "rollback")]
    assert previous_holder(back_twice) == (None, "1")
    assert previous_holder([]) == (None, None)
    assert previous_holder([{"from": "7", "to": "8"}]) == ("7", "8")  # records before `kind`


# -- the gate, the moves and the history, through the CLI ------------------------------------


def test_promote_live_refuses_worse_accepts_better_and_rollback_restores(world: Any) -> None:
    _, config, mlc = world
    runner = CliRunner()

    def recicl(*args: str) -> Any:
        return runner.invoke(app, [*args, "--config", str(config)])

    first = recicl("promote", "--version", "1", "--live")
    assert first.exit_code == 0 and "no holder" in first.output, first.output

    worse = recicl("promote", "--version", "2", "--live")
    assert worse.exit_code == 1, worse.output
    text = " ".join(worse.output.split())
    assert "refused: recicl@champion stays on v1" in text and "300 joined pairs" in text
    assert "95% lower bound -" in text and "needed >= +0.0000" in text
    assert alias_version(mlc, NAME, "champion") == "1"

    few = recicl("promote", "--version", "4", "--live")
    text = " ".join(few.output.split())
    assert few.exit_code == 1 and "20 joined pairs" in text and "min_pairs = 100" in text
    assert "other versions: v1/v2: 300, v1/v3: 300)" in text
    assert alias_version(mlc, NAME, "champion") == "1"

    better = recicl("promote", "--version", "3", "--live")
    assert better.exit_code == 0, better.output
    assert "promoted recicl@champion → v3" in " ".join(better.output.split())
    assert alias_version(mlc, NAME, "champion") == "3"
    [record] = _records(mlc, "3", "recicl.promotion.champion.")
    assert (record["from"], record["to"], record["gate"], record["kind"]) == (
        "1", "3", "live", "promote"
    )  # fmt: skip
    assert record["who"] and record["when"] == record["when_ms"] // 1000
    assert record["live"]["pairs"] == 300 and record["live"]["lower"] > 0
    assert record["candidate_auc"] > record["champion_auc"]
    assert _records(mlc, "1", "recicl.demotion.champion.") == [record]

    back = recicl("rollback", "--reason", "live AUC dropped")
    assert back.exit_code == 0, back.output
    assert "rolled back recicl@champion: v3 → v1" in back.output
    assert alias_version(mlc, NAME, "champion") == "1"
    rolled = _records(mlc, "1", "recicl.promotion.champion.")[-1]
    assert (rolled["kind"], rolled["from"], rolled["to"]) == ("rollback", "3", "1")
    assert rolled["reason"] == "live AUC dropped"

    before = _tags(mlc)
    none_left = recicl("rollback")
    assert none_left.exit_code == 2 and "no previous holder" in none_left.output
    assert len(none_left.output.strip().splitlines()) == 1 and "Traceback" not in none_left.output
    assert _tags(mlc) == before and alias_version(mlc, NAME, "champion") == "1"

    mlc.set_registered_model_alias(NAME, "champion", "2")  # moved by hand, outside recicl
    outside = recicl("rollback")
    assert outside.exit_code == 2 and "moved outside" in " ".join(outside.output.split())
    assert alias_version(mlc, NAME, "champion") == "2"
    mlc.set_registered_model_alias(NAME, "champion", "1")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "60"], "--window is the window of --live"),
        (["--live", "--samples", "somewhere"], "--samples and --period belong to the offline"),
        (["--live", "--window", "0"], "--window"),
    ],
)
def test_promote_flags_that_do_not_go_together(world: Any, args: list[str], message: str):
    _, config, mlc = world
    before = _tags(mlc)
    done = CliRunner().invoke(app, ["promote", "--version", "3", *args, "--config", str(config)])
    assert done.exit_code == 2 and message in " ".join(done.output.split()), done.output
    assert _tags(mlc) == before


def test_the_offline_gate_still_decides_on_samples(world: Any, tmp_path: Path, monkeypatch):
    """The same code path without --live (on another alias): evaluations compared, the move
    recorded with gate 'offline', and rollback reads it back."""
    import recicl.promotion as promotion

    cfg, _, mlc = world
    samples = tmp_path / "samples"
    (samples / "samples").mkdir(parents=True)
    (samples / "manifest.json").write_text(json.dumps({"periods": [{"period": 2, "samples": 9}]}))
    aucs = {"2": 0.80, "3": 0.70, "4": 0.85}
    monkeypatch.setattr(promotion, "evaluation_auc", lambda c, w, n, v, s, p: aucs[v])
    assert promote(cfg, NAME, "2", "staging").promoted
    refused = promote(cfg, NAME, "3", "staging", samples_dir=samples)
    assert not refused.promoted and "0.7000" in refused.message()
    accepted = promote(cfg, NAME, "4", "staging", samples_dir=samples)
    assert accepted.promoted and accepted.period == 2
    assert _records(mlc, "4", "recicl.promotion.staging.")[-1]["gate"] == "offline"
    assert rollback(cfg, NAME, "staging").restored == "2"
    with pytest.raises(RegistryError, match="no previous holder"):
        rollback(cfg, NAME, "staging")
    with pytest.raises(RegistryError, match="is not set"):
        rollback(cfg, NAME, "nobody")


def test_live_evidence_reads_the_configured_store_and_window(world: Any) -> None:
    cfg, _, _ = world
    evidence = read_live_evidence(cfg)
    assert {k: len(v) for k, v in evidence.pairs.items()} == {("1", c): n for c, n in PAIRS.items()}
    assert "events.db" in evidence.source
    assert read_live_evidence(cfg, window_s=60).pairs == {}  # planted an hour ago


# -- the traffic setting in the registry --------------------------------------------------------


def test_admin_traffic_setting_is_shared_through_the_registry(world: Any) -> None:
    """Two ingress replicas: what one stores (a registered-model tag) the other reads within
    one alias poll; deleting it returns both to the config."""
    import asyncio
    import time

    from recicl.config import TrafficConfig
    from recicl.serve.ingress import IngressBackend
    from recicl.serve.settings import resolve_settings

    cfg, _, mlc = world
    settings = resolve_settings(cfg)
    one, two = IngressBackend(None, settings), IngressBackend(None, settings)
    traffic = TrafficConfig.model_validate({"split": {"version": 3, "share": 0.2}})

    async def settled(backend: IngressBackend) -> Any:
        """The value once the background re-read that an old value starts is done."""
        await backend.traffic_override()
        await backend._registry.drain()
        return await backend.traffic_override()

    async def run() -> tuple[Any, Any, Any, Any]:
        assert await two.traffic_override() is None  # the first read waits for the registry
        await one.set_traffic_override(traffic)
        time.sleep(0.1)  # past serve.alias_poll_seconds
        held = await two.traffic_override()  # answers at once with what it holds ...
        seen = await settled(two)  # ... and re-reads in the background
        await one.set_traffic_override(None)
        time.sleep(0.1)
        return held, seen, await settled(two), await one.traffic_override()

    held, seen, cleared, own = asyncio.run(run())
    assert held is None and seen == traffic and cleared is None and own is None
    assert "recicl.traffic.champion" not in mlc.get_registered_model(NAME).tags
    one.store.close()
    two.store.close()


def test_configured_traffic_must_name_registered_versions(world: Any) -> None:
    from recicl.serve.traffic import check_configured_traffic

    cfg, _, _ = world
    uri = cfg.mlflow.tracking_uri or ""
    ok = build_config({"serve": {"traffic": {"split": {"version": 3, "share": 0.1}}}})
    check_configured_traffic(ok.serve.traffic, uri, NAME)
    bad = build_config({"serve": {"traffic": {"shadow": {"version": 9}}}})
    with pytest.raises(ConfigError, match=r"serve\.traffic\.shadow\.version: recicl has no"):
        check_configured_traffic(bad.serve.traffic, uri, NAME)


def test_an_alias_moved_meanwhile_is_not_overwritten(tmp_path: Path) -> None:
    """Promotion is a compare-and-set: a move decided against one champion, when another
    promotion has moved the alias since, changes nothing and says so."""
    from recicl.promotion import move_alias

    mlc = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlc.create_registered_model("m")
    for _ in range(3):
        mlc.create_model_version("m", (tmp_path / "v").as_uri())
    move_alias(mlc, "m", "champion", None, "1", {"kind": "promotion"})
    judged_against = alias_version(mlc, "m", "champion")  # the slow gate starts here ...
    move_alias(mlc, "m", "champion", "1", "2", {"kind": "promotion"})  # ... another one lands
    with pytest.raises(RegistryError, match="moved from version 1 to 2"):
        move_alias(mlc, "m", "champion", judged_against, "3", {"kind": "promotion"})
    assert alias_version(mlc, "m", "champion") == "2"
    assert not any(k.startswith("recicl.promotion") for k in mlc.get_model_version("m", "3").tags)
