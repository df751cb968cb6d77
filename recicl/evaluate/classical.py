"""A conventional CTR baseline, so LLM numbers are always read next to a familiar reference.

Logistic regression (scikit-learn) on hashed sparse features of each sample: user id, item id,
the item's genres/categories, the genres of the user's liked history, history-genre ×
item-genre crosses (the classic "user likes Horror, item is Horror" interaction) and user ×
item-genre crosses (that user's own taste per genre, as a factorization model would learn it;
it works without any history in the sample). It sees the same samples as the LLM variants and
is trained once on the same periods, so whatever it learned about a user is frozen there: the
reference point for what a drift costs a model that does not read the user's newest events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from sklearn.feature_extraction import FeatureHasher
from sklearn.linear_model import LogisticRegression


def genres_by_item(catalog: pa.Table) -> dict[str, list[str]]:
    """The genres (or categories) of each catalog item: what a new item is known by; read by
    every non-LLM model of ``recicl.evaluate``."""
    lookup: dict[str, list[str]] = {}
    for item_id, attributes in zip(
        catalog["item_id"].to_pylist(), catalog["attributes"].to_pylist(), strict=True
    ):
        values: list[str] = []
        for key, value in attributes or []:
            if key in ("genres", "category") and value:
                values.extend(v for v in value.split("|") if v)
        lookup[item_id] = values
    return lookup


def sample_features(samples: pa.Table, catalog: pa.Table) -> list[list[str]]:
    """One bag of string features per sample (hashed later)."""
    genres = genres_by_item(catalog)
    bags: list[list[str]] = []
    for user, item, history in zip(
        samples["user_id"].to_pylist(),
        samples["item_id"].to_pylist(),
        samples["history"].to_pylist(),
        strict=True,
    ):
        item_genres = genres.get(item, [])
        history_genres = {g for h in history or [] for g in genres.get(h, [])}
        bag = [f"u={user}", f"i={item}"]
        bag += [f"g={g}" for g in item_genres]
        bag += [f"ug={user}|{g}" for g in item_genres]
        bag += [f"hg={g}" for g in history_genres]
        bag += [f"x={h}|{g}" for h in history_genres for g in item_genres]
        bags.append(bag)
    return bags


@dataclass
class ClassicalModel:
    """Hasher + fitted logistic regression."""

    hasher: FeatureHasher
    model: LogisticRegression

    def score(self, samples: pa.Table, catalog: pa.Table) -> np.ndarray:
        features = self.hasher.transform(sample_features(samples, catalog))
        return self.model.predict_proba(features)[:, 1]


def fit_classical(samples: pa.Table, catalog: pa.Table, c: float = 1.0) -> ClassicalModel:
    """Fit on training samples (labels from the ``label`` column)."""
    hasher = FeatureHasher(n_features=2**20, input_type="string", alternate_sign=False)
    features = hasher.transform(sample_features(samples, catalog))
    labels = samples["label"].to_numpy()
    model = LogisticRegression(C=c, max_iter=1000, solver="liblinear")
    model.fit(features, labels)
    return ClassicalModel(hasher, model)
