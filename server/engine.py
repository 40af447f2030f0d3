"""The model worker: one thread owns every loaded model; requests reach it through a bounded queue.

Why one thread: a model (and a GPU) serves one forward pass at a time anyway, and a single owner means no
locks around model state, a predictable memory peak, and an event loop that never runs model code (it only
looks up the cache and waits on futures).

Life of a request (:meth:`Engine.submit`):

1. the key is ``sha256(model hash, canonical request)``; a cached result is answered at once;
2. a request identical to one already queued or running joins it (one computation, many waiters); with a
   shared cache, so does one that another replica computes (:mod:`server.cache.single_flight`);
3. otherwise it enters the queue if it can finish in time (:mod:`server.admission`: its estimated cost
   behind the queue's estimated work must end before its deadline), or is refused at once: 429 or 503 with
   ``Retry-After``; past ``queue_size`` waiting requests it is refused 429 too;
4. the worker takes the first waiting request, waits up to ``max_wait_ms`` for more, and takes at most
   ``max_batch_size``: a micro-batch. A request that can no longer finish before its deadline (its
   waiters gone, or the estimate proved low) is answered 503 instead of run, checked again before each
   frame of an interpolation walk; each finished request's worker time updates the cost estimates.

A micro-batch embeds its prompts before any mesh (the encoder's cache then serves the batch) and computes
identical requests once, but each prompt and mesh gets its own call: a batched product rounds differently
(MiniLM rows differ by ~1e-7 between batch sizes), and a result must not depend on its batch-mates. With
``mesher="batched"`` one ``mesh_embeddings`` call serves all requests of a model, resolution and texture
(GPU throughput, results equal up to float rounding); the default ``per_request`` keeps bytes.

Failures stay with their request: an exception (CUDA out of memory included) fails that request's future,
memory is released, and the worker goes on with the next request.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from att3d.devices import resolve_device
from att3d.familiarity import Familiarity
from att3d.generate import Generator
from server import mesh_spec
from server.admission import Clock, CostModel, TooSlow, retry_after
from server.cache.factory import make_result_cache
from server.cache.single_flight import single_flight
from server.errors import ServiceError
from server.memory import free_memory, release_freed_memory
from server.mesh_spec import MeshSpec, batch_meshes, batched_body_alone, classify_error
from server.metrics import Metrics
from server.result_cache import GenerationResult
from server.settings import ServerSettings
from server.work_queue import WorkQueue

logger = logging.getLogger(__name__)

ModelSource = Generator | Callable[[], Generator | None]
"""A loaded generator, or a function the worker calls to load one (so loading never blocks start-up); a
loader returning ``None`` is an optional model that could not load (``server.saved_models``): skipped."""


# --------------------------------------------------------------------------------------------------
# Queued work
# --------------------------------------------------------------------------------------------------


@dataclass
class _Task:
    spec: MeshSpec
    key: str
    future: Future[GenerationResult]
    deadline: float
    """Clock time after which no waiter is left."""
    due: float
    """Clock time by which the result must be ready (``deadline`` less ``deadline_margin``)."""
    cost: float
    """Estimated worker seconds at submission."""

    @property
    def meshes(self) -> int:
        return len(self.spec.walk)


@dataclass
class _Control:
    """A function to run on the worker thread (model loading), ahead of any queued generation."""

    fn: Callable[[], Any]
    future: Future[Any]


# --------------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------------


class Engine:
    """Owns the models through one worker thread; the event loop talks to it with futures only."""

    def __init__(
        self,
        settings: ServerSettings,
        models: Mapping[str, ModelSource],
        metrics: Metrics | None = None,
        costs: CostModel | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if not models:
            raise ValueError("models: the engine needs at least one model")
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.cache = make_result_cache(settings, self.metrics)
        self.clock = clock
        self.costs = costs or CostModel(stale_s=settings.cost_stale_s, clock=clock)
        self._sources = dict(models)
        self._generators: dict[str, Generator] = {}  # worker thread only
        self._info: dict[str, dict[str, Any]] = {}  # replaced whole on change: readers see a snapshot
        self._prompts: dict[str, list[str]] = {}
        self.default_model = next(iter(models))
        self._work: WorkQueue[_Task, _Control] = WorkQueue(settings, self.metrics, clock)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.load_error: str | None = None
        self.metrics.queue_depth.set_function(lambda: len(self._work))

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker; it loads the models and warms them up before taking requests."""
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._thread = threading.Thread(target=self._run, name="att3d-model-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fail waiting requests, let the current batch finish, and join the worker."""
        self._work.close()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.cache.close()  # releases this replica's claims

    @property
    def ready(self) -> bool:
        """Models loaded and warmed up (and no load error)."""
        return self._ready.is_set() and self.load_error is None

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        return self._ready.wait(timeout_s) and self.load_error is None

    # ---- what the API reads ----------------------------------------------------------------------

    def queue_depth(self) -> int:
        return len(self._work)

    def saturated(self) -> bool:
        """The queue is fuller than ``readiness_queue_fraction`` of its size, or of its deadline's work."""
        s = self.settings
        budget = s.request_timeout_s * (1.0 - s.deadline_margin)
        fraction = s.readiness_queue_fraction
        return len(self._work) > fraction * s.queue_size or self._work.work_ahead() > fraction * budget

    def models(self) -> list[dict[str, Any]]:
        """Info of every loaded model (empty until loading finished)."""
        info = self._info
        return [{**entry, "default": name == self.default_model} for name, entry in info.items()]

    def model_info(self, name: str) -> dict[str, Any] | None:
        entry = self._info.get(name)
        return None if entry is None else {**entry, "default": name == self.default_model}

    def model_prompts(self, name: str) -> list[str] | None:
        return self._prompts.get(name)

    def key(self, spec: MeshSpec) -> str:
        """Cache key and ETag basis: the model's weights hash plus the canonical request."""
        return spec.key(self._info[spec.model]["model_hash"])

    # ---- submitting work -------------------------------------------------------------------------

    def lookup(self, key: str) -> GenerationResult | None:
        """The cached result for ``key``, counted as a cache hit or miss."""
        result = self.cache.get(key)
        self.metrics.cache_lookups.labels("hit" if result is not None else "miss").inc()
        return result

    def submit(self, spec: MeshSpec, key: str | None = None) -> Future[GenerationResult]:
        """A future for the result of ``spec``: joins an identical queued or running request if there is
        one, else queues it; raises :class:`QueueFull` (429) or :class:`TooSlow` (503) when it could not
        finish before its deadline, or ``queue_size`` requests wait already. With a shared cache, a key
        another replica is computing is waited for instead (:mod:`server.cache.single_flight`)."""
        key, count = key or self.key(spec), self.metrics.cache_waits.labels
        compute, timeout = partial(self._enqueue, spec, key), self.settings.request_timeout_s
        return single_flight(self.cache, key, compute, timeout, lambda outcome: count(outcome).inc())

    def _enqueue(self, spec: MeshSpec, key: str) -> Future[GenerationResult]:
        now, timeout = self.clock(), self.settings.request_timeout_s
        due = now + timeout * (1.0 - self.settings.deadline_margin)
        cost = self.costs.cost(len(spec.walk), spec.resolution, spec.texture)
        return self._work.put(_Task(spec, key, Future(), now + timeout, due, cost))

    def run_on_worker(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the worker thread before any queued generation (e.g. loading a model)."""
        return self._work.put_control(_Control(fn, Future()))

    def snapshot_model(self, name: str, path: Path, allowed_priors: tuple[str, ...]) -> Future[str]:
        """Save model ``name`` at ``path`` for refine jobs, on the worker; the future gives their prior."""
        from server.jobs.refine_requests import snapshot_model

        def snapshot() -> str:
            generator = self._generators.get(name)
            if generator is None:
                raise ServiceError(422, "invalid_request", f"model: {name!r} is not loaded", "model")
            return snapshot_model(generator, path, allowed_priors)

        return self.run_on_worker(snapshot)

    def load_model(self, name: str, path: str) -> Future[dict[str, Any]]:
        """Load a checkpoint as model ``name`` on the worker thread; the future gives its info."""

        def load() -> dict[str, Any]:
            if name in self._generators:
                raise ServiceError(409, "conflict", f"a model named {name!r} is already loaded", "name")
            device = str(resolve_device(self.settings.device))
            generator = Generator.from_checkpoint(path, name=name, device=device)
            self._register(name, generator)
            return self.model_info(name) or {}

        return self.run_on_worker(load)

    # ---- the worker thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            for name, source in self._sources.items():
                generator = source if isinstance(source, Generator) else source()
                if generator is None:
                    continue
                self._register(name, generator)
                if self.settings.warmup:
                    mesh_spec.warm_up(generator)
        except Exception as err:  # the probes report it; the process stays up to say why
            logger.exception("loading the models failed")
            self.load_error = f"{type(err).__name__}: {err}"
        finally:
            self._sources.clear()
            self._ready.set()
            self.metrics.ready.set(1.0 if self.load_error is None else 0.0)
        while True:
            item = self._work.take()
            if item is None:
                return
            if isinstance(item, _Control):
                self._run_control(item)
            else:
                self._process(item)

    def _register(self, name: str, generator: Generator) -> None:
        info = generator.info()
        entry = {
            "name": name,
            "model_hash": generator.model_hash,
            "text_encoder": info["text_encoder"],
            "num_prompts": info["num_prompts"],
            "training_steps": info["training_steps"],
            "parameters": info["parameters"],
            "default_resolution": min(generator.config.mesh.resolution, self.settings.max_resolution),
            "max_resolution": self.settings.max_resolution,
            "familiarity_threshold": info["familiarity_threshold"],
        }
        generator.familiarity_index()  # embed the training prompts now, not on the first request
        self._generators[name] = generator
        self._prompts = {**self._prompts, name: list(generator.prompts)}
        self._info = {**self._info, name: entry}

    def _run_control(self, control: _Control) -> None:
        if not control.future.set_running_or_notify_cancel():
            return
        try:
            control.future.set_result(control.fn())
        except BaseException as err:
            control.future.set_exception(err)

    def _process(self, batch: list[_Task]) -> None:
        started = time.perf_counter()
        self.metrics.batch_size.observe(len(batch))
        live = [task for task in batch if self._in_time(task, task.meshes)]
        # Embed every prompt of the batch first, one encoder call per prompt (see the module docstring).
        embed_seconds = {}
        for task in live:
            generator = self._generators.get(task.spec.model)
            embed_started = time.perf_counter()
            if generator is not None:
                with contextlib.suppress(Exception):  # the task's own generation reports the error
                    for prompt in task.spec.prompts:
                        generator.embed([prompt])
            embed_seconds[task.key] = time.perf_counter() - embed_started
        if self.settings.mesher == "batched":
            self._mesh_batched(live, embed_seconds)
        else:
            for task in live:  # each checks before every mesh whether it can still finish in time
                self._run_task(task, partial(self._mesh_bytes, task), embed_seconds[task.key])
        self._work.record_batch(time.perf_counter() - started)
        release_freed_memory()

    def _mesh_batched(self, tasks: list[_Task], embed_seconds: dict[str, float]) -> None:
        """``mesher="batched"``: one ``mesh_embeddings`` pass per group of tasks with the same model and
        mesh config.

        If a group's batched pass fails (out of memory, a bad field), each of its tasks is meshed alone
        by the same path, so that only the request that fails reports an error.
        """
        groups: dict[tuple[str, int, str], list[_Task]] = {}
        for task in tasks:
            if task.spec.model not in self._generators:  # reports the missing model
                self._run_task(task, partial(self._mesh_bytes, task), embed_seconds[task.key])
            elif self._in_time(task, task.meshes):
                groups.setdefault((task.spec.model, task.spec.resolution, task.spec.texture), []).append(task)
        for (model, _, _), group in groups.items():
            generator = self._generators[model]
            started = time.perf_counter()
            try:
                meshes = batch_meshes(generator, [task.spec for task in group])
            except Exception as err:
                logger.warning(
                    "batched meshing of %d requests failed (%s); meshing each alone", len(group), err
                )
                del err
                free_memory()
                for task in group:
                    render = partial(batched_body_alone, generator, task.spec)
                    self._run_task(task, render, embed_seconds[task.key])
                continue
            share = (time.perf_counter() - started) / len(group)
            for task, task_meshes in zip(group, meshes, strict=True):
                render = partial(mesh_spec.response_body, task.spec, task_meshes)
                self._run_task(task, render, embed_seconds[task.key] + share)

    def _run_task(self, task: _Task, render: Callable[[], tuple[bytes, str]], spent_s: float = 0.0) -> None:
        """Finish ``task`` with ``render()``'s body or its error; ``spent_s`` (embedding, a share of a
        batched pass) counts towards the reported generation time."""
        started = time.perf_counter() - spent_s
        try:
            body, media_type = render()
            familiarity = self._familiarity(task.spec)
        except Exception as err:
            error = classify_error(err)
            del err  # the traceback pins the frames' tensors; drop it before freeing memory
            if error.code == "out_of_memory":
                free_memory()
            self.metrics.generation.labels(error.code).observe(time.perf_counter() - started)
            self._work.finish(task, error=error)
            return
        elapsed = time.perf_counter() - started
        self.metrics.generation.labels("ok").observe(elapsed)
        self.costs.record(task.spec.resolution, task.spec.texture, task.meshes, elapsed)
        result = GenerationResult(
            body=body,
            media_type=media_type,
            model=task.spec.model,
            model_hash=self._generators[task.spec.model].model_hash,
            generation_ms=elapsed * 1000.0,
            familiarity=familiarity,
        )
        self.cache.put(task.key, result)  # before the future settles: single_flight releases the claim then
        self._work.finish(task, result=result)

    def _familiarity(self, spec: MeshSpec) -> Familiarity | None:
        """A single mesh's prompt or blend familiarity (its embeddings are cached by now); no frames'."""
        generator = self._generators[spec.model]
        return None if spec.frames else generator.blend_familiarity(list(spec.prompts), list(spec.walk[0]))

    def _mesh_bytes(self, task: _Task) -> tuple[bytes, str]:
        """``mesher="per_request"``: the response body of ``task`` from the model it names, stopped
        between frames once the rest could not finish before the task is due."""
        generator = self._generators.get(task.spec.model)
        if generator is None:
            raise ServiceError(404, "not_found", f"model {task.spec.model!r} is not loaded", "model")
        return mesh_spec.per_request_body(generator, task.spec, partial(self._check_due, task))

    def _check_due(self, task: _Task, meshes_left: int) -> None:
        """Raise :class:`TooSlow` if ``meshes_left`` more meshes of ``task`` would end after it is due."""
        left = self.costs.cost(meshes_left, task.spec.resolution, task.spec.texture)
        if self.clock() + left > task.due:
            raise TooSlow(
                retry_after(self._work.work_ahead() + left),
                "the server is slower than estimated: this request would not finish within its "
                f"{self.settings.request_timeout_s:g} s deadline",
            )

    def _in_time(self, task: _Task, meshes_left: int) -> bool:
        """Whether ``task`` can still finish before it is due; if not, it is answered 503 (not run)."""
        try:
            self._check_due(task, meshes_left)
        except TooSlow as err:
            self._work.finish(task, error=err)
            return False
        return True
