"""The samples folder: the one owner of the layout `recicl samples build` writes.

Training, evaluation, promotion, the streaming experiment, the taste probe and serving all read
this folder. Each used to spell the layout itself (``samples/period=K``, ``catalog.parquet``,
``manifest.json``) and to choose between ``train.samples_dir`` and ``samples.output`` on its own;
this type is now the only place that knows either.

Layout::

    <root>/
      samples/period=K/*.parquet   one partition per period (the SAMPLES schema minus ``period``)
      catalog.parquet              item_id, title, attributes: renders prompts, checks item ids
      manifest.json                what was built from what (counts per period, config, source)
      quarantine/                  rows and catalog entries that failed validation
      item_embeddings.parquet      item vectors, when a policy retrieves by similarity
      demo_quality.json            the quality policy's fitted estimator (when used)
      item_stats.parquet           events and likes per item up to samples.item_stats_until
      augmented/policy=P/period=K/ the same samples chosen by policy P (samples.augment)

**Content identity.** Evaluations are cached in MLflow and reused by the promotion gate, so
"the same samples" must mean the same *bytes*, not the same config: rebuilding from a grown log
with an unchanged config gives new samples that a config hash cannot tell apart from the old
ones. :meth:`SamplesFolder.content_id` hashes the sample and catalog files themselves.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from recicl.config import ConfigError, ReciclConfig
from recicl.data.item_embeddings import EMBEDDINGS_FILE
from recicl.data.item_stats import ITEM_STATS_FILE
from recicl.data.manifest import SamplesManifest
from recicl.data.schema import SAMPLES

if TYPE_CHECKING:
    import ray.data

DEMO_QUALITY_FILE = "demo_quality.json"
SAMPLES_DIR, CATALOG_FILE, MANIFEST_FILE, QUARANTINE_DIR, AUGMENTED_DIR = (
    "samples",
    "catalog.parquet",
    "manifest.json",
    "quarantine",
    "augmented",
)
#: Everything a build writes, in the order a rebuild replaces it (never mixing old and new files;
#: the manifest last).
BUILD_OUTPUTS = (
    SAMPLES_DIR,
    AUGMENTED_DIR,
    QUARANTINE_DIR,
    CATALOG_FILE,
    EMBEDDINGS_FILE,
    DEMO_QUALITY_FILE,
    ITEM_STATS_FILE,
    MANIFEST_FILE,
)
_HASH_CHUNK = 1 << 20


def sample_keys(sample_ids: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 per sample id. Sorting by it is a reproducible shuffle, and
    taking the smallest keys is a reproducible draw that depends on the ids only, never on the
    row order a build happened to write (training shuffles and subsets, evaluation subsets).
    (pandas' keyed SipHash: vectorized, and the same on every machine and Python run.)"""
    import pandas as pd

    key = f"{seed & 0xFFFF_FFFF_FFFF_FFFF:016x}"  # the 16-character hash key
    return pd.util.hash_array(np.asarray(sample_ids, dtype=object).astype(str), hash_key=key)


def configured_samples_dir(cfg: ReciclConfig) -> str | None:
    """The samples folder a config points at: ``train.samples_dir``, else ``samples.output``
    (the folder `recicl samples build` writes). None when neither is set."""
    return cfg.train.samples_dir or cfg.samples.output


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class SamplesFolder:
    """A samples folder on a local path or a shared mount (see the module doc for the layout)."""

    root: Path

    @classmethod
    def at(cls, path: str | Path) -> SamplesFolder:
        """The folder at ``path``, checked to hold samples (a clear error naming the command
        that writes them otherwise)."""
        root = Path(path).expanduser().resolve()
        folder = cls(root)
        if not folder.samples_root.is_dir():
            raise ConfigError(
                f"{root} has no {SAMPLES_DIR}/ folder: run `recicl samples build --output {root}`"
            )
        return folder

    @classmethod
    def from_config(cls, cfg: ReciclConfig, override: str | Path | None = None) -> SamplesFolder:
        """``override`` (a --samples flag) → ``train.samples_dir`` → ``samples.output``."""
        chosen = override or configured_samples_dir(cfg)
        if not chosen:
            raise ConfigError(
                "no samples folder: set train.samples_dir (or pass --samples DIR) to the output "
                "folder of `recicl samples build`"
            )
        folder = cls.at(chosen)
        folder.require_catalog()  # training and experiments render prompts from it
        return folder

    # -- paths ---------------------------------------------------------------------------------

    @property
    def samples_root(self) -> Path:
        return self.root / SAMPLES_DIR

    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG_FILE

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def quarantine_dir(self) -> Path:
        return self.root / QUARANTINE_DIR

    @property
    def embeddings_path(self) -> Path:
        return self.root / EMBEDDINGS_FILE

    @property
    def demo_quality_path(self) -> Path:
        return self.root / DEMO_QUALITY_FILE

    @property
    def item_stats_path(self) -> Path:
        return self.root / ITEM_STATS_FILE

    def staging(self) -> SamplesFolder:
        """An empty sibling folder a build writes into before :meth:`replace_outputs` moves its
        files here: while a rebuild runs (minutes on a large log), readers such as a serving
        replica loading its catalog still find the previous build whole."""
        staging = self.root.with_name(f".{self.root.name}.building")
        if staging.exists():  # left by a build that crashed
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return SamplesFolder(staging)

    def replace_outputs(self, built: SamplesFolder) -> None:
        """Move every build output of ``built`` (a :meth:`staging` folder) here, replacing the
        previous build's one by one with renames (old outputs absent from the new build, e.g.
        augmented samples no longer asked for, are removed); other files in the folder are
        left alone. The manifest goes last, so a folder with a new manifest has all of its
        new files; the staging folder is removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        trash = self.root.with_name(f".{self.root.name}.replaced")
        if trash.exists():
            shutil.rmtree(trash)
        trash.mkdir()
        for name in BUILD_OUTPUTS:  # the manifest is last in BUILD_OUTPUTS
            old, new = self.root / name, built.root / name
            if new.is_file() and not old.is_dir():
                new.replace(old)  # atomic: a reader sees the old file or the new one
                continue
            if old.exists():  # a folder cannot be swapped in one rename: two, microseconds apart
                old.rename(trash / name)
            if new.exists():
                new.rename(old)
        shutil.rmtree(trash)
        shutil.rmtree(built.root)

    def augmented_root(self, policy: str) -> Path:
        """Where the samples of augmentation policy ``policy`` live (period partitions)."""
        return self.root / AUGMENTED_DIR / f"policy={policy}"

    def augmented_policies(self) -> list[str]:
        """Augmentation policies with samples on disk, sorted."""
        base = self.root / AUGMENTED_DIR
        return sorted(p.name.split("=", 1)[1] for p in base.glob("policy=*") if p.is_dir())

    def require_catalog(self) -> Path:
        """The catalog's path, for callers that render prompts (titles) from it."""
        if not self.catalog_path.is_file():
            raise ConfigError(f"{self.root} has no {CATALOG_FILE}: it is not a samples folder")
        return self.catalog_path

    # -- manifest and periods ------------------------------------------------------------------

    def manifest(self) -> SamplesManifest | None:
        """The build manifest, or None when the folder has none (hand-made test fixtures)."""
        path = self.manifest_path
        return SamplesManifest.read(path) if path.is_file() else None

    def require_manifest(self) -> SamplesManifest:
        """The build manifest, for callers that need what it records (counts, config)."""
        manifest = self.manifest()
        if manifest is None:
            raise ConfigError(
                f"{self.root} has no {MANIFEST_FILE}: run `recicl samples build --output "
                f"{self.root}`"
            )
        return manifest

    def _partitions(self, policy: str | None) -> Path:
        """Where the period partitions of the main samples (None) or of an augmentation policy
        live."""
        if policy is None:
            return self.samples_root
        root = self.augmented_root(policy)
        if not root.is_dir():
            raise ConfigError(
                f"{self.root} has no samples of augmentation policy {policy!r} (it has "
                f"{self.augmented_policies() or 'none'}): build with samples.augment"
            )
        return root

    def periods(self, policy: str | None = None) -> list[int]:
        """Periods with a partition on disk, ascending."""
        root = self._partitions(policy)
        return sorted(int(p.name.split("=", 1)[1]) for p in root.glob("period=*") if p.is_dir())

    def sample_counts(self) -> dict[int, int]:
        """Samples per period as the manifest records them ({} without a manifest)."""
        manifest = self.manifest()
        return manifest.sample_counts() if manifest else {}

    def count_rows(self, periods: list[int]) -> int:
        """Samples of ``periods``: from the manifest when it has them (no data pass), else by
        counting the rows (hand-made folders)."""
        if not periods:
            return 0
        counts = self.sample_counts()
        if all(p in counts for p in periods):
            return sum(counts[p] for p in periods)
        return int(self.read_dataset(periods).count())

    def last_event_ts(self) -> int:
        """Unix seconds of the newest valid event the folder was built from: where the log
        ends, so what serving stored later is new to a version tuned on it (``recicl
        retune``). From ``last_event_ts``, or from the periods' ISO ``last_event`` in manifests
        written before it existed."""
        manifest = self.require_manifest()
        if manifest.last_event_ts is not None:
            return manifest.last_event_ts
        stamps = [
            datetime.fromisoformat(row.last_event.replace("Z", "+00:00"))
            for row in manifest.periods
            if row.last_event
        ]
        if not stamps:
            raise ConfigError(f"{self.root} was built from no valid event: rebuild it")
        return int(max(stamps).timestamp())

    def newest_period(self) -> int:
        """The newest period that has samples (the default for evaluation and promotion)."""
        counts = self.sample_counts()
        with_samples = [p for p, n in counts.items() if n] if counts else self.periods()
        if not with_samples:
            raise ConfigError(f"{self.root} has no period with samples")
        return max(with_samples)

    def period_paths(self, periods: list[int] | None, policy: str | None = None) -> list[str]:
        """Partition folders of ``periods`` (all when None) of the main samples or of an
        augmentation ``policy``; unknown periods are an error that lists the available ones."""
        available = self.periods(policy)
        chosen = available if periods is None else periods
        missing = sorted(set(chosen) - set(available))
        if missing:
            raise ConfigError(
                f"periods {missing} have no samples in {self.root}; available: {available}"
            )
        return [str(self._partitions(policy) / f"period={p}") for p in chosen]

    # -- reading -------------------------------------------------------------------------------

    def read_table(self, periods: list[int] | None = None, policy: str | None = None) -> pa.Table:
        """All samples of the chosen periods as one Arrow table in the SAMPLES schema (those of
        augmentation ``policy`` when given)."""
        tables = []
        for path in self.period_paths(periods, policy):
            period = int(path.rsplit("=", 1)[1])
            table = pds.dataset(path, format="parquet").to_table()
            periods_column = pa.array(np.full(table.num_rows, period, np.int16))
            table = table.append_column("period", periods_column)
            tables.append(table.select(SAMPLES.names).cast(SAMPLES))
        return pa.concat_tables(tables) if tables else SAMPLES.empty_table()

    def read_dataset(
        self, periods: list[int] | None = None, policy: str | None = None
    ) -> ray.data.Dataset:
        """Samples of the chosen periods as a Ray Dataset in the SAMPLES schema (those of
        augmentation ``policy`` when given)."""
        import ray.data

        return ray.data.read_parquet(
            self.period_paths(periods, policy), include_paths=True, partitioning=None
        ).map_batches(_add_period, batch_size=None, batch_format="pyarrow")

    # -- identity ------------------------------------------------------------------------------

    def content_id(self) -> str:
        """Hash of the sample and catalog files (relative paths and bytes). Equal identities
        mean the same files; a rebuild writes new file names, so it gets a new identity even
        when the samples came out the same (conservative: a cached evaluation is then
        recomputed, never reused on other data). The bytes are read once per process for as
        long as no file's size or modification time changes."""
        files = sorted(p for p in self.samples_root.rglob("*") if p.is_file())
        files += sorted(p for p in (self.root / AUGMENTED_DIR).rglob("*") if p.is_file())
        extra = (
            self.catalog_path,
            self.embeddings_path,
            self.demo_quality_path,
            self.item_stats_path,
        )
        files += [p for p in extra if p.is_file()]
        signature = tuple(
            (path.relative_to(self.root).as_posix(), stat.st_size, stat.st_mtime_ns)
            for path, stat in ((path, path.stat()) for path in files)
        )
        return _content_id(self.root, signature)


@functools.lru_cache(maxsize=16)
def _content_id(root: Path, signature: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for relative, _, _ in signature:
        digest.update(f"{relative}\0{_file_digest(root / relative)}\n".encode())
    return digest.hexdigest()[:16]


def _add_period(batch: pa.Table) -> pa.Table:
    """Ray Data UDF: the period from each row's ``.../period=K/...`` file path, as int16."""
    found = pc.extract_regex(batch["path"], r"period=(?P<period>\d+)")
    periods = pc.struct_field(found, "period").cast(pa.int16())
    return batch.drop_columns(["path"]).append_column("period", periods).select(SAMPLES.names)
