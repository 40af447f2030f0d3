"""Train the bundled ShapesWorld classifier alone (no prior), check it, and write it into the assets.

1. exact renders of the prior's objects from random training cameras (``--views-per-object``), plus
   background images ("nothing there": empty, ghost, specks; ``att3d.shapes.classifier_data``);
2. ``train_classifier`` on them;
3. checks on fresh cameras (``--seed + 1``, the held-out renders of ``train_shapes_prior.py``): accuracy on
   GT renders, the fraction of fresh background images named background, every view of an empty scene
   (the white background) named background, and wrong-shape renders never named as the asked shape;
4. writes ``classifier.*`` into ``--out`` and the ``classifier`` entry of its ``figures.json``.

``--prior-samples N`` also names N samples per object of the bundled prior (DDIM 50, CFG 3, fresh
cameras); ``--check-only`` re-runs the checks on the classifier already in ``--out`` and updates its
figures. Minutes on a CPU::

    python scripts/train_shapes_classifier.py --out att3d/assets/shapes-prior
    python scripts/train_shapes_classifier.py --out att3d/assets/shapes-prior --check-only --prior-samples 4
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from att3d.atomic import write_text_atomic
from att3d.shapes.classifier import (
    BACKGROUND,
    ClassifierTrainConfig,
    accuracy,
    classify,
    load_classifier,
    object_labels,
    save_classifier,
    train_classifier,
)
from att3d.shapes.classifier_data import background_images, training_set
from att3d.shapes.evaluate import eval_cameras
from att3d.shapes.render import render_dataset, render_objects
from att3d.shapes.splits import load_splits
from att3d.shapes.world import SHAPE_NAMES, ShapeObject


def checks(classifier: torch.nn.Module, objects: list[ShapeObject], heldout, seed: int) -> dict:
    """Held-out figures of a trained classifier (see the module docstring)."""
    shapes, colors = object_labels([objects[i] for i in heldout.object_index.tolist()])
    gt = accuracy(classifier, heldout.images, shapes, colors)
    generator = torch.Generator().manual_seed(seed + 1)
    negatives = background_images(heldout.images, 600, generator)
    named, _, _ = classify(negatives, classifier)
    # Empty scene: the evaluation's own views of nothing are plain white images.
    empty = torch.ones(len(eval_cameras(8)), 3, 32, 32)
    empty_named, _, _ = classify(empty, classifier)
    # Wrong shapes: each shape rendered from the evaluation views, never named as any other shape.
    cameras = eval_cameras(8)
    wrong = 0
    for shape in SHAPE_NAMES:
        labels, _, _ = classify(render_objects(ShapeObject(shape, "gray"), cameras, 32), classifier)
        wrong += sum(label != shape for label in labels)
    return {
        "heldout_gt_accuracy": {k: round(v, 4) for k, v in gt.items()},
        "heldout_gt_renders": int(heldout.images.shape[0]),
        "background_accuracy": round(sum(n == BACKGROUND for n in named) / len(named), 4),
        "background_images": len(named),
        "empty_scene_views_named_background": f"{empty_named.count(BACKGROUND)}/{len(empty_named)}",
        "eval_views_misnamed_shape": f"{wrong}/{len(SHAPE_NAMES) * len(cameras)}",
    }


def prior_sample_checks(
    classifier: torch.nn.Module, objects: list[ShapeObject], views: int, seed: int
) -> dict:
    """Accuracy on ``views`` samples per object of the bundled prior (canonical prompts, fresh cameras)."""
    from att3d.cameras import sample_cameras
    from att3d.config import CameraSamplingConfig
    from att3d.priors.shapes import ShapesPrior

    prior = ShapesPrior.from_pretrained(device="cpu")
    generator = torch.Generator().manual_seed(seed + 2)
    cameras = sample_cameras(len(objects) * views, CameraSamplingConfig(), generator)
    prompts = [o.canonical_prompt for o in objects for _ in range(views)]
    samples = torch.cat(
        [
            prior.sample(prompts[i : i + 64], cameras[i : i + 64], 50, 3.0, generator)
            for i in range(0, len(prompts), 64)
        ]
    )
    shapes, colors = object_labels([o for o in objects for _ in range(views)])
    named, _, _ = classify(samples, classifier)
    return {
        "prior_sample_accuracy": {
            k: round(v, 4) for k, v in accuracy(classifier, samples, shapes, colors).items()
        },
        "prior_samples": len(prompts),
        "prior_samples_named_background": named.count(BACKGROUND),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--views-per-object", type=int, default=200, help="GT training renders per object")
    p.add_argument("--heldout-views", type=int, default=24, help="fresh GT renders per object for the checks")
    p.add_argument("--background-fraction", type=float, default=1 / 7, help="background images per render")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    p.add_argument("--seed", type=int, default=0, help="seed of everything random")
    p.add_argument("--prior-samples", type=int, default=0, help="bundled-prior samples per object to name")
    p.add_argument("--check-only", action="store_true", help="check the classifier in --out, no training")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: best on shared cores)")
    p.add_argument("--out", type=Path, default=Path("att3d/assets/shapes-prior"), help="output folder")
    args = p.parse_args(argv)
    # A step of this small CNN took 0.12 s on 1 thread and 1.06 s on 2 on the shared 2-core machine.
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    objects = list(load_splits().prior)
    if args.check_only:
        classifier = load_classifier(args.out)
        heldout = render_dataset(objects, args.heldout_views, 32, seed=args.seed + 1)
        figures = checks(classifier, objects, heldout, args.seed)
        if args.prior_samples > 0:
            figures |= prior_sample_checks(classifier, objects, args.prior_samples, args.seed)
        update_figures(args.out, figures)
        print(json.dumps(figures, indent=1))
        return figures
    t0 = time.monotonic()
    train = render_dataset(objects, args.views_per_object, 32, seed=args.seed)
    heldout = render_dataset(objects, args.heldout_views, 32, seed=args.seed + 1)
    images, shapes, colors = training_set(
        train, args.background_fraction, torch.Generator().manual_seed(args.seed)
    )
    render_seconds = time.monotonic() - t0
    config = ClassifierTrainConfig(steps=args.steps)
    t0 = time.monotonic()
    classifier = train_classifier(images, shapes, colors, config, seed=args.seed)
    train_seconds = time.monotonic() - t0
    figures = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads), shared",
        "date": date.today().isoformat(),
        "steps": args.steps,
        "seconds": round(train_seconds, 1),
        "render_seconds": round(render_seconds, 1),
        "train_renders": len(train),
        "background_train_images": int(images.shape[0] - len(train)),
        **checks(classifier, objects, heldout, args.seed),
    }
    if args.prior_samples > 0:
        figures |= prior_sample_checks(classifier, objects, args.prior_samples, args.seed)
    save_classifier(classifier, args.out, {"training": figures})
    data = (
        json.loads((args.out / "figures.json").read_text()) if (args.out / "figures.json").is_file() else {}
    )
    data["classifier"] = figures  # a new classifier: its figures replace the old ones
    write_text_atomic(args.out / "figures.json", json.dumps(data, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    return figures


def update_figures(folder: Path, figures: dict) -> None:
    """Merge re-measured ``figures`` into the ``classifier`` entry of ``folder/figures.json``."""
    path = folder / "figures.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["classifier"] = {**data.get("classifier", {}), **figures}
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
