"""`recicl data synth`: the planted drift the streaming test and config rely on."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from recicl.cli import app


def synth_via_cli(tmp_path, *extra: str) -> tuple[dict, np.ndarray]:
    result = CliRunner().invoke(
        app, ["data", "synth", "--output", str(tmp_path), "--users", "200", *extra]
    )
    assert result.exit_code == 0, result.output
    ratings = pq.read_table(tmp_path / "events.parquet")["rating"].to_numpy()
    return json.loads((tmp_path / "synth.json").read_text()), ratings


def test_liked_share_reaches_the_generator(tmp_path):
    spec, ratings = synth_via_cli(tmp_path / "a", "--liked-share", "0.8", "--seed", "3")
    assert spec["liked_share"] == 0.8 and spec["users"] == 200 and spec["seed"] == 3
    # liked = picked from a liked genre (80%) or a random pick that lands on one (20% x 2/12),
    # flipped by 3% label noise: about 0.80
    liked_rate = float((ratings >= 4).mean())
    assert 0.76 < liked_rate < 0.85, liked_rate
    _, default_ratings = synth_via_cli(tmp_path / "b")
    assert 0.54 < float((default_ratings >= 4).mean()) < 0.63  # liked_share 0.5 by default


def test_liked_share_out_of_range_is_refused(tmp_path):
    result = CliRunner().invoke(
        app, ["data", "synth", "--output", str(tmp_path), "--liked-share", "1.5"]
    )
    assert result.exit_code != 0
    assert "liked-share" in result.output
    assert not (tmp_path / "events.parquet").exists()
