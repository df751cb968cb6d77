"""``train.blend``: a version that carries a signal model scores the same blend offline and
served.

One tiny model registered twice: as it is (version 1, the LLM alone) and with a logistic
signal model fitted on the training period saved in its folder (version 2). Asserted:
- offline (the evaluation's scoring actor, on sample rows of the evaluated period): version 2's
  scores are the blend of version 1's with the signal model's scores of the same rows;
- served (the model replica's loading and batch path, in-process): version 2 answers a user's
  candidates with the blend of version 1's answer and the signal model's scores of that
  user's context (the labels of the demonstrations the prompt shows), users and items never
  seen in training included;
- (that the LLM's prompt and score are the same offline and served is test_serve_context.py's
  and test_evaluate.py's; that the signal model scores a served context as the sample row with
  those demonstrations is test_baselines.py's)
- ``/v1/models``' description says what the version blends with.
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from recicl.data.samples import Selection
from recicl.data.samples_folder import SamplesFolder
from recicl.modeling.packaged import BLEND_DIR
from recicl.modeling.signals import blend_scores, demo_labels, fit_signal_model
from recicl.registry import register_model_folder
from recicl.serve.api.backend import ModelJob, ModelReply
from recicl.serve.context import contexts_for
from recicl.serve.store import Event
from tests.integration.test_serve import build_world

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def blended(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("blend")
    world = build_world(root)
    folder = SamplesFolder.at(world.samples)
    signal = fit_signal_model("logistic", folder.read_table([0]), seed=0)
    with_blend = root / "with-blend"
    shutil.copytree(world.models[0], with_blend)
    signal.save(with_blend / BLEND_DIR)
    v2 = register_model_folder(world.cfg, with_blend)
    return SimpleNamespace(
        world=world,
        signal=signal,
        rows=folder.read_table([1]).slice(0, 24),
        folders={"llm": world.models[0], "blend": with_blend},
        versions={"llm": world.v1, "blend": v2},
    )


def _batch(rows) -> dict:
    """Sample rows as Ray Data hands them to the scoring actor (numpy batch format)."""
    return {name: np.asarray(rows[name].to_pylist(), dtype=object) for name in rows.column_names}


def _offline(blended, which: str) -> np.ndarray:
    from recicl.evaluate.batch import ScoreBatches

    scorer = ScoreBatches(
        model_dir=str(blended.folders[which]),
        catalog_path=str(blended.world.samples / "catalog.parquet"),
        prompt=None,
        batch_size=8,
        threads=1,
    )
    scored = scorer(_batch(blended.rows))
    if which == "blend":  # the LLM's own score rides along (report_from_scores: llm_alone)
        blended.llm_score = np.asarray(scored["llm_score"], np.float64)
    else:
        assert "llm_score" not in scored
    return np.asarray(scored["score"], np.float64)


def _served(blended, which: str, jobs: list[ModelJob]) -> list[ModelReply]:
    from recicl.registry import resolve_tracking_uri
    from recicl.serve.serving_model import load_serving_model, run_jobs

    cfg = blended.world.cfg
    model = load_serving_model(
        cfg, resolve_tracking_uri(cfg), cfg.mlflow.registered_model, blended.versions[which]
    )
    replies = run_jobs(model, jobs)
    assert all(isinstance(r, ModelReply) for r in replies), replies
    if which == "blend":
        assert model.describe()["blend"] == "logistic"
    else:
        assert model.describe()["blend"] is None
    return replies  # type: ignore[return-value]


def test_offline_scores_are_the_blend_of_the_llm_and_the_signal_model(blended):
    llm, blend = _offline(blended, "llm"), _offline(blended, "blend")
    signal = blended.signal.score(blended.rows, None)
    np.testing.assert_allclose(blend, blend_scores(llm, signal), rtol=1e-9)
    assert np.abs(blend - llm).max() > 1e-4  # the signal model moved the scores
    # the blended version also reports the LLM's own scores: version 1's, from the same actor
    np.testing.assert_allclose(blended.llm_score, llm, rtol=1e-9)


def test_a_report_carries_the_llm_alone_next_to_the_blend(blended):
    """report_from_scores (evaluation and the streaming experiment) of a blended version's
    scores: the blend's metrics, and the LLM's own under ``llm_alone`` (the streaming run's
    ``<variant>~no-blend`` row), each computed from its own column."""
    import pyarrow as pa

    from recicl.evaluate.batch import report_from_scores

    blend = _offline(blended, "blend")
    rows = blended.rows
    table = pa.table({
        "period": rows["period"], "user_id": rows["user_id"], "label": rows["label"],
        "score": blend, "llm_score": blended.llm_score,
        "trimmed": np.zeros(len(blend), bool), "tokens": np.ones(len(blend), np.int32),
    })  # fmt: skip
    report = report_from_scores(table)
    alone = report_from_scores(table.drop(["llm_score"]).set_column(3, "score", table["llm_score"]))
    assert "llm_alone" not in alone
    assert report["llm_alone"]["periods"] == alone["periods"]
    assert report["llm_alone"]["periods"] != report["periods"]  # the blend moved the metrics


def test_served_scores_are_the_blend_of_the_llm_and_the_signal_model(blended):
    items = [row["item_id"] for row in blended.world.catalog][:6]
    events = tuple(
        Event(user_id="u0", item_id=item, label=k % 2, timestamp=1_000 + k)
        for k, item in enumerate(items[:4])
    )
    jobs = [
        ModelJob(user_id="u0", events=events, candidates=tuple(items)),
        ModelJob(user_id="never-seen", events=(), candidates=tuple(items[:3])),
    ]
    llm, blend = _served(blended, "llm", jobs), _served(blended, "blend", jobs)
    model = blended.world.cfg
    for job, plain, mixed in zip(jobs, llm, blend, strict=True):
        assert job.candidates is not None
        contexts = contexts_for(
            job.events, job.candidates, model.samples.num_demos, model.samples.history_len,
            Selection(),  # the world's samples use the recent policies
        )  # fmt: skip
        labels = demo_labels(contexts[0][1])
        signal = blended.signal.score_context(job.user_id, list(job.candidates), labels)
        want = blend_scores(np.array([s for _, s in plain.scores]), signal)
        np.testing.assert_allclose([s for _, s in mixed.scores], want, rtol=1e-9)
        moved = np.subtract([s for _, s in mixed.scores], [s for _, s in plain.scores])
        assert np.abs(moved).max() > 1e-4  # the signal model moved the answer
        assert [i for i, _ in mixed.scores] == list(job.candidates)


def test_the_taste_probe_scores_what_each_version_serves(blended):
    """The quality benchmark's taste-switch probe (recicl.experiments.taste) of a blended
    version reads the blend, as serving answers it: the same gaps as the served scores of the
    probe's events, and not the LLM's alone."""
    from recicl.experiments.taste import taste_switch, taste_switch_shift

    samples = blended.world.samples
    probe = taste_switch(samples, "taste-probe", 2_000_000_000)
    phases = (probe.before, probe.before + probe.after)
    shifts = {}
    for which in ("llm", "blend"):
        shifts[which] = taste_switch_shift(blended.folders[which], samples)
        served = []
        for events in phases:
            stored = tuple(
                Event(e["user_id"], e["item_id"], e["label"], e["timestamp"], e["rating"])
                for e in events
            )
            job = ModelJob(user_id="taste-probe", events=stored, candidates=tuple(probe.candidates))
            (reply,) = _served(blended, which, [job])
            served.append(probe.gap(dict(reply.scores)))
        probed = [shifts[which]["gap_before"], shifts[which]["gap_after"]]
        np.testing.assert_allclose(probed, served, atol=1e-5)
    assert abs(shifts["blend"]["gap_after"] - shifts["llm"]["gap_after"]) > 1e-4
    # the blended version's probe also says what the LLM alone shifts: version 1's shift
    assert "shift_no_blend" not in shifts["llm"]
    assert shifts["blend"]["shift_no_blend"] == pytest.approx(shifts["llm"]["shift"], abs=1e-5)


def test_an_evaluation_logs_the_llm_alone_beside_the_blend(blended, tmp_path):
    """``recicl evaluate`` of a blended version: the report and its MLflow run carry the
    blend's figures (what is served and gated) and, prefixed ``llm_``, the LLM's own."""
    from recicl.evaluate.batch import evaluate_model
    from recicl.registry import client, resolve_tracking_uri

    cfg = blended.world.cfg
    uri = f"models:/{cfg.mlflow.registered_model}/{blended.versions['blend']}"
    report = evaluate_model(cfg, uri, blended.world.samples, [1], tmp_path / "eval.json")
    run = client(resolve_tracking_uri(cfg)).get_run(report["mlflow_run_id"])
    alone = report["llm_alone"]["overall"]
    assert run.data.metrics["auc"] == pytest.approx(report["overall"]["auc"])
    assert run.data.metrics["llm_auc"] == pytest.approx(alone["auc"])
    assert run.data.metrics["llm_logloss"] == pytest.approx(alone["logloss"])
    assert alone["logloss"] != pytest.approx(report["overall"]["logloss"])
