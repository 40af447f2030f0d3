"""Prompt sets: sources, held-out prompts and the errors for bad sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from att3d.config import ConfigError, PromptSetConfig, TrainConfig, load_config
from att3d.prompts import PromptSetError, expand_template, load_prompt_set

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_inline_list_is_stripped_and_kept_in_order():
    prompts = load_prompt_set(
        PromptSetConfig(prompts=["  a red cube ", "a blue cone"], heldout=["a green ball"])
    )
    assert prompts.train == ("a red cube", "a blue cone")
    assert prompts.heldout == ("a green ball",)
    assert len(prompts) == 2


def test_file_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# my prompts\n\na red cube\n   # indented comment\na blue cone  \n")
    prompts = load_prompt_set(PromptSetConfig(source="file", path=str(path)))
    assert prompts.train == ("a red cube", "a blue cone")


def test_template_expands_slots_in_order_and_holds_out():
    config = PromptSetConfig(
        source="template",
        template="a {color} {shape}",
        slots={"color": ["red", "blue"], "shape": ["cube", "cone", "torus"]},
        heldout=["a blue cone"],
    )
    prompts = load_prompt_set(config)
    assert prompts.train == ("a red cube", "a red cone", "a red torus", "a blue cube", "a blue torus")
    assert prompts.heldout == ("a blue cone",)


def test_template_slot_used_twice_takes_one_value():
    assert expand_template("{c} and {c}", {"c": ["red", "blue"]}) == ["red and red", "blue and blue"]


def test_shapes_splits_are_disjoint_and_canonical():
    prompts = load_prompt_set(PromptSetConfig(source="shapes", split="train"))
    assert "a red cube" in prompts.train or "a red cube" in prompts.heldout
    assert not set(prompts.train) & set(prompts.heldout)
    assert len(prompts.train) > len(prompts.heldout) > 0
    everything = load_prompt_set(PromptSetConfig(source="shapes", split="all"))
    assert set(everything.train) == set(prompts.train) | set(prompts.heldout)
    assert everything.heldout == ()
    only_heldout = load_prompt_set(PromptSetConfig(source="shapes", split="heldout"))
    assert only_heldout.train == prompts.heldout
    phrased = load_prompt_set(PromptSetConfig(source="shapes", split="train", all_phrasings=True))
    assert len(phrased.train) > 3 * len(prompts.train)
    assert set(prompts.train) <= set(phrased.train)


def test_shapes_wordings_condition_the_prior_on_the_canonical_prompt():
    from att3d.shapes.splits import load_splits
    from att3d.shapes.world import parse_prompt

    splits = load_splits()
    prompts = load_prompt_set(PromptSetConfig(source="shapes", split="train", wordings=6))
    assert len(prompts.train) == 6 * len(splits.train) == len(set(prompts.train))
    assert prompts.train[0] == "an orange sphere" and prompts.train[6] == "a yellow sphere"
    # Every wording's prior prompt is its own object's canonical prompt; held-out objects stay canonical.
    assert [parse_prompt(p).canonical_prompt for p in prompts.train] == list(prompts.prior_text)
    assert prompts.prior_text[:6] == ("an orange sphere",) * 6
    assert prompts.heldout == tuple(o.canonical_prompt for o in splits.heldout)
    assert prompts == load_prompt_set(PromptSetConfig(source="shapes", split="train", wordings=6))
    canonical = load_prompt_set(PromptSetConfig(source="shapes", split="train"))
    assert canonical.prior_prompts is None and set(canonical.train) < set(prompts.train)
    everything = load_prompt_set(PromptSetConfig(source="shapes", split="all", wordings=2))
    assert len(everything.train) == 2 * len(splits.prior) and everything.heldout == ()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"source": "list", "prompts": ["a"], "wordings": 3}, "prompts.wordings: needs source=shapes"),
        ({"source": "shapes", "all_phrasings": True, "wordings": 3}, "and all_phrasings=false"),
        ({"source": "shapes", "wordings": -1}, r"prompts\.wordings: must be in \[0, 10000\], got -1"),
    ],
)
def test_bad_wordings_are_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        PromptSetConfig(**changes)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (PromptSetConfig(), "prompt set is empty"),
        (
            PromptSetConfig(prompts=["a", "b", "a"]),
            r"prompts\.prompts\[2\]: duplicate prompt 'a' \(first at \[0\]\)",
        ),
        (PromptSetConfig(prompts=["a", "   "]), r"prompts\.prompts\[1\]: prompt contains only whitespace"),
        (PromptSetConfig(prompts=["a" * 30]), r"prompt is too long: 30 characters \(limit 20\)"),
        (PromptSetConfig(prompts=["a", "b"], heldout=["b"]), "'b' is both a training and a held-out prompt"),
        (PromptSetConfig(source="file"), "prompts.path is empty"),
        (
            PromptSetConfig(source="file", path="/no/such/prompts.txt"),
            "prompt file not found: /no/such/prompts.txt",
        ),
        (PromptSetConfig(source="template"), "prompts.template is empty"),
        (PromptSetConfig(source="template", template="a cube", slots={}), "has no {slot} fields"),
        (
            PromptSetConfig(source="template", template="a {color} {shape}", slots={"color": ["red"]}),
            "no values for template slot 'shape'",
        ),
        (
            PromptSetConfig(
                source="template", template="a {color}", slots={"color": ["red"], "size": ["big"]}
            ),
            r"prompts\.slots\.size is not used by the template",
        ),
        (
            PromptSetConfig(source="template", template="a {color}", slots={"color": []}),
            r"prompts\.slots\.color must be a non-empty list",
        ),
        (
            PromptSetConfig(source="template", template="a {color}", slots={"color": ["red", "red"]}),
            r"prompts\.slots\.color: value 'red' is repeated",
        ),
        (
            PromptSetConfig(
                source="template", template="a {color}", slots={"color": ["red"]}, heldout=["a blue"]
            ),
            r"prompts\.heldout: 'a blue' is not one of the template's combinations",
        ),
        (
            PromptSetConfig(
                source="template", template="a {color}", slots={"color": ["red"]}, heldout=["a red"]
            ),
            "prompt set is empty",
        ),
        (
            PromptSetConfig(source="shapes", heldout=["a red cube"]),
            "prompts.heldout is not used with source=shapes",
        ),
    ],
)
def test_bad_prompt_sets_are_rejected_with_a_clear_message(config, message):
    # An unknown source or split never reaches load_prompt_set: PromptSetConfig rejects it when built
    # (tests/test_config.py::test_construction_and_replace_validate_too).
    with pytest.raises(PromptSetError, match=message):
        load_prompt_set(config, max_chars=20)


def test_prompt_file_errors_name_the_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a red cube\n# comment\na blue cone\na red cube\n")
    with pytest.raises(PromptSetError, match=r"p\.txt:4: duplicate prompt 'a red cube' \(first on line 1\)"):
        load_prompt_set(PromptSetConfig(source="file", path=str(path)))
    path.write_text("# only a comment\n\n")
    with pytest.raises(PromptSetError, match=r"prompt set is empty: .* has no prompts"):
        load_prompt_set(PromptSetConfig(source="file", path=str(path)))


def test_prompt_set_errors_are_config_errors():
    """The CLI reports ConfigError as a bad-config exit; prompt-set problems must be among them."""
    assert issubclass(PromptSetError, ConfigError)


@pytest.mark.parametrize("name", ["shapes_amortized", "shapes_per_prompt", "tiny_test"])
def test_shipped_configs_load_and_have_prompts(name):
    config = load_config(TrainConfig, CONFIGS / f"{name}.yaml")
    prompts = load_prompt_set(config.prompts)
    assert len(prompts) >= 1
    if name == "shapes_per_prompt":
        assert len(prompts) == 1


def test_unknown_prompt_key_in_a_config_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prompts:\n  source: list\n  promts: [a red cube]\n")
    with pytest.raises(ConfigError, match="unknown config key in 'prompts': promts"):
        load_config(TrainConfig, path)


def test_template_is_refused_by_its_count_before_expansion():
    # 10^12 combinations from a few thousand words: building them would never finish, counting is instant.
    slots = {name: [f"{name}{i}" for i in range(1000)] for name in ("a", "b", "c", "d")}
    with pytest.raises(
        PromptSetError, match=r"prompts\.template: 1000000000000 combinations; the limit is 10000"
    ):
        expand_template("{a} {b} {c} {d}", slots, max_prompts=10_000)
    config = PromptSetConfig(source="template", template="{a} {b}", slots={"a": ["x", "y"], "b": ["1", "2"]})
    with pytest.raises(PromptSetError, match="4 combinations; the limit is 3"):
        load_prompt_set(config, max_prompts=3)
    assert len(load_prompt_set(config, max_prompts=4)) == 4
