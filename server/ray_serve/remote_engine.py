"""The engine the Ray ingress's routes call: :class:`RemoteEngine` answers the methods of
:class:`server.engine.Engine` that the routes use from the generation deployment's replicas.

- Model lists, model info and prompt sets are what a replica last reported (asked through the handle every
  ``poll_s``, so the routes' synchronous calls never wait on the network); ``ready`` means a replica
  answered ready within the last few polls.
- ``key`` is the same sha256 as a local engine's (``MeshSpec.key``), so ETags do not depend on the backend.
- ``lookup`` reads the ingress's result cache, so a repeated request costs no replica call and says
  ``X-Cache: hit`` as with ``att3d serve``: with the in-process cache (the default) the results the replicas
  computed for this ingress, kept here as well as in each replica's cache; with a shared Redis cache
  (``ATT3D_CACHE_URL``) the one cache every replica writes, where no replica computes a key another is
  computing (:mod:`server.cache.single_flight`). Identical requests in flight from this ingress share one
  replica call, as they share one computation in a local engine.
- ``submit`` calls a replica (Serve picks the less loaded of two) and returns a future, as a local engine
  does. A replica's own refusals (429 ``queue_full``, 503 ``overloaded``, ...) come back as the same
  :class:`~server.errors.ServiceError` with its ``Retry-After``. Serve's back-pressure (every replica at
  ``max_ongoing_requests`` and ``max_queued_requests`` waiting) is 503 ``overloaded`` with ``Retry-After``.
  A replica that dies mid-request (``RayActorError``: died or unreachable) is retried up to ``retries``
  times, Serve routing each try again; then 503 ``replica_unavailable`` with ``Retry-After``.
- Refine jobs (``POST /v1/refine``): a replica saves the model's snapshot into the data folder it shares
  with the ingress (:meth:`RemoteEngine.snapshot_model`); the ingress's job manager runs the job.
- Loading a model at run time (``POST /v1/models``): one replica loads it and the route saves it in the
  shared data folder's saved-model list; another replica asked for it first loads it from that list (as
  a replacement replica does at start).

Ray is imported inside the functions that need its exception types, so this module imports without it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from server.cache.factory import make_result_cache
from server.errors import ServiceError
from server.mesh_spec import MeshSpec
from server.metrics import Metrics
from server.ray_serve import replica_header
from server.result_cache import GenerationResult
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

BACK_PRESSURE_RETRY_S = 2
"""``Retry-After`` of a request Serve refused for back-pressure when Serve gives none: about one mesh."""
REPLICA_LOST_RETRY_S = 5
"""``Retry-After`` once every try's replica died: about the time Serve takes to start a replacement."""


@dataclass
class _Call:
    """One replica call, shared by every identical request made while it runs."""

    future: Future[GenerationResult] = field(default_factory=Future)
    replica: str | None = None


class RemoteEngine:
    """The :class:`~server.engine.Engine` API over a Serve handle to the generation deployment."""

    def __init__(
        self,
        settings: ServerSettings,
        metrics: Metrics,
        handle: Any,
        model_names: Sequence[str],
        *,
        retries: int = 2,
        poll_s: float = 1.0,
        answer_timeout_s: float = 5.0,
        retry_backoff_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``handle``: a ``DeploymentHandle`` of ``server.ray_serve.deployments.Generation``;
        ``model_names``: the configured models, the default first (what replicas will report)."""
        self.settings = settings
        self.metrics = metrics
        self.cache = make_result_cache(settings, metrics)
        self.default_model = model_names[0]
        self.load_error: str | None = None
        """Why the deployment cannot serve: a replica's model load error, or no replica answering."""
        self.retries = retries
        self.poll_s = poll_s
        self.answer_timeout_s = answer_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.clock = clock
        self._handle = handle
        self._models: list[dict[str, Any]] = []  # replaced whole: readers see a snapshot
        self._loaded_here: dict[str, dict[str, Any]] = {}  # POST /v1/models through this ingress
        self._prompts: dict[str, list[str]] = {}  # by model hash
        self._ready = False
        self._saturated = False
        self._answered_at: float | None = None
        self._inflight: dict[str, _Call] = {}
        self._inflight_lock = threading.Lock()  # submit runs in a thread when the cache is remote
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.retried = Counter(
            "att3d_replica_retries",
            "Replica calls tried again because their generation replica died or was unreachable.",
            registry=metrics.registry,
        )
        metrics.queue_depth.set_function(lambda: len(self._inflight))

    # ---- lifecycle (create_app's lifespan) -------------------------------------------------------

    def start(self) -> None:
        """Start asking the replicas for their state (on the running event loop)."""
        self._loop = asyncio.get_running_loop()
        self._spawn(self._poll_forever())

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop polling and answer the requests still waiting with 503 ``shutting_down`` (any thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: [task.cancel() for task in list(self._tasks)])
        self.cache.close()

    @property
    def ready(self) -> bool:
        """A replica answered ready (models loaded and warmed up) within the last few polls."""
        fresh = self._answered_at is not None and self.clock() - self._answered_at <= self._stale_after_s
        return fresh and self._ready and self.load_error is None

    @property
    def _stale_after_s(self) -> float:
        return self.answer_timeout_s + 2 * self.poll_s

    # ---- what the API reads ----------------------------------------------------------------------

    def queue_depth(self) -> int:
        """Requests this ingress has sent to replicas and not yet had answered."""
        return len(self._inflight)

    def saturated(self) -> bool:
        """The replica Serve picked for the last poll (the less loaded of two) said its queue is saturated."""
        return self._saturated

    def models(self) -> list[dict[str, Any]]:
        """The models the last polled replica holds, and those loaded through this ingress since (a replica
        that has not loaded one yet does so from the saved list when asked for it)."""
        polled = list(self._models)
        names = {m["name"] for m in polled}
        return polled + [info for name, info in self._loaded_here.items() if name not in names]

    def model_info(self, name: str) -> dict[str, Any] | None:
        return next((dict(m) for m in self.models() if m["name"] == name), None)

    def model_prompts(self, name: str) -> list[str] | None:
        info = self.model_info(name)
        return None if info is None else self._prompts.get(info["model_hash"])

    def key(self, spec: MeshSpec) -> str:
        return spec.key(self.model_info(spec.model)["model_hash"])  # type: ignore[index]

    # ---- submitting work -------------------------------------------------------------------------

    def lookup(self, key: str) -> GenerationResult | None:
        """The ingress's cached result for ``key``, counted as a cache hit or miss."""
        result = self.cache.get(key)
        self.metrics.cache_lookups.labels("hit" if result is not None else "miss").inc()
        return result

    def submit(self, spec: MeshSpec, key: str | None = None) -> Future[GenerationResult]:
        """A future for the result of ``spec`` from a replica; an identical request already in flight is
        joined. Called on the event loop, or from a thread when the cache is remote (as the routes do)."""
        key = key or self.key(spec)
        cached = self.cache.get(key)  # it may have landed since the caller's lookup
        if cached is not None:
            done: Future[GenerationResult] = Future()
            done.set_result(cached)
            return done
        with self._inflight_lock:
            call = self._inflight.get(key)
            if call is None:
                call = self._inflight[key] = _Call()
                self._loop.call_soon_threadsafe(  # type: ignore[union-attr]  # started by the lifespan
                    lambda: self._spawn(self._generate(spec, key, call))
                )
        slot = replica_header.CURRENT.get()
        if slot is not None:  # X-Replica for this request, once its call is answered
            call.future.add_done_callback(lambda _: setattr(slot, "replica", call.replica))
        return call.future

    def snapshot_model(self, name: str, path: Path, allowed_priors: tuple[str, ...]) -> Future[str]:
        """A generation replica saves model ``name`` at ``path`` (the data folder the ingress's jobs read)
        for a refine job; the future gives the prior. Called on the event loop (the refine route)."""
        args = (name, str(path), tuple(allowed_priors))
        return self._replica_future("save the model", lambda answer: answer["prior"], "snapshot", *args)

    def load_model(self, name: str, path: str) -> Future[dict[str, Any]]:
        """One replica loads the checkpoint as model ``name`` (``POST /v1/models``; the route then saves it
        in the shared data folder): the others load it from there when asked for it first, as replacements
        do at start. The ingress knows the model at once. Called on the event loop."""

        def loaded(answer: dict[str, Any]) -> dict[str, Any]:
            info = answer["info"]
            self._prompts[info["model_hash"]] = answer["prompts"]
            self._loaded_here[name] = info
            return info

        return self._replica_future("load the model", loaded, "load", name, path)

    def _replica_future(
        self, what: str, outcome: Callable[[dict[str, Any]], Any], method: str, *args: Any
    ) -> Future[Any]:
        """A future for ``outcome(answer)`` of one replica call ``method(*args)`` (retried as in
        :meth:`_call_replica`); an error answer raises its ``ServiceError``, any other failure a 500 naming
        ``what``."""
        future: Future[Any] = Future()

        async def call() -> None:
            try:
                answer = await self._call_replica(method, *args)
                if "error" in answer:
                    raise ServiceError(**answer["error"])
                _resolve(future, result=outcome(answer))
            except ServiceError as err:
                _resolve(future, error=err)
            except Exception as err:
                logger.exception("a generation replica failed to %s (%s)", what, method)
                message = f"the generation replica failed to {what} ({type(err).__name__})"
                _resolve(future, error=ServiceError(500, "internal_error", message))

        self._spawn(call())
        return future

    # ---- the replica calls -----------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _generate(self, spec: MeshSpec, key: str, call: _Call) -> None:
        try:
            answer = await self._call_replica("generate", spec)
            call.replica = answer["replica"]
            if "error" in answer:
                raise ServiceError(**answer["error"])
            result: GenerationResult = answer["result"]
            info = self.model_info(spec.model)
            # A shared cache has it from the replica already; skip a replica mid-update (another model).
            if not self.cache.remote and info is not None and info["model_hash"] == result.model_hash:
                self.cache.put(key, result)
            _resolve(call.future, result=result)
        except ServiceError as err:
            _resolve(call.future, error=err)
        except asyncio.CancelledError:
            _resolve(call.future, error=ServiceError(503, "shutting_down", "the server is shutting down"))
            raise
        except Exception as err:
            logger.exception("a generation replica call failed")
            message = f"the generation replica failed ({type(err).__name__})"
            _resolve(call.future, error=ServiceError(500, "internal_error", message))
        finally:
            with self._inflight_lock:
                self._inflight.pop(key, None)

    async def _call_replica(self, method: str, *args: Any) -> dict[str, Any]:
        """A replica's answer to ``method(*args)``, trying again when the replica died; Serve's
        back-pressure as a 503."""
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

        failure: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried.inc()
                await asyncio.sleep(self.retry_backoff_s * attempt)
            try:
                return await getattr(self._handle, method).remote(*args)
            except BackPressureError as err:
                retry = max(1, round(err.retry_after_s or BACK_PRESSURE_RETRY_S))
                raise ServiceError(
                    503,
                    "overloaded",
                    f"every generation replica is busy and {err.message.split(' (')[0].lower()}; "
                    f"retry in about {retry} s",
                    headers={"Retry-After": str(retry)},
                ) from None
            except (RayActorError, ReplicaUnavailableError) as err:
                logger.warning("generation replica lost mid-request (try %d): %s", attempt + 1, err)
                failure = err
        raise ServiceError(
            503,
            "replica_unavailable",
            f"the generation replica of each of {self.retries + 1} tries stopped answering "
            f"({type(failure).__name__}); retry in about {REPLICA_LOST_RETRY_S} s",
            headers={"Retry-After": str(REPLICA_LOST_RETRY_S)},
        )

    # ---- polling the replicas --------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.poll_s)

    async def refresh(self) -> None:
        """Ask a replica for its state (and each new model's prompts); on no answer, not ready."""
        try:
            state = await self._ask("describe")
            for info in state["models"]:
                if info["model_hash"] not in self._prompts:
                    model_hash, prompts = await self._ask("prompts", info["name"])
                    self._prompts[model_hash] = prompts
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self._ready = False
            why = f"no generation replica answered within {self.answer_timeout_s:g} s ({type(err).__name__})"
            self.load_error = why
            self.metrics.ready.set(0.0)
            return
        self._models = state["models"]
        self.default_model = state["default_model"]
        self._ready = state["ready"]
        self._saturated = state["saturated"]
        self.load_error = state["load_error"]
        self._answered_at = self.clock()
        self.metrics.ready.set(1.0 if self.ready else 0.0)

    async def _ask(self, method: str, *args: Any) -> Any:
        response = getattr(self._handle, method).remote(*args)

        async def answer() -> Any:
            return await response

        try:
            return await asyncio.wait_for(answer(), self.answer_timeout_s)
        except TimeoutError:
            response.cancel()
            raise TimeoutError(f"{method} timed out") from None


def _resolve(
    future: Future[GenerationResult], result: GenerationResult | None = None, error: Exception | None = None
) -> None:
    if future.done():  # answered already (shutdown raced the answer)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
