"""Models added with ``POST /v1/models``, kept in ``<data_dir>/models.json`` so a restart loads them again.

The file maps each name to the job it came from and that job's checkpoint folder:
``{"version": 1, "models": {"chairs": {"job_id": "...", "checkpoint": "..."}}}``, written atomically. At
start-up each entry becomes a loader the engine runs after the configured models; an entry whose checkpoint is
missing or fails to load is logged and skipped, and a damaged file is moved aside: neither stops the server.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from att3d.atomic import write_json_atomic
from att3d.devices import resolve_device
from att3d.generate import Generator
from server.schemas import is_model_name

logger = logging.getLogger(__name__)

SAVED_MODELS_FILE = "models.json"
DAMAGED_SUFFIX = ".damaged"


class SavedModels:
    """The saved name -> (job id, checkpoint) list of one data folder."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / SAVED_MODELS_FILE
        self._lock = threading.Lock()  # read-modify-write of concurrent POSTs

    def read(self) -> dict[str, dict[str, str]]:
        """The saved entries (none when there is no file); a damaged file is moved aside and reads as none."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entries = data["models"]
            if not isinstance(entries, dict):
                raise ValueError("'models' is not an object")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as err:
            aside = self.path.with_name(self.path.name + DAMAGED_SUFFIX)
            logger.error("%s is damaged (%s): moved to %s; its models are not loaded", self.path, err, aside)
            self.path.replace(aside)
            return {}
        good = {}
        for name, entry in entries.items():
            if (
                is_model_name(str(name))
                and isinstance(entry, dict)
                and isinstance(entry.get("checkpoint"), str)
                and isinstance(entry.get("job_id"), str)
            ):
                good[name] = {"job_id": entry["job_id"], "checkpoint": entry["checkpoint"]}
            else:
                logger.warning("%s: skipping the malformed entry %r", self.path, name)
        return good

    def add(self, name: str, job_id: str, checkpoint: str) -> None:
        with self._lock:
            entries = self.read()
            entries[name] = {"job_id": job_id, "checkpoint": checkpoint}
            write_json_atomic(self.path, {"version": 1, "models": entries})

    def loaders(self, taken: Iterable[str], device: str) -> dict[str, Callable[[], Generator | None]]:
        """A loader per saved model whose name ``taken`` (the configured models) does not hold already; each
        returns ``None`` (logged) where its checkpoint is gone or does not load."""
        taken = set(taken)
        loaders = {}
        for name, entry in self.read().items():
            if name in taken:
                logger.warning("saved model %r is not loaded: a configured model has that name", name)
                continue
            loaders[name] = _loader(name, entry["job_id"], entry["checkpoint"], device)
        return loaders


def _loader(name: str, job_id: str, checkpoint: str, device: str) -> Callable[[], Generator | None]:
    def load() -> Generator | None:
        if not Path(checkpoint).is_dir():
            why = f"its checkpoint {checkpoint} is missing"
            logger.warning("saved model %r (job %s) is not loaded: %s", name, job_id, why)
            return None
        try:
            return Generator.from_checkpoint(checkpoint, name=name, device=str(resolve_device(device)))
        except Exception as err:
            logger.warning(
                "saved model %r (job %s) is not loaded: checkpoint %s: %s", name, job_id, checkpoint, err
            )
            return None

    return load
