"""The contract every ``DiffusionPrior`` keeps, written once and run over every prior.

Modelled on diffusers' ``PipelineTesterMixin``: :class:`PriorContract` holds the shared assertions; each
prior's test class subclasses it, provides a ``prior`` fixture building a tiny random prior, a
:meth:`~PriorContract.conditions` builder and a few expected sizes, and adds the tests only it needs.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from att3d.config import SDSConfig
from att3d.priors.base import DiffusionPrior, PriorCondition
from att3d.sds import sds_loss


class PriorContract:
    """Shared assertions; subclasses set the class attributes and the ``prior`` fixture."""

    space: str
    """``pixel`` or ``latent``."""
    image_size: int
    """Expected ``prior.image_size`` of the tiny prior."""
    diffusion_shape: tuple[int, int, int]
    """``(C, H, W)`` of one image in the prior's diffusion space (``encode_images`` output, ``x_t``)."""
    sds_config: SDSConfig
    """SDS settings of :meth:`test_sds_gradient_reaches_the_render`."""
    sds_render_shape: tuple[int, int, int, int]
    """Renders ``[B, 3, H, W]`` fed to SDS."""
    sds_timestep_range: tuple[int, int]
    """Inclusive bounds the sampled timesteps must stay in for :attr:`sds_config`."""

    @pytest.fixture
    def prior(self) -> DiffusionPrior:
        raise NotImplementedError("each prior's test class provides a `prior` fixture")

    def conditions(
        self, prior: DiffusionPrior, batch: int, seed: int
    ) -> tuple[PriorCondition, PriorCondition]:
        """``(cond, uncond)`` for ``batch`` images, reproducible from ``seed``."""
        raise NotImplementedError

    def unclipped(self, prior: DiffusionPrior, x_t: Tensor, t: Tensor, cond, uncond, scale: float) -> Tensor:
        """Where guidance is affine in the scale: everywhere, unless the prior clips its prediction."""
        return torch.ones(x_t.shape, dtype=torch.bool)

    # ---------------------------------------------------------------------------------------- contract

    def test_describes_itself(self, prior: DiffusionPrior) -> None:
        assert prior.space == self.space
        assert prior.image_size == self.image_size
        assert prior.num_train_timesteps == 1000
        alphas = prior.alphas_cumprod
        assert alphas.shape == (1000,) and alphas.dtype == torch.float32 and alphas.device == prior.device
        assert (alphas > 0).all() and (alphas < 1).all() and (alphas.diff() < 0).all()

    def test_is_frozen(self, prior: DiffusionPrior) -> None:
        modules = [m for m in vars(prior).values() if isinstance(m, torch.nn.Module)]
        assert modules
        for module in modules:
            assert not any(p.requires_grad for p in module.parameters())
            assert not module.training

    def test_encode_images_shape_and_gradient(self, prior: DiffusionPrior) -> None:
        images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0)).requires_grad_()
        x = prior.encode_images(images)
        assert x.shape == (2, *self.diffusion_shape) and x.dtype == torch.float32
        x.sum().backward()
        assert images.grad is not None and images.grad.abs().sum() > 0 and images.grad.isfinite().all()

    def test_encode_images_rejects_bad_shape(self, prior: DiffusionPrior) -> None:
        with pytest.raises(ValueError, match=r"images must be \[B, 3, H, W\].*\(2, 4, 16, 16\)"):
            prior.encode_images(torch.rand(2, 4, 16, 16))
        with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
            prior.encode_images(torch.zeros(3, 16, 16))

    def test_noise_pred_shape_and_finite(self, prior: DiffusionPrior) -> None:
        cond, uncond = self.conditions(prior, 3, seed=0)
        x_t = torch.randn(3, *self.diffusion_shape)
        t = torch.tensor([0, 500, 999])
        with torch.no_grad():
            eps = prior.noise_pred(x_t, t, cond, uncond, guidance_scale=7.5)
        assert eps.shape == x_t.shape
        assert torch.isfinite(eps).all()

    def test_guidance_form(self, prior: DiffusionPrior) -> None:
        """The one CFG form: scale 0 is unconditional, 1 conditional, s is uncond + s (cond - uncond)."""
        cond, uncond = self.conditions(prior, 2, seed=3)
        x_t = torch.randn(2, *self.diffusion_shape, generator=torch.Generator().manual_seed(4))
        t = torch.tensor([300, 700])
        with torch.no_grad():
            eps_cond = prior.noise_pred(x_t, t, cond, uncond, 1.0)
            eps_uncond = prior.noise_pred(x_t, t, uncond, uncond, 1.0)
            torch.testing.assert_close(
                prior.noise_pred(x_t, t, cond, uncond, 0.0), eps_uncond, atol=1e-5, rtol=1e-5
            )
            guided = prior.noise_pred(x_t, t, cond, uncond, 3.0)
        inside = self.unclipped(prior, x_t, t, cond, uncond, 3.0)
        assert inside.float().mean() > 0.5
        expected = eps_uncond + 3.0 * (eps_cond - eps_uncond)
        torch.testing.assert_close(guided[inside], expected[inside], atol=1e-4, rtol=1e-4)
        assert not torch.allclose(eps_cond, eps_uncond)  # the text actually conditions the denoiser

    def test_sds_gradient_reaches_the_render(self, prior: DiffusionPrior) -> None:
        images = torch.rand(*self.sds_render_shape, requires_grad=True)
        cond, uncond = self.conditions(prior, images.shape[0], seed=7)
        out = sds_loss(
            prior, images, cond, uncond, self.sds_config, generator=torch.Generator().manual_seed(0)
        )
        out.loss.backward()
        assert images.grad is not None and images.grad.shape == images.shape
        assert images.grad.isfinite().all() and images.grad.abs().sum() > 0
        low, high = self.sds_timestep_range
        assert out.timesteps.shape == (images.shape[0],)
        assert ((out.timesteps >= low) & (out.timesteps <= high)).all()
