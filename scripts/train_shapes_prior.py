"""Train the bundled ShapesWorld prior and its classifier, evaluate both, and write the assets.

Reproducible from ``--seed``:

1. prompt embeddings: every phrasing of every object in the prior split, from MiniLM or from
   ``--embeddings FILE`` (made here with ``--export-embeddings FILE``; the GPU machine has no MiniLM);
2. a dataset of exact renders: each object from ``--views-per-object`` random training cameras
   (``CameraSamplingConfig``: distance, elevation, azimuth, light jitter), stored as uint8;
3. the prior: clean-image-predicting UNet, random phrasing per sample, 12 % text dropout (zero vector),
   AdamW + EMA of the weights, bf16 autocast on CUDA, for ``--steps`` or ``--minutes``;
4. the classifier on the same renders plus background images (``classifier_data.training_set``); its
   accuracy on fresh held-out renders (new cameras);
5. prior samples of every object at ``--eval-views`` held-out cameras: classifier accuracy (shape,
   colour, both) and silhouette IoU against the exact render from the same camera;
6. writes ``--out``: the prior folder, ``classifier.*``, ``samples.png`` (each object: samples, then GT)
   and ``figures.json``.

Run from the repository root::

    python scripts/train_shapes_prior.py --device cpu --minutes 10 --out att3d/assets/shapes-prior
    python scripts/train_shapes_prior.py --export-embeddings embeddings.safetensors   # no training
    python scripts/train_shapes_prior.py --device cuda --minutes 4 --batch-size 256 \
        --embeddings embeddings.safetensors --out out/shapes-prior

Nothing on this script's import path imports trimesh or fastapi (the GPU image lacks them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from att3d.config import CameraSamplingConfig
from att3d.priors.shapes import ShapesPrior
from att3d.priors.shapes_network import (
    ShapesPriorConfig,
    build_scheduler,
    build_unet,
    condition_vector,
    count_parameters,
    denoise,
)
from att3d.shapes.classifier import (
    ClassifierTrainConfig,
    accuracy,
    classify,
    object_labels,
    save_classifier,
    train_classifier,
)
from att3d.shapes.classifier_data import training_set
from att3d.shapes.render import RenderedViews, render_dataset
from att3d.shapes.splits import load_splits
from att3d.shapes.world import ShapeObject

EMBEDDINGS_KEY = "embeddings"


@dataclass
class PriorTrainConfig:
    """Optimization of the prior (recorded in ``figures.json``)."""

    steps: int = 100_000
    """Upper bound on optimizer steps (``--minutes`` usually ends training first)."""
    minutes: float = 0.0
    """Wall-clock budget for the prior's training loop; 0 = run all ``steps``."""
    batch_size: int = 64
    """Images per step."""
    lr: float = 1e-3
    """AdamW learning rate (constant after a linear warmup: the step count is unknown under a time budget)."""
    warmup_steps: int = 100
    """Linear learning-rate warmup."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value."""
    ema_decay: float = 0.999
    """Maximum EMA decay (diffusers EMAModel warmup keeps it lower early on, so short runs work too)."""
    text_dropout: float = 0.12
    """Probability of replacing the prompt embedding with zeros (the unconditional branch of CFG)."""


# --------------------------------------------------------------------------------------------------
# Prompts and embeddings
# --------------------------------------------------------------------------------------------------


def prompt_table(objects: list[ShapeObject]) -> tuple[list[str], list[list[int]]]:
    """All phrasings of all objects, and for each object the indices of its phrasings."""
    prompts: list[str] = []
    per_object: list[list[int]] = []
    for obj in objects:
        per_object.append(list(range(len(prompts), len(prompts) + len(obj.prompts))))
        prompts.extend(obj.prompts)
    return prompts, per_object


def encode_prompts(prompts: list[str]) -> tuple[torch.Tensor, str]:
    from att3d.text import get_text_encoder

    encoder = get_text_encoder("minilm")
    return encoder.encode(prompts), encoder.id


def export_embeddings(path: Path, prompts: list[str]) -> None:
    """Write ``{embeddings: [N, D]}`` with the prompts and encoder id in the safetensors metadata."""
    from att3d.checkpoint import save_tensors_atomic

    embeddings, encoder_id = encode_prompts(prompts)
    metadata = {"encoder": encoder_id, "prompts": json.dumps(prompts)}
    save_tensors_atomic(path, {EMBEDDINGS_KEY: embeddings}, metadata)
    print(f"wrote {len(prompts)} embeddings ({encoder_id}) to {path}")


def load_embeddings(path: Path, prompts: list[str], encoder_id: str) -> torch.Tensor:
    """Rows of an exported embeddings file for ``prompts`` (each must be present)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        table = f.get_tensor(EMBEDDINGS_KEY)
    if metadata.get("encoder") != encoder_id:
        raise SystemExit(f"{path}: embeddings are from {metadata.get('encoder')!r}, expected {encoder_id!r}")
    index = {p: i for i, p in enumerate(json.loads(metadata.get("prompts", "[]")))}
    missing = [p for p in prompts if p not in index]
    if missing:
        raise SystemExit(f"{path}: {len(missing)} prompts missing (e.g. {missing[0]!r}); re-export them")
    return table[[index[p] for p in prompts]].float()


# --------------------------------------------------------------------------------------------------
# Prior training
# --------------------------------------------------------------------------------------------------


def train_prior(
    data: RenderedViews,
    embeddings: torch.Tensor,
    phrasings: list[list[int]],
    model_config: ShapesPriorConfig,
    config: PriorTrainConfig,
    device: torch.device,
    generator: torch.Generator,
) -> tuple[torch.nn.Module, dict[str, float]]:
    """Fit the UNet to predict clean renders; returns the EMA weights and training figures."""
    from diffusers.training_utils import EMAModel

    unet = build_unet(model_config).to(device).train()
    scheduler = build_scheduler(model_config)
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    cuda = device.type == "cuda"
    # foreach/fused kernels: the model is tiny, so per-tensor launch overhead dominates a step on a GPU.
    ema = EMAModel(unet.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=2 / 3, foreach=True)
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=cuda or None
    )
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps))
    images = data.images.to(device)
    cameras = data.cameras.to(device)
    embeddings = embeddings.to(device)
    counts = torch.tensor([len(p) for p in phrasings])
    offsets = torch.tensor([p[0] for p in phrasings])  # each object's phrasings are contiguous
    deadline = time.monotonic() + 60 * config.minutes if config.minutes > 0 else math.inf
    start, losses, step = time.monotonic(), [], 0
    bar = tqdm(total=config.steps, desc="prior")
    while step < config.steps and time.monotonic() < deadline:
        index = torch.randint(0, images.shape[0], (config.batch_size,), generator=generator)
        obj = data.object_index[index]
        phrase = offsets[obj] + (torch.rand(len(index), generator=generator) * counts[obj]).long()
        text = embeddings[phrase.to(device)]
        drop = (torch.rand(len(index), generator=generator) < config.text_dropout).to(device)
        text = torch.where(drop[:, None], torch.zeros_like(text), text)
        x0 = images[index.to(device)] * 2.0 - 1.0
        t = torch.randint(0, model_config.num_train_timesteps, (len(index),), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        condition = condition_vector(text, cameras[index.to(device)], model_config)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            pred = denoise(unet, x_t, t, condition)
        loss = F.mse_loss(pred.float(), x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        optimizer.step()
        warmup.step()
        ema.step(unet.parameters())
        losses.append(loss.detach())  # no .item() here: a device sync per step would starve the GPU
        step += 1
        bar.update()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{torch.stack(losses[-50:]).mean().item():.4f}", refresh=False)
    bar.close()
    seconds = time.monotonic() - start
    ema.copy_to(unet.parameters())
    tail = torch.stack(losses[-max(1, len(losses) // 10) :]).tolist() if losses else [math.nan]
    figures = {
        "steps": step,
        "seconds": round(seconds, 1),
        "images_per_second": round(step * config.batch_size / max(seconds, 1e-9), 1),
        "final_loss": round(sum(tail) / len(tail), 5),
    }
    return unet.eval(), figures


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def foreground(images: torch.Tensor, threshold: float = 0.15) -> torch.Tensor:
    """Pixels that differ from the white background ``[B, H, W]``."""
    return (1.0 - images).amax(dim=1) > threshold


def evaluate_samples(
    prior: ShapesPrior,
    objects: list[ShapeObject],
    embeddings: torch.Tensor,
    views: RenderedViews,
    classifier: torch.nn.Module,
    steps: int,
    guidance_scale: float,
    generator: torch.Generator,
    batch: int = 256,
) -> tuple[dict, torch.Tensor]:
    """Sample every object (canonical prompt) at the cameras of ``views``; classify, compare silhouettes."""
    samples = []
    for start in tqdm(range(0, len(views), batch), desc="samples"):
        text = embeddings[views.object_index[start : start + batch]]
        cameras = views.cameras[start : start + batch]
        samples.append(prior.sample(text, cameras, steps, guidance_scale, generator))
    samples = torch.cat(samples).cpu()
    shapes, colors = object_labels([objects[i] for i in views.object_index.tolist()])
    acc = accuracy(classifier, samples, shapes, colors)
    # GT silhouettes from exact coverage; samples have no alpha, so theirs is 'differs from white'.
    fg_sample, fg_truth = foreground(samples), views.alpha[:, 0].cpu() > 0.5
    iou = (fg_sample & fg_truth).flatten(1).sum(1) / (fg_sample | fg_truth).flatten(1).sum(1).clamp_min(1)
    names, _, _ = classify(samples, classifier)
    per_shape = {}
    for shape in dict.fromkeys(o.shape for o in objects):
        mask = torch.tensor([objects[i].shape == shape for i in views.object_index.tolist()])
        hits = [n == shape for n, m in zip(names, mask.tolist(), strict=True) if m]
        per_shape[shape] = {
            "shape_accuracy": round(sum(hits) / len(hits), 4),
            "silhouette_iou": round(iou[mask].mean().item(), 4),
        }
    figures = {
        "sample_accuracy": {k: round(v, 4) for k, v in acc.items()},
        "silhouette_iou": round(iou.mean().item(), 4),
        "per_shape": per_shape,
    }
    return figures, samples


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--steps", type=int, default=100_000, help="max prior optimizer steps")
    p.add_argument("--minutes", type=float, default=0.0, help="wall-clock budget of prior training (0: none)")
    p.add_argument("--batch-size", type=int, default=64, help="prior images per step")
    p.add_argument("--lr", type=float, default=1e-3, help="prior learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of everything random")
    p.add_argument("--out", type=Path, default=Path("att3d/assets/shapes-prior"), help="output folder")
    p.add_argument("--views-per-object", type=int, default=400, help="GT renders per object for training")
    p.add_argument(
        "--heldout-views", type=int, default=24, help="fresh GT renders per object for the classifier test"
    )
    p.add_argument("--eval-views", type=int, default=8, help="prior samples per object for evaluation")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of evaluation samples")
    p.add_argument("--guidance", type=float, default=3.0, help="CFG scale of evaluation samples")
    p.add_argument("--classifier-steps", type=int, default=2000, help="classifier optimizer steps")
    p.add_argument("--image-size", type=int, default=32, help="prior resolution")
    p.add_argument("--embeddings", type=Path, help="precomputed prompt embeddings (safetensors)")
    p.add_argument("--export-embeddings", type=Path, help="write prompt embeddings to FILE and exit")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "views_per_object", "heldout_views", "eval_views", "sample_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.minutes < 0:
        p.error("--minutes must be >= 0")
    if args.embeddings is not None and not args.embeddings.is_file():
        p.error(f"--embeddings {args.embeddings} does not exist")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    objects = list(load_splits().prior)
    prompts, phrasings = prompt_table(objects)
    if args.export_embeddings is not None:
        export_embeddings(args.export_embeddings, prompts)
        return {}
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model_config = ShapesPriorConfig(image_size=args.image_size)
    train_config = PriorTrainConfig(
        steps=args.steps, minutes=args.minutes, batch_size=args.batch_size, lr=args.lr
    )
    if args.embeddings is not None:
        embeddings = load_embeddings(args.embeddings, prompts, model_config.text_encoder)
    else:
        embeddings, _ = encode_prompts(prompts)
    canonical = embeddings[[p[0] for p in phrasings]]  # objects' canonical prompts come first

    cameras = CameraSamplingConfig()
    t0 = time.monotonic()
    print(f"rendering {len(objects)} objects x {args.views_per_object} views at {args.image_size} px")
    render = partial(render_dataset, objects, size=args.image_size, camera_config=cameras, device=device)
    train = render(args.views_per_object, seed=args.seed)
    heldout = render(args.heldout_views, seed=args.seed + 1)  # fresh cameras for every held-out figure
    eval_set = render(args.eval_views, seed=args.seed + 2)
    render_seconds = time.monotonic() - t0

    unet, prior_figures = train_prior(
        train, embeddings, phrasings, model_config, train_config, device, generator
    )

    # GT renders plus "nothing there" images, as scripts/train_shapes_classifier.py (which retrains it alone).
    images, shapes, colors = training_set(train, 1 / 7, torch.Generator().manual_seed(args.seed))
    classifier_config = ClassifierTrainConfig(steps=args.classifier_steps)
    t0 = time.monotonic()
    classifier = train_classifier(images, shapes, colors, classifier_config, device=device, seed=args.seed)
    classifier_seconds = time.monotonic() - t0
    classifier = classifier.cpu()
    held_shapes, held_colors = object_labels([objects[i] for i in heldout.object_index.tolist()])
    gt_accuracy = accuracy(classifier, heldout.images, held_shapes, held_colors)

    prior = ShapesPrior(unet, build_scheduler(model_config), model_config)
    sample_figures, samples = evaluate_samples(
        prior,
        objects,
        canonical.to(device),
        eval_set,
        classifier.to(device),
        args.sample_steps,
        args.guidance,
        generator,
    )

    figures = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "seed": args.seed,
        "objects": len(objects),
        "prompts": len(prompts),
        "train_renders": int(train.images.shape[0]),
        "render_seconds": round(render_seconds, 1),
        "unet_parameters": count_parameters(unet),
        "prior": {**prior_figures, "config": asdict(train_config)},
        "classifier": {
            "seconds": round(classifier_seconds, 1),
            "steps": args.classifier_steps,
            "heldout_gt_accuracy": {k: round(v, 4) for k, v in gt_accuracy.items()},
        },
        "samples": {"steps": args.sample_steps, "guidance_scale": args.guidance, **sample_figures},
    }
    prior.metadata = {"training": figures}
    prior.save_pretrained(args.out)
    save_classifier(classifier, args.out, {"training": figures["classifier"]})
    write_json(args.out / "figures.json", figures)
    write_sheet(args.out / "samples.png", objects, samples, eval_set, args.eval_views)
    print(json.dumps({k: figures[k] for k in ("prior", "classifier", "samples")}, indent=1))
    return figures


def write_sheet(
    path: Path, objects: list[ShapeObject], samples: torch.Tensor, truth: RenderedViews, views: int
) -> None:
    """Each object: its samples, then the exact renders from the same cameras."""
    from att3d.images import save_png
    from att3d.shapes.sheets import labelled_grid

    rows, labels = [], []
    for i, obj in enumerate(objects):
        rows.append(
            torch.cat([samples[i * views : (i + 1) * views], truth.images[i * views : (i + 1) * views].cpu()])
        )
        labels.append(obj.canonical_prompt)
    save_png(labelled_grid(rows, labels, scale=2), path)


if __name__ == "__main__":
    main()
