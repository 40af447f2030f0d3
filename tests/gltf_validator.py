"""Test helper: check GLB bytes with the Khronos glTF validator.

The validator is the npm package ``gltf-validator`` pinned in ``tools/package.json``; ``tools/validate.js``
feeds it the bytes on stdin and prints its JSON report. Install it once with ``npm --prefix tools ci``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
SCRIPT = TOOLS / "validate.js"

# Severity codes in the validator's report.
ERROR, WARNING, INFO, HINT = 0, 1, 2, 3


def validate_glb(data: bytes, timeout_s: float = 120.0) -> dict[str, Any]:
    """The validator's full report for a GLB (or glTF JSON) given as bytes."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("the glTF validator needs Node.js: `node` was not found on PATH")
    if not (TOOLS / "node_modules" / "gltf-validator").is_dir():
        raise RuntimeError(
            f"the glTF validator is not installed in {TOOLS / 'node_modules'}: run `npm --prefix tools ci`"
        )
    proc = subprocess.run(
        [node, str(SCRIPT)], input=data, capture_output=True, timeout=timeout_s, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{SCRIPT.name} exited with {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}"
        )
    return json.loads(proc.stdout)


def messages(report: dict[str, Any], severity: int) -> list[str]:
    """Readable ``CODE at POINTER: message`` lines of one severity."""
    return [
        f"{m['code']} at {m.get('pointer', '?')}: {m['message']}"
        for m in report["issues"]["messages"]
        if m["severity"] == severity
    ]


def assert_valid_glb(data: bytes, allow_warnings: bool = True) -> dict[str, Any]:
    """Fail the calling test with the validator's messages if it reports any error; return the report."""
    report = validate_glb(data)
    issues = report["issues"]
    bad = messages(report, ERROR) + ([] if allow_warnings else messages(report, WARNING))
    if issues["numErrors"] > 0 or bad:
        pytest.fail(
            f"glTF validator: {issues['numErrors']} error(s), {issues['numWarnings']} warning(s)\n"
            + "\n".join(bad),
            pytrace=False,
        )
    return report
