"""Training data: which periods, how many rows, and the tokenized Ray Datasets.

Samples are read through the data layer's :class:`recicl.data.samples_folder.SamplesFolder` and
encoded by :class:`recicl.prompts.PromptBuilder` in Ray Data tasks (one cached tokenizer + builder
per worker process, its piece cache reused across batches). Ray Train splits each dataset across
the workers (``streaming_split(equal=True)``), so every rank gets the same number of rows.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recicl.config import ConfigError, ModelConfig, PromptConfig, ReciclConfig, TrainConfig
from recicl.data.item_stats import prompt_item_stats
from recicl.data.samples_folder import SamplesFolder, sample_keys
from recicl.modeling import load_tokenizer
from recicl.prompts import PromptBuilder

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

log = logging.getLogger(__name__)

#: Columns the workers need; everything else is dropped after encoding.
ENCODED_COLUMNS = ["input_ids", "demo_answers", "length", "label"]


def choose_periods(tc: TrainConfig, available: list[int]) -> tuple[list[int], list[int]]:
    """(train, val) periods: explicit ones are checked; defaults see TrainConfig's docs."""
    if not available:
        raise ConfigError("the samples folder has no period=K partitions")
    if tc.val_periods is not None:
        val = list(tc.val_periods)
    else:
        val = [available[-1]] if len(available) >= 2 else []
    if tc.train_periods is not None:
        train = list(tc.train_periods)
    else:
        train = [p for p in available if p not in val]
    for name, chosen in (("train_periods", train), ("val_periods", val)):
        missing = sorted(set(chosen) - set(available))
        if missing:
            raise ConfigError(
                f"train.{name}: periods {missing} have no samples; available: {available}"
            )
    if not train:
        raise ConfigError(f"train.train_periods is empty (available periods: {available})")
    overlap = sorted(set(train) & set(val))
    if overlap:
        log.warning("periods %s are used for training and validation alike", overlap)
    return train, val


#: Per-process builders (tokenizer + piece cache), keyed by prompt/model config and catalog file.
#: Ray Data runs encoding as tasks in Ray's pooled worker processes, so a process that encoded
#: once (an earlier epoch, the validation split, a previous run in the same cluster) skips the
#: tokenizer load (seconds) next time. Bounded: the oldest entry goes first.
_BUILDERS: dict[str, Any] = {}
_MAX_BUILDERS = 2


def _builder(settings: str, catalog_path: str) -> Any:
    import pyarrow.parquet as pq

    catalog = Path(catalog_path)
    key = f"{settings}\0{catalog}\0{catalog.stat().st_mtime_ns}"
    builder = _BUILDERS.get(key)
    if builder is None:
        parsed = json.loads(settings)
        tokenizer = load_tokenizer(ModelConfig.model_validate(parsed["model"]))
        prompt = PromptConfig.model_validate(parsed["prompt"])
        builder = PromptBuilder(
            prompt,
            pq.read_table(catalog),
            tokenizer,
            item_stats=prompt_item_stats(prompt, catalog.parent),
        )
        while len(_BUILDERS) >= _MAX_BUILDERS:
            _BUILDERS.pop(next(iter(_BUILDERS)))
        _BUILDERS[key] = builder
    return builder


def _encode_twins(builder: Any, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ``twin_*`` columns of :func:`encode_samples`: the perturbed contexts of the rows
    that have one (``has_twin``, from :func:`recicl.data.perturb.with_twins`), encoded by the
    same builder as the clean ones."""
    n = len(batch["has_twin"])
    rows = np.flatnonzero(np.asarray(batch["has_twin"], dtype=bool))
    ids = np.empty(n, dtype=object)
    answers = np.empty(n, dtype=object)
    for row in range(n):
        ids[row] = np.zeros(0, dtype=np.int32)
        answers[row] = np.zeros(0, dtype=np.int32)
    length = np.zeros(n, dtype=np.int32)
    if len(rows):
        twins = {key: np.asarray(values)[rows] for key, values in batch.items()}
        twins["demos"], twins["history"] = twins["twin_demos"], twins["twin_history"]
        encoded = builder.encode_batch(twins)
        for k, index in enumerate(rows.tolist()):
            ids[index] = encoded["input_ids"][k]
            answers[index] = encoded["demo_answers"][k]
        length[rows] = encoded["length"]
    return {"twin_input_ids": ids, "twin_demo_answers": answers, "twin_length": length}


def encode_samples(
    batch: dict[str, np.ndarray], settings: str, catalog_path: str, seed: int = 0
) -> dict[str, np.ndarray]:
    """Ray Data UDF: sample rows → ``input_ids``/``demo_answers``/``length``/``label``/``period``
    and ``shuffle_key`` (and the ``twin_*`` columns when the rows carry perturbed twins).
    ``settings``: JSON of the ``prompt`` and ``model`` config sections."""
    builder = _builder(settings, catalog_path)
    encoded = builder.encode_batch(batch)
    out = {key: encoded[key] for key in [*ENCODED_COLUMNS, "period"]}
    out["shuffle_key"] = sample_keys(np.asarray(batch["sample_id"]), seed)
    if "has_twin" in batch:
        out.update(_encode_twins(builder, batch))
    return out


def train_subset_size(max_train_samples: int | float | None, rows: int) -> int:
    """How many of ``rows`` training samples ``train.max_train_samples`` keeps."""
    if max_train_samples is None:
        return rows
    if isinstance(max_train_samples, float):
        return min(rows, max(1, round(rows * max_train_samples)))
    return min(rows, int(max_train_samples))


def training_rows(
    folder: SamplesFolder, tc: TrainConfig, train_periods: list[int], val_periods: list[int]
) -> int:
    """How many rows :func:`encoded_datasets` trains on, counted without a data pass (steps
    per epoch need it before the run): the (sub)set of samples of the training periods that
    are not validated, every sample of those that are (validation reads them whole), and each
    augmented policy's copy of the former."""
    rest = [p for p in train_periods if p not in val_periods]
    chosen = choose_train_subset(folder.root, train_periods, tc.max_train_samples, tc.seed)
    if chosen is None:
        kept = folder.count_rows(rest)
    else:
        import pyarrow.parquet as pq

        ids = [
            pq.read_table(p, columns=["sample_id"])["sample_id"] for p in folder.period_paths(rest)
        ]
        in_rest = np.concatenate([c.to_numpy() for c in ids]) if ids else np.array([], object)
        kept = int(np.isin(in_rest.astype(object), chosen).sum())
    validated = folder.count_rows([p for p in train_periods if p in val_periods])
    policies = folder.augmented_policies() if tc.use_augmented and rest else []
    return kept + validated + len(policies) * kept


def choose_train_subset(
    samples_dir: Path, periods: list[int], max_train_samples: int | float | None, seed: int
) -> np.ndarray | None:
    """Sample ids of the few-shot training subset (``train.max_train_samples``; also the capped
    validation draw, ``train.max_val_samples``), or None for all. The ids with the smallest
    seeded hash keys are kept: the same ids in every run, on any number of workers, and nested
    across sizes (16 ⊂ 64 ⊂ 256 for the same seed)."""
    import pyarrow.parquet as pq

    if max_train_samples is None:
        return None
    ids = np.concatenate(
        [
            pq.read_table(path, columns=["sample_id"]).column("sample_id").to_numpy()
            for path in SamplesFolder.at(samples_dir).period_paths(periods)
        ]
    ).astype(object)
    keep = train_subset_size(max_train_samples, len(ids))
    if keep >= len(ids):
        return None
    order = np.argsort(sample_keys(ids, seed), kind="stable")
    return np.sort(ids[order[:keep]].astype(str))


def _keep_subset(
    batch: dict[str, np.ndarray], train_ids: np.ndarray, train_periods: list[int]
) -> dict[str, np.ndarray]:
    """Ray Data UDF: rows of ``train_periods`` only when chosen (``train_ids``: the few-shot
    subset, or the capped validation draw with the validation-only periods)."""
    in_train = np.isin(np.asarray(batch["period"]), train_periods)
    chosen = np.isin(np.asarray(batch["sample_id"]).astype(str), train_ids)
    mask = ~in_train | chosen
    return {key: np.asarray(values)[mask] for key, values in batch.items()}


def _tag_policy(batch: pa.Table, policy: str) -> pa.Table:
    """Ray Data UDF: augmented rows get ``<sample_id>@<policy>`` ids, so their shuffle keys
    differ from the main copy's (the two copies of a sample do not land side by side). Arrow
    batches: a numpy batch of empty history lists would travel as pickled objects."""
    import pyarrow.compute as pc

    tagged = pc.binary_join_element_wise(batch["sample_id"], policy, "@")
    return batch.set_column(batch.schema.get_field_index("sample_id"), "sample_id", tagged)


def _encoded(
    samples: ray.data.Dataset, settings: str, catalog_path: str, tc: TrainConfig, rest: list[int]
) -> Any:
    """Tokenized rows; with a perturbation in some stage (``train.perturbation``), the
    training rows (of ``rest``) chosen by its share also get their perturbed twin."""
    seed, spec = tc.seed, tc.perturbation
    if spec is not None and rest:  # training rows only: validation reads clean contexts
        from recicl.data.perturb import with_twins

        samples = samples.map_batches(
            functools.partial(with_twins, spec=spec, seed=seed, periods=rest),
            batch_format="pyarrow",
            batch_size=1024,  # the pool another user's demonstrations are drawn from
            num_cpus=0.25,
        )
    return samples.map_batches(
        functools.partial(encode_samples, settings=settings, catalog_path=catalog_path, seed=seed),
        batch_format="numpy",
        batch_size=256,
        num_cpus=0.5,
    )


def _keep_periods(batch: dict[str, np.ndarray], periods: list[int]) -> dict[str, np.ndarray]:
    mask = np.isin(np.asarray(batch["period"]), periods)
    return {key: np.asarray(values)[mask] for key, values in batch.items() if key != "period"}


def encoded_datasets(
    cfg: ReciclConfig,
    samples_dir: Path,
    train_periods: list[int],
    val_periods: list[int],
) -> tuple[ray.data.Dataset, ray.data.Dataset | None]:
    """Tokenized (train, val) datasets. One encoding pass covers both; with
    ``train.materialize_data`` the tokens are computed once here and every epoch reads them from
    the object store instead of re-tokenizing."""
    periods = sorted(set(train_periods) | set(val_periods))
    settings = json.dumps(
        {"prompt": cfg.prompt.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json")},
        sort_keys=True,
    )
    folder = SamplesFolder.at(samples_dir)
    samples = folder.read_dataset(periods)
    train_ids = choose_train_subset(
        samples_dir, train_periods, cfg.train.max_train_samples, cfg.train.seed
    )
    rest = [p for p in train_periods if p not in val_periods]
    keep_subset = None
    if train_ids is not None:
        keep_subset = functools.partial(_keep_subset, train_ids=train_ids, train_periods=rest)
        samples = samples.map_batches(keep_subset, batch_format="numpy", num_cpus=0.25)
    val_only = [p for p in val_periods if p not in train_periods]
    val_ids = None
    if val_only:
        val_ids = choose_train_subset(
            samples_dir, val_only, cfg.train.max_val_samples, cfg.train.seed
        )
    if val_ids is not None:  # the capped validation draw (train.max_val_samples)
        keep_val = functools.partial(_keep_subset, train_ids=val_ids, train_periods=val_only)
        samples = samples.map_batches(keep_val, batch_format="numpy", num_cpus=0.25)
    spec = cfg.train.perturbation
    if spec is not None and not rest:
        raise ConfigError(
            f"a stage perturbs its contexts, but every training period {train_periods} is also "
            f"a validation period ({val_periods}), and validation samples are never perturbed: "
            "set train.val_periods to other periods (or []), or drop the perturbation"
        )
    if spec is not None:
        log.info("a perturbed twin context for %.0f%% of the training samples", 100 * spec.share)
    catalog_path = str(folder.catalog_path)
    encoded = _encoded(samples, settings, catalog_path, cfg.train, rest)
    policies = folder.augmented_policies() if cfg.train.use_augmented and rest else []
    for policy in policies:  # the same (sub)set of samples, with other demonstrations
        extra = folder.read_dataset(rest, policy=policy)
        if keep_subset is not None:
            extra = extra.map_batches(keep_subset, batch_format="numpy", num_cpus=0.25)
        extra = extra.map_batches(
            functools.partial(_tag_policy, policy=policy), batch_format="pyarrow", num_cpus=0.25
        )
        # Unioned once tokenized: the encoded columns have one type whatever the source.
        encoded = encoded.union(_encoded(extra, settings, catalog_path, cfg.train, rest))
    if policies:
        log.info("training also on the augmented samples of policies %s", policies)
    if cfg.train.materialize_data:
        encoded = encoded.materialize()

    def subset(chosen: list[int], shuffle: bool) -> ray.data.Dataset:
        part = encoded.map_batches(
            functools.partial(_keep_periods, periods=chosen), batch_format="numpy", num_cpus=0.25
        )
        if shuffle:
            # Samples are stored by period and, within a period, grouped by user: read in order,
            # a micro-batch would hold one or two users (one taste) from one period, and the
            # gradient would follow them instead of the population. Sorting by a seeded hash of
            # the sample id is a shuffle that is the same in every run and every restart, so a
            # resumed run skips exactly the batches it had already trained on. (Ray's
            # random_shuffle and local shuffle buffers depend on block arrival order.)
            part = part.sort("shuffle_key")
        return part.materialize() if cfg.train.materialize_data else part

    train = subset(train_periods, shuffle=cfg.train.shuffle)
    return train, (subset(val_periods, shuffle=False) if val_periods else None)
