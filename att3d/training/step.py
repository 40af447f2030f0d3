"""One optimizer step's work, top to bottom (:func:`forward_backward`; ``optimizer.step()`` is the loop's).

1. draw ``P`` prompt weight rows (plain prompts or interpolants, ``conditioning.sample_prompt_weights``);
2. mix the field's text embeddings and the prior's text conditioning with the same weights;
3. draw ``V`` cameras per prompt, pick one shading mode for the step and render the ``P × V`` images;
4. SDS (``att3d.sds``) plus optional opacity regularizers; backward through the render into the field.

A one-prompt set is per-prompt DreamFusion through the same code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from att3d.cameras import sample_cameras
from att3d.field import AmortizedField
from att3d.render import FieldFn, render
from att3d.sds import sds_loss
from att3d.training.conditioning import choose_shading, mix_rows, prior_condition, sample_prompt_weights
from att3d.training.setup import TrainRun


def single_power_iteration(model: nn.Module, field: AmortizedField, embeddings: Tensor) -> FieldFn:
    """The field function for one step: only its first call updates the spectral-norm estimates.

    The renderer queries the field several times per step (samples, then normals). In training mode
    every call would update the power-iteration vectors in place while the first call's autograd graph
    still needs them; later calls therefore run in eval mode, which reuses the just-updated estimates
    and gives the same values. ``model`` is the field or its DDP wrapper.
    """
    calls = 0

    def field_fn(points: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return model(points, embeddings)
        field.eval()
        try:
            return model(points, embeddings)
        finally:
            field.train()

    return field_fn


@dataclass
class StepOutput:
    """Detached values of one step, for logging."""

    loss: Tensor
    sds: Tensor
    grad_norm: Tensor
    t_mean: Tensor
    opacity: Tensor
    interpolants: Tensor
    shading: str

    def scalars(self) -> dict[str, Tensor]:
        """The values logged for every step, by their TensorBoard names."""
        return {
            "loss/total": self.loss,
            "loss/sds": self.sds,
            "sds/grad_norm": self.grad_norm,
            "sds/t_mean": self.t_mean,
            "render/opacity": self.opacity,
            "train/interpolant_fraction": self.interpolants,
        }


def update_occupancy(run: TrainRun, embeddings: Tensor) -> None:
    """Re-evaluate the occupancy grid with this step's prompts (eval mode: no power-iteration update)."""
    field = run.field
    field.eval()
    try:
        run.occupancy.update(
            lambda points: field(points, embeddings)[0],
            len(embeddings),
            run.torch_gen,
            distributed=run.dist.distributed,
        )
    finally:
        field.train()


def forward_backward(run: TrainRun, step: int) -> StepOutput:
    """Draw prompts and cameras, render, SDS, backward. The optimizer step is the caller's."""
    config, device = run.config, run.dist.device
    p, v = config.prompts_per_step, config.views_per_prompt
    weights = torch.from_numpy(
        sample_prompt_weights(p, run.shard, len(run.bank.prompts), config, run.host_rng)
    ).to(device)
    embeddings = mix_rows(weights, run.bank.embeddings)
    cameras = sample_cameras(p * v, config.cameras, generator=run.torch_gen).to(device)
    shading = choose_shading(step, config, run.host_rng)
    if run.level_mask is not None:
        run.level_mask.set_step(step)

    if run.occupancy is not None and step % config.occupancy.update_every == 0:
        update_occupancy(run, embeddings)
    out = render(
        single_power_iteration(run.model, run.field, embeddings),
        cameras,
        config.model.render,
        num_prompts=p,
        shading=shading,
        generator=run.torch_gen,
        bound=config.model.field.bound,
        sample_filter=run.occupancy.contains if run.occupancy is not None else None,
    )
    cond, uncond = prior_condition(run.bank, weights, cameras, v)
    sds = sds_loss(run.prior, out.rgb, cond, uncond, config.sds, step, generator=run.torch_gen)
    loss = sds.loss
    if config.sparsity_weight > 0:
        loss = loss + config.sparsity_weight * out.opacity.mean()
    if config.opacity_entropy_weight > 0:
        o = out.opacity.clamp(1e-5, 1.0 - 1e-5)
        entropy = -(o * o.log() + (1.0 - o) * (1.0 - o).log()).mean()
        loss = loss + config.opacity_entropy_weight * entropy
    if config.albedo_smoothness_weight > 0 and out.albedo_variation is not None:
        loss = loss + config.albedo_smoothness_weight * out.albedo_variation

    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return StepOutput(
        loss=loss.detach(),
        sds=sds.loss.detach(),
        grad_norm=sds.grad_norm.detach(),
        t_mean=sds.timesteps.float().mean() / run.prior.num_train_timesteps,
        opacity=out.opacity.detach().mean(),
        interpolants=((weights > 0).sum(dim=1) > 1).float().mean(),
        shading=shading,
    )
