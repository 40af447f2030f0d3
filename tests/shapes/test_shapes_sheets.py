"""The contact-sheet helpers behind ``att3d shapes``: grids, labels, PNG files, turntable cameras."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from att3d.images import save_png
from att3d.shapes.sheets import image_grid, labelled_grid, turntable_cameras


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
