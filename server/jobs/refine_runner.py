"""The job process's runner for refine jobs: ``att3d.refine`` with previews and the result in the run folder.

The same contract as a training runner (``server.jobs.worker.Runner``): it is called with the job's
stored config (``server.jobs.refine_requests``), the run folder, ``resume``, a progress callback and a
cancel flag, keeps its checkpoints in ``<run>/checkpoints`` and returns how it ended. Every
``preview_every`` steps it meshes the field at the preview resolution into ``<run>/preview.glb``; when the
refine completes it meshes the result (the requested resolution and format) into ``<run>/result.<format>``
and the preview becomes the final mesh too. Both are written atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from att3d.atomic import atomic_write
from server.jobs.refine_requests import PREVIEW_FILE, RESULT_STEM

logger = logging.getLogger("server.jobs.refine")


def run_refine(
    config: dict[str, Any],
    out_dir: str | Path,
    *,
    resume: bool,
    progress_callback: Callable[[int, int, float], None],
    cancel: threading.Event,
):  # -> att3d.refine.RefineResult
    """Refine the job's prompt from its model snapshot; mesh previews and, once completed, the result."""
    from att3d.config import from_dict
    from att3d.devices import resolve_device
    from att3d.generate import Generator
    from att3d.meshing.errors import NoSurfaceError
    from att3d.meshing.export import mesh_to_bytes
    from att3d.priors.registry import load_prior
    from att3d.refine import RefineConfig, mesh_refined, refine

    out_dir = Path(out_dir)
    device = resolve_device(config["device"])
    generator = Generator.from_checkpoint(config["model_dir"], device=str(device))
    prior = load_prior(config["prior"], device=device)
    refine_config = from_dict(RefineConfig, config["refine"])
    result_mesh = dataclasses.replace(generator.config.mesh, resolution=config["resolution"])
    preview_mesh = dataclasses.replace(
        result_mesh, resolution=config["preview_resolution"], texture="vertex", grid_query="dense"
    )

    def write(name: str, data: bytes) -> None:
        atomic_write(out_dir / name, lambda tmp: tmp.write_bytes(data))

    def preview(step: int, field) -> None:
        try:
            mesh = mesh_refined(field, preview_mesh, device)
        except NoSurfaceError as err:  # an empty moment of the field: keep the last preview
            logger.info("step %d: no preview (%s)", step, err)
            return
        write(PREVIEW_FILE, mesh_to_bytes(mesh, "glb"))

    result = refine(
        generator,
        config["prompt"],
        refine_config,
        prior,
        out_dir=out_dir,
        resume=resume,
        progress_callback=progress_callback,
        preview_callback=preview,
        cancel=cancel,
        progress=True,
    )
    if result.status == "completed":
        mesh = mesh_refined(result.field, result_mesh, device)  # no surface: the job fails, saying so
        write(f"{RESULT_STEM}.{config['format']}", mesh_to_bytes(mesh, config["format"]))
        write(PREVIEW_FILE, mesh_to_bytes(mesh, "glb"))
    return result
