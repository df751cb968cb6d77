"""Training end to end on CPU: real Ray Train (2 workers, gloo), real DeepSpeed, real MLflow.

The session's shared local Ray (``ray_local``, tests/conftest.py). Data: a hand-made samples
folder (the SAMPLES schema) whose labels are 90% "Yes" and fixed by the query item, so a tiny
random Llama + LoRA learns it within a few steps (the loss must fall clearly). Each training run
has its own workdir (MLflow DB, checkpoints). Uninterrupted runs are shared through the
``uninterrupted`` fixture: the fault test compares against the same ZeRO-2 run the learning test
checks, trained once per module whichever test asks first (or alone).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import log_loss

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from recicl.config import ReciclConfig, TinyModelSettings, build_config
from recicl.data.schema import CATALOG, SAMPLES

if TYPE_CHECKING:
    from recicl.train import TrainResult

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_ITEMS = 40
ROWS_PER_PERIOD = 64
VAL_CAP = 40  # train.max_val_samples in the full fine-tuning test: fewer than a period
LORA_R = 8
HIDDEN = 64


def _label(item: int) -> int:
    return int(item % 10 != 0)  # 90% likes, decided by the item


def write_samples(root: Path, periods: int = 3, seed: int = 0) -> Path:
    """samples/period=K/*.parquet (hive, no period column, like the data layer writes),
    catalog.parquet and manifest.json."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    genres = ["Comedy", "Drama", "Horror", "Romance", "Western"]
    catalog = pa.table(
        {
            "item_id": [str(i) for i in range(N_ITEMS)],
            "title": [f"Film number {i}" for i in range(N_ITEMS)],
            "attributes": pa.array(
                [[("genres", genres[i % 5])] for i in range(N_ITEMS)],
                pa.map_(pa.string(), pa.string()),
            ),
        },
        schema=CATALOG,
    )
    pq.write_table(catalog, root / "catalog.parquet")
    rows_by_period = []
    for period in range(periods):
        rows = []
        for k in range(ROWS_PER_PERIOD):
            item = int(rng.integers(N_ITEMS))
            history = [str(x) for x in rng.integers(N_ITEMS, size=int(rng.integers(0, 5)))]
            demos = []
            for _ in range(int(rng.integers(0, 3))):
                demo = int(rng.integers(N_ITEMS))
                demos.append(
                    {"item_id": str(demo), "label": _label(demo), "timestamp": 1, "history": []}
                )
            rows.append(
                {
                    "sample_id": f"{period}-{k}",
                    "user_id": f"u{k % 8}",
                    "item_id": str(item),
                    "timestamp": 1_000 * period + k,
                    "period": period,
                    "label": _label(item),
                    "history": history,
                    "demos": demos,
                }
            )
        table = pa.Table.from_pylist(rows, schema=SAMPLES).drop_columns(["period"])
        folder = root / "samples" / f"period={period}"
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "part-0.parquet")
        rows_by_period.append({"period": period, "samples": ROWS_PER_PERIOD})
    manifest = {"config_hash": "fixturehash42", "periods": rows_by_period}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from recicl.modeling import init_tiny_model

    root = tmp_path_factory.mktemp("train-assets")
    samples = write_samples(root / "samples")
    settings = TinyModelSettings(hidden_size=HIDDEN, num_layers=2, num_heads=4, vocab_size=600)
    model = init_tiny_model(samples / "catalog.parquet", root / "tiny-model", settings)
    return samples, model


def make_config(
    workdir: Path,
    assets: tuple[Path, Path],
    *,
    lora: bool = True,
    threads: int | None = None,
    **train: object,
) -> ReciclConfig:
    """``lora=False``: full fine-tuning (every weight trained, ``model.lora.enabled: false``);
    ``threads``: model.num_threads."""
    samples, model = assets
    return build_config(
        {
            "workdir": str(workdir),
            "model": {
                "name_or_path": str(model),
                "lora": {"enabled": lora, "r": LORA_R, "alpha": 2 * LORA_R, "dropout": 0.0},
                "num_threads": threads,
            },
            "prompt": {"max_length": 256},
            "train": {
                "samples_dir": str(samples),
                "train_periods": "0-1",
                "val_periods": [2],
                "num_workers": 2,
                "batch_size": 8,
                "lr": 5e-3,
                "warmup_ratio": 0.25,  # 4 of 16 steps
                "epochs": 2,
                "seed": 0,
                **train,
            },
            "mlflow": {"experiment": "test-train"},
        }
    )


def metric_history(cfg: ReciclConfig, run_id: str, key: str) -> list[tuple[int, float]]:
    from recicl.registry import client, resolve_tracking_uri

    history = client(resolve_tracking_uri(cfg)).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def load_adapter(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def check_adapter(tensors: dict[str, np.ndarray]) -> None:
    """LoRA A/B of q/k/v/o in both layers, right shapes, and trained (B starts at zero)."""
    names = [k for k in tensors if "lora_" in k]
    assert len(names) == 2 * 4 * 2, sorted(tensors)
    for name in names:
        value = tensors[name]
        expected = (LORA_R, HIDDEN) if "lora_A" in name else (HIDDEN, LORA_R)
        assert value.shape == expected, (name, value.shape)
        assert np.abs(value).sum() > 0, f"{name} is all zeros"


STRATEGIES = [("ddp", 2), ("deepspeed", 2), ("deepspeed", 3)]


@dataclass
class TrainedRun:
    cfg: ReciclConfig
    result: TrainResult


@pytest.fixture(scope="module")
def uninterrupted(
    ray_local, assets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, int], TrainedRun]:
    """``uninterrupted(strategy, zero_stage)``: that configuration trained without faults, once
    per module (each in its own workdir), whichever test asks for it first."""
    from recicl.train import train

    runs: dict[tuple[str, int], TrainedRun] = {}

    def run(strategy: str, stage: int) -> TrainedRun:
        if (strategy, stage) not in runs:
            workdir = tmp_path_factory.mktemp(f"train-{strategy}{stage}")
            blend = {"blend": "logistic"} if strategy == "ddp" else {}  # train.blend, once
            cfg = make_config(workdir, assets, strategy=strategy, zero_stage=stage, **blend)
            runs[strategy, stage] = TrainedRun(cfg, train(cfg))
        return runs[strategy, stage]

    return run


@pytest.mark.parametrize(("strategy", "stage"), STRATEGIES, ids=["ddp", "zero2", "zero3"])
def test_train_learns_checkpoints_logs_and_registers(
    uninterrupted: Callable[[str, int], TrainedRun],
    assets,
    tmp_path: Path,
    strategy: str,
    stage: int,
) -> None:
    from recicl.data.samples_folder import SamplesFolder
    from recicl.modeling.packaged import read_version_manifest
    from recicl.registry import load_version, resolve_tracking_uri

    trained = uninterrupted(strategy, stage)
    cfg, result = trained.cfg, trained.result

    total = 2 * (ROWS_PER_PERIOD * 2 // 2 // 8)  # 2 epochs x (64 rows/rank / batch 8)
    assert result.metrics["step"] == total == result.plan["total_steps"]
    assert result.metrics["epoch"] == 2
    assert 0.0 <= result.metrics["val_auc"] <= 1.0

    # the loss falls clearly (labels are 90% Yes; the random model starts near log 2) ...
    losses = metric_history(cfg, result.run_id, "loss")
    assert [step for step, _ in losses] == list(range(1, total + 1))
    first = np.mean([v for _, v in losses[:2]])
    last = np.mean([v for _, v in losses[-4:]])
    assert last < first - 0.1, (first, last, losses)
    # ... and so does the validation log-loss, against the untrained model on the same prompts
    scores, labels = val_scores(cfg, None)
    base_logloss = log_loss(labels, scores, labels=[0, 1])
    assert result.metrics["val_logloss"] < base_logloss - 0.1, (base_logloss, result.metrics)
    lrs = metric_history(cfg, result.run_id, "lr")
    assert [round(v / 5e-3, 6) for _, v in lrs[:5]] == [0.25, 0.5, 0.75, 1.0, 1.0]  # warm-up
    assert lrs[-1][1] < lrs[5][1] < lrs[4][1]  # then linear decay
    assert len(metric_history(cfg, result.run_id, "val_auc")) == 2  # one per epoch
    padding = metric_history(cfg, result.run_id, "padding_fraction")
    assert padding and all(0.0 <= v < 1.0 for _, v in padding)

    # the final Ray Train checkpoint: trainer state, adapter, strategy state from both ranks
    checkpoint = Path(result.checkpoint_path)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == total
    check_adapter(load_adapter(checkpoint / "adapter"))
    if strategy == "deepspeed":
        files = sorted(p.name for p in (checkpoint / "deepspeed" / "state").iterdir())
        assert any("zero_pp_rank_0" in f for f in files) and any("rank_1" in f for f in files)
    else:
        assert (checkpoint / "ddp_state.pt").is_file()

    # MLflow: params (whole config), system info, registered version with tags + artifacts
    from recicl.registry import client

    mlc = client(resolve_tracking_uri(cfg))
    run = mlc.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.strategy"] == strategy
    assert run.data.params["model.lora.r"] == str(LORA_R)
    assert run.data.tags["sys.world_size"] == "2"
    # each worker ran torch on the CPUs it holds (train.cpus_per_worker: 1), logged with the run
    assert run.data.tags["sys.torch_threads"] == "1"
    assert result.version == "1"
    version = mlc.get_model_version("recicl", result.version)
    assert version.run_id == result.run_id
    assert version.tags["data_manifest_hash"] == "fixturehash42"
    content_id = SamplesFolder.at(assets[0]).content_id()
    assert version.tags["data_samples_content_id"] == content_id
    assert version.tags["prompt_format"] == "recicl"
    assert version.tags["base_model"] == str(assets[1])
    folder = load_version(
        "recicl",
        result.version,
        tracking_uri=resolve_tracking_uri(cfg),
        dst=tmp_path / "downloaded",
    )
    manifest = read_version_manifest(folder)
    assert manifest is not None and manifest.weights == "lora"
    assert manifest.data.manifest_hash == "fixturehash42"
    assert manifest.data.samples_content_id == content_id
    assert manifest.train is not None and manifest.train["strategy"] == strategy
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    assert "Answer:" in json.loads((folder / "template.json").read_text())["question"]
    assert (folder / "base" / "config.json").is_file()  # tiny local base travels along
    if strategy == "ddp":  # train.blend: logistic, fitted on every training-period sample
        from recicl.modeling.packaged import load_packaged_model
        from recicl.modeling.signals import FrozenCounts, _labels, _strings

        blend = load_packaged_model(folder).blend
        rows = SamplesFolder.at(assets[0]).read_table([0, 1])
        users = FrozenCounts.of(_strings(rows["user_id"]), _labels(rows))
        assert list(blend.users.keys) == list(users.keys)
        assert np.array_equal(blend.users.likes, users.likes)
        assert blend.prior == pytest.approx(_labels(rows).mean())
    else:
        assert not (folder / "blend").exists()
    registered = load_adapter(folder / "adapter")
    check_adapter(registered)
    final = load_adapter(checkpoint / "adapter")
    assert all(np.array_equal(registered[k], final[k]) for k in final)
    if stage == 3:  # the gathered ZeRO-3 adapter loads with peft and scores like training did
        scores, labels = val_scores(cfg, folder / "adapter")
        assert log_loss(labels, scores, labels=[0, 1]) == pytest.approx(
            result.metrics["val_logloss"], abs=1e-3
        )


def test_worker_lines_reach_the_console_once(
    uninterrupted: Callable[[str, int], TrainedRun],
) -> None:
    """Every line a training worker prints is in its process's console output once (Ray Train's
    print patch doubled them: one copy to stdout, one through a logger to stderr)."""
    import ray

    uninterrupted("deepspeed", 2)
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    lines_by_pid: dict[str, Counter[str]] = {}
    for path in [*logs.glob("worker-*.out"), *logs.glob("worker-*.err")]:
        pid = path.stem.rsplit("-", 1)[-1]
        steps = [
            line
            for line in path.read_text(errors="replace").splitlines()
            if "[recicl] step" in line
        ]
        lines_by_pid.setdefault(pid, Counter()).update(steps)
    printed = {pid: lines for pid, lines in lines_by_pid.items() if lines}
    assert printed, f"no training worker's step lines under {logs}"
    doubled = {pid: line for pid, lines in printed.items() for line, n in lines.items() if n > 1}
    assert not doubled, doubled


def val_scores(
    cfg: ReciclConfig, adapter: Path | None, *, model: Any = None, ids: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """P(Yes) of the base model (+ adapter), or of ``model`` when given (e.g. a loaded version
    with full weights), on the validation period (its samples ``ids`` only, when given), and
    the labels."""
    import torch

    from recicl.modeling import answer_token_ids, load_model, load_tokenizer, score_prompts
    from recicl.prompts import PromptBuilder

    samples = Path(str(cfg.train.samples_dir))
    tokenizer = load_tokenizer(cfg.model)
    builder = PromptBuilder(cfg.prompt, pq.read_table(samples / "catalog.parquet"), tokenizer)
    rows = pq.read_table(samples / "samples" / "period=2").to_pylist()
    if ids is not None:
        rows = [r for r in rows if r["sample_id"] in set(ids)]
    prompts = [builder.encode(r["history"], r["demos"], r["item_id"]).input_ids for r in rows]
    if model is None:
        model = load_model(cfg.model, for_training=False, adapter=adapter)
    with torch.inference_mode():
        scores = score_prompts(model, tokenizer, prompts, answer_tokens=answer_token_ids(tokenizer))
    return scores, np.array([r["label"] for r in rows])


#: A ZeRO-2 run that keeps every checkpoint and may restart once (the fault tests).
RESTARTABLE_ZERO2: dict[str, Any] = {
    "strategy": "deepspeed",
    "zero_stage": 2,
    "max_failures": 1,
    "keep_checkpoints": None,
}


def fault_once_at(step: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Rank 0 dies hard after optimizer step ``step``, on the first attempt only; returns the
    marker file that records it happened (recicl.train.contract.maybe_fault)."""
    marker = tmp_path / "fault-marker"
    monkeypatch.setenv("RECICL_FAULT_AT_STEP", str(step))
    monkeypatch.setenv("RECICL_FAULT_MARKER", str(marker))
    return marker


def test_fault_restarts_and_resumes_from_checkpoint(
    ray_local,
    uninterrupted: Callable[[str, int], TrainedRun],
    assets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rank 0 dies hard after step 5 (first attempt only); Ray Train restarts the workers, which
    resume from the step-4 checkpoint and finish: every step is logged exactly once (no restart
    from 0) and the final adapter equals the uninterrupted ZeRO-2 run's."""
    from recicl.train import train

    reference_run = uninterrupted("deepspeed", 2).result
    reference = load_adapter(Path(str(reference_run.checkpoint_path)) / "adapter")

    marker = fault_once_at(5, tmp_path, monkeypatch)
    cfg = make_config(tmp_path, assets, checkpoint_every_steps=4, **RESTARTABLE_ZERO2)
    result = train(cfg)

    assert marker.is_file(), "the fault hook never fired"
    total = result.plan["total_steps"]
    assert result.metrics["step"] == total
    resumed = metric_history(cfg, result.run_id, "resumed_from_step")
    assert resumed == [(4, 4.0)], resumed
    losses = metric_history(cfg, result.run_id, "loss")
    assert [step for step, _ in losses] == list(range(1, total + 1))
    checkpoints = sorted(
        p.name for p in Path(result.checkpoint_path).parent.glob("checkpoint_step*")
    )
    assert checkpoints[0] == "checkpoint_step0000004"
    assert checkpoints[-1] == f"checkpoint_step{total:07d}"
    # resuming is exact: same data order and optimizer state as an uninterrupted ZeRO-2 run
    final = load_adapter(Path(result.checkpoint_path) / "adapter")
    assert sorted(final) == sorted(reference)
    worst = max(float(np.abs(final[k] - reference[k]).max()) for k in reference)
    assert worst < 1e-4, worst


FULL_FT_STEPS = 4


# ZeRO-3 only: it is the stage where a rank holds shards that must be gathered for the save; the
# ZeRO-2 save path (whole parameters on every rank) is the LoRA runs' above.
@pytest.mark.parametrize("stage", [3], ids=["zero3"])
def test_full_fine_tuning_under_deepspeed_registers_complete_weights(
    ray_local, assets: tuple[Path, Path], tmp_path: Path, stage: int
) -> None:
    """``model.lora.enabled: false`` tunes every weight on the same Ray Train + DeepSpeed path.

    The version carries full weights (manifest ``weights: full``, no copy of the base): every key
    of the base model with its shape, none empty (under ZeRO-3 a rank holds a 1/world shard of
    each parameter until they are gathered for the save), moved from the base. Loaded with
    ``load_packaged_model``, it scores the validation period like the optimizer's own fp32 master
    weights (rebuilt from the ZeRO checkpoint's partitions, independently of the save) and like
    the in-training validation did, deterministically, and unlike the base model.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.numpy import load_file

    from recicl.modeling import load_model
    from recicl.modeling.packaged import load_packaged_model, read_version_manifest
    from recicl.registry import client, load_version, resolve_tracking_uri
    from recicl.train import train
    from recicl.train.data import choose_train_subset

    cfg = make_config(
        tmp_path,
        assets,
        lora=False,
        strategy="deepspeed",
        zero_stage=stage,
        lr=1e-3,
        max_steps=FULL_FT_STEPS,
        max_val_samples=VAL_CAP,
        threads=2,  # model.num_threads overrides the workers' CPU allotment (1)
    )
    result = train(cfg)
    tags = client(resolve_tracking_uri(cfg)).get_run(str(result.run_id)).data.tags
    assert tags["sys.torch_threads"] == "2"
    assert result.metrics["step"] == FULL_FT_STEPS
    # validation scored the capped draw (train.max_val_samples), chosen by sample id
    assert result.metrics["val_samples"] == VAL_CAP < ROWS_PER_PERIOD
    drawn = choose_train_subset(Path(str(cfg.train.samples_dir)), [2], VAL_CAP, seed=0)

    folder = load_version(
        "recicl", result.version, tracking_uri=resolve_tracking_uri(cfg), dst=tmp_path / "version"
    )
    manifest = read_version_manifest(folder)
    assert manifest is not None and manifest.weights == "full"
    assert manifest.model["lora"]["enabled"] is False
    assert manifest.base_model_artifact is None and not (folder / "base").exists()
    assert not (folder / "adapter" / "adapter_config.json").exists()

    base = load_file(str(assets[1] / "model.safetensors"))
    tuned = load_file(str(folder / "adapter" / "model.safetensors"))
    assert sorted(tuned) == sorted(base)
    for name, value in base.items():
        assert tuned[name].shape == value.shape and tuned[name].size > 0, name
        assert np.isfinite(tuned[name]).all(), name
    unchanged = [name for name in base if np.array_equal(tuned[name], base[name])]
    assert not unchanged, f"not trained: {unchanged}"
    checkpoint = Path(str(result.checkpoint_path))
    final = load_file(str(checkpoint / "adapter" / "model.safetensors"))
    assert all(np.array_equal(tuned[k], final[k]) for k in final)

    loaded = load_packaged_model(folder)
    assert loaded.manifest is not None and loaded.manifest.weights == "full"
    scores, labels = val_scores(cfg, None, model=loaded.model, ids=drawn)
    again, _ = val_scores(cfg, None, model=load_packaged_model(folder).model, ids=drawn)
    np.testing.assert_array_equal(scores, again)
    base_scores, _ = val_scores(cfg, None, ids=drawn)
    assert np.abs(scores - base_scores).max() > 1e-3

    master = get_fp32_state_dict_from_zero_checkpoint(
        str(checkpoint / "deepspeed"), tag="state", exclude_frozen_parameters=True
    )
    assert sorted(master) == sorted(base)
    reference = load_model(cfg.model, for_training=False)  # float32, like the test's training
    reference.load_state_dict(master)  # strict: every key, nothing else
    master_scores, _ = val_scores(cfg, None, model=reference, ids=drawn)
    np.testing.assert_allclose(scores, master_scores, atol=1e-5)
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    assert log_loss(labels, clipped) == pytest.approx(result.metrics["val_logloss"], abs=1e-5)


def test_warm_start_continues_the_versions_adapter(
    uninterrupted: Callable[[str, int], TrainedRun], assets, tmp_path: Path
) -> None:
    """train.init_from continues a registered version's adapter (checked, not assumed): with a
    learning rate too small to move it, the new version's adapter is the old one's; a version
    of another base or LoRA shape is refused before anything trains."""
    from recicl.config import ConfigError
    from recicl.registry import load_version, resolve_tracking_uri
    from recicl.train import train

    first = uninterrupted("deepspeed", 2)
    uri = f"models:/recicl/{first.result.version}"
    cfg = make_config(
        first.cfg.workdir, assets, strategy="deepspeed", zero_stage=2, lr=1e-12, max_steps=2
    )
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"init_from": uri})})
    warm = train(cfg)
    tracking = resolve_tracking_uri(cfg)
    before = load_adapter(load_version("recicl", first.result.version, tracking_uri=tracking,
                                       dst=tmp_path / "a") / "adapter")  # fmt: skip
    after = load_adapter(load_version("recicl", warm.version, tracking_uri=tracking,
                                      dst=tmp_path / "b") / "adapter")  # fmt: skip
    assert sorted(after) == sorted(before)
    moved = max(float(np.abs(after[k] - before[k]).max()) for k in before)
    assert moved < 1e-6, moved
    assert any(float(np.abs(v).max()) > 1e-3 for k, v in before.items() if "lora_B" in k)

    other_shape = make_config(first.cfg.workdir, assets, strategy="deepspeed", zero_stage=2)
    other_shape = other_shape.model_copy(
        update={
            "model": other_shape.model.model_copy(
                update={"lora": other_shape.model.lora.model_copy(update={"r": LORA_R * 2})}
            ),
            "train": other_shape.train.model_copy(update={"init_from": uri}),
        }
    )
    with pytest.raises(ConfigError, match=r"set model\.lora to its shape"):
        train(other_shape)
    other_base = other_shape.model_copy(
        update={"model": other_shape.model.model_copy(update={"name_or_path": str(tmp_path)})}
    )
    with pytest.raises(ConfigError, match="warm-start from a version of the same base"):
        train(other_base)
