"""Sizing Ray Data's Parquet listing pool (recicl.raycluster.size_parquet_listing).

Ray reads the pool size from its environment when ``read_parquet`` builds a plan, so these tests
check the variable the function leaves behind; tests/integration/test_pipeline.py checks that Ray
really starts that many footer readers.
"""

from __future__ import annotations

import pytest

from recicl import raycluster
from recicl.config import RayConfig
from recicl.raycluster import FOOTER_ACTORS_ENV, size_parquet_listing


@pytest.fixture
def cluster_cpus(monkeypatch):
    """A fake cluster of N CPUs, with the environment and the module's memory restored after."""
    monkeypatch.delenv(FOOTER_ACTORS_ENV, raising=False)
    monkeypatch.setattr(raycluster, "_footer_actors_set", None)

    def set_cpus(cpus: float) -> None:
        monkeypatch.setattr(raycluster.ray, "cluster_resources", lambda: {"CPU": cpus})

    return set_cpus


@pytest.mark.parametrize(
    ("cpus", "actors"),
    [(0, 1), (4, 1), (31, 1), (32, 2), (64, 4), (512, 32), (10_000, 32)],
)
def test_the_pool_follows_the_cluster_size(cluster_cpus, monkeypatch, cpus, actors):
    import os

    cluster_cpus(cpus)
    assert size_parquet_listing(RayConfig()) == actors
    assert os.environ[FOOTER_ACTORS_ENV] == str(actors)


def test_a_configured_size_wins_over_the_cluster_size(cluster_cpus):
    import os

    cluster_cpus(4)
    assert size_parquet_listing(RayConfig(parquet_footer_actors=12)) == 12
    assert os.environ[FOOTER_ACTORS_ENV] == "12"
    # the value it set is its own: a later call with another config replaces it
    assert size_parquet_listing(RayConfig()) == 1
    assert os.environ[FOOTER_ACTORS_ENV] == "1"


def test_a_size_the_user_exported_is_left_alone(cluster_cpus, monkeypatch):
    import os

    cluster_cpus(4)
    monkeypatch.setenv(FOOTER_ACTORS_ENV, "7")
    assert size_parquet_listing(RayConfig(parquet_footer_actors=2)) == 7
    assert os.environ[FOOTER_ACTORS_ENV] == "7"


def test_the_setting_is_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="parquet_footer_actors"):
        RayConfig(parquet_footer_actors=0)
