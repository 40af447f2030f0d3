"""Familiarity: nearest training prompt by cosine similarity, against hand-computed values with a toy encoder;
the threshold from the manifest or the default; blends; the cached matrix of training embeddings; the
calibration script on synthetic data."""

from __future__ import annotations

import json
import math

import pytest
import torch
from script_loader import loaded_script

from att3d.checkpoint import CheckpointError, read_manifest
from att3d.familiarity import (
    DEFAULT_THRESHOLD,
    FamiliarityIndex,
    threshold_from_metadata,
    training_embeddings,
)
from att3d.generate import Generator
from att3d.text import CachedEncoder, register_text_encoder

from conftest import tiny_model_config

DIM = 384


def unit(*pairs: tuple[int, float]) -> torch.Tensor:
    """A 384-d vector with the given (coordinate, value) entries."""
    vector = torch.zeros(DIM)
    for index, value in pairs:
        vector[index] = value
    return vector


TOY = {
    "a red cube": unit((0, 1.0)),
    "a blue sphere": unit((1, 1.0)),
    "a green cone": unit((2, 1.0)),
    "a crimson cube": unit((0, 0.8), (3, 0.6)),  # cos 0.8 to "a red cube"
    "a bluish ball": unit((1, 0.5), (4, math.sqrt(0.75))),  # cos 0.5 to "a blue sphere"
    "an elephant": unit((5, 1.0)),  # orthogonal to every training prompt
}
TRAINING = ["a red cube", "a blue sphere", "a green cone"]


class ToyEncoder:
    """Hand-made embeddings, so every similarity is known; counts its calls."""

    id = "test-toy-v1"
    dim = DIM
    calls = 0

    def encode(self, prompts: list[str]) -> torch.Tensor:
        ToyEncoder.calls += 1
        return torch.stack([TOY.get(p, unit((6, 1.0))) for p in prompts]) if prompts else torch.empty(0, DIM)


register_text_encoder("test-toy", ToyEncoder, overwrite=True)


@pytest.fixture(autouse=True)
def text_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATT3D_CACHE", str(tmp_path / "cache"))


def toy_generator(threshold: float | None = None) -> Generator:
    generator = Generator.seeded(tiny_model_config("text.encoder=test-toy"), seed=0)
    generator.prompts = list(TRAINING)
    if threshold is not None:
        generator.metadata["familiarity_threshold"] = threshold
    return generator


# ---- the index ---------------------------------------------------------------------------------------


def test_index_nearest_matches_hand_computed_cosines() -> None:
    index = FamiliarityIndex(["x", "y"], torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    similarity, nearest = index.nearest(torch.tensor([3.0, 4.0, 0.0]))  # unit (0.6, 0.8, 0)
    assert (similarity, nearest) == (pytest.approx(0.8), 1)
    similarity, nearest = index.nearest(torch.tensor([-1.0, 0.0, 1.0]))  # cos -0.7071 to x, 0 to y
    assert (similarity, nearest) == (pytest.approx(0.0, abs=1e-7), 1)
    assert index.nearest(torch.zeros(3)) == (0.0, 0)  # a zero blend is similar to nothing
    familiarity = index.familiarity(torch.tensor([3.0, 4.0, 0.0]), threshold=0.85)
    assert familiarity.nearest == "y" and not familiarity.familiar
    assert familiarity.to_dict() == {
        "similarity": pytest.approx(0.8),
        "familiar": False,
        "nearest": "y",
        "threshold": 0.85,
        "read_as": "",
    }


def test_index_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="at least one training prompt"):
        FamiliarityIndex([], torch.empty(0, 3))
    with pytest.raises(ValueError, match=r"embeddings must be \[2, D\]"):
        FamiliarityIndex(["x", "y"], torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"embedding must be \[3\]"):
        FamiliarityIndex(["x"], torch.eye(1, 3)).nearest(torch.zeros(4))


def test_threshold_from_metadata() -> None:
    assert threshold_from_metadata({}) == DEFAULT_THRESHOLD == 0.6
    assert threshold_from_metadata({"familiarity_threshold": 0.72}) == 0.72
    assert threshold_from_metadata({"familiarity_threshold": 1}) == 1.0
    for bad in ("0.7", True, 1.5, -2, float("nan")):
        with pytest.raises(ValueError, match="familiarity_threshold"):
            threshold_from_metadata({"familiarity_threshold": bad})


# ---- the generator -----------------------------------------------------------------------------------


def test_generator_familiarity_values_and_default_threshold() -> None:
    generator = toy_generator()
    expected = {
        "a red cube": (1.0, "a red cube", True),
        "a crimson cube": (0.8, "a red cube", True),
        "a bluish ball": (0.5, "a blue sphere", False),  # below the default 0.6
        "an elephant": (0.0, "a red cube", False),  # ties go to the first training prompt
    }
    for prompt, (similarity, nearest, familiar) in expected.items():
        familiarity = generator.familiarity(prompt)
        assert familiarity.similarity == pytest.approx(similarity, abs=1e-6), prompt
        assert (familiarity.nearest, familiarity.familiar) == (nearest, familiar), prompt
        assert familiarity.threshold == DEFAULT_THRESHOLD
    assert generator.info()["familiarity_threshold"] == DEFAULT_THRESHOLD


def test_threshold_comes_from_the_manifest(tmp_path) -> None:
    path = toy_generator(threshold=0.45).save(tmp_path / "model")
    assert read_manifest(path)["metadata"]["familiarity_threshold"] == 0.45
    loaded = Generator.from_checkpoint(path)
    assert loaded.familiarity_threshold == 0.45
    familiarity = loaded.familiarity("a bluish ball")
    assert familiarity.familiar and familiarity.threshold == 0.45  # 0.5 >= 0.45
    assert Generator.from_checkpoint(toy_generator().save(tmp_path / "plain")).familiarity_threshold == 0.6


def test_a_bad_threshold_in_the_manifest_is_a_checkpoint_error(tmp_path) -> None:
    path = toy_generator(threshold=0.5).save(tmp_path / "model")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["metadata"]["familiarity_threshold"] = "high"  # metadata is outside the checksums
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="familiarity_threshold' must be a number"):
        Generator.from_checkpoint(path)


def test_blend_familiarity_is_the_blended_embeddings() -> None:
    generator = toy_generator()
    # 0.5 e0 + 0.5 e1: cos 1/sqrt(2) to both; the first of equals wins.
    blend = generator.blend_familiarity(["a red cube", "a blue sphere"], [0.5, 0.5])
    assert blend.similarity == pytest.approx(1 / math.sqrt(2)) and blend.nearest == "a red cube"
    # 0.25 e0 + 0.75 e5: cos 0.25 / sqrt(0.25^2 + 0.75^2) to "a red cube".
    blend = generator.blend_familiarity(["a red cube", "an elephant"], [0.25, 0.75])
    assert blend.similarity == pytest.approx(0.25 / math.sqrt(0.625)) and not blend.familiar
    assert generator.blend_familiarity(["a crimson cube"], [1.0]) == generator.familiarity("a crimson cube")


def test_generation_carries_the_familiarity_of_its_prompt() -> None:
    generator = toy_generator()
    config = tiny_model_config().mesh
    generation = generator.generate_with_familiarity("a crimson cube", config)
    assert len(generation.mesh.faces) > 0
    assert generation.familiarity == generator.familiarity("a crimson cube")


def test_no_training_prompts_no_familiarity_and_a_changed_set_is_reindexed() -> None:
    generator = toy_generator()
    generator.prompts = []
    assert generator.familiarity("a red cube") is None
    generator.prompts = ["a crimson cube"]
    assert generator.familiarity("a red cube").similarity == pytest.approx(0.8)


def test_training_embeddings_are_cached_as_one_matrix(tmp_path) -> None:
    cached = CachedEncoder(ToyEncoder(), tmp_path / "text")
    prompts = [*TRAINING, "a crimson cube"]
    ToyEncoder.calls = 0
    matrix = training_embeddings(cached, prompts)
    torch.testing.assert_close(matrix, torch.stack([TOY[p] for p in prompts]))
    assert len(list((tmp_path / "text" / "prompt-sets").glob("*.safetensors"))) == 1
    calls = ToyEncoder.calls
    fresh = CachedEncoder(ToyEncoder(), tmp_path / "text", memory_items=0)  # nothing in memory
    torch.testing.assert_close(training_embeddings(fresh, prompts), matrix)
    assert ToyEncoder.calls == calls  # read back from the one file, no encoder call
    # Without a cache directory the encoder is called in chunks.
    ToyEncoder.calls = 0
    torch.testing.assert_close(training_embeddings(ToyEncoder(), prompts * 200), matrix.repeat(200, 1))
    assert ToyEncoder.calls == math.ceil(len(prompts) * 200 / 256)


# ---- calibration script --------------------------------------------------------------------------------


@pytest.fixture
def calibration():
    yield from loaded_script("calibrate_familiarity")


SIMILARITIES = [0.2, 0.3, 0.4, 0.7, 0.8, 0.9]
IOUS = [0.1, 0.2, 0.9, 0.8, 0.95, 0.3]  # bad (< 0.5): the first two and the last


def test_calibration_picks_the_best_f1_cut(calibration) -> None:
    bad = [iou < 0.5 for iou in IOUS]
    # Cuts: 0.199, 0.25, 0.35, 0.55, 0.75, 0.85, 0.901. At 0.35: 2 flagged, both bad: P 1, R 2/3, F1 0.8;
    # at 0.55: P 2/3, R 2/3; flagging all: P 1/2, R 1.
    best = calibration.calibrate(SIMILARITIES, bad, "f1")
    assert best.threshold == 0.35
    assert (best.precision, best.recall, best.f1) == (1.0, pytest.approx(2 / 3), pytest.approx(0.8))
    assert (best.false_positive_rate, best.flagged) == (0.0, 2)
    assert calibration.calibrate(SIMILARITIES, bad, "youden").threshold == 0.35
    everything = calibration.separation(SIMILARITIES, bad, 0.901)
    assert (everything.precision, everything.recall, everything.youden) == (0.5, 1.0, 0.0)
    with pytest.raises(ValueError, match="criterion"):
        calibration.calibrate(SIMILARITIES, bad, "accuracy")


def test_calibration_command_reads_eval_reports(calibration, tmp_path, capsys) -> None:
    cases = [
        {"prompt": f"p{i}", "iou": iou, "similarity": s}
        for i, (s, iou) in enumerate(zip(SIMILARITIES[:3], IOUS[:3], strict=True))
    ]
    (tmp_path / "a.json").write_text(json.dumps({"cases": cases, "means": {}}))
    rest = [
        {"prompt": "q", "iou": iou, "familiarity": {"similarity": s}}
        for s, iou in zip(SIMILARITIES[3:], IOUS[3:], strict=True)
    ]
    (tmp_path / "b.json").write_text(json.dumps(rest))
    assert calibration.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "cases 6, bad (IoU < 0.5) 3"
    assert out[1].startswith("threshold 0.350 (f1): flags 2 unfamiliar; precision 1.00, recall 0.67, F1 0.80")
    assert json.loads(out[2]) == {"familiarity_threshold": 0.35}


def test_calibration_computes_missing_similarities_with_the_model(calibration, tmp_path) -> None:
    path = toy_generator().save(tmp_path / "model")
    cases = [{"prompt": "a crimson cube", "iou": 0.9}, {"prompt": "a bluish ball", "iou": 0.2}]
    similarities = calibration.similarities_of(cases, path)
    assert similarities == [pytest.approx(0.8), pytest.approx(0.5)]


def test_shipped_prompt_embeddings_are_used_only_for_their_own_prompt_set(tmp_path) -> None:
    from att3d.familiarity import PROMPT_EMBEDDINGS_FILE, write_prompt_embeddings

    prompts = [*TRAINING, "a crimson cube"]
    path = write_prompt_embeddings(tmp_path, ToyEncoder(), prompts)
    assert path == tmp_path / PROMPT_EMBEDDINGS_FILE
    ToyEncoder.calls = 0
    matrix = training_embeddings(ToyEncoder(), prompts, shipped=path)
    assert ToyEncoder.calls == 0  # read, not encoded
    torch.testing.assert_close(matrix, torch.stack([TOY[p] for p in prompts]), atol=1e-3, rtol=0)  # float16
    # Another prompt set (or order) ignores the file and encodes.
    other = list(reversed(prompts))
    torch.testing.assert_close(
        training_embeddings(ToyEncoder(), other, shipped=path), torch.stack([TOY[p] for p in other])
    )
    assert ToyEncoder.calls > 0
    path.write_bytes(b"not safetensors")  # a damaged file is ignored too
    torch.testing.assert_close(
        training_embeddings(ToyEncoder(), prompts, shipped=path), torch.stack([TOY[p] for p in prompts])
    )


def test_prompt_embeddings_are_copied_into_a_copy_of_the_checkpoint(tmp_path) -> None:
    from att3d.familiarity import PROMPT_EMBEDDINGS_FILE, copy_prompt_embeddings, write_prompt_embeddings

    source, copy = tmp_path / "model", tmp_path / "copy"
    source.mkdir()
    copy.mkdir()
    assert copy_prompt_embeddings(source, copy) is None  # nothing shipped: nothing written
    assert not (copy / PROMPT_EMBEDDINGS_FILE).exists()
    write_prompt_embeddings(source, ToyEncoder(), TRAINING)
    assert copy_prompt_embeddings(source, copy) == copy / PROMPT_EMBEDDINGS_FILE
    ToyEncoder.calls = 0
    matrix = training_embeddings(ToyEncoder(), TRAINING, shipped=copy / PROMPT_EMBEDDINGS_FILE)
    assert ToyEncoder.calls == 0  # the copy is read as the original would be
    torch.testing.assert_close(matrix, torch.stack([TOY[p] for p in TRAINING]), atol=1e-3, rtol=0)


def test_save_with_mesh_changes_only_the_mesh_fields_and_keeps_the_prompt_embeddings(tmp_path) -> None:
    from att3d.familiarity import PROMPT_EMBEDDINGS_FILE, write_prompt_embeddings

    source = toy_generator().save(tmp_path / "model")
    write_prompt_embeddings(source, ToyEncoder(), TRAINING)
    loaded = Generator.from_checkpoint(source)
    out = loaded.save_with_mesh(tmp_path / "calibrated", color_depth=0.05, density_threshold=4.5)
    copy = Generator.from_checkpoint(out)
    assert (copy.config.mesh.color_depth, copy.config.mesh.density_threshold) == (0.05, 4.5)
    assert copy.config.field == loaded.config.field and copy.prompts == list(TRAINING)
    assert (out / PROMPT_EMBEDDINGS_FILE).read_bytes() == (source / PROMPT_EMBEDDINGS_FILE).read_bytes()
    # a generator built in memory has no embeddings to copy
    fresh = toy_generator().save_with_mesh(tmp_path / "fresh", color_depth=0.05)
    assert not (fresh / PROMPT_EMBEDDINGS_FILE).exists()
