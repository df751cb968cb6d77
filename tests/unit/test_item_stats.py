"""Item statistics in prompts: the text, the own-answer rule, leaks refused, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from recicl.config import ITEM_STATS_META_KEY, ConfigError, PromptConfig
from recicl.data.item_stats import (
    ITEM_STATS,
    check_no_leak,
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


def stats_table(counts=COUNTS, until=UNTIL) -> pa.Table:
    table = pa.table(
        {
            "item_id": list(counts),
            "events": [e for e, _ in counts.values()],
            "likes": [like for _, like in counts.values()],
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
