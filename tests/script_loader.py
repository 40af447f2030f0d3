"""Load a file of ``scripts/`` as a module, for tests of the benchmark scripts (they are not a package)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def loaded_script(name: str) -> Iterator[ModuleType]:
    """Yield ``scripts/<name>.py`` as module ``name``; it is registered in ``sys.modules`` meanwhile,
    because dataclasses look their module up while the script loads."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
