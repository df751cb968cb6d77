"""Batch evaluation (Ray Data actor pool), MLflow evaluation runs, and the promotion gate.

Models here are untrained tiny models of two seeds: they score differently (and deterministically),
which is all the gate needs — it is tested against the AUCs that evaluation actually measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recicl.config import PromptConfig, TinyModelSettings, build_config
from recicl.data.pipeline import build_samples
from recicl.data.samples_folder import SamplesFolder
from recicl.data.synth import SynthSpec, write_synthetic
from recicl.evaluate.batch import EvaluationError, evaluate_model, resolve_model, score_samples
from recicl.modeling.packaged import package_full_model
from recicl.promotion import evaluation_auc, promote
from recicl.registry import (
    RegistryError,
    Workspace,
    alias_version,
    client,
    register_model_folder,
    resolve_tracking_uri,
)

pytestmark = pytest.mark.integration
PROMPT = PromptConfig(max_length=384)


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_local):
    from recicl.modeling import init_tiny_model

    root = tmp_path_factory.mktemp("eval")
    write_synthetic(SynthSpec(users=40, events_per_user=15, seed=5), root / "synth")
    cfg = build_config(
        {
            "workdir": str(root / "work"),
            "data": {"source": "parquet", "path": str(root / "synth")},
            "samples": {
                "output": str(root / "samples"),
                "periods": 3,
                "num_demos": 3,
                "history_len": 4,
            },
            "prompt": PROMPT.model_dump(),
            "evaluate": {"replicas": 2},
        }
    )
    build_samples(cfg)
    versions = {}
    for seed in (0, 1):
        tiny = init_tiny_model(
            root / "samples" / "catalog.parquet",
            root / f"tiny{seed}",
            TinyModelSettings(seed=seed),
            PROMPT,
        )
        folder = package_full_model(
            tiny, root / f"pkg{seed}", samples_dir=root / "samples", prompt=PROMPT
        )
        versions[seed] = register_model_folder(cfg, folder)
    return {"cfg": cfg, "root": root, "samples": root / "samples", "versions": versions}


def test_batch_scores_equal_direct_scorer(world):
    from recicl.modeling import score_prompts
    from recicl.modeling.packaged import load_packaged_model
    from recicl.prompts import PromptBuilder

    source = resolve_model(f"models:/recicl/{world['versions'][0]}", Workspace.of(world["cfg"]))
    scored = score_samples(source.local_dir, world["samples"], [2], replicas=2)
    packaged = load_packaged_model(source.local_dir)
    table = SamplesFolder.at(world["samples"]).read_table([2]).sort_by("sample_id")
    builder = PromptBuilder(
        packaged.prompt, pq.read_table(world["samples"] / "catalog.parquet"), packaged.tokenizer
    )
    prompts = [
        builder.encode(row["history"], row["demos"], row["item_id"]).input_ids
        for row in table.to_pylist()
    ]
    direct = score_prompts(packaged.model, packaged.tokenizer, prompts, 7)
    assert scored["sample_id"].to_pylist() == table["sample_id"].to_pylist()
    np.testing.assert_allclose(scored["score"].to_numpy(), direct, atol=1e-6)
    assert len(set(np.round(direct, 6))) > 10  # real, varied scores, not a constant
    # each scoring actor ran torch on its share of the cores (Ray alone would give it 1 thread),
    # unless model.num_threads says otherwise; the scores do not depend on it
    assert set(scored["threads"].to_pylist()) == {max(1, (os.cpu_count() or 1) // 2)}
    model = world["cfg"].model.model_copy(update={"num_threads": 3})
    again = score_samples(source.local_dir, world["samples"], [2], replicas=1, model=model)
    assert set(again["threads"].to_pylist()) == {3}
    np.testing.assert_allclose(again.sort_by("sample_id")["score"].to_numpy(), direct, atol=1e-4)


def test_evaluate_writes_report_plot_and_mlflow_run(world):
    cfg = world["cfg"]
    output = world["root"] / "reports" / "v1.json"
    report = evaluate_model(
        cfg, f"models:/recicl/{world['versions'][0]}", world["samples"], [1, 2], output
    )
    saved = json.loads(output.read_text())
    assert set(saved["periods"]) == {"1", "2"}
    assert saved["overall"]["count"] == sum(p["count"] for p in saved["periods"].values())
    assert 0.0 <= saved["overall"]["auc"] <= 1.0
    assert saved["overall"]["uauc_users"] + saved["overall"]["uauc_users_skipped"] > 0
    assert output.with_suffix(".png").stat().st_size > 10_000
    run = client(resolve_tracking_uri(cfg)).get_run(report["mlflow_run_id"])
    assert run.data.tags["recicl.model_version"] == world["versions"][0]
    assert run.data.metrics["p2_auc"] == pytest.approx(saved["periods"]["2"]["auc"])


def test_unknown_model_is_a_clear_error(world):
    with pytest.raises(EvaluationError, match="cannot resolve models:/recicl/99"):
        resolve_model("models:/recicl/99", Workspace.of(world["cfg"]))
    with pytest.raises(EvaluationError, match="neither a models:/"):
        resolve_model("/no/such/folder", Workspace.of(world["cfg"]))


def test_promotion_gate(world):
    cfg = world["cfg"]
    v0, v1 = world["versions"][0], world["versions"][1]
    mlc = client(resolve_tracking_uri(cfg))
    first = promote(cfg, "recicl", v0, samples_dir=world["samples"])
    assert first.promoted and alias_version(mlc, "recicl", "champion") == v0

    # Which of the two is better on the newest period is whatever evaluation measures.
    attempt = promote(cfg, "recicl", v1, samples_dir=world["samples"])
    assert attempt.period == 2
    assert attempt.candidate_auc != attempt.champion_auc
    better = attempt.candidate_auc >= attempt.champion_auc
    assert attempt.promoted == better
    champion, challenger = (v1, v0) if better else (v0, v1)
    assert alias_version(mlc, "recicl", "champion") == champion
    if better:  # the move is recorded on the version with both numbers
        tags = mlc.get_model_version("recicl", v1).tags
        record = json.loads(next(v for k, v in tags.items() if k.startswith("recicl.promotion.")))
        assert record["from"] == v0 and record["to"] == v1
        assert record["candidate_auc"] == pytest.approx(attempt.candidate_auc)

    # The worse one is refused, with both numbers in the message; the alias stays.
    refused = promote(cfg, "recicl", challenger, samples_dir=world["samples"])
    assert not refused.promoted
    assert "refused" in refused.message() and f"{refused.candidate_auc:.4f}" in refused.message()
    assert alias_version(mlc, "recicl", "champion") == champion

    # The CLI says the same and exits 1 (in-process runner; the config points at our store).
    from recicl.cli import app

    config_file = world["root"] / "cfg.yaml"
    config_file.write_text(json.dumps(cfg.model_dump(mode="json")))
    result = CliRunner().invoke(
        app,
        [
            "promote",
            "--version",
            challenger,
            "--samples",
            str(world["samples"]),
            "--config",
            str(config_file),
        ],
    )
    assert result.exit_code == 1, result.output
    assert "refused" in result.output

    # --force needs a reason, then moves and records it.
    with pytest.raises(RegistryError, match="--reason"):
        promote(cfg, "recicl", challenger, force=True)
    forced = promote(cfg, "recicl", challenger, force=True, reason="rollback drill")
    assert forced.promoted and alias_version(mlc, "recicl", "champion") == challenger
    tags = mlc.get_model_version("recicl", challenger).tags
    records = [json.loads(v) for k, v in tags.items() if k.startswith("recicl.promotion.")]
    assert any(r["forced"] and r["reason"] == "rollback drill" for r in records)

    with pytest.raises(RegistryError, match="no version 42"):
        promote(cfg, "recicl", "42", samples_dir=world["samples"])
    with pytest.raises(RegistryError, match="no registered model 'nope'"):
        promote(cfg, "nope", "1", samples_dir=world["samples"])


def test_capped_evaluation_uses_one_subset_and_the_gate_compares_like_with_like(world):
    """evaluate.max_samples scores the same seeded subset for every version, tags the run with
    it, and the promotion gate reuses only evaluations of the same subset."""
    capped = build_config({**world["cfg"].model_dump(mode="json"), "evaluate": {"max_samples": 9}})
    v0, v1 = world["versions"][0], world["versions"][1]
    reports = [
        evaluate_model(capped, f"models:/recicl/{v}", world["samples"], [2]) for v in (v0, v1)
    ]
    for report in reports:
        assert report["periods"]["2"]["count"] == 9 and report["samples"]["subset"] == "cap9-ids"
        run = client(resolve_tracking_uri(capped)).get_run(report["mlflow_run_id"])
        assert run.data.tags["recicl.eval_subset"] == "cap9-ids"
    # the same 9 samples for both versions (same like rate, same users)
    assert reports[0]["periods"]["2"]["like_rate"] == reports[1]["periods"]["2"]["like_rate"]
    assert reports[0]["periods"]["2"]["auc"] != reports[1]["periods"]["2"]["auc"]
    gated = evaluation_auc(capped, Workspace.of(capped), "recicl", v1, world["samples"], 2)
    assert gated == pytest.approx(reports[1]["periods"]["2"]["auc"])
    # an uncapped gate does not take the capped number: it finds (or makes) a full evaluation
    uncapped = world["cfg"]
    full = evaluation_auc(uncapped, Workspace.of(uncapped), "recicl", v1, world["samples"], 2)
    table = SamplesFolder.at(world["samples"]).read_table([2])
    assert table.num_rows > 9 and full != pytest.approx(reports[1]["periods"]["2"]["auc"])


def test_instruction_file_scores_and_reports(world, tmp_path):
    """An Alpaca-style Yes/No file is scored by the model pool in record order, and its report
    is what sklearn says of those scores."""
    from sklearn.metrics import roc_auc_score

    from recicl.evaluate.instructions import evaluate_instructions, score_instructions
    from recicl.modeling import score_prompts
    from recicl.modeling.packaged import load_packaged_model
    from recicl.prompts import PromptBuilder, answer_token_ids
    from recicl.prompts.instructions import read_instruction_file, render

    source = resolve_model(f"models:/recicl/{world['versions'][0]}", Workspace.of(world["cfg"]))
    packaged = load_packaged_model(source.local_dir)
    builder = PromptBuilder(
        packaged.prompt, pq.read_table(world["samples"] / "catalog.parquet"), packaged.tokenizer
    )
    rows = SamplesFolder.at(world["samples"]).read_table([2]).slice(0, 24).to_pylist()
    records = [
        {
            "instruction": builder.render(r["history"], r["demos"], r["item_id"]).rsplit(
                "Answer:", 1
            )[0],
            "input": f"user {r['user_id']}",
            "output": "Yes." if r["label"] else "No.",
            "user_id": r["user_id"],
        }
        for r in rows
    ]
    path = tmp_path / "bench.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    table = read_instruction_file(path)
    scores = score_instructions(source.local_dir, table, template="answer", replicas=2)
    assert scores["record"].to_pylist() == list(range(24))
    tokenizer = packaged.tokenizer
    texts = [render("answer", r["instruction"], r["input"]) for r in records]
    direct = score_prompts(
        packaged.model,
        tokenizer,
        tokenizer(texts)["input_ids"],
        answer_tokens=answer_token_ids(tokenizer),
    )
    np.testing.assert_allclose(scores["score"].to_numpy(), direct, atol=1e-6)

    report = evaluate_instructions(
        world["cfg"], f"models:/recicl/{world['versions'][0]}", path, template="answer"
    )
    labels = [r["label"] for r in rows]
    assert report["overall"]["count"] == 24 and report["file"]["template"] == "answer"
    assert report["overall"]["auc"] == pytest.approx(roc_auc_score(labels, direct))
    saved = json.loads(Path(report["report_path"]).read_text())
    assert saved["overall"]["auc"] == pytest.approx(report["overall"]["auc"])
    run = client(resolve_tracking_uri(world["cfg"])).get_run(report["mlflow_run_id"])
    assert run.data.tags["recicl.kind"] == "instruction-evaluation"


def test_gate_does_not_reuse_an_evaluation_of_samples_rebuilt_from_a_grown_log(world):
    """Samples rebuilt in place from a grown log (same config, so the same config hash) are new
    data: an evaluation cached on the old samples must not stand in for the champion's AUC."""
    root = world["root"] / "grown"
    cfg = build_config(
        {
            **world["cfg"].model_dump(mode="json"),
            "data": {"source": "parquet", "path": str(root / "log")},
            "samples": {**world["cfg"].samples.model_dump(mode="json"), "output": str(root / "s")},
        }
    )
    v0 = world["versions"][0]
    write_synthetic(SynthSpec(users=30, events_per_user=15, seed=11), root / "log")
    build_samples(cfg)
    before = evaluate_model(cfg, f"models:/recicl/{v0}", root / "s", [2])["periods"]["2"]["auc"]
    workspace = Workspace.of(cfg)
    assert evaluation_auc(cfg, workspace, "recicl", v0, root / "s", 2) == pytest.approx(before)

    write_synthetic(SynthSpec(users=45, events_per_user=15, seed=11), root / "log")  # grown
    build_samples(cfg)
    after = evaluation_auc(cfg, workspace, "recicl", v0, root / "s", 2)
    assert after != pytest.approx(before)  # not the cached AUC of the old samples ...
    # ... but a new evaluation, of the rebuilt samples, and recorded as such
    mlc = client(resolve_tracking_uri(cfg))
    content = SamplesFolder.at(root / "s").content_id()
    runs = mlc.search_runs(
        [e.experiment_id for e in mlc.search_experiments()],
        filter_string=f"tags.`recicl.samples_hash` = '{content}'",
    )
    assert [run.data.metrics["p2_auc"] for run in runs] == [pytest.approx(after)]


def test_model_cache_follows_the_registry_not_only_name_and_version(world, tmp_path):
    """The same workdir pointed at a new MLflow store, whose version 1 is another model, must
    score that model, not the folder cached for the old store's version 1."""
    from recicl.modeling.packaged import load_packaged_model

    cfg = world["cfg"]
    first = resolve_model(f"models:/recicl/{world['versions'][0]}", Workspace.of(cfg))
    assert world["versions"][0] == "1"
    other_store = build_config(
        {
            **cfg.model_dump(mode="json"),
            "mlflow": {
                **cfg.mlflow.model_dump(mode="json"),
                "tracking_uri": "sqlite:///" + str(tmp_path / "other.db"),
            },
        }
    )
    # version 1 of the new store is the seed-1 model (the old store's version 2)
    seed1 = resolve_model(f"models:/recicl/{world['versions'][1]}", Workspace.of(cfg)).local_dir
    assert register_model_folder(other_store, seed1) == "1"
    second = resolve_model("models:/recicl/1", Workspace.of(other_store))
    assert second.local_dir != first.local_dir
    weights = [
        next(load_packaged_model(src).model.parameters()).detach().numpy()
        for src in (second.local_dir, seed1)
    ]
    np.testing.assert_array_equal(weights[0], weights[1])
