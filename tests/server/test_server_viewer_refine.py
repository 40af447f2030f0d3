"""Browser test of the viewer's Refine button (``tools/browser/check_refine.js``, headless Chromium): offered
in the note over an unfamiliar prompt's mesh, it starts the job, its progress bar moves, and the refined mesh
(the fake refine runner's box) replaces the preview."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from test_server_viewer import CHROMIUM, TOOLS, server_url  # noqa: F401 (the fixture)


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"
)
def test_refine_button_shows_progress_and_swaps_in_the_refined_mesh(server_url):  # noqa: F811
    node = shutil.which("node")
    if node is None or not (TOOLS / "node_modules" / "playwright-core").is_dir():
        pytest.fail("the browser test needs Node.js and playwright-core: run `npm --prefix tools/browser ci`")
    proc = subprocess.run(
        [node, str(TOOLS / "check_refine.js"), f"{server_url}/", "a green cone"],
        capture_output=True,
        timeout=300,
        env={**os.environ, "CHROMIUM": str(CHROMIUM)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    result = json.loads(proc.stdout)
    assert result["viewerErrors"] == [] and result["consoleErrors"] == [], result
    assert result["noteShown"] is True, result  # the unfamiliar-prompt note's Refine button started it
    posted = [r for r in result["refineRequests"] if r["url"] == "/v1/refine"]
    assert [r["status"] for r in posted] == [202], result
    results = [r for r in result["refineRequests"] if r["url"].endswith("/result")]
    assert [r["status"] for r in results] == [200], result
    assert result["finalProgress"] == 100 and len(result["progressSeen"]) >= 2, result
    assert result["loads"] > result["loadsBeforeRefine"], result
    assert "refined: 16 steps" in result["status"], result
    assert result["nonBackgroundFraction"] > 0.01, result
