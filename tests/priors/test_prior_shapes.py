"""The ShapesWorld prior: the contract, conditioning, eps conversion, saving/loading, the bundled weights."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from prior_contract import PriorContract

from att3d.cameras import make_cameras
from att3d.config import SDSConfig
from att3d.priors.base import PriorCondition, eps_from_sample
from att3d.priors.shapes import DEFAULT_PRIOR_DIR, ShapesPrior, read_settings
from att3d.priors.shapes_network import ShapesPriorConfig, camera_features, condition_vector

TINY = ShapesPriorConfig(
    image_size=16, block_out_channels=(8, 16), norm_num_groups=4, token_dim=4, azimuth_harmonics=4
)


class StubEncoder:
    """Deterministic stand-in for MiniLM (the real one is tested in test_text.py)."""

    id = "all-MiniLM-L6-v2"
    dim = 384

    def encode(self, prompts: list[str]) -> torch.Tensor:
        rows = [torch.randn(self.dim, generator=torch.Generator().manual_seed(len(p))) for p in prompts]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def conditions(prior: ShapesPrior, batch: int, seed: int = 0) -> tuple[PriorCondition, PriorCondition]:
    g = torch.Generator().manual_seed(seed)
    cameras = make_cameras(torch.rand(batch, generator=g) * 60, torch.rand(batch, generator=g) * 360)
    text = torch.randn(batch, 384, generator=g)
    return PriorCondition(text, cameras), PriorCondition(prior.unconditional_text(batch), cameras)


# -------------------------------------------------------------------------------------------- conditioning


def test_camera_features_values_and_harmonics() -> None:
    cameras = make_cameras([0.0, 30.0], [0.0, 90.0], distance=[2.8, 3.0])
    f = camera_features(cameras, harmonics=4)
    assert f.shape == (2, 11)
    # Azimuth 0: sin(k·0) = 0, cos = 1 for every k; elevation 0; distance at the centre.
    torch.testing.assert_close(f[0], torch.tensor([0.0, 1.0] * 4 + [0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    # Azimuth 90°: k=1 -> (1, 0), k=2 -> (0, -1), k=3 -> (-1, 0), k=4 -> (0, 1); elevation 30°; +1 distance.
    expected = torch.tensor([1.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 1.0, 0.5, math.sqrt(3) / 2, 1.0])
    torch.testing.assert_close(f[1], expected, atol=1e-6, rtol=0)
    # Every harmonic k < 4 tells 0° from 90° apart; k = 4 (period 90°) deliberately does not.
    differs = (f[0, :8] - f[1, :8]).abs().view(4, 2).amax(dim=1) > 0.5
    assert differs.tolist() == [True, True, True, False]


def test_camera_features_bad_arguments() -> None:
    cameras = make_cameras([0.0], [0.0])
    with pytest.raises(ValueError, match="harmonics must be >= 1"):
        camera_features(cameras, harmonics=0)
    with pytest.raises(ValueError, match="distance_scale must be > 0"):
        camera_features(cameras, distance_scale=0.0)


def test_condition_vector_layout_and_errors() -> None:
    config = ShapesPriorConfig()
    cameras = make_cameras([10.0, 20.0], [0.0, 45.0])
    text = torch.randn(2, 384)
    c = condition_vector(text, cameras, config)
    assert c.shape == (2, config.condition_dim) == (2, 395)
    torch.testing.assert_close(c[:, :384], text)
    with pytest.raises(ValueError, match=r"text must be \[B, 384\]"):
        condition_vector(torch.randn(2, 10), cameras, config)
    with pytest.raises(ValueError, match="2 text embeddings for 1 cameras"):
        condition_vector(text, cameras[0], config)


def test_camera_features_import_without_diffusers() -> None:
    code = (
        "import sys; from att3d.priors.shapes import ShapesPrior; "
        "from att3d.priors.shapes_network import camera_features; "
        "from att3d.shapes.classifier import classify; "
        "print('diffusers' in sys.modules, 'trimesh' in sys.modules, 'fastapi' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


# -------------------------------------------------------------------------------------------- the tiny prior


class TestShapesPrior(PriorContract):
    space = "pixel"
    image_size = 16
    diffusion_shape = (3, 16, 16)
    sds_config = SDSConfig(guidance_scale=3.0, t_min=0.02, t_max_start=0.98)
    sds_render_shape = (2, 3, 24, 24)
    sds_timestep_range = (20, 980)

    @pytest.fixture(scope="class")
    @classmethod
    def prior(cls) -> ShapesPrior:
        torch.manual_seed(0)
        return ShapesPrior.from_config(TINY, text_encoder=StubEncoder())

    def conditions(self, prior, batch, seed):
        return conditions(prior, batch, seed)

    def unclipped(self, prior, x_t, t, cond, uncond, scale):
        """Clipping x0 to [-1, 1] is applied after guidance: only where no branch clips is it affine."""
        x0_c = prior.predict_sample(x_t, t, cond.text, cond.cameras)
        x0_u = prior.predict_sample(x_t, t, uncond.text, uncond.cameras)
        return ((x0_u + scale * (x0_c - x0_u)).abs() < 1) & (x0_c.abs() < 1) & (x0_u.abs() < 1)

    def test_exact_clean_prediction_recovers_the_noise(
        self, prior: ShapesPrior, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        g = torch.Generator().manual_seed(1)
        x0 = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
        noise = torch.randn(4, 3, 16, 16, generator=g)
        t = torch.tensor([1, 200, 600, 999])
        x_t = prior.add_noise(x0, noise, t)
        torch.testing.assert_close(
            eps_from_sample(x_t, x0, prior.alphas_cumprod[t]), noise, atol=1e-4, rtol=0
        )
        # Through noise_pred: a UNet that predicts x0 exactly must give back the noise for any guidance scale.
        monkeypatch.setattr(
            prior, "predict_sample", lambda x, tt, text, cams: torch.cat([x0] * (x.shape[0] // 4))
        )
        cond, uncond = conditions(prior, 4)
        for scale in (1.0, 5.0):
            torch.testing.assert_close(
                prior.noise_pred(x_t, t, cond, uncond, scale), noise, atol=1e-4, rtol=0
            )

    def test_noise_pred_needs_cameras(self, prior: ShapesPrior) -> None:
        x_t = torch.randn(1, 3, 16, 16)
        cond = PriorCondition(torch.randn(1, 384))
        with pytest.raises(ValueError, match="cameras is required"):
            prior.noise_pred(x_t, torch.tensor([10]), cond, cond, 3.0)
        cond, uncond = conditions(prior, 1)
        with pytest.raises(ValueError, match=r"x_t must be \[B, 3, 16, 16\]"):
            prior.noise_pred(torch.randn(1, 3, 8, 8), torch.tensor([10]), cond, uncond, 1.0)

    def test_encode_images_resizes_and_maps_range(self, prior: ShapesPrior) -> None:
        images = torch.ones(2, 3, 40, 40, requires_grad=True)
        x = prior.encode_images(images)
        assert x.shape == (2, 3, 16, 16)
        torch.testing.assert_close(x, torch.ones_like(x))  # white -> +1
        torch.testing.assert_close(prior.encode_images(torch.zeros(1, 3, 16, 16)), -torch.ones(1, 3, 16, 16))
        x.sum().backward()
        assert images.grad is not None and images.grad.abs().sum() > 0

    def test_text_conditioning_api(self, prior: ShapesPrior) -> None:
        text = prior.encode_text(["a red cube", "a blue sphere"])
        assert text.shape == (2, 384)
        assert prior.unconditional_text(3).abs().sum() == 0
        other = ShapesPrior.from_config(TINY, text_encoder=type("Enc", (StubEncoder,), {"id": "clip"})())
        with pytest.raises(ValueError, match="trained on 'all-MiniLM-L6-v2' embeddings, not 'clip'"):
            other.encode_text(["a red cube"])

    def test_sample_shape_range_and_reproducibility(self, prior: ShapesPrior) -> None:
        cameras = make_cameras([20.0, 20.0], [0.0, 90.0])
        a = prior.sample(
            ["a red cube", "a red cube"], cameras, steps=3, generator=torch.Generator().manual_seed(0)
        )
        b = prior.sample(
            ["a red cube", "a red cube"], cameras, steps=3, generator=torch.Generator().manual_seed(0)
        )
        assert a.shape == (2, 3, 16, 16) and a.min() >= 0 and a.max() <= 1
        torch.testing.assert_close(a, b)
        with pytest.raises(ValueError, match="1 prompts/embeddings for 2 cameras"):
            prior.sample(["a red cube"], cameras, steps=2)
        with pytest.raises(ValueError, match="sampler must be 'ddim' or 'ddpm'"):
            prior.sample(["a", "b"], cameras, steps=2, sampler="euler")

    def test_save_and_load_round_trip(self, prior: ShapesPrior, tmp_path) -> None:
        from att3d.priors.registry import load_prior

        prior.metadata = {"note": "tiny"}
        folder = prior.save_pretrained(tmp_path / "prior")
        prior.save_pretrained(tmp_path / "prior")  # replacing an existing folder works too
        assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "ShapesPrior"
        config, metadata = read_settings(folder)
        assert config == TINY and metadata == {"note": "tiny"}
        loaded = load_prior(folder, device="cpu")
        assert isinstance(loaded, ShapesPrior) and loaded.image_size == 16
        cond, uncond = conditions(prior, 2)
        x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 900])
        torch.testing.assert_close(
            loaded.noise_pred(x_t, t, cond, uncond, 3.0), prior.noise_pred(x_t, t, cond, uncond, 3.0)
        )
        assert sorted(p.name for p in tmp_path.iterdir()) == ["prior"]  # no temp or backup folders left


def test_read_settings_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"shapes_prior\.json is missing"):
        read_settings(tmp_path)
    (tmp_path / "shapes_prior.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not an att3d-shapes-prior settings file"):
        read_settings(tmp_path)


# -------------------------------------------------------------------------------------------- bundled prior


@pytest.fixture(scope="module")
def bundled() -> ShapesPrior:
    return ShapesPrior.from_pretrained(device="cpu", text_encoder=StubEncoder())


def test_bundled_prior_loads_offline_and_samples(bundled: ShapesPrior) -> None:
    assert bundled.image_size == 32 and bundled.space == "pixel" and bundled.num_train_timesteps == 1000
    assert bundled.scheduler.config.prediction_type == "sample"
    assert not any(p.requires_grad for p in bundled.unet.parameters())
    assert (DEFAULT_PRIOR_DIR / "classifier.safetensors").is_file()
    cameras = make_cameras([20.0, 20.0], [0.0, 90.0])
    images = bundled.sample(["a red cube"] * 2, cameras, steps=4, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    # A trained prior puts a white background in the corners.
    assert images[:, :, :3, :3].mean() > 0.8


def test_bundled_prior_follows_the_camera(bundled: ShapesPrior) -> None:
    """A cube seen face-on (azimuth 0) and corner-on (45): each sample matches its own view's silhouette.

    This is the probe's failure mode (an azimuth-averaged cube would match both views equally).
    """
    from att3d.shapes.render import render_objects_with_alpha
    from att3d.shapes.world import ShapeObject
    from att3d.text import get_text_encoder

    # The real (bundled, offline) MiniLM embedding: the prior was trained on those, not on the stub's.
    text = get_text_encoder("minilm", cached=False).encode(["a red cube"]).expand(2, -1)
    cameras = make_cameras([10.0, 10.0], [0.0, 45.0])
    samples = bundled.sample(text, cameras, steps=10, generator=torch.Generator().manual_seed(0))
    _, alpha = render_objects_with_alpha(ShapeObject("cube", "red"), cameras, 32)
    mask, truth = (1 - samples).amax(dim=1) > 0.15, alpha[:, 0] > 0.5

    def iou(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a & b).sum() / (a | b).sum()).item()

    assert iou(mask[0], truth[0]) > iou(mask[0], truth[1]) + 0.02
    assert iou(mask[1], truth[1]) > iou(mask[1], truth[0]) + 0.02
    assert min(iou(mask[0], truth[0]), iou(mask[1], truth[1])) > 0.75
