"""How much AUC the bundled MovieLens allows without a model update: signals and a ceiling.

The pretrained-LLM issue asks RecICL to reach AUC 0.80 on every period D6-D9 (tuned on D0-D5,
no update). This script measures, on the same samples (every event with an earlier event of its
user, the periods of the samples folder's manifest), what simple leak-free signals give, alone
and combined by models fitted on D0-D5 only:

* ``demo rate``: share of likes among the user's 8 latest earlier events (what the prompt's
  demonstrations carry; the streaming experiment's ``demo-rate`` variant);
* ``user rate``: smoothed like rate over all the user's earlier events;
* ``mean rating of 8``: the user's mean rating over the 8 latest earlier events;
* ``item rate D0-D5``: the item's smoothed like rate over D0-D5 (frozen, as a model tuned on
  D0-D5 could know it);
* ``item rate online``: the item's smoothed like rate over *all* users' events strictly
  before the target (needs a global, continuously updated aggregate: more than RecICL's
  no-update setting allows, shown as an upper reference);
* ``logistic`` and ``boosted trees`` on the leak-free ones (all but the frozen item rate, which
  holds a training row's own label), fitted on D0-D5, and on D5 alone (the latest behaviour).

No LLM is involved; the numbers say how far a reader of these signals can go on each period.

    python benchmarks/bench_ceiling.py [--samples recicl-work/samples/ml-latest-small-d8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from recicl.config import BUNDLED_MOVIELENS
from recicl.data.samples_folder import SamplesFolder

SMOOTHING = 5.0


def _logit(p: pd.Series) -> np.ndarray:
    p = np.clip(p.to_numpy(dtype=float), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def signals(ratings: pd.DataFrame, boundaries: list[int], like_threshold: float) -> pd.DataFrame:
    """One row per event, in the samples' total order, with every signal computed leak-free."""
    r = ratings.rename(columns={"userId": "user", "movieId": "item"})
    r["y"] = (r["rating"] >= like_threshold).astype(int)
    r["period"] = np.searchsorted(np.asarray(boundaries), r["timestamp"].to_numpy(), side="right")
    r = r.sort_values(["user", "timestamp", "item"], kind="stable").reset_index(drop=True)
    by_user = r.groupby("user")
    r["earlier"] = by_user.cumcount()
    prior = r.loc[r["period"] <= 5, "y"].mean()
    likes_before = by_user["y"].cumsum() - r["y"]
    r["user rate"] = (likes_before + prior * 2) / (r["earlier"] + 2)
    r["demo rate"] = by_user["y"].transform(lambda s: s.shift(1).rolling(8, min_periods=1).mean())
    r["mean rating of 8"] = by_user["rating"].transform(
        lambda s: s.shift(1).rolling(8, min_periods=1).mean()
    )
    train = r[r["period"] <= 5].groupby("item")["y"].agg(["size", "sum"])
    frozen = r.join(train, on="item")[["size", "sum"]].fillna(0.0)
    r["item rate D0-D5"] = (frozen["sum"] + SMOOTHING * prior) / (frozen["size"] + SMOOTHING)
    in_time = r.sort_values(["timestamp", "user", "item"], kind="stable")
    by_item = in_time.groupby("item")
    seen = by_item.cumcount()
    liked = by_item["y"].cumsum() - in_time["y"]
    r["item rate online"] = ((liked + SMOOTHING * prior) / (seen + SMOOTHING)).reindex(r.index)
    r["item count online"] = np.log1p(seen.reindex(r.index))
    return r[r["earlier"] >= 1]


FEATURES = ["demo rate", "user rate", "mean rating of 8", "item rate D0-D5", "item rate online"]
#: What the fitted models read: every signal that is leak-free on the training rows too (the
#: frozen D0-D5 item rate contains a training row's own label, so it is left out).
MODEL_FEATURES = ["demo rate", "user rate", "mean rating of 8", "item rate online"]


def matrix(frame: pd.DataFrame) -> np.ndarray:
    columns = [_logit(frame[c]) if "rate" in c else frame[c].to_numpy() for c in MODEL_FEATURES]
    return np.column_stack([*columns, frame["item count online"].to_numpy()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="recicl-work/samples/ml-latest-small-d8")
    parser.add_argument("--data", default=str(BUNDLED_MOVIELENS))
    args = parser.parse_args()
    folder = SamplesFolder(Path(args.samples))
    if not folder.manifest_path.is_file():  # the periods come from a build: make one (10 periods)
        from recicl.config import build_config
        from recicl.data.pipeline import build_samples

        build_samples(build_config({"samples": {"output": args.samples, "periods": 10}}))
    manifest = folder.require_manifest()
    threshold = float(manifest.config["data"]["like_threshold"])
    frame = signals(pd.read_csv(Path(args.data) / "ratings.csv"), manifest.boundaries_ts, threshold)
    models = {}
    for label, periods_fitted in (("D0-D5", [0, 1, 2, 3, 4, 5]), ("D5", [5])):
        train = frame[frame["period"].isin(periods_fitted)]
        for name, model in (
            ("logistic", LogisticRegression(max_iter=2000)),
            ("boosted trees", HistGradientBoostingClassifier(max_iter=200, random_state=0)),
        ):
            models[f"{name}, fitted on {label}"] = model.fit(matrix(train), train["y"])
    periods = [6, 7, 8, 9]
    print(f"\nAUC on every sample of D6-D9 (nothing fitted on D6-D9; like = rating >= "
          f"{threshold})\n")  # fmt: skip
    print("| signal | " + " | ".join(f"D{p}" for p in periods) + " |")
    print("|---|" + "---|" * len(periods))
    for name in FEATURES:
        cells = []
        for p in periods:
            part = frame[frame["period"] == p]
            cells.append(f"{roc_auc_score(part['y'], part[name].fillna(0.5)):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, model in models.items():
        cells = []
        for p in periods:
            part = frame[frame["period"] == p]
            cells.append(f"{roc_auc_score(part['y'], model.predict_proba(matrix(part))[:, 1]):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    counts = [int((frame["period"] == p).sum()) for p in periods]
    print(f"\nsamples per period: {counts}")


if __name__ == "__main__":
    main()
