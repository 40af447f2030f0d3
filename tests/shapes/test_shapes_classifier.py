"""The ShapesWorld classifier (R-precision analogue): shipped weights on GT renders, metric, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from att3d.cameras import sample_cameras
from att3d.config import CameraSamplingConfig
from att3d.shapes.classifier import (
    BACKGROUND,
    IGNORE,
    ClassifierConfig,
    ClassifierTrainConfig,
    ShapesClassifier,
    accuracy,
    augment,
    classify,
    load_classifier,
    object_labels,
    r_precision,
    save_classifier,
    train_classifier,
)
from att3d.shapes.classifier_data import KINDS, background_images, training_set
from att3d.shapes.evaluate import eval_cameras
from att3d.shapes.render import render_dataset, render_objects
from att3d.shapes.world import COLOR_NAMES, COLORS, SHAPE_NAMES, ShapeObject

OBJECTS = [
    ShapeObject("cube", "red"),
    ShapeObject("torus", "blue"),
    ShapeObject("cone", "yellow"),
    ShapeObject("pyramid", "gray"),
    ShapeObject("cylinder", "purple"),
    ShapeObject("capsule", "cyan"),
]
VIEWS = 4


@pytest.fixture(scope="module")
def renders() -> torch.Tensor:
    """``VIEWS`` renders of each of ``OBJECTS`` from random training cameras (object-major)."""
    cameras = sample_cameras(len(OBJECTS) * VIEWS, CameraSamplingConfig(), torch.Generator().manual_seed(7))
    objects = [o for o in OBJECTS for _ in range(VIEWS)]
    return render_objects(objects, cameras, 32)


def test_shipped_classifier_names_gt_renders(renders: torch.Tensor) -> None:
    shapes, colors, probs = classify(renders)
    assert shapes == [o.shape for o in OBJECTS for _ in range(VIEWS)]
    assert colors == [o.color for o in OBJECTS for _ in range(VIEWS)]
    assert probs.shape == (len(renders), len(SHAPE_NAMES) + 1, len(COLOR_NAMES))  # + background
    torch.testing.assert_close(probs.sum(dim=(1, 2)), torch.ones(len(renders)))


def test_r_precision(renders: torch.Tensor) -> None:
    for i, obj in enumerate(OBJECTS):
        views = renders[i * VIEWS : (i + 1) * VIEWS]
        assert r_precision(views, obj) == 1.0
        assert r_precision(views, ShapeObject(obj.shape, "green")) == 0.0  # right shape, wrong colour
    # Half the views of another object: exactly half right.
    mixed = torch.cat([renders[: VIEWS // 2], renders[VIEWS : VIEWS + VIEWS // 2]])
    assert r_precision(mixed, OBJECTS[0]) == 0.5


def test_shipped_classifier_sees_nothing_in_empty_scenes(renders: torch.Tensor) -> None:
    # An empty scene renders as the white background from every view: nothing there, every time.
    assert classify(torch.ones(8, 3, 32, 32))[0] == [BACKGROUND] * 8
    assert r_precision(torch.ones(8, 3, 32, 32), ShapeObject("pyramid", "gray")) == 0.0
    # Fresh background images (faint hazes, ghosts, specks) too, nearly always.
    negatives = background_images(renders, 60, torch.Generator().manual_seed(123))
    assert classify(negatives)[0].count(BACKGROUND) >= 57


def test_shipped_classifier_names_each_shape_from_the_eval_views() -> None:
    # Wrong-shape scenes: each shape is named as itself from the evaluation's views, never as another.
    cameras = eval_cameras(8)
    for shape in SHAPE_NAMES:
        assert classify(render_objects(ShapeObject(shape, "green"), cameras, 32))[0] == [shape] * 8


def test_background_images_and_training_set() -> None:
    views = render_dataset(OBJECTS[:2], 3, 16, seed=0)
    extra = background_images(views.images, 7, torch.Generator().manual_seed(0))
    assert extra.shape == (7, 3, 16, 16) and extra.min() >= 0 and extra.max() <= 1
    # Empty ones are near-white; every kind is lighter on average than an object render.
    assert (extra[:3].amin(dim=(1, 2, 3)) > 0.9).all()
    assert extra.mean() > views.images.mean()
    images, shapes, colors = training_set(views, 0.5, torch.Generator().manual_seed(0))
    assert images.dtype == torch.uint8 and images.shape == (9, 3, 16, 16)
    assert shapes.tolist() == [SHAPE_NAMES.index("cube")] * 3 + [SHAPE_NAMES.index("torus")] * 3 + [7] * 3
    assert colors.tolist()[6:] == [IGNORE] * 3 and len(KINDS) == 3
    with pytest.raises(ValueError, match="at least 3"):
        background_images(views.images, 2, torch.Generator())


def test_larger_renders_are_resized(renders: torch.Tensor) -> None:
    big = torch.nn.functional.interpolate(renders[:VIEWS], scale_factor=2, mode="nearest")
    assert classify(big)[0] == ["cube"] * VIEWS


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"images must be \[B, 3, H, W\]"):
        classify(torch.zeros(3, 32, 32))
    with pytest.raises(TypeError, match="obj must be a ShapeObject"):
        r_precision(torch.zeros(1, 3, 32, 32), "a red cube")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one image"):
        r_precision(torch.zeros(0, 3, 32, 32), OBJECTS[0])


def test_augment_keeps_range_and_colour() -> None:
    images = torch.rand(16, 3, 32, 32)
    out = augment(
        images, ClassifierTrainConfig(noise_std=0.05, blur_prob=0.5), torch.Generator().manual_seed(0)
    )
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    # Zero-mean noise and blur leave the mean colour nearly unchanged.
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), images.mean(dim=(0, 2, 3)), atol=0.01, rtol=0)


def test_train_save_load_round_trip(tmp_path) -> None:
    # Flat colour patches: the colour head must learn them in a few dozen steps.
    g = torch.Generator().manual_seed(0)
    colors = torch.randint(0, len(COLOR_NAMES), (256,), generator=g)
    rgb = torch.tensor([COLORS[name].rgb for name in COLOR_NAMES])[colors]
    images = rgb[:, :, None, None].expand(-1, 3, 16, 16).contiguous()
    shapes = torch.zeros(256, dtype=torch.long)
    config = ClassifierConfig(image_size=16, channels=(8, 16), hidden=32)
    train = ClassifierTrainConfig(steps=60, batch_size=32, lr=1e-2)
    model = train_classifier(images, shapes, colors, train, config, progress=False)
    assert accuracy(model, images, shapes, colors)["color"] == 1.0
    save_classifier(model, tmp_path, {"note": "flat colours"})
    loaded = load_classifier(tmp_path)
    torch.testing.assert_close(loaded(images[:8])[1], model(images[:8])[1])
    assert json.loads((tmp_path / "classifier.json").read_text())["metadata"] == {"note": "flat colours"}
    # A classifier trained for another world (different classes) is refused, as is one without the
    # background class (format 1).
    data = json.loads((tmp_path / "classifier.json").read_text())
    old = dict(data, format_version=1)
    (tmp_path / "classifier.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="not a att3d-shapes-classifier v2"):
        load_classifier(tmp_path)
    data["config"]["color_names"] = ["red", "green"]
    (tmp_path / "classifier.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="differ from the world's"):
        load_classifier(tmp_path)


def test_missing_classifier_and_label_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no ShapesWorld classifier"):
        load_classifier(tmp_path)
    with pytest.raises(ValueError, match="one per image"):
        train_classifier(torch.zeros(4, 3, 8, 8), torch.zeros(3, dtype=torch.long), torch.zeros(4))
    shapes, colors = object_labels(OBJECTS[:2])
    assert shapes.tolist() == [SHAPE_NAMES.index("cube"), SHAPE_NAMES.index("torus")]
    assert colors.tolist() == [COLOR_NAMES.index("red"), COLOR_NAMES.index("blue")]


def test_untrained_model_shapes() -> None:
    model = ShapesClassifier()
    shape_logits, color_logits = model(torch.rand(2, 3, 32, 32))
    assert shape_logits.shape == (2, len(SHAPE_NAMES) + 1) and color_logits.shape == (2, len(COLOR_NAMES))


def test_accuracy_leaves_background_out_of_colour() -> None:
    # Flat colour patches plus white images labelled background: colour is scored on the patches only.
    g = torch.Generator().manual_seed(0)
    colors = torch.randint(0, len(COLOR_NAMES), (192,), generator=g)
    rgb = torch.tensor([COLORS[name].rgb for name in COLOR_NAMES])[colors]
    images = torch.cat([rgb[:, :, None, None].expand(-1, 3, 16, 16), torch.ones(64, 3, 16, 16)])
    shapes = torch.cat([torch.zeros(192, dtype=torch.long), torch.full((64,), len(SHAPE_NAMES))])
    colors = torch.cat([colors, torch.full((64,), IGNORE)])
    config = ClassifierConfig(image_size=16, channels=(8, 16), hidden=32)
    train = ClassifierTrainConfig(steps=80, batch_size=32, lr=1e-2)
    model = train_classifier(images, shapes, colors, train, config, progress=False)
    assert accuracy(model, images, shapes, colors) == {"shape": 1.0, "color": 1.0, "both": 1.0}
    assert classify(torch.ones(2, 3, 16, 16), model)[0] == [BACKGROUND] * 2
