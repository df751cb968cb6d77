"""A version download is renamed into its cache folder only once whole: an interrupted one
leaves nothing that evaluation or serving would take for a complete version."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import mlflow.artifacts
import pytest

from recicl import registry


@pytest.fixture
def fake_registry(monkeypatch):
    monkeypatch.setattr(registry, "resolve_version", lambda uri, name, ref: "3")
    monkeypatch.setattr(
        registry,
        "client",
        lambda uri: SimpleNamespace(get_model_version_download_uri=lambda n, v: "runs:/x/model"),
    )
    calls = {"fail": True}

    def download(artifact_uri, dst_path, tracking_uri):
        model = Path(dst_path) / "model"
        model.mkdir()
        (model / "adapter.safetensors").write_text("half")
        if calls["fail"]:
            raise OSError("No space left on device")
        (model / "recicl_version.json").write_text("{}")
        return str(model)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download)
    return calls


def test_an_interrupted_download_leaves_no_version_behind(tmp_path, fake_registry):
    cache = tmp_path / "models" / "recicl" / "3-abc"
    with pytest.raises(OSError, match="No space"):
        registry.load_version("recicl", 3, tracking_uri="sqlite://", dst=cache)
    assert not (cache / "model").exists()
    assert sorted(p.name for p in cache.parent.iterdir()) in ([], ["3-abc"])  # no partials

    fake_registry["fail"] = False
    (cache / "model").mkdir(parents=True)  # a stale half folder from older code is replaced
    (cache / "model" / "stale").write_text("x")
    local = registry.load_version("recicl", 3, tracking_uri="sqlite://", dst=cache)
    assert local == cache / "model"
    assert sorted(p.name for p in local.iterdir()) == ["adapter.safetensors", "recicl_version.json"]
    assert sorted(p.name for p in cache.parent.iterdir()) == ["3-abc"]
