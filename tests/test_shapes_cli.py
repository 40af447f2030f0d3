"""``att3d shapes`` commands and the contact-sheet helpers behind them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from att3d.images import save_png
from att3d.shapes.cli import app
from att3d.shapes.sheets import image_grid, labelled_grid, turntable_cameras

runner = CliRunner()


def test_image_grid_layout_and_values() -> None:
    images = torch.stack([torch.ones(3, 4, 4), torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.5)])
    grid = image_grid(images, columns=2, scale=2, pad=1)
    # 2 rows × 2 columns of 8×8 cells with 1-pixel gray borders.
    assert grid.shape == (2 * 9 + 1, 2 * 9 + 1, 3) and grid.dtype == np.uint8
    assert (grid[1:9, 1:9] == 255).all() and (grid[1:9, 10:18] == 0).all() and (grid[10:18, 1:9] == 128).all()
    assert (grid[0] == 128).all() and (grid[10:18, 10:18] == 128).all()  # border and the empty cell
    with pytest.raises(ValueError, match="columns >= 1"):
        image_grid(images, columns=0)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        image_grid(torch.zeros(4, 4), columns=1)


def test_labelled_grid_and_save_png(tmp_path) -> None:
    sheet = labelled_grid(
        [torch.ones(3, 3, 8, 8), torch.ones(2, 3, 8, 8)], ["a", "b"], scale=1, label_width=20
    )
    assert sheet.size == (20 + 3 * 10 + 2, 2 + 2 * 10)
    path = save_png(sheet, tmp_path / "sheet.png")
    assert Image.open(path).size == sheet.size
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]  # no temp file left
    with pytest.raises(ValueError, match="2 rows but 1 labels"):
        labelled_grid([torch.ones(1, 3, 8, 8)] * 2, ["a"])
    with pytest.raises(ValueError, match=r"must be a \.png file"):
        save_png(sheet, tmp_path / "sheet.jpg")


def test_turntable_cameras_order() -> None:
    cameras = turntable_cameras(4, [10.0, 40.0])
    assert cameras.elevation.tolist() == [10.0] * 4 + [40.0] * 4
    assert cameras.azimuth.tolist() == [0.0, 90.0, 180.0, 270.0] * 2


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
