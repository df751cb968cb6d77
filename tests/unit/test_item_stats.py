"""Item statistics and taste codes in prompts: the text, the own-answer rule, the codes'
factorisation, leaks refused, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from recicl.config import ITEM_STATS_META_KEY, ConfigError, PromptConfig
from recicl.data.item_stats import (
    ITEM_STATS,
    check_no_leak,
    item_codes,
    prompt_item_stats,
    read_item_stats,
    write_item_stats,
)
from recicl.prompts import PromptBuilder, PromptError
from recicl.prompts.item_stats import ItemStatsText
from tests.unit.test_prompts import (
    make_catalog,
    tokenizer,  # noqa: F401  (the tiny BPE fixture)
)

UNTIL = 1_000  # events strictly before it are counted
COUNTS = {"1": (20, 15), "2": (4, 1), "3": (1, 1), "4": (6, 0), "8": (5, 5)}
CODES = {"1": "10110010", "4": "01001101"}  # the other items have too few events for one


def stats_table(counts=COUNTS, until=UNTIL, codes=CODES) -> pa.Table:
    table = pa.table(
        {
            "item_id": list(counts),
            "events": [e for e, _ in counts.values()],
            "likes": [like for _, like in counts.values()],
            "code": [codes.get(item) for item in counts],
        },
        schema=ITEM_STATS,
    )
    meta = {"until_ts": until, "until_period": 2}
    return table.replace_schema_metadata({ITEM_STATS_META_KEY: json.dumps(meta).encode()})


def builder(**prompt) -> PromptBuilder:
    config = PromptConfig(item_stats=True, **prompt)
    return PromptBuilder(config, make_catalog(), item_stats=stats_table())


def test_question_text_follows_the_counts():
    b = builder()
    assert '"Toy Story (1995)" (Adventure, Animation, Children; 75% of 20 viewers liked it)' in (
        b.render([], [], "1")
    )
    assert "(Action, Crime, Thriller; rated by 4 viewers so far)" in b.render([], [], "2")
    assert "(Comedy, Romance; rated by 1 viewer so far)" in b.render([], [], "3")
    assert '"GoldenEye (1995)" (new: no ratings yet)' in b.render([], [], "6")  # never rated
    assert "(Drama; 100% of 5 viewers liked it)" in b.render([], [], "8")
    # rates are rounded to 5 points; the minimum count is a setting
    assert "(Crime, Drama; 0% of 6 viewers liked it)" in b.render([], [], "4")
    assert "75% of 20" not in builder(item_stats_min_count=50).render([], [], "1")
    books = builder(domain="book").render([], [], "1")
    assert "75% of 20 readers liked it" in books


def test_no_question_shows_its_own_answer():
    """An event inside the counted periods (a training target, any demonstration) is taken out
    of its own item's counts; later events (evaluated and served queries) see them all."""
    b = builder()
    demos = [
        {"item_id": "1", "label": 1, "timestamp": UNTIL - 5, "history": []},  # counted
        {"item_id": "8", "label": 1, "timestamp": UNTIL + 5, "history": []},  # after the cut
    ]
    text = b.render([], demos, "1", query_event=(UNTIL - 1, 0))
    lines = [line for line in text.splitlines() if "Will the user" in line]
    assert "(Adventure, Animation, Children; 75% of 19 viewers liked it)" in lines[0]  # 14/19
    assert "100% of 5 viewers" in lines[1]
    assert "(Adventure, Animation, Children; 80% of 19 viewers liked it)" in lines[2]  # 15/19
    # a query after the cut (evaluation, serving) and a query without its event: frozen counts
    assert "75% of 20" in b.render([], [], "1", query_event=(UNTIL, 1))
    assert "75% of 20" in b.render([], [], "1")
    # an item counted once, asked about at its own event: nothing left to show
    assert "new: no ratings yet" in b.render([], [], "3", query_event=(UNTIL - 1, 1))


def test_the_rule_holds_for_encoded_batches(tokenizer):  # noqa: F811
    b = PromptBuilder(PromptConfig(item_stats=True), make_catalog(), tokenizer, stats_table())
    batch = {
        "sample_id": np.array(["a", "b"], dtype=object),
        "item_id": np.array(["1", "1"], dtype=object),
        "history": np.array([["2"], ["2"]], dtype=object),
        "demos": np.array([[], []], dtype=object),
        "timestamp": np.array([UNTIL - 1, UNTIL + 1]),
        "label": np.array([1, 1], dtype=np.int8),
    }
    encoded = b.encode_batch(batch)
    for row, (ts, label) in enumerate([(UNTIL - 1, 1), (UNTIL + 1, 1)]):
        single = b.encode(["2"], [], "1", query_event=(ts, label)).input_ids
        assert encoded["input_ids"][row].tolist() == single
    assert encoded["input_ids"][0].tolist() != encoded["input_ids"][1].tolist()
    # prefix sharing (serving) gives the evaluated-query prompt
    prefix = b.split_prefix(["2"], [])
    assert prefix + b.query_suffix("1") == encoded["input_ids"][1].tolist()


def test_missing_statistics_name_the_command(tmp_path):
    with pytest.raises(PromptError, match="recicl samples build"):
        PromptBuilder(PromptConfig(item_stats=True), make_catalog())
    with pytest.raises(ConfigError, match="recicl samples build"):
        read_item_stats(tmp_path / "item_stats.parquet")
    with pytest.raises(ConfigError, match="recicl samples build"):
        prompt_item_stats(PromptConfig(item_stats=True), tmp_path)
    assert prompt_item_stats(PromptConfig(), tmp_path) is None  # not asked for: not read
    # statistics given but not asked for are ignored: the prompt is the plain one
    quiet = PromptBuilder(PromptConfig(), make_catalog(), item_stats=stats_table())
    assert quiet.render([], [], "1") == PromptBuilder(PromptConfig(), make_catalog()).render(
        [], [], "1"
    )


def test_file_round_trip_keeps_the_cut(tmp_path):
    path = tmp_path / "item_stats.parquet"
    write_item_stats(stats_table().replace_schema_metadata(None), path, {"until_ts": 7})
    text = ItemStatsText.from_table(read_item_stats(path))
    assert text is not None and text.until_ts == 7 and text.counts["1"] == (20, 15)


def test_scoring_counted_periods_is_refused():
    check_no_leak(5, [6, 7, 8, 9], "recicl+stats")  # later periods: fine
    check_no_leak(None, [0, 1], "no statistics")
    for evaluated in ([5, 6], [0], [3, 9]):
        with pytest.raises(ConfigError, match="own answers"):
            check_no_leak(5, evaluated, "recicl+stats")


def test_taste_codes_in_the_question():
    codes = PromptBuilder(PromptConfig(item_codes=True), make_catalog(), item_stats=stats_table())
    assert '"Toy Story (1995)" (Adventure, Animation, Children; taste code 1011 0010)' in (
        codes.render([], [], "1")
    )
    assert "(Action, Crime, Thriller; taste code unknown)" in codes.render([], [], "2")
    assert '"GoldenEye (1995)" (taste code unknown)' in codes.render([], [], "6")  # new item
    both = builder(item_codes=True).render([], [], "4")
    assert "(Crime, Drama; 0% of 6 viewers liked it; taste code 0100 1101)" in both
    # a table built without codes (or with samples.item_code_bits 0) cannot serve them
    with pytest.raises(PromptError, match="item_code_bits"):
        PromptBuilder(
            PromptConfig(item_codes=True), make_catalog(), item_stats=stats_table(codes={})
        )
    with pytest.raises(ConfigError, match="recicl samples build"):
        prompt_item_stats(PromptConfig(item_codes=True), "/nonexistent")


def _two_audiences(seed: int = 0):
    """Users 0-19 like items a0-a9 and dislike b0-b9; users 20-39 the reverse; every user rated
    a random 70 % of the items; item "rare" has 3 events."""
    rng = np.random.default_rng(seed)
    users, items, labels = [], [], []
    for user in range(40):
        for group in "ab":
            for n in range(10):
                if rng.random() < 0.7:
                    users.append(f"u{user}")
                    items.append(f"{group}{n}")
                    labels.append(int((group == "a") == (user < 20)))
    users += ["u0", "u1", "u2"]
    items += ["rare"] * 3
    labels += [1, 0, 1]
    return np.array(users), np.array(items), np.array(labels)


def test_codes_put_items_of_one_audience_together():
    users, items, labels = _two_audiences()
    codes, bits = item_codes(users, items, labels, bits=8, min_events=5)
    assert bits == 8 and "rare" not in codes and len(codes) == 20
    assert all(len(code) == 8 and set(code) <= {"0", "1"} for code in codes.values())

    def hamming(x: str, y: str) -> int:
        return sum(a != b for a, b in zip(codes[x], codes[y], strict=True))

    within = [hamming(f"a{i}", f"a{j}") for i in range(10) for j in range(i)]
    across = [hamming(f"a{i}", f"b{j}") for i in range(10) for j in range(10)]
    assert np.mean(within) < np.mean(across)
    # the first factor is the split between the audiences: one bit tells them apart
    assert {codes[f"a{i}"][0] for i in range(10)} != {codes[f"b{i}"][0] for i in range(10)}
    assert all(len({codes[f"{g}{i}"][0] for i in range(10)}) == 1 for g in "ab")
    # each bit splits the coded items in half (median cut)
    ones = np.array([[c == "1" for c in code] for code in codes.values()]).sum(axis=0)
    assert (ones == 10).all()
    # deterministic, whatever the row order
    order = np.random.default_rng(1).permutation(len(users))
    assert item_codes(users[order], items[order], labels[order], 8, 5) == (codes, bits)
    # a matrix smaller than the bits asked for: fewer bits, not an error
    few = item_codes(users[:200], items[:200], labels[:200], bits=64, min_events=1)
    assert 0 < few[1] < 64 and all(len(c) == few[1] for c in few[0].values())
