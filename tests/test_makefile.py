"""The set-up recipe: torch comes from the CPU wheel index unless the user picks another (``TORCH_INDEX``).

On a standard index ``torch==X`` is the CUDA build with ~16 nvidia packages; the CPU default must not rely on
this machine's local wheel. ``make -n -B`` prints the recipe without running it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _torch_install_line(*variables: str) -> str:
    out = subprocess.run(
        ["make", "-n", "-B", "-C", str(ROOT), *variables, ".venv/bin/att3d"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next(line for line in out.splitlines() if "install -q --no-deps torch==" in line)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_torch_index_defaults_to_cpu_and_can_be_chosen():
    default = _torch_install_line()
    assert "torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu" in default
    cuda = _torch_install_line("TORCH_INDEX=https://download.pytorch.org/whl/cu128", "TORCH_VERSION=2.14.1")
    assert "torch==2.14.1 --extra-index-url https://download.pytorch.org/whl/cu128" in cuda
    assert "--extra-index-url" not in _torch_install_line("TORCH_INDEX=")
