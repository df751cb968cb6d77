"""The taste-switch probe: does a model follow a user's new interests from their events alone?

One scripted user, the same as `make demo` serves: ten Comedies liked and ten Horror films
disliked (interleaved, so that whatever the number of demonstrations, the newest ones show both
sides), then the reverse. Ten candidates, five of each genre, all unseen, are scored before and
after the new events with the same model. ``shift`` is how much the Horror − Comedy gap of mean
P(Yes) moved: positive means the new taste's candidates rose relative to the old taste's, with
no weight update, which is RecICL's promise. AUC on a period cannot show this (on MovieLens a
user's recent like rate carries most of the AUC), so the quality benchmark reports it beside AUC.

The demo posts these events over HTTP and reads the served scores; :func:`taste_switch_shift`
scores them in-process with the serving code (context from events, prefix-shared scoring).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recicl.data.samples_folder import SamplesFolder
from recicl.modeling.packaged import load_packaged_model
from recicl.prompts import PromptBuilder
from recicl.serve.context import contexts_for
from recicl.serve.serving_model import group_by_context, trained_selection
from recicl.serve.store import Event

OLD, NEW = "Comedy", "Horror"


@dataclass
class TasteSwitch:
    """The scripted user: candidates and the two phases of events (API event dicts)."""

    old_genre: list[str]  # candidates of the old taste's genre
    new_genre: list[str]  # candidates of the new taste's genre
    before: list[dict[str, Any]]  # old taste
    after: list[dict[str, Any]]  # new taste (posted after `before`)

    @property
    def candidates(self) -> list[str]:
        return self.old_genre + self.new_genre

    def gap(self, scores: dict[str, float]) -> float:
        """Mean P(Yes) of the new taste's candidates minus the old taste's."""
        new = sum(scores[i] for i in self.new_genre) / len(self.new_genre)
        old = sum(scores[i] for i in self.old_genre) / len(self.old_genre)
        return new - old


def _items_by_genre(samples_dir: Path) -> list[tuple[str, set[str]]]:
    """Every catalog item that has samples, most-sampled first, with its genres (one read of
    the catalog and of the samples for both genres of the probe)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folder = SamplesFolder.at(samples_dir)
    catalog = pq.read_table(folder.catalog_path)
    genres = {
        row["item_id"]: set(dict(row["attributes"] or []).get("genres", "").split("|"))
        for row in catalog.select(["item_id", "attributes"]).to_pylist()
    }
    counts = pc.value_counts(folder.read_table()["item_id"]).to_pylist()
    ranked = sorted(counts, key=lambda c: -c["counts"])
    return [(c["values"], genres.get(c["values"], set())) for c in ranked]


def _interleaved(user: str, liked: list[str], disliked: list[str], start: int) -> list[dict]:
    """A disliked and a liked item in turn, one second apart (explicit labels: no rating
    threshold to agree on between the demo's HTTP events and the in-process probe)."""
    events = []
    for i, (yes, no) in enumerate(zip(liked, disliked, strict=True)):
        for offset, item, label, rating in ((0, no, 0, 1.0), (1, yes, 1, 5.0)):
            events.append(
                {"user_id": user, "item_id": item, "label": label, "rating": rating,
                 "timestamp": start + 2 * i + offset}
            )  # fmt: skip
    return events


def taste_switch(samples_dir: str | Path, user: str, now: int) -> TasteSwitch:
    """The scripted user of a MovieLens-like samples folder (genres in the catalog)."""
    ranked = _items_by_genre(Path(samples_dir))
    comedy = [item for item, genres in ranked if OLD in genres][:40]
    horror = [item for item, genres in ranked if NEW in genres and item not in comedy][:40]
    if len(comedy) < 25 or len(horror) < 25:
        raise ValueError(f"{samples_dir}: too few {OLD}/{NEW} items for the taste-switch probe")
    return TasteSwitch(
        old_genre=comedy[20:25],
        new_genre=horror[20:25],
        before=_interleaved(user, comedy[:10], horror[:10], now - 86_400),
        after=_interleaved(user, horror[10:20], comedy[10:20], now - 3_600),
    )


def taste_switch_shift(
    model_dir: str | Path,
    samples_dir: str | Path,
    *,
    prompt: Any = None,
    model_cfg: Any = None,
    num_demos: int | None = None,
    history_len: int | None = None,
    force_prompt: bool = False,
) -> dict[str, float]:
    """Score the scripted user before and after the switch with one model, in-process, with
    the serving code. ``prompt``/``model_cfg`` load a plain base folder (zero-shot);
    ``num_demos``/``history_len`` default to the samples' own (their manifest);
    ``force_prompt`` scores a tuned version with ``prompt`` (tallrec+demos)."""
    import numpy as np
    import pyarrow.parquet as pq

    from recicl.modeling.prefix_sharing import CandidateScorer
    from recicl.modeling.signals import blend_with, demo_labels

    folder = SamplesFolder.at(samples_dir)
    built = folder.require_manifest().samples_config
    demos_n = int(num_demos if num_demos is not None else built["num_demos"])
    history_n = int(history_len if history_len is not None else built["history_len"])
    # the policies the samples were built with, as serving would apply them
    selection = trained_selection(built, str(folder.root), str(model_dir))
    user = "taste-probe"  # unknown to the tuning: a blend's user counts start from its prior
    probe = taste_switch(folder.root, user, 2_000_000_000)
    packaged = load_packaged_model(
        model_dir, prompt=prompt, model_cfg=model_cfg, force_prompt=force_prompt
    )
    builder = PromptBuilder(
        packaged.prompt,
        pq.read_table(folder.catalog_path),
        packaged.tokenizer,
        item_stats=packaged.prompt_item_stats(folder.root),
    )
    scorer = CandidateScorer(packaged.model, packaged.tokenizer, builder, packaged.answer_columns())
    gaps, llm_gaps = [], []
    for events in (probe.before, probe.before + probe.after):
        stored = [
            Event(e["user_id"], e["item_id"], e["label"], e["timestamp"], e["rating"])
            for e in events
        ]
        contexts = contexts_for(stored, probe.candidates, demos_n, history_n, selection)
        jobs, where = group_by_context(list(probe.candidates), contexts)
        grouped = scorer.score(jobs)
        llm = np.asarray([grouped[job][slot] for job, slot in where])
        llm_gaps.append(probe.gap(dict(zip(probe.candidates, llm.tolist(), strict=True))))
        # what serving answers: a train.blend version's scores are the blend (serving_model)
        scores = blend_with(
            packaged.blend,
            llm,
            [user] * len(probe.candidates),
            probe.candidates,
            [demo_labels(demos) for _, demos in contexts],
        ).tolist()
        gaps.append(probe.gap(dict(zip(probe.candidates, scores, strict=True))))
    shifts = {"gap_before": gaps[0], "gap_after": gaps[1], "shift": gaps[1] - gaps[0]}
    if packaged.blend is not None:  # how much of the LLM's own shift the blend keeps
        shifts["shift_no_blend"] = llm_gaps[1] - llm_gaps[0]
    return shifts
