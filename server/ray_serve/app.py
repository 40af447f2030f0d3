"""The application builder that ``configs/serve_ray.yaml`` names (``import_path:
server.ray_serve.app:build_app``): ``serve run configs/serve_ray.yaml`` and ``serve deploy`` (a KubeRay
``RayService``'s ``serveConfigV2`` too) call it with the config file's ``args``.

The service's settings come from the ``ATT3D_*`` environment variables of the process that builds the
application (set them in the config file's ``runtime_env.env_vars``); the replicas receive them from there.
Importing this module does not import Ray (the builder does).
"""

from __future__ import annotations

from typing import Any

from server.ray_serve.options import RayServeOptions


def build_app(args: dict[str, Any]) -> Any:  # -> ray.serve.Application
    """The ingress and generation deployments built from ``args`` (:class:`RayServeOptions` fields)."""
    from server.ray_serve.deployments import bind
    from server.settings import ServerSettings

    return bind(RayServeOptions.from_args(args), ServerSettings.from_env())
