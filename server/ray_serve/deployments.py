"""The two Serve deployments: ``Generation`` (N replicas, each an ordinary :class:`~server.engine.Engine`
holding its models) and ``Ingress`` (one replica: the FastAPI app of :func:`server.app.create_app` with a
:class:`~server.ray_serve.remote_engine.RemoteEngine`, and the job manager). :func:`bind` joins them into
an application. This is the one module of the package that imports Ray at the top.

The ingress runs a single replica because it owns the job manager, whose SQLite job store must have one
writer; it does no model work, so one replica serves far more requests than the generation replicas do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle

from att3d import malloc_tuning
from server.cache.single_flight import off_loop
from server.engine import Engine
from server.errors import ServiceError, not_ready
from server.mesh_spec import MeshSpec
from server.metrics import Metrics
from server.ray_serve.options import GENERATION, INGRESS, INGRESS_MAX_ONGOING, RayServeOptions
from server.ray_serve.remote_engine import RemoteEngine
from server.ray_serve.replica_header import ReplicaHeaderMiddleware
from server.saved_models import SavedModels
from server.settings import ServerSettings

logger = logging.getLogger(__name__)


# The describe() poll every second would fill the replica logs; the ingress logs every HTTP request.
@serve.deployment(name=GENERATION, logging_config={"enable_access_log": False})
class Generation:
    """One replica: an engine with its own model worker, micro-batching queue, admission and result cache.

    The constructor returns once the models are loaded and warmed up, so Serve routes requests only to a
    replica that can answer them (a replacement for a dead replica included).
    """

    def __init__(self, settings: ServerSettings, options: RayServeOptions) -> None:
        malloc_tuning.tune()
        sources = options.sources(settings.device)
        # Models saved by `att3d serve` with POST /v1/models (a shared data folder) come back here too.
        self._saved = SavedModels(settings.data_dir)
        sources.update(self._saved.loaders(sources, settings.device))
        self._engine = Engine(settings, sources)
        self._engine.start()
        self._engine.wait_ready()  # a load error is reported by describe(), not by failing to start
        self._replica = serve.get_replica_context().replica_tag

    async def generate(self, spec: MeshSpec) -> dict[str, Any]:
        """``{"replica", "result": GenerationResult}`` or ``{"replica", "error": ServiceError's fields}``
        (errors travel as data: an exception would reach the ingress wrapped in a Ray error)."""
        engine = self._engine
        try:
            if not engine.models():
                raise not_ready(engine.load_error)
            if engine.model_info(spec.model) is None:
                await self._load_saved()  # loaded at run time on another replica, then saved
            if engine.model_info(spec.model) is None:
                raise ServiceError(404, "not_found", f"model {spec.model!r} is not loaded", "model")
            # Off the event loop when the cache is Redis (its calls wait on the network), as the routes do.
            result = await asyncio.wrap_future(await off_loop(engine.cache, engine.submit, spec))
        except ServiceError as err:
            return {"replica": self._replica, "error": _error_fields(err)}
        return {"replica": self._replica, "result": result}

    async def load(self, name: str, path: str) -> dict[str, Any]:
        """``{"replica", "info", "prompts"}`` once this replica has loaded the checkpoint at ``path`` as model
        ``name`` (``POST /v1/models``), or ``{"replica", "error"}``. The ingress then saves it in the shared
        data folder, where the other replicas (and replacements) find it."""
        try:
            info = await asyncio.wrap_future(self._engine.load_model(name, path))
        except ServiceError as err:
            return {"replica": self._replica, "error": _error_fields(err)}
        return {"replica": self._replica, "info": info, "prompts": self._engine.model_prompts(name) or []}

    async def _load_saved(self) -> None:
        """Load the saved models this replica does not hold yet (one that fails is logged and skipped)."""
        for name, entry in (await asyncio.to_thread(self._saved.read)).items():
            if self._engine.model_info(name) is None:
                try:
                    await asyncio.wrap_future(self._engine.load_model(name, entry["checkpoint"]))
                except Exception as err:
                    logger.warning("saved model %r is not loaded on this replica: %s", name, err)

    async def snapshot(self, name: str, path: str, allowed_priors: tuple[str, ...]) -> dict[str, Any]:
        """``{"replica", "prior"}`` once model ``name`` is saved at ``path`` for refine jobs (the data folder
        is shared with the ingress), or ``{"replica", "error"}``."""
        try:
            future = self._engine.snapshot_model(name, Path(path), tuple(allowed_priors))
            prior = await asyncio.wrap_future(future)
        except ServiceError as err:
            return {"replica": self._replica, "error": _error_fields(err)}
        return {"replica": self._replica, "prior": prior}

    async def describe(self) -> dict[str, Any]:
        """What the ingress's routes read between calls: models, readiness, queue state."""
        engine = self._engine
        return {
            "replica": self._replica,
            "ready": engine.ready,
            "load_error": engine.load_error,
            "models": engine.models(),
            "default_model": engine.default_model,
            "saturated": engine.saturated(),
            "queue_depth": engine.queue_depth(),
        }

    async def prompts(self, name: str) -> tuple[str | None, list[str]]:
        """``(model hash, training prompts)`` of model ``name`` (``(None, [])`` if not loaded)."""
        info = self._engine.model_info(name)
        if info is None:
            return None, []
        return info["model_hash"], self._engine.model_prompts(name) or []

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.stop()


def _error_fields(err: ServiceError) -> dict[str, Any]:
    """A :class:`ServiceError` as data (``ServiceError(**fields)`` rebuilds it on the ingress)."""
    fields = {"status": err.status, "code": err.code, "message": err.message, "field": err.field}
    return {**fields, "headers": err.headers}


# No CPU reserved: it only parses requests and awaits replicas (as Serve's own proxy reserves none), and a
# reservation would leave it unscheduled on a machine whose CPUs the generation replicas already take.
@serve.deployment(
    name=INGRESS,
    num_replicas=1,
    max_ongoing_requests=INGRESS_MAX_ONGOING,
    ray_actor_options={"num_cpus": 0},
)
@serve.ingress()
class Ingress:
    """The HTTP API: the routes, schemas, errors and headers of ``att3d serve``, plus ``X-Replica``."""

    def __init__(self, settings: ServerSettings, options: RayServeOptions, generation: DeploymentHandle):
        self._settings = settings
        self._names = list(options.model_refs())
        self._retries = options.retries
        self._generation = generation

    def __serve_build_asgi_app__(self) -> Any:
        """Serve calls this after the constructor, on the replica; Serve then runs the app's lifespan."""
        from server.app import create_app

        def remote_engine(settings: ServerSettings, metrics: Metrics) -> Engine:
            engine = RemoteEngine(settings, metrics, self._generation, self._names, retries=self._retries)
            return engine  # type: ignore[return-value]  # the Engine API the routes use

        app = create_app(self._settings, engine_factory=remote_engine)
        app.add_middleware(ReplicaHeaderMiddleware)
        return app


def bind(options: RayServeOptions, settings: ServerSettings) -> Application:
    """The application: the ingress bound to the generation deployment, sized by ``options``.

    Relative paths are made absolute here, where the caller's working folder is known: replicas run in
    other folders (and the data folder must be the same one for every replica of one machine).
    """
    if options.device is not None:
        settings = dataclasses.replace(settings, device=options.device)
    settings = dataclasses.replace(settings, data_dir=settings.data_dir.resolve())
    options = dataclasses.replace(
        options,
        checkpoint=options.checkpoint and str(Path(options.checkpoint).resolve()),
        models={name: str(Path(path).resolve()) for name, path in options.models.items()},
    )
    max_ongoing = options.max_ongoing_requests or settings.queue_size + settings.max_batch_size
    generation = Generation.options(
        num_replicas=options.replicas,
        max_ongoing_requests=max_ongoing,
        max_queued_requests=options.max_queued_requests,
        ray_actor_options={"num_cpus": options.replica_cpus, "num_gpus": options.gpus(settings.device)},
    ).bind(settings, options)
    return Ingress.bind(settings, options, generation)
