"""Config loading: YAML + overrides, strict keys and types."""

from __future__ import annotations

import pytest

from att3d.config import ConfigError, ModelConfig, apply_overrides, from_dict, load_config, to_dict


def test_defaults_round_trip_through_plain_data() -> None:
    config = ModelConfig()
    assert from_dict(ModelConfig, to_dict(config)) == config


def test_yaml_and_overrides(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("field:\n  num_bases: 4\n  encoding:\n    levels: 6\nrender:\n  background: [0, 0, 0]\n")
    config = load_config(ModelConfig, path, ["field.encoding.levels=5", "mesh.texture=uv"])
    assert config.field.num_bases == 4
    assert config.field.encoding.levels == 5  # the override wins over the file
    assert config.render.background == (0.0, 0.0, 0.0)
    assert config.mesh.texture == "uv"


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key in 'field': colour"):
        load_config(ModelConfig, None, ["field.colour=1"])


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"field.num_bases: expected an integer"):
        load_config(ModelConfig, None, ["field.num_bases=many"])
    with pytest.raises(ConfigError, match=r"render.background: expected 3 values"):
        load_config(ModelConfig, None, ["render.background=[1, 1]"])


def test_int_accepted_for_float_but_not_bool_for_int() -> None:
    assert load_config(ModelConfig, None, ["field.blob_density=3"]).field.blob_density == 3.0
    # YAML 1.1 parses 1e-2 (no dot) as a string; it is still a number.
    assert load_config(ModelConfig, None, ["field.blob_density=1e-2"]).field.blob_density == 0.01
    with pytest.raises(ConfigError):
        load_config(ModelConfig, None, ["field.num_bases=true"])


def test_bad_override_syntax_and_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["field.num_bases"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(ModelConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(ModelConfig, bad)
