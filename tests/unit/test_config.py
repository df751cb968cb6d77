"""Configuration: typed, documented, strict about unknown keys, overridable by flags."""

from __future__ import annotations

import pytest

from recicl.config import ConfigError, ReciclConfig, build_config, load_config, with_overrides


def test_defaults_are_documented():
    def walk(model):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation)
            else:
                assert field.description, f"{model.__name__}.{name} has no description"

    walk(ReciclConfig)


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("samples:\n  num_demo: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "samples.num_demo" in message and "did you mean 'num_demos'" in message


def test_bad_value_names_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("samples:\n  periods: 0\n")
    with pytest.raises(ConfigError, match=r"samples\.periods"):
        load_config(path)


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is not a file: pass --config with a YAML file"):
        load_config(tmp_path)  # a folder (or /dev/null) exists but is no config
    path = tmp_path / "c.yaml"
    path.write_text("samples: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_flags_override_file_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("samples:\n  num_demos: 3\n  history_len: 7\n")
    cfg = with_overrides(load_config(path), {"samples.num_demos": 6, "samples.history_len": None})
    assert cfg.samples.num_demos == 6
    assert cfg.samples.history_len == 7  # a flag that was not given leaves the file's value


def test_boundaries_must_increase():
    with pytest.raises(ConfigError, match="strictly increasing"):
        with_overrides(ReciclConfig(), {"samples.boundaries": ["2001-01-01", "2000-01-01"]})


def test_max_train_samples_is_a_count_or_a_fraction() -> None:
    from recicl.config import build_config

    assert build_config({"train": {"max_train_samples": 64}}).train.max_train_samples == 64
    assert build_config({"train": {"max_train_samples": 0.1}}).train.max_train_samples == 0.1
    assert build_config({"train": {"max_train_samples": 256.0}}).train.max_train_samples == 256
    for bad in (0, 1.5, -3):
        with pytest.raises(ConfigError, match="max_train_samples"):
            build_config({"train": {"max_train_samples": bad}})


def test_override_of_a_mistyped_section_names_it_and_the_valid_sections() -> None:
    with pytest.raises(ConfigError) as error:
        with_overrides(ReciclConfig(), {"srve.port": 1})
    message = str(error.value)
    assert "unknown section 'srve'" in message and "did you mean 'serve'" in message
    listed = message.rpartition("sections here: ")[2].split(", ")
    assert {"data", "samples", "serve", "train"} <= set(listed)
    assert "workdir" not in listed  # a value, not a section


def test_override_of_a_mistyped_nested_section_names_its_full_path() -> None:
    with pytest.raises(ConfigError) as error:
        with_overrides(ReciclConfig(), {"data.colums.user_id": "uid"})
    message = str(error.value)
    assert "unknown section 'data.colums'" in message and "did you mean 'columns'" in message


def test_override_of_a_mistyped_key_in_a_valid_section_names_it() -> None:
    with pytest.raises(ConfigError) as error:
        with_overrides(ReciclConfig(), {"serve.prot": 1})
    message = str(error.value)
    assert "serve.prot" in message and "did you mean 'port'" in message


def test_override_below_a_plain_value_says_it_is_not_a_section() -> None:
    with pytest.raises(ConfigError, match=r"serve\.port is not a section"):
        with_overrides(ReciclConfig(), {"serve.port.number": 1})


def test_redacted_dump_masks_secrets_only():
    from recicl.config import build_config

    cfg = build_config(
        {
            "serve": {"admin_token": "tok", "store_url": "redis://:pw@redis:6379/0"},
            "mlflow": {"tracking_uri": "https://bob:pw2@mlflow.example/api"},
        }
    )
    dump = cfg.redacted_dump()
    assert dump["serve"]["admin_token"] == "***"
    assert dump["serve"]["store_url"] == "redis://:***@redis:6379/0"
    assert dump["mlflow"]["tracking_uri"] == "https://bob:***@mlflow.example/api"
    # not secrets: token budgets, URLs without a password, empty values
    assert dump["embeddings"]["max_text_tokens"] == cfg.embeddings.max_text_tokens
    assert dump["prompt"] == cfg.model_dump(mode="json")["prompt"]
    plain = build_config({"serve": {"store_url": "redis://redis:6379/0"}}).redacted_dump()
    assert plain["serve"]["store_url"] == "redis://redis:6379/0"
    assert plain["serve"]["admin_token"] is None


@pytest.mark.parametrize("name", ["../../home", "a/b", "..", ".", "", "x" * 129, "a b"])
def test_a_run_name_cannot_leave_the_work_folder(name):
    """train.run_name names <workdir>/trained/<run_name>, which a rerun deletes."""
    from recicl.config import build_config

    with pytest.raises(ConfigError, match="run_name"):
        build_config({"train": {"run_name": name}})
    ok = "streaming-20261206-180314-recicl+stats+codes"
    assert build_config({"train": {"run_name": ok}}).train.run_name == ok


@pytest.mark.parametrize(
    ("samples", "named"),
    [
        ({"augment": ["mixed"], "augment_replaces": "history"}, r"augment \['mixed'\]"),
        ({"augment": ["semantic"], "augment_replaces": "both", "history_len": 0}, "history_len"),
    ],
)
def test_history_copies_need_a_history_policy_and_a_history(samples, named):
    with pytest.raises(ConfigError, match=named):
        build_config({"samples": samples})
    build_config({"samples": {**samples, "augment_replaces": "demos"}})  # demos copies take any
