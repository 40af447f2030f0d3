"""The request schemas stay light: importing them loads no model stack."""

from __future__ import annotations

import subprocess
import sys


def test_schemas_import_without_torch():
    code = "import server.schemas, sys; assert 'torch' not in sys.modules, 'server.schemas imports torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
