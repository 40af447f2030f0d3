"""Config loading: YAML + overrides, strict keys and types, values checked where they are declared."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pydantic
import pytest

from att3d.config import (
    ConfigError,
    MeshConfig,
    ModelConfig,
    PromptSetConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_config,
    to_dict,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


# --------------------------------------------------------------------------------------------------
# Validation where the fields are declared (pydantic dataclasses)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.mesh.texture=png"], r"model\.mesh\.texture: must be one of vertex, uv, got 'png'"),
        (["model.mesh.resolution=1"], r"model\.mesh\.resolution: must be in \[2, 1024\], got 1"),
        (["model.mesh.density_threshold=0"], r"model\.mesh\.density_threshold: must be > 0"),
        (["model.mesh.min_component_fraction=1.5"], r"mesh\.min_component_fraction: must be in \[0, 1\]"),
        (["model.mesh.grid_query=sparse"], r"model\.mesh\.grid_query: must be one of .*got 'sparse'"),
        (["model.field.encoding.backend=cuda"], r"field\.encoding\.backend: must be one of torch, tcnn"),
        (["model.field.density_activation=relu"], r"model\.field\.density_activation: must be one of"),
        (["sds.weighting=snr"], r"sds\.weighting: must be one of 1-alpha_bar, sqrt\(1-alpha_bar\), uniform"),
        (["prompts.source=csv"], r"prompts\.source: must be one of list, file, template, shapes, got 'csv'"),
        (["prompts.split=test"], r"prompts\.split: must be one of train, heldout, all, got 'test'"),
        (["prompts.slots.color=red"], r"prompts\.slots\.color: expected a list, got 'red'"),
        (["prompts.prompts=[a, 1]"], r"prompts\.prompts\[1\]: expected a string, got 1"),
        (["steps=0"], r"steps: must be in \[1, 10000000\], got 0"),
        (["shading_probs=[0.5, 0.6, 0.0]"], "shading_probs: must be 3 probabilities"),
        (["interp_prob=1.5"], r"interp_prob: must be in \[0, 1\]"),
        (["interp_prompts=1"], r"interp_prompts: must be in \[2, 64\], got 1"),
        (["keep_checkpoints=0"], "keep_checkpoints: must be >= 1"),
        (
            ["model.field.encoding.levels=4", "progressive_levels=9"],
            r"progressive_levels: must be in \[0, 4\]",
        ),
        (
            ["model.field.encoding.levels=4", "progressive_levels=2", "level_steps=50", "steps=60"],
            "progressive_levels: all 4 levels become active only at step 100",
        ),
        (["interp_concentration=0"], "interp_concentration: must be > 0"),
        (["progressive_levels=9"], r"progressive_levels: must be in \[0, 8\] \(0: off\), got 9"),
        (["progressive_levels=2", "level_steps=0"], "level_steps: must be >= 1, got 0"),
        (
            ["progressive_levels=2", "level_steps=50", "steps=60"],
            r"progressive_levels: all 8 levels become active only at step 300,",
        ),
        (["optim.grid_lr=.inf"], r"optim\.grid_lr: must be a finite number, got inf"),
        (["optim.grid_lr=nan"], r"optim\.grid_lr: must be a finite number"),
        (["progress_bar=1"], "progress_bar: expected true/false, got 1"),
        (["model=5"], "model: expected a mapping, got int"),
    ],
)
def test_bad_values_are_rejected_naming_the_dotted_key(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, overrides)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(TrainConfig, None, ["model.field.colour=1", "steps=0", "model.mesh.resolution=1"])
    assert str(error.value).startswith("unknown config key in 'model.field': colour (known: ")
    assert (
        "; model.mesh.resolution: must be in [2, 1024], got 1; steps: must be in [1, 10000000], got 0"
        in str(error.value)
    )


def test_construction_and_replace_validate_too() -> None:
    """A config built in code is checked as one loaded from YAML; errors name the key in its section."""
    with pytest.raises(ConfigError, match=r"^mesh\.grid_query: must be one of coarse_to_fine, dense"):
        MeshConfig(resolution=24, grid_query="sparse")
    with pytest.raises(ConfigError, match=r"^mesh\.resolution: must be in \[2, 1024\], got 1$"):
        dataclasses.replace(MeshConfig(), resolution=1)
    with pytest.raises(ConfigError, match=r"^prompts\.source: must be one of list, file, template, shapes"):
        PromptSetConfig(source="csv")
    with pytest.raises(ConfigError, match=r"^prompts\.split: must be one of train, heldout, all, got 'test'"):
        PromptSetConfig(source="shapes", split="test")
    with pytest.raises(ConfigError, match=r"^unknown config key in 'mesh': colour"):
        MeshConfig(colour=1)  # type: ignore[call-arg]
    assert dataclasses.replace(MeshConfig(), resolution=24).resolution == 24


def test_configs_stay_plain_dataclasses() -> None:
    config = TrainConfig()
    assert dataclasses.is_dataclass(config)
    assert [f.name for f in dataclasses.fields(MeshConfig)][:2] == ["resolution", "coarse_resolution"]
    assert dataclasses.asdict(config)["model"]["mesh"]["resolution"] == 128
    assert from_dict(TrainConfig, to_dict(config)) == config


# configs/serve_ray.yaml is a Ray Serve config, checked by tests/server/test_server_ray_serve_config.py.
TRAINING_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "serve_ray.yaml")


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path) -> None:
    assert load_config(TrainConfig, path).steps >= 1


def test_json_schema_comes_from_the_declarations() -> None:
    schema = pydantic.TypeAdapter(TrainConfig).json_schema()
    assert schema["additionalProperties"] is False
    mesh = schema["$defs"]["MeshConfig"]["properties"]
    assert mesh["texture"]["enum"] == ["vertex", "uv"]
    assert mesh["resolution"]["minimum"] == 2
    assert mesh["min_component_fraction"]["minimum"] == 0 and mesh["min_component_fraction"]["maximum"] == 1
    assert mesh["density_threshold"]["exclusiveMinimum"] == 0
    assert schema["properties"]["steps"]["description"] == "Optimizer steps."


def test_overrides_from_a_mapping_keep_their_values() -> None:
    """A JSON job request's ``{"dotted.key": value}`` goes through the same walk, its values unparsed."""
    data = apply_overrides(to_dict(TrainConfig()), {"steps": 7, "model.mesh.texture": "uv", "prior": "1e-2"})
    config = from_dict(TrainConfig, data)
    assert (config.steps, config.model.mesh.texture, config.prior) == (7, "uv", "1e-2")
    with pytest.raises(ConfigError, match=r"override 'steps\.x': 'steps' is not a section"):
        apply_overrides(data, {"steps.x": 1})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("steps=9223372036854775808", r"steps: must be in \[1, 10000000\]"),
        ("model.field.num_bases=1000000000", r"model\.field\.num_bases: must be in \[1, 1024\]"),
        ("model.field.encoding.log2_table_size=40", r"log2_table_size: must be in \[1, 24\]"),
        ("model.render.image_size=1000000", r"model\.render\.image_size: must be in \[1, 1024\]"),
        ("prompts_per_step=1000000", r"prompts_per_step: must be in \[1, 4096\]"),
        ("model.mesh.resolution=100000", r"model\.mesh\.resolution: must be in \[2, 1024\]"),
        ("model.text.encoder=../../etc", r"model\.text\.encoder: must be an encoder name .*no paths"),
    ],
)
def test_resource_bounds(override, message):
    # Sizes that would allocate petabytes or run for centuries are refused where they are declared.
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, overrides=[override])


@pytest.mark.parametrize(
    "override",
    [
        "model.field.encoding.levels=0",
        "model.field.text_dim=-1",
        "model.field.num_bases=0",
        "model.render.image_size=0",
    ],
)
def test_sizes_must_be_positive(override):
    key = re.escape(override.split("=")[0])
    with pytest.raises(ConfigError, match=key + r": must be in \[1, "):
        load_config(TrainConfig, overrides=[override])
