"""Synthetic interaction logs with a planted preference drift.

Why: the claim RecICL makes, that a model reading a user's *newest* events follows a change of
taste without a weight update, needs data where the change is known. Every user likes two genres,
then switches to two others at a user-specific time near ``drift_at`` (a fraction of the
timeline). A rating is high exactly when the item's genre is in the user's *current* preference
(with a little label noise). Titles carry genre-specific nouns, so a model can tell genres apart
from text alone, as it would with real titles.

Output is a generic-Parquet source (``--source parquet``): ``events.parquet`` (user_id, item_id,
rating, timestamp), ``catalog.parquet`` (item_id, title, genres) and ``truth.parquet`` (per user:
preferences before/after and the switch time), plus ``synth.json`` with the spec.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

GENRE_WORDS: dict[str, list[str]] = {
    "Action": ["Strike", "Fury", "Blast", "Chase", "Mission", "Agent"],
    "Comedy": ["Mixup", "Prank", "Party", "Blunder", "Giggle", "Caper"],
    "Drama": ["Letters", "Silence", "Promise", "Winter", "Family", "Road"],
    "Horror": ["Crypt", "Ghost", "Curse", "Haunting", "Shadow", "Scream"],
    "Romance": ["Kiss", "Heart", "Wedding", "Love", "Summer", "Sweetheart"],
    "Sci-Fi": ["Galaxy", "Android", "Orbit", "Nebula", "Robot", "Starship"],
    "Documentary": ["Story", "Truth", "Record", "Chronicle", "Inside", "Facts"],
    "Animation": ["Bunny", "Cartoon", "Dragonfly", "Toybox", "Puppy", "Kitten"],
    "Thriller": ["Conspiracy", "Witness", "Alibi", "Suspect", "Hostage", "Trap"],
    "Western": ["Outlaw", "Saloon", "Cowboy", "Frontier", "Sheriff", "Canyon"],
    "Musical": ["Melody", "Song", "Chorus", "Dance", "Rhythm", "Encore"],
    "Mystery": ["Clue", "Riddle", "Detective", "Secret", "Enigma", "Puzzle"],
}
ADJECTIVES = [
    "Crimson", "Silent", "Golden", "Broken", "Hidden", "Last", "Wild", "Lost", "Bright", "Dark",
    "Little", "Great", "Frozen", "Burning", "Midnight", "Electric", "Velvet", "Iron", "Paper",
    "Hollow",
]  # fmt: skip
TIMELINE_START = 1_577_836_800  # 2020-01-01T00:00:00Z
TIMELINE_DAYS = 365


@dataclass(frozen=True)
class SynthSpec:
    """Shape of the synthetic log; the same spec and seed always give the same files."""

    users: int = 500
    events_per_user: int = 40
    items_per_genre: int = 40
    seed: int = 0
    drift_at: float = 0.6
    drift_jitter: float = 0.05
    liked_share: float = 0.5
    label_noise: float = 0.03


def generate(spec: SynthSpec) -> dict[str, pa.Table]:
    """Build the events, catalog and ground-truth tables in memory (vectorized)."""
    rng = np.random.default_rng(spec.seed)
    genres = list(GENRE_WORDS)
    n_genres = len(genres)

    # Catalog: items_per_genre items per genre, titles "<Adjective> <genre noun> <n>".
    item_genre = np.repeat(np.arange(n_genres), spec.items_per_genre)
    n_items = len(item_genre)
    adjectives = rng.integers(0, len(ADJECTIVES), n_items)
    nouns = rng.integers(0, 6, n_items)
    titles = [
        f"{ADJECTIVES[a]} {GENRE_WORDS[genres[g]][w]} {i % spec.items_per_genre + 1}"
        for i, (a, g, w) in enumerate(zip(adjectives, item_genre, nouns, strict=True))
    ]
    item_ids = np.array([f"i{i:05d}" for i in range(n_items)])
    catalog = pa.table(
        {
            "item_id": pa.array(item_ids),
            "title": pa.array(titles),
            "genres": pa.array([genres[g] for g in item_genre]),
        }
    )

    # Users: two liked genres before the switch, two different ones after.
    order = np.argsort(rng.random((spec.users, n_genres)), axis=1)
    before, after = order[:, :2], order[:, 2:4]
    switch = np.clip(
        spec.drift_at + rng.uniform(-spec.drift_jitter, spec.drift_jitter, spec.users), 0.0, 1.0
    )

    # Events: times uniform over the timeline; half the picks from currently liked genres.
    u = np.repeat(np.arange(spec.users), spec.events_per_user)
    when = rng.random(len(u))
    current = np.where((when >= switch[u])[:, None], after[u], before[u])
    from_liked = rng.random(len(u)) < spec.liked_share
    liked_genre = current[np.arange(len(u)), rng.integers(0, 2, len(u))]
    other_genre = rng.integers(0, n_genres, len(u))
    genre = np.where(from_liked, liked_genre, other_genre)
    item = genre * spec.items_per_genre + rng.integers(0, spec.items_per_genre, len(u))
    liked = (current == genre[:, None]).any(axis=1)
    liked ^= rng.random(len(u)) < spec.label_noise
    rating = np.where(liked, rng.choice([4.0, 5.0], len(u)), rng.choice([1.0, 2.0, 3.0], len(u)))
    seconds = TIMELINE_START + (when * TIMELINE_DAYS * 86_400).astype(np.int64)
    user_ids = np.array([f"u{i:05d}" for i in range(spec.users)])
    events = pa.table(
        {
            "user_id": pa.array(user_ids[u]),
            "item_id": pa.array(item_ids[item]),
            "rating": pa.array(rating),
            "timestamp": pa.array(seconds),
        }
    )
    truth = pa.table(
        {
            "user_id": pa.array(user_ids),
            "genres_before": pa.array([[genres[g] for g in row] for row in before]),
            "genres_after": pa.array([[genres[g] for g in row] for row in after]),
            "switch_timestamp": pa.array(
                TIMELINE_START + (switch * TIMELINE_DAYS * 86_400).astype(np.int64)
            ),
        }
    )
    return {"events": events, "catalog": catalog, "truth": truth}


def write_synthetic(spec: SynthSpec, output: str | Path) -> dict[str, int]:
    """Write the tables as a generic Parquet source folder and return their sizes."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    tables = generate(spec)
    for name, table in tables.items():
        pq.write_table(table, output / f"{name}.parquet")
    (output / "synth.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return {
        "events": tables["events"].num_rows,
        "users": spec.users,
        "items": tables["catalog"].num_rows,
    }
