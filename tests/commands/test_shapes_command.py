"""``att3d shapes`` commands: ground-truth turntables, prior samples, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from att3d.commands.shapes import shapes_app as app

runner = CliRunner()


def test_render_command(tmp_path) -> None:
    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["render", "a red cube", "-o", str(out), "--views", "4", "--size", "16"])
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(out))
    assert image.shape == (2 + 2 * 18, 150 + 4 * 18 + 2, 3)  # two elevation rows of four 16-px cells
    # The cell of azimuth 0 at the first elevation shows red on white.
    cell = image[2:18, 152:168].astype(int)
    assert (cell[..., 0] - cell[..., 2]).max() > 100 and cell[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["render", "a pink elephant"], "'a pink elephant' is not a ShapesWorld prompt"),
        (["render", "a red cube", "-o", "x.jpg"], "--output must end in .png"),
        (["render", "a red cube", "--views", "0"], "--views must be between 1 and 64"),
        (["render", "a red cube", "--elevation", "90"], "--elevation must be strictly between"),
        (["sample", "a red cube and a blue cube"], "'a red cube and a blue cube' is not a ShapesWorld"),
        (["sample", "a red cube", "--steps", "0"], "--steps must be between 1 and 1000"),
        (["sample", "   "], "prompt contains only whitespace"),
    ],
)
def test_user_errors(args: list[str], message: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert f"error: {message}" in result.output
    assert list(tmp_path.iterdir()) == []


def test_sample_command_with_bundled_prior(tmp_path) -> None:
    out = tmp_path / "samples.png"
    args = ["sample", "a blue sphere", "-o", str(out), "--views", "2", "--elevation", "20", "--steps", "3"]
    result = runner.invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    # One sample row and one ground-truth row of two 32-px cells upscaled 2×.
    assert Image.open(out).size == (110 + 2 * 66 + 2, 2 + 2 * 66)
