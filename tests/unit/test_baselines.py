"""The streaming baselines (recicl/evaluate/baselines.py) are leak-free, match plain-Python
references, learn what they are built to learn and give the same scores for the same seed.

Leaks are the failure that matters: a baseline that saw an evaluated period's labels, or a
training row that saw its own (or a later) label through the online counts, would make the
LLM variants look worse than they are. Each leak test changes what must not be seen and checks
that nothing it must not influence moved.
"""

from __future__ import annotations

import typing

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from recicl.config import ConfigError, StreamingVariant
from recicl.data.schema import SAMPLES
from recicl.evaluate import baselines as B

torch = pytest.importorskip("torch")

GENRES = ("Horror", "Comedy")
#: The defaults take ~200 steps on the bundled MovieLens; a few hundred rows need smaller batches
#: and more epochs for as many steps.
SMALL_DATA = B.SequenceSettings(epochs=30, batch_size=32, lr=3e-3, dropout=0.0)


def catalog(items: int) -> pa.Table:
    """Items i0, i1, ...: even ones Horror, odd ones Comedy."""
    ids = [f"i{k}" for k in range(items)]
    return pa.table(
        {
            "item_id": ids,
            "title": [f"Movie {k}" for k in range(items)],
            "attributes": pa.array(
                [[("genres", GENRES[k % 2])] for k in range(items)],
                pa.map_(pa.string(), pa.string()),
            ),
        }
    )


def samples(rows: list[dict]) -> pa.Table:
    """A SAMPLES table from dicts: user, item, ts, label, period, history, demos [(item, label,
    ts)]."""
    return pa.Table.from_pylist(
        [
            {
                "sample_id": f"{r['user']}#{n}",
                "user_id": r["user"],
                "item_id": r["item"],
                "timestamp": r["ts"],
                "period": r.get("period", 0),
                "label": r["label"],
                "history": r.get("history", []),
                "demos": [
                    {"item_id": i, "label": y, "timestamp": t, "history": []}
                    for i, y, t in r.get("demos", [])
                ],
            }
            for n, r in enumerate(rows)
        ],
        schema=SAMPLES,
    )


def random_rows(
    count: int, seed: int, users: int = 6, items: int = 8, period: int = 0, start: int = 0
) -> list[dict]:
    """Rows with ties in time, repeated users and items, 0-3 demos each."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        demos = [
            (f"i{rng.integers(items)}", int(rng.integers(2)), int(rng.integers(100)))
            for _ in range(int(rng.integers(4)))
        ]
        rows.append(
            {
                "user": f"u{rng.integers(users)}",
                "item": f"i{rng.integers(items)}",
                "ts": start + int(rng.integers(20)),  # few distinct times: many ties
                "label": int(rng.integers(2)),
                "period": period,
                "history": [f"i{rng.integers(items)}" for _ in range(int(rng.integers(3)))],
                "demos": demos,
            }
        )
    return rows


def planted(count: int, seed: int, period: int, users: str = "u") -> list[dict]:
    """A taste that can only be read in context: each sample's user currently likes one genre
    (drawn per sample), the demos show it (liked items of that genre, disliked others) and the
    target is liked exactly when its genre is that one. Items are shared, users are not."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in range(count):
        taste = int(rng.integers(2))
        demos = []
        for step in range(4):
            item = int(rng.integers(40))
            demos.append((f"i{item}", int(item % 2 == taste), n * 10 + step))
        item = int(rng.integers(40))
        rows.append(
            {
                "user": f"{users}{n}",
                "item": f"i{item}",
                "ts": n * 10 + 5,
                "label": int(item % 2 == taste),
                "period": period,
                "history": [i for i, y, _ in demos if y],
                "demos": demos,
            }
        )
    return rows


def flipped(table: pa.Table) -> pa.Table:
    """The same rows with every label flipped."""
    labels = pa.array(1 - table["label"].to_numpy().astype(np.int8), pa.int8())
    return table.set_column(table.schema.get_field_index("label"), "label", labels)


# -- the online and frozen counts against plain loops ---------------------------------------


def test_online_counts_match_a_loop_and_ignore_ties_and_later_rows():
    rng = np.random.default_rng(0)
    keys = rng.choice(["a", "b", "c"], 200)
    times = rng.integers(0, 15, 200)
    labels = rng.integers(0, 2, 200)
    events, likes = B.online_counts(keys, times, labels)
    for row in range(200):
        before = (keys == keys[row]) & (times < times[row])
        assert events[row] == before.sum()
        assert likes[row] == labels[before].sum()


def test_training_features_match_a_plain_python_loop():
    table = samples(random_rows(60, seed=1))
    prior = 0.4
    got = B.training_signal_features(table, prior)
    rows = table.to_pylist()
    logit = lambda p: np.log(np.clip(p, 1e-4, 1 - 1e-4) / (1 - np.clip(p, 1e-4, 1 - 1e-4)))  # noqa: E731
    for k, row in enumerate(rows):
        earlier = [r for r in rows if r["timestamp"] < row["timestamp"]]
        user = [r["label"] for r in earlier if r["user_id"] == row["user_id"]]
        item = [r["label"] for r in earlier if r["item_id"] == row["item_id"]]
        demo = [d["label"] for d in row["demos"]]
        want = [
            logit((sum(demo) + B.DEMO_SMOOTHING * prior) / (len(demo) + B.DEMO_SMOOTHING)),
            np.log1p(len(demo)),
            logit((sum(user) + B.USER_SMOOTHING * prior) / (len(user) + B.USER_SMOOTHING)),
            np.log1p(len(user)),
            logit((sum(item) + B.ITEM_SMOOTHING * prior) / (len(item) + B.ITEM_SMOOTHING)),
            np.log1p(len(item)),
        ]
        np.testing.assert_allclose(got[k], want, rtol=1e-12, err_msg=str(row))


def test_evaluated_rows_read_the_counts_frozen_over_all_training_rows():
    train = samples(random_rows(80, seed=2))
    evaluated = samples(random_rows(30, seed=3, users=8, items=10, period=1, start=100))
    model = B.fit_baseline("logistic", train, catalog(10), seed=0)
    assert isinstance(model, B.SignalModel)
    got = model.features(evaluated)
    train_rows = train.to_pylist()
    prior = np.mean([r["label"] for r in train_rows])
    for k, row in enumerate(evaluated.to_pylist()):
        user = [r["label"] for r in train_rows if r["user_id"] == row["user_id"]]
        item = [r["label"] for r in train_rows if r["item_id"] == row["item_id"]]
        rate = (sum(user) + B.USER_SMOOTHING * prior) / (len(user) + B.USER_SMOOTHING)
        assert got[k, 2] == pytest.approx(np.log(rate / (1 - rate)))
        assert got[k, 3] == pytest.approx(np.log1p(len(user)))
        rate = (sum(item) + B.ITEM_SMOOTHING * prior) / (len(item) + B.ITEM_SMOOTHING)
        assert got[k, 4] == pytest.approx(np.log(rate / (1 - rate)))
        assert got[k, 5] == pytest.approx(np.log1p(len(item)))


def test_a_saved_logistic_model_scores_as_fitted_and_from_a_servers_context(tmp_path):
    """What a version would carry to serve a blend: the logistic model saved (JSON weights with
    the scaler folded in, Parquet counts) scores every row as the fitted pipeline does, and
    from a server's inputs (user, items, demonstration labels) as from the sample rows; users
    and items unseen in training read zero counts there too."""
    train = samples(random_rows(80, seed=2))
    evaluated = samples(random_rows(40, seed=3, users=9, items=11, period=1, start=100))
    fitted = B.fit_baseline("logistic", train, catalog(11), seed=0)
    loaded = B.SignalModel.load(fitted.save(tmp_path / "signal"))
    want = fitted.score(evaluated, catalog(11))
    np.testing.assert_allclose(loaded.score(evaluated, catalog(11)), want, rtol=1e-10)
    assert len(np.unique(np.round(want, 9))) > 5  # the rows differ: a constant would pass too
    for k, row in enumerate(evaluated.to_pylist()):
        labels = [d["label"] for d in row["demos"]]
        for model in (fitted, loaded):
            got = model.score_context(row["user_id"], [row["item_id"]], labels)
            assert got[0] == pytest.approx(want[k], rel=1e-10), row
    assert {"u6", "u7", "u8", "i8", "i9", "i10"} & {
        *(r["user_id"] for r in evaluated.to_pylist()),
        *(r["item_id"] for r in evaluated.to_pylist()),
    }  # unseen users or items were asked about
    assert loaded.score_context("u0", [], [1]).shape == (0,)


def test_a_loaded_model_leaves_the_callers_threads_alone(tmp_path, monkeypatch):
    """A loaded signal model scores in the serving replica's model thread: it must not reset
    that thread's torch and OpenMP thread counts per request, as fitting does (_one_thread)."""
    from recicl.modeling import signals

    train = samples(random_rows(80, seed=2))
    loaded = B.SignalModel.load(
        B.fit_baseline("logistic", train, catalog(8), seed=0).save(tmp_path / "lr")
    )

    def no_thread_changes():
        raise AssertionError("a loaded model changed the thread counts")

    monkeypatch.setattr(signals, "_one_thread", no_thread_changes)
    assert loaded.score_context("u0", ["i1", "i2"], [1, 0]).shape == (2,)
    assert loaded.score(train, catalog(8)).shape == (train.num_rows,)


def test_only_a_readable_logistic_model_is_saved_or_loaded(tmp_path):
    train = samples(random_rows(80, seed=2))
    trees = B.fit_baseline("boosted-trees", train, catalog(8), seed=0)
    with pytest.raises(B.SignalModelError, match="only the logistic"):
        trees.save(tmp_path / "trees")
    with pytest.raises(B.SignalModelError, match=r"no readable signal_model\.json"):
        B.SignalModel.load(tmp_path / "missing")
    folder = B.fit_baseline("logistic", train, catalog(8), seed=0).save(tmp_path / "lr")
    meta = (folder / "signal_model.json").read_text().replace('"demo": 1.0', '"demo": 3.0')
    (folder / "signal_model.json").write_text(meta)
    with pytest.raises(B.SignalModelError, match="other features or smoothing"):
        B.SignalModel.load(folder)


def test_a_training_rows_features_never_see_its_own_time_or_later():
    table = samples(random_rows(80, seed=4))
    cut = 10
    before = table["timestamp"].to_numpy() < cut
    rows = table.to_pylist()
    for k, row in enumerate(rows):  # change every event at or after the cut
        if not before[k]:
            row["label"] = 1 - row["label"]
            row["item_id"] = "i0"
            row["user_id"] = "u0"
    changed = pa.Table.from_pylist(rows, schema=SAMPLES)
    a = B.training_signal_features(table, 0.5)
    b = B.training_signal_features(changed, 0.5)
    np.testing.assert_array_equal(a[before], b[before])


# -- every baseline: leaks, determinism ------------------------------------------------------


@pytest.fixture(scope="module")
def split() -> tuple[pa.Table, pa.Table, pa.Table]:
    return (
        samples(planted(400, seed=0, period=0)),
        samples(planted(200, seed=1, period=1, users="v")),
        catalog(40),
    )


@pytest.mark.parametrize("name", B.BASELINES)
def test_scores_read_no_label_and_no_other_row(name, split):
    """An evaluated row's score comes from its own row and the frozen model: flipping every
    label of the evaluated period, or changing the other rows, leaves it unchanged."""
    train, evaluated, items = split
    model = B.fit_baseline(name, train, items, seed=0)
    scores = model.score(evaluated, items)
    assert scores.shape == (evaluated.num_rows,)
    assert np.all((scores >= 0) & (scores <= 1))
    np.testing.assert_array_equal(model.score(flipped(evaluated), items), scores)
    np.testing.assert_array_equal(model.score(evaluated.slice(50, 20), items), scores[50:70])
    # deterministic: the same seed gives the same fitted model
    again = B.fit_baseline(name, train, items, seed=0)
    np.testing.assert_array_equal(again.score(evaluated, items), scores)


@pytest.mark.parametrize("name", B.BASELINES)
def test_retrained_rows_never_see_their_period_or_later(name):
    """``<name>-retrained`` scores period p from a fit on periods < p: changing every label of
    period 2 moves nothing in periods 1 and 2, and does move period 3 (which is fitted on it)."""
    table = samples(
        planted(150, seed=0, period=0)
        + planted(150, seed=1, period=1, users="v")
        + planted(150, seed=2, period=2, users="w")
        + planted(150, seed=3, period=3, users="x")
    )
    evaluated = table.filter(pa.compute.greater_equal(table["period"], 1))
    periods = table["period"].to_numpy()
    changed = table.set_column(
        table.schema.get_field_index("label"),
        "label",
        pa.array(np.where(periods == 2, 1 - table["label"].to_numpy(), table["label"].to_numpy()),
                 pa.int8()),
    )  # fmt: skip

    def reader(source: pa.Table):
        return lambda chosen: source.filter(pa.compute.is_in(source["period"], pa.array(chosen)))

    items = catalog(40)
    a, facts = B.retrained_scores(
        f"{name}-retrained", reader(table), [0, 1, 2, 3], evaluated, items, seed=0
    )
    b, _ = B.retrained_scores(
        f"{name}-retrained", reader(changed), [0, 1, 2, 3], evaluated, items, seed=0
    )
    assert facts["train_rows"] == {"1": 150, "2": 300, "3": 450}
    evaluated_periods = evaluated["period"].to_numpy()
    np.testing.assert_array_equal(a[evaluated_periods <= 2], b[evaluated_periods <= 2])
    assert not np.array_equal(a[evaluated_periods == 3], b[evaluated_periods == 3])


# -- each baseline learns what it is built to learn ------------------------------------------


def propensity(count: int, seed: int, period: int, users: str = "u") -> list[dict]:
    """New users whose like rate (0.15 or 0.85) shows in their demos and their target alike."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in range(count):
        rate = 0.15 if rng.random() < 0.5 else 0.85
        demos = [(f"i{rng.integers(40)}", int(rng.random() < rate), n * 10 + s) for s in range(4)]
        rows.append(
            {
                "user": f"{users}{n}",
                "item": f"i{rng.integers(40)}",
                "ts": n * 10 + 5,
                "label": int(rng.random() < rate),
                "period": period,
                "demos": demos,
            }
        )
    return rows  # fmt: skip


@pytest.mark.parametrize("name", ["logistic", "boosted-trees"])
def test_signal_models_learn_a_like_rate_shown_in_the_demos(name):
    train, evaluated = samples(propensity(600, 0, 0)), samples(propensity(300, 1, 1, "v"))
    scores = B.fit_baseline(name, train, catalog(40), seed=0).score(evaluated, catalog(40))
    assert roc_auc_score(evaluated["label"].to_numpy(), scores) > 0.7


@pytest.mark.parametrize("name", ["sasrec", "din"])
def test_sequence_models_learn_a_taste_shown_in_context(name, split):
    """New users, a taste drawn per sample: only a model that reads which items the demos
    liked (item × label) can tell which genre this user likes now; the like *rate* says
    nothing here (a signal model is at chance on these samples)."""
    train, evaluated, items = split
    model = B.fit_sequence(name, train, items, seed=0, settings=SMALL_DATA)
    scores = model.score(evaluated, items)
    assert roc_auc_score(evaluated["label"].to_numpy(), scores) > 0.9


def test_mf_learns_a_planted_preference_and_falls_back_to_item_bias():
    """Two user groups, each liking one genre: MF recovers held-out (user, item) pairs; an
    unseen user is scored on the item bias alone."""
    rng = np.random.default_rng(0)
    rows, held = [], []
    for user in range(30):
        for item in range(40):
            label = int(item % 2 == user % 2)
            if item % 7 == 1 and item < 20:  # a popular item, liked by everyone
                label = 1
            row = {"user": f"u{user}", "item": f"i{item}", "ts": 0, "label": label}
            (held if rng.random() < 0.2 else rows).append(row)
    train, evaluated = samples(rows), samples(held)
    model = B.fit_mf(train, seed=0, settings=B.MFSettings(epochs=30, batch_size=64, l2=1e-3))
    assert isinstance(model, B.MatrixFactorization)
    scores = model.score(evaluated, catalog(40))
    assert roc_auc_score(evaluated["label"].to_numpy(), scores) > 0.9
    ids, vectors = model.item_vectors()
    assert len(ids) == vectors.shape[0] and vectors.shape[1] == B.MFSettings().dim
    users, user_vectors = model.user_vectors()
    assert users == sorted(users) and user_vectors.shape == (30, B.MFSettings().dim)
    # an unseen user: sigmoid(global bias + item bias), ranking items by popularity
    stranger = samples([{"user": "nobody", "item": f"i{k}", "ts": 9, "label": 0} for k in (1, 2)])
    module = model.module
    for k, score in zip((1, 2), model.score(stranger, catalog(40)), strict=True):
        bias = (module.bias + module.item_bias.weight[ids.index(f"i{k}") + 1, 0]).detach()
        assert score == pytest.approx(float(torch.sigmoid(bias)), rel=1e-6)


@pytest.mark.parametrize("name", ["mf", "sasrec", "din"])
def test_another_seed_gives_another_model(name, split):
    train, evaluated, items = split
    a = B.fit_baseline(name, train, items, seed=0).score(evaluated, items)
    b = B.fit_baseline(name, train, items, seed=1).score(evaluated, items)
    assert not np.array_equal(a, b)


def test_an_item_first_seen_after_training_keeps_its_genres_but_no_id_vector(split):
    train, _, _ = split
    model = B.fit_baseline("din", train, catalog(50), seed=0)
    assert isinstance(model, B.SequenceModel)
    row = int(model.space.rows(np.array(["i45"]))[0])
    assert row > 0  # in the catalog: a row with its genre
    assert torch.count_nonzero(model.module.items.ids.weight[row]) == 0
    assert model.module.items.bias.weight[row, 0] == 0
    assert torch.count_nonzero(model.module.items(torch.tensor([row]))) > 0  # its genre


def test_sequences_keep_the_newest_events_right_aligned():
    table = samples(
        [
            {"user": "u", "item": "i1", "ts": 9, "label": 1, "history": ["i2", "i4"],
             "demos": [("i1", 0, 1), ("i2", 1, 2), ("i3", 0, 3)]},
            {"user": "u", "item": "zzz", "ts": 9, "label": 1, "demos": [("zzz", 1, 1)]},
        ]
    )  # fmt: skip
    space = B.ItemSpace.build(table, catalog(5))
    encoded = B.encode(table, space, demo_width=2, history_width=3)
    row = {item: int(space.rows(np.array([item]))[0]) for item in ("i1", "i2", "i3", "i4")}
    assert encoded.demo_items[0].tolist() == [row["i2"], row["i3"]]
    assert encoded.demo_kinds[0].tolist() == [B.LIKED, B.DISLIKED]
    assert encoded.history_items[0].tolist() == [0, row["i2"], row["i4"]]
    # an item outside the catalog seen in training has a row; one unknown to the space is 0
    assert encoded.target[1] > 0
    unknown = B.encode(samples([{"user": "u", "item": "new", "ts": 1, "label": 0,
                                 "demos": [("new", 1, 0)]}]), space, 2, 3)  # fmt: skip
    assert unknown.target.tolist() == [0]
    assert unknown.demo_items[0].tolist() == [0, 0] and unknown.demo_kinds[0].tolist() == [0, 2]


# -- bad input and configuration -------------------------------------------------------------


def test_an_unknown_baseline_names_the_field_and_the_allowed_names(split):
    train, _, items = split
    with pytest.raises(ConfigError) as error:
        B.fit_baseline("xgboost", train, items, seed=0)
    message = str(error.value)
    assert "experiment.variants" in message and "'xgboost'" in message
    assert all(name in message for name in B.BASELINES)


@pytest.mark.parametrize("name", B.BASELINES)
def test_an_empty_training_table_is_a_one_line_error(name):
    with pytest.raises(ConfigError) as error:
        B.fit_baseline(name, SAMPLES.empty_table(), catalog(3), seed=0)
    assert "no training samples" in str(error.value) and "\n" not in str(error.value)


def test_every_baseline_is_a_streaming_variant():
    variants = set(typing.get_args(StreamingVariant))
    assert set(B.BASELINES) <= variants
    assert set(B.RETRAINED_BASELINES) <= variants
