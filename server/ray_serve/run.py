"""What ``att3d serve --backend ray`` runs: start (or join) a Ray cluster, deploy the application with Serve's
HTTP proxy on the given host and port, wait for Ctrl-C (or SIGTERM), and take it down again.

Without an address a local Ray cluster is started for this process and shut down with it; with one
(``auto``, ``ray://HOST:10001``, ``HOST:6379``) the application is deployed to that cluster and deleted from
it on exit, leaving the cluster and any other Serve application running.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable

from server.ray_serve.options import RayServeOptions
from server.settings import ServerSettings

APP_NAME = "att3d"
"""The Serve application's name (``serve status`` lists it)."""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class RayBackendMissing(RuntimeError):
    """The ``ray`` extra is not installed."""


def serve_on_ray(
    options: RayServeOptions,
    settings: ServerSettings,
    host: str,
    port: int,
    address: str | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Deploy and block until interrupted; raises :class:`RayBackendMissing` without the ``ray`` extra."""
    try:
        import ray
        from ray import serve
    except ImportError as err:
        raise RayBackendMissing(
            f"the Ray backend needs the ray extra (pip install 'att3d[ray]'): {err}"
        ) from None
    from server.ray_serve.deployments import bind

    if address is None:
        # A local cluster gets enough logical CPUs for the replicas asked for (they then share the cores)
        # rather than leaving some unscheduled, which would block the deployment forever.
        wanted = math.ceil(options.replicas * options.replica_cpus)
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, wanted))
    else:
        ray.init(address=address)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # stop as on Ctrl-C, even while deploying
    try:
        serve.start(http_options={"host": host, "port": port})
        echo(f"deploying {options.replicas} generation replica(s) and the ingress (models load first)")
        serve.run(bind(options, settings), name=APP_NAME, route_prefix="/")
        echo(
            f"att3d serving on Ray at http://{host}:{port}/ (models: {', '.join(options.model_refs())}); "
            "Ctrl-C stops it"
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        echo("stopping the Ray Serve application")
        if address is None:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
        ray.shutdown()
