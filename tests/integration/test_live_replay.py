"""A replay of traffic through the running service (Ray Serve on 127.0.0.1, bounded): the live loop.

The replay script plays users who are scored, then act: each asks for scores of six items, then
sends events for four of them (liked or not), one repeated event and one for an item never
scored. Outcomes are *planted* from a version's own ranking (a user who agrees with it), so
which version is better is known: first a candidate in shadow whose users agree with the
champion (a worse candidate), then one whose users agree with the candidate (a better one).

Asserted, against the replay script's own log:
- every join is exact: the store's joined scores are the reference join of what the responses
  and the shadow logged with the events the script sent (the newest score per arm, each joined
  once; repeats counted as duplicates, never-scored items as unscored);
- shadow never changes an answer (the same requests before and during the shadow);
- `promote --live` refuses the worse candidate and promotes the better one; `rollback` restores
  the previous version's answers exactly; an item added mid-run is scored;
- the split sends users by a stable hash: within +-3 points of its share over 2,000 users, every
  user where the hash puts them, again on every later request;
- autoscaling, exercised: the split's load takes the model deployment (1 to 2 replicas, 2
  requests in flight per replica) past its target (the load lasts until a second replica runs,
  90 s at most: how fast Serve reacts depends on the machine), and the deployment
  returns to one when the load stops;
- no request fails throughout: shadow changes, promotion, scaling up and down, rollback.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from recicl.registry import register_model_folder
from tests.integration.test_serve import ADMIN_TOKEN, build_world

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CANDIDATES, ACTED = 6, 4  # items scored per request, items the user then acts on
USERS_PER_PHASE = 30
SPLIT_USERS, SPLIT_SHARE = 2000, 0.3
#: With the background client about 7 requests in flight at the ingress, of which about 3 are
#: at the model deployment at a time (the rest in the ingress: store reads, FastAPI): 1.5 times
#: one replica's target. At a target of 3 the load sat on it (3.04): Serve added a replica and
#: removed it again 4 s later, before it had started, and never ran two (seen on a 2-core box).
SPLIT_CLIENTS = 6
SCALE_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def world(ray_local, tmp_path_factory):
    # Autoscaling between 1 and 2 model replicas at 2 requests in flight each, with Serve's
    # 30 s / 600 s delays shortened so that the test sees both moves; the downscale delay stays
    # longer than a replica's start (model load and first alias lookup: 4 s and more on 2
    # cores), so that a dip in the load does not remove a replica that is still starting.
    return build_world(
        tmp_path_factory.mktemp("replay"),
        alias_poll_seconds=0.5,
        num_replicas=1,
        max_replicas=2,
        target_ongoing_requests=2.0,
        upscale_delay_seconds=1.0,
        downscale_delay_seconds=10.0,
        num_cpus=1.0,
    )


class Replay:
    """The script's side: what it asked, what it was answered, what it sent."""

    def __init__(self, world: Any, url: str) -> None:
        self.world, self.http = world, httpx.Client(base_url=url, timeout=60)
        self.items = [row["item_id"] for row in world.catalog]
        self.rng = np.random.default_rng(0)
        self.answers: list[dict[str, Any]] = []  # every 200 response of /v1/score
        self.events: list[dict[str, Any]] = []  # every event sent, in order
        self.failures: list[str] = []

    def score(self, user: str, items: list[str], **extra: Any) -> dict[str, Any]:
        reply = self.http.post("/v1/score", json={"user_id": user, "candidates": items, **extra})
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        self.answers.append({**answer, "user_id": user})
        return answer

    def send(self, events: list[dict[str, Any]]) -> None:
        reply = self.http.post("/v1/events", json=events)
        assert reply.status_code == 200, reply.text
        self.events += events

    def traffic(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.http.put("/admin/traffic", json=body, headers=ADMIN)
        assert reply.status_code == 200, reply.text
        return reply.json()


def _store(world: Any):
    from recicl.serve.settings import resolve_store_url
    from recicl.serve.store import FeedbackSettings, open_store

    settings = FeedbackSettings.from_config(world.cfg.serve.feedback)
    return open_store(resolve_store_url(world.cfg), feedback=settings)


def _shadow_scores(
    world: Any, request_ids: set[str], expected: int
) -> dict[tuple[str, str], float]:
    """(request id, item) → shadow score, once every shadow scoring of these requests is
    logged (off the answer's path, so it lands a moment later)."""
    deadline = time.monotonic() + 60
    while True:
        with _store(world) as store:
            rows = [r for r in store.feedback_rows(0) if r.served.request_id in request_ids]
        shadow = {(r.served.request_id, r.served.item_id): r.served.score
                  for r in rows if r.served.arm == "shadow"}  # fmt: skip
        if len(shadow) >= expected or time.monotonic() > deadline:
            assert len(shadow) == expected, (len(shadow), expected)
            return shadow
        time.sleep(0.2)


def _phase(replay: Replay, prefix: str, agree_with: str) -> None:
    """Users score six items, then act on four: liked are the top two of ``agree_with``'s
    ranking (the champion's answer or the shadow's scores); one repeat, one unscored item."""
    asked = []
    for k in range(USERS_PER_PHASE):
        user = f"{prefix}{k}"
        items = [str(i) for i in replay.rng.choice(replay.items, CANDIDATES, replace=False)]
        asked.append((user, items, replay.score(user, items)))
    ids = {answer["request_id"] for _, _, answer in asked}
    shadow = _shadow_scores(replay.world, ids, USERS_PER_PHASE * CANDIDATES)
    now = int(time.time()) + 1
    for user, items, answer in asked:
        if agree_with == "champion":
            scores = {s["item_id"]: s["score"] for s in answer["scores"]}
        else:
            scores = {item: shadow[answer["request_id"], item] for item in items}
        acted = items[:ACTED]
        ranked = sorted(acted, key=lambda item: -scores[item])
        events = [{"user_id": user, "item_id": item, "label": int(item in ranked[:2]),
                   "timestamp": now} for item in acted]  # fmt: skip
        unscored = next(i for i in replay.items if i not in items)
        events += [events[0], {"user_id": user, "item_id": unscored, "label": 1, "timestamp": now}]
        replay.send(events)


def _reference_join(replay: Replay, shadow_rows: list[Any]) -> tuple[set, Counter]:
    """The join as the feedback log's rules define it, from the script's own log: per arm, an
    event joins the newest score of its user and item, once; a second event is a duplicate;
    an event no arm scored is unscored. (All events are sent after every score here.)"""
    newest: dict[tuple[str, str, str], tuple[str, str]] = {}  # (user, item, arm) → (req, version)
    for answer in replay.answers:
        for s in answer["scores"]:
            key = (answer["user_id"], s["item_id"], answer["arm"])
            newest[key] = (answer["request_id"], answer["model_version"])
    for row in shadow_rows:  # in served order (seq)
        newest[row.user_id, row.item_id, "shadow"] = (row.request_id, row.version)
    joined: set[tuple[str, str, str, str, int]] = set()
    counts: Counter = Counter()
    for event in replay.events:
        arms = [arm for (u, i, arm) in newest if (u, i) == (event["user_id"], event["item_id"])]
        if not arms:
            counts["unscored"] += 1
        for arm in arms:
            request, version = newest[event["user_id"], event["item_id"], arm]
            row = (request, event["item_id"], version, arm, event["label"])
            if any(r[:4] == row[:4] for r in joined):
                counts["duplicate"] += 1
            else:
                joined.add(row)
    return joined, counts


def _config_file(world: Any, folder: Path) -> Path:
    raw = world.cfg.model_dump(mode="json")
    raw["evaluate"]["live"]["min_pairs"] = 60
    path = folder / "replay.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _background_traffic(
    url: str, items: list[str], stop: threading.Event, failures: list[str]
) -> None:
    """A steady trickle of requests through every swap: none may fail."""
    with httpx.Client(base_url=url, timeout=60) as http:
        while not stop.is_set():
            reply = http.post("/v1/score", json={"user_id": "bg", "candidates": items[:2]})
            if reply.status_code != 200:
                failures.append(f"{reply.status_code} {reply.text[:200]}")
            time.sleep(0.05)


def _same_scores(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Equal answers: the same items in the same order, scores equal to float noise (a request
    batched with others is padded differently)."""
    return [s["item_id"] for s in a] == [s["item_id"] for s in b] and bool(
        np.allclose([s["score"] for s in a], [s["score"] for s in b], atol=1e-5)
    )


def test_replay_shadow_promotion_split_and_rollback(world, server, tmp_path):
    from recicl.cli import app
    from recicl.serve.traffic import unit_hash

    replay = Replay(world, server.url)
    config = _config_file(world, tmp_path)
    stop, background = threading.Event(), []
    loop = threading.Thread(
        target=_background_traffic, args=(server.url, replay.items, stop, background)
    )
    loop.start()
    try:
        # Answers before any shadow: the same requests must be answered alike during it
        fixed = [(f"fixed{k}", [str(i) for i in replay.items[k : k + 3]]) for k in range(5)]
        before = [replay.score(user, items)["scores"] for user, items in fixed]
        worse = register_model_folder(world.cfg, world.models[1])
        replay.traffic({"shadow": {"version": int(worse), "share": 1.0, "max_in_flight": 64}})
        during = [replay.score(user, items)["scores"] for user, items in fixed]
        assert all(map(_same_scores, during, before))  # shadow never changes an answer
        _phase(replay, "w", agree_with="champion")
        refused = CliRunner().invoke(
            app, ["promote", "--version", worse, "--live", "--config", str(config)]
        )
        assert refused.exit_code == 1, refused.output
        assert "refused" in refused.output and "live AUC" in refused.output

        better = register_model_folder(world.cfg, world.models[1])
        replay.traffic({"shadow": {"version": int(better), "share": 1.0, "max_in_flight": 64}})
        added = {"item_id": "replay-new", "title": "The Brand New Film", "attributes": {}}
        reply = replay.http.post("/admin/items", json={"items": [added]}, headers=ADMIN)
        assert reply.status_code == 200, reply.text
        new_scores = replay.score("fixed0", ["replay-new", replay.items[0]])["scores"]
        assert [s["item_id"] for s in new_scores] == ["replay-new", replay.items[0]]
        _phase(replay, "b", agree_with="shadow")
        promoted = CliRunner().invoke(
            app, ["promote", "--version", better, "--live", "--config", str(config)]
        )
        assert promoted.exit_code == 0, promoted.output
        _wait_for_version(replay, fixed[2], better)

        with _store(world) as store:
            rows = store.feedback_rows(0)
            totals = store.feedback_counters()
        shadow_rows = [r.served for r in sorted(rows, key=lambda r: r.seq)
                       if r.served.arm == "shadow"]  # fmt: skip
        expected, counts = _reference_join(replay, shadow_rows)
        scripted = {r for r in rows if r.served.user_id != "bg"}
        got = {(r.served.request_id, r.served.item_id, r.served.version, r.served.arm, r.label)
               for r in scripted if r.status == "joined"}  # fmt: skip
        assert got == expected
        duplicates = sum(v for (kind, *_), v in totals.items() if kind == "duplicate")
        assert duplicates == counts["duplicate"]
        _plot(world, rows, worse, better, tmp_path)
        assert totals["unscored", "", ""] == counts["unscored"]

        replicas = _check_split(replay, unit_hash)
        assert max(replicas) == 2, replicas  # the split's load scaled the deployment up
        _wait_for(lambda: _running_replicas() == 1, "back to one replica once the load stops")

        rolled = CliRunner().invoke(app, ["rollback", "--config", str(config)])
        assert rolled.exit_code == 0, rolled.output
        _wait_for_version(replay, fixed[1], world.v1)
        assert _same_scores(replay.score(*fixed[1])["scores"], before[1])  # v1's answer again
    finally:
        stop.set()
        loop.join(timeout=60)
        replay.http.close()
    assert not background, background[:5]


def _plot(world: Any, rows: list[Any], worse: str, better: str, folder: Path) -> None:
    """Live AUC per arm over the replay's serving time (1 s buckets), as docs/live-loop.md
    shows it: RECICL_REPLAY_PLOT=docs/results/live-replay.png writes it there."""
    from recicl.evaluate.plots import plot_live_timeline
    from recicl.serve.live_metrics import live_timeline

    timeline = live_timeline(rows, bucket_s=1)
    champion = f"v{world.v1} champion"
    assert {champion, f"v{worse} shadow", f"v{better} shadow"} <= set(timeline)
    for name, points in timeline.items():  # every joined score in exactly one bucket
        version, arm = name[1:].split(" ")
        joined = [r for r in rows if (r.served.version, r.served.arm, r.status) ==
                  (version, arm, "joined")]  # fmt: skip
        assert sum(n for _, _, n in points) == len(joined), name
    path = Path(os.environ.get("RECICL_REPLAY_PLOT") or folder / "live-replay.png")
    title = "replay: users agree with the champion, then with the shadow (planted)"
    assert plot_live_timeline(timeline, path, title).stat().st_size > 0


def _running_replicas() -> int:
    from ray import serve

    from recicl.serve.settings import APP_NAME, MODEL_DEPLOYMENT

    status = serve.status().applications[APP_NAME].deployments[MODEL_DEPLOYMENT]
    return int(status.replica_states.get("RUNNING", 0))


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + SCALE_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {SCALE_TIMEOUT_S}s"
        time.sleep(0.5)


def _wait_for_version(replay: Replay, request: tuple[str, list[str]], version: str) -> None:
    """Until the service answers with ``version`` five times in a row (an alias move reaches
    every replica within a poll)."""
    deadline, in_a_row = time.monotonic() + 30, 0
    while in_a_row < 5:
        in_a_row = in_a_row + 1 if replay.score(*request)["model_version"] == version else 0
        assert time.monotonic() < deadline, f"version {version} never reached the service"
        time.sleep(0.1)


def _check_split(replay: Replay, unit_hash: Any) -> list[int]:
    """2,000 users: each answered by the arm its hash gives, the share within +-3 points, the
    same arm again on later requests. The clients keep asking (their users again, each must get
    its arm again) until a second model replica runs or SCALE_TIMEOUT_S passes: how long Serve
    takes to react depends on the machine, not on the number of requests. Returns the running
    model replicas seen meanwhile."""
    body = replay.traffic({"split": {"version": int(replay.world.v1), "share": SPLIT_SHARE}})
    assert any(arm["arm"] == "candidate" for arm in body["arms"]), body
    arms: dict[str, str] = {}
    changed: list[str] = []  # later requests refused or answered by another arm
    failed: list[str] = []  # a client's first pass stopped: why
    lock, scaled = threading.Lock(), threading.Event()
    deadline = time.monotonic() + SCALE_TIMEOUT_S

    def ask(users: list[str]) -> None:
        try:
            keep_asking(users)
        except Exception as error:  # a thread's error is otherwise lost (printed at best)
            with lock:
                failed.append(f"{type(error).__name__}: {error}")

    def keep_asking(users: list[str]) -> None:
        with httpx.Client(base_url=replay.http.base_url, timeout=60) as http:
            for user in users:
                reply = http.post("/v1/score", json={"user_id": user, "candidates": item})
                if reply.status_code != 200:
                    raise AssertionError(f"{user}: {reply.status_code} {reply.text[:300]}")
                with lock:
                    arms[user] = reply.json()["arm"]
            for user in itertools.cycle(users):  # the load goes on until the scale-up
                if scaled.is_set() or time.monotonic() > deadline:
                    return
                reply = http.post("/v1/score", json={"user_id": user, "candidates": item})
                if reply.status_code != 200 or reply.json()["arm"] != arms[user]:
                    with lock:
                        changed.append(f"{user}: {reply.status_code} {reply.text[:200]}")

    item = replay.items[:1]
    users = [f"split{k}" for k in range(SPLIT_USERS)]
    workers = [
        threading.Thread(target=ask, args=(users[k::SPLIT_CLIENTS],)) for k in range(SPLIT_CLIENTS)
    ]
    for worker in workers:
        worker.start()
    replicas = []
    while any(worker.is_alive() for worker in workers):
        replicas.append(_running_replicas())
        if replicas[-1] == 2:
            scaled.set()
        time.sleep(0.5)
    for worker in workers:
        worker.join()
    assert not failed, failed
    assert len(arms) == SPLIT_USERS
    assert not changed, changed[:5]
    salt = replay.world.cfg.serve.traffic.salt
    for user, arm in arms.items():
        assert arm == ("candidate" if unit_hash("split", salt, user) < SPLIT_SHARE else "champion")
    share = Counter(arms.values())["candidate"] / SPLIT_USERS
    assert abs(share - SPLIT_SHARE) <= 0.03, share
    reply = replay.http.delete("/admin/traffic", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    return replicas
