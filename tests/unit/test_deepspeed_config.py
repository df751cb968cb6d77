"""DeepSpeed config generation (pure) and the other pure training helpers: length grouping,
padding, step planning, period parsing. No Ray, no processes.

Every generated DS config is also parsed by DeepSpeed's own ``DeepSpeedConfig`` (which rejects
unknown keys and inconsistent batch sizes), so a key DeepSpeed does not know fails here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from recicl.config import ConfigError, TrainConfig, build_config, load_config
from recicl.train.batching import PaddingStats, group_by_length, pad_batch
from recicl.train.ds_config import build_deepspeed_config, use_bf16
from recicl.train.trainer import plan_steps

ROOT = Path(__file__).resolve().parents[2]
QWEN_YAML = ROOT / "ray_jobs" / "configs" / "qwen2.5-7b-zero3.yaml"
TINY_YAML = ROOT / "ray_jobs" / "configs" / "tiny-cpu.yaml"


def ds_parse(config: dict, world_size: int, monkeypatch: pytest.MonkeyPatch):
    """Parse with DeepSpeed itself, pretending to be one rank of ``world_size``."""
    import deepspeed.comm
    from deepspeed.runtime.config import DeepSpeedConfig

    class DataParallel:
        def get_data_parallel_world_size(self) -> int:
            return world_size

    monkeypatch.setattr(deepspeed.comm, "get_rank", lambda *a, **k: 0)
    return DeepSpeedConfig(dict(config), mpu=DataParallel())


def test_zero2_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    tc = TrainConfig(zero_stage=2, batch_size=8, grad_accum=2, lr=1e-3, weight_decay=0.01)
    config = build_deepspeed_config(tc, world_size=2)
    assert config["train_batch_size"] == 8 * 2 * 2
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert config["gradient_accumulation_steps"] == 2
    assert config["zero_optimization"]["stage"] == 2
    assert "offload_optimizer" not in config["zero_optimization"]
    assert config["optimizer"]["type"] == "AdamW"
    params = config["optimizer"]["params"]
    assert params["lr"] == 1e-3 and params["weight_decay"] == 0.01
    assert params["torch_adam"] is True  # no DeepSpeed op compilation on CPU
    assert config["zero_force_ds_cpu_optimizer"] is False
    assert config["bf16"]["enabled"] is False  # auto = GPU only
    assert config["gradient_clipping"] == 1.0
    assert "scheduler" not in config  # the loop passes one LambdaLR to DeepSpeed and DDP alike
    parsed = ds_parse(config, 2, monkeypatch)
    assert parsed.zero_optimization_stage == 2
    assert parsed.train_batch_size == 32


def test_zero3_on_gpu_uses_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    tc = TrainConfig(zero_stage=3, use_gpu=True, batch_size=4, grad_accum=4)
    config = build_deepspeed_config(tc, world_size=16)
    zero = config["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["overlap_comm"] is True
    assert zero["stage3_gather_16bit_weights_on_model_save"] is False
    assert "allgather_partitions" not in zero  # a ZeRO-2 key
    assert config["bf16"]["enabled"] is True
    assert config["train_batch_size"] == 4 * 4 * 16
    parsed = ds_parse(config, 16, monkeypatch)
    assert parsed.zero_optimization_stage == 3
    assert parsed.zero_config.overlap_comm is True


def test_offload_on_cpu_keeps_torch_adam(monkeypatch: pytest.MonkeyPatch) -> None:
    config = build_deepspeed_config(TrainConfig(zero_stage=3, offload_optimizer=True), 1)
    assert config["zero_optimization"]["offload_optimizer"] == {
        "device": "cpu",
        "pin_memory": False,
    }
    assert config["optimizer"]["params"]["torch_adam"] is True
    assert config["zero_force_ds_cpu_optimizer"] is False
    parsed = ds_parse(config, 1, monkeypatch)
    assert str(parsed.zero_config.offload_optimizer.device).endswith("cpu")


def test_offload_on_gpu_uses_deepspeed_cpu_adam(monkeypatch: pytest.MonkeyPatch) -> None:
    tc = TrainConfig(zero_stage=2, offload_optimizer=True, use_gpu=True)
    config = build_deepspeed_config(tc, 8)
    assert config["zero_optimization"]["offload_optimizer"]["pin_memory"] is True
    assert "torch_adam" not in config["optimizer"]["params"]
    assert "zero_force_ds_cpu_optimizer" not in config
    ds_parse(config, 8, monkeypatch)


@pytest.mark.parametrize(
    ("bf16", "on_gpu", "expected"),
    [("auto", False, False), ("auto", True, True), (True, False, True), (False, True, False),
     ("if-native", False, True), ("if-native", True, False)],
)  # fmt: skip
def test_bf16_resolution(bf16, on_gpu: bool, expected: bool, monkeypatch) -> None:
    """``if-native`` asks the device (here a CPU with bf16 units and a GPU without)."""
    from recicl.modeling import hardware

    monkeypatch.setattr(hardware, "native_bf16", lambda on_gpu: not on_gpu)
    tc = TrainConfig(bf16=bf16)
    assert use_bf16(tc, on_gpu) is expected
    assert build_deepspeed_config(tc, 1, on_gpu=on_gpu)["bf16"]["enabled"] is expected


def test_no_clipping_and_bad_world_size() -> None:
    assert "gradient_clipping" not in build_deepspeed_config(TrainConfig(max_grad_norm=None), 1)
    with pytest.raises(ValueError, match="world_size"):
        build_deepspeed_config(TrainConfig(), 0)


def test_wrong_world_size_is_caught_by_deepspeed(monkeypatch: pytest.MonkeyPatch) -> None:
    config = build_deepspeed_config(TrainConfig(), world_size=4)
    with pytest.raises(AssertionError, match="train_batch_size"):
        ds_parse(config, 2, monkeypatch)


def test_qwen_zero3_job_config_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(QWEN_YAML)
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-7B-Instruct"
    assert cfg.model.lora.enabled and cfg.model.lora.target_modules == "all-linear"
    tc = cfg.train
    assert (tc.strategy, tc.zero_stage, tc.num_workers, tc.use_gpu) == ("deepspeed", 3, 16, True)
    assert tc.storage_path and tc.storage_path.startswith("s3://")
    assert tc.train_periods == list(range(8)) and tc.val_periods == [8]
    config = build_deepspeed_config(tc, tc.num_workers)
    assert config["zero_optimization"]["stage"] == 3
    assert config["bf16"]["enabled"] is True
    assert config["train_batch_size"] == tc.batch_size * tc.grad_accum * 16
    parsed = ds_parse(config, 16, monkeypatch)
    assert parsed.zero_optimization_stage == 3


def test_tiny_cpu_job_config_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(TINY_YAML)
    tc = cfg.train
    assert (tc.strategy, tc.zero_stage, tc.num_workers, tc.use_gpu) == ("deepspeed", 2, 2, False)
    config = build_deepspeed_config(tc, tc.num_workers)
    assert config["bf16"]["enabled"] is False
    ds_parse(config, 2, monkeypatch)


# ---------------------------------------------------------------------------------------------
# other pure helpers of recicl.train


def test_periods_parse_from_strings_lists_and_ints() -> None:
    cfg = build_config({"train": {"train_periods": "0-2, 5,7-8", "val_periods": 9}})
    assert cfg.train.train_periods == [0, 1, 2, 5, 7, 8]
    assert cfg.train.val_periods == [9]
    assert build_config({"train": {"val_periods": []}}).train.val_periods == []
    with pytest.raises(ConfigError, match="runs backwards"):
        build_config({"train": {"train_periods": "5-2"}})
    with pytest.raises(ConfigError, match="cannot read periods"):
        build_config({"train": {"train_periods": "a-b"}})


def test_train_config_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="zero_stage"):
        build_config({"train": {"zero_stag": 3}})


def _chunk(lengths: list[int]) -> dict[str, np.ndarray]:
    n = len(lengths)
    ids = np.empty(n, dtype=object)
    for i, length in enumerate(lengths):
        ids[i] = np.arange(1, length + 1, dtype=np.int32)
    return {
        "input_ids": ids,
        "length": np.asarray(lengths, np.int32),
        "label": np.arange(n, dtype=np.int8) % 2,
    }


def test_length_grouping_reduces_padding_and_keeps_every_row() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=64).tolist()
    grouped = list(group_by_length([_chunk(lengths)], 8, seed=(0, 1)))
    plain = list(group_by_length([_chunk(lengths)], 8, seed=(0, 1), length_grouping=False))
    assert len(grouped) == len(plain) == 8
    assert sorted(np.concatenate([b["length"] for b in grouped]).tolist()) == sorted(lengths)
    pad_grouped, pad_plain = PaddingStats(), PaddingStats()
    for batch in grouped:
        pad_grouped.add(batch["length"])
    for batch in plain:
        pad_plain.add(batch["length"])
    assert pad_grouped.padding_fraction < 0.1 < pad_plain.padding_fraction
    # batch order is shuffled: not simply ascending by length
    maxima = [int(b["length"].max()) for b in grouped]
    assert maxima != sorted(maxima)
    # same seed, same batches; another seed, another order
    again = list(group_by_length([_chunk(lengths)], 8, seed=(0, 1)))
    pairs = zip(grouped, again, strict=True)
    assert all(np.array_equal(a["length"], b["length"]) for a, b in pairs)
    other = list(group_by_length([_chunk(lengths)], 8, seed=(0, 2)))
    assert [int(b["length"].max()) for b in other] != maxima


def test_grouping_batch_count_and_partial_batch() -> None:
    chunks = [_chunk([3] * 32), _chunk([4] * 5)]  # a window of 4 batches + a remainder of 5 rows
    batches = list(group_by_length(chunks, 8, seed=0))
    assert [len(b["length"]) for b in batches][:4] == [8, 8, 8, 8]
    assert sorted(len(b["length"]) for b in batches[4:]) == [5]


def test_pad_batch_left_and_right() -> None:
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, side="right", multiple_of=4)
    assert ids.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    with pytest.raises(ValueError):
        pad_batch([[]], pad_id=0)


def test_adam_betas_reach_both_optimizers() -> None:
    cfg = build_config({"train": {"adam_betas": [0.9, 0.98]}})
    assert build_deepspeed_config(cfg.train, 2)["optimizer"]["params"]["betas"] == [0.9, 0.98]
    default = build_config({}).train
    assert build_deepspeed_config(default, 2)["optimizer"]["params"]["betas"] == [0.9, 0.999]
    with pytest.raises(ConfigError, match="adam_betas"):
        build_config({"train": {"adam_betas": [0.9, 1.0]}})


def test_plan_steps() -> None:
    cfg = build_config({"train": {"num_workers": 2, "batch_size": 8, "grad_accum": 2, "epochs": 3}})
    plan = plan_steps(cfg, train_rows=100, val_rows=10)  # 50 rows/rank → 7 micro → 3 steps
    assert plan["micro_batches_per_epoch"] == 6
    assert plan["steps_per_epoch"] == 3
    assert plan["total_steps"] == 9
    cfg = build_config({"train": {"num_workers": 2, "batch_size": 8, "max_steps": 50}})
    assert plan_steps(cfg, train_rows=100, val_rows=0)["total_steps"] == 50
    with pytest.raises(ConfigError, match="too few"):
        plan_steps(cfg, train_rows=1, val_rows=0)


def test_shuffle_keys_are_a_reproducible_seeded_order() -> None:
    from recicl.data.samples_folder import sample_keys

    ids = np.array([f"s{i}" for i in range(200)], dtype=object)
    order = np.argsort(sample_keys(ids, 0))
    assert np.array_equal(order, np.argsort(sample_keys(ids.copy(), 0)))  # same every run
    assert not np.array_equal(order, np.arange(200))  # really shuffled
    assert not np.array_equal(order, np.argsort(sample_keys(ids, 1)))  # the seed matters
    assert len(set(sample_keys(ids, 0).tolist())) == 200
