"""The bounded queue between the event loop and the model worker.

Generation tasks wait in FIFO order; a task whose key is already queued or running is not queued again, its
caller joins the one computation. A new task is refused with :class:`QueueFull` past ``queue_size`` waiting
tasks, and by :func:`server.admission.admit` (429 or 503) when the estimated work ahead of it plus its own
cost would end after its ``due`` time. Control items (model loading) go ahead of every generation. The
worker takes either one control item or a micro-batch: the first waiting task, then more for up to
``max_wait_ms``, at most ``max_batch_size`` of them.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, Generic, Protocol, TypeVar

from server.admission import Clock, QueueFull, admit
from server.errors import ServiceError
from server.metrics import Metrics
from server.settings import ServerSettings

__all__ = ["QueueFull", "WorkQueue"]


class QueuedTask(Protocol):
    """What the queue needs of a generation task."""

    key: str
    """Identical requests have the same key; one computation serves them all."""
    future: Future[Any]
    deadline: float
    """Clock time after which no waiter is left."""
    due: float
    """Clock time by which the result must be ready for its waiter (admission's deadline)."""
    cost: float
    """Estimated worker seconds."""


class ControlItem(Protocol):
    """A function to run on the worker thread, ahead of any queued generation."""

    fn: Callable[[], Any]
    future: Future[Any]


T = TypeVar("T", bound=QueuedTask)
C = TypeVar("C", bound=ControlItem)


def _shutting_down() -> ServiceError:
    return ServiceError(503, "shutting_down", "the server is shutting down")


class WorkQueue(Generic[T, C]):
    """Tasks and control items for one worker thread; every method is thread-safe."""

    def __init__(self, settings: ServerSettings, metrics: Metrics, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self._tasks: deque[T] = deque()
        # The tasks the worker took and has not finished (estimated cost each), since the last finish.
        self._running: dict[int, float] = {}
        self._running_since = 0.0
        self._controls: deque[C] = deque()
        self._inflight: dict[str, T] = {}
        self._cond = threading.Condition()
        self._stopping = False
        # Seconds per batch, smoothed: the basis of Retry-After.
        self._batch_seconds = 1.0

    def __len__(self) -> int:
        """Generation tasks waiting (the one the worker runs is no longer counted)."""
        return len(self._tasks)

    def put(self, task: T) -> Future[Any]:
        """The future of ``task``, or of the identical task already queued or running (its deadline is then
        extended); raises :class:`QueueFull` when ``queue_size`` tasks wait already or the work ahead is too
        long for ``task.due``, :class:`server.admission.TooSlow` when ``task.cost`` alone is."""
        with self._cond:
            if self._stopping:
                raise _shutting_down()
            running = self._inflight.get(task.key)
            if running is not None:
                running.deadline = max(running.deadline, task.deadline)
                running.due = max(running.due, task.due)
                return running.future
            if len(self._tasks) >= self.settings.queue_size:
                self.metrics.rejected.inc()
                raise QueueFull(self._retry_after())
            now = self.clock()
            try:
                admit(task.cost, self._work_ahead(now), task.due - now)
            except QueueFull:
                self.metrics.rejected.inc()
                raise
            self._inflight[task.key] = task
            self._tasks.append(task)
            self._cond.notify_all()
        return task.future

    def put_control(self, control: C) -> Future[Any]:
        """Queue ``control`` ahead of every generation task; its future settles when the worker ran it."""
        with self._cond:
            if self._stopping:
                raise _shutting_down()
            self._controls.append(control)
            self._cond.notify_all()
        return control.future

    def take(self) -> C | list[T] | None:
        """Block until there is work: a control item, or a micro-batch of tasks; ``None`` once closed."""
        with self._cond:
            while not (self._stopping or self._controls or self._tasks):
                self._cond.wait()
            if self._stopping:
                return None
            if self._controls:
                return self._controls.popleft()
            batch = [self._tasks.popleft()]
            window_ends = time.monotonic() + self.settings.max_wait_ms / 1000.0
            while len(batch) < self.settings.max_batch_size and not self._stopping:
                if self._tasks:
                    batch.append(self._tasks.popleft())
                    continue
                remaining = window_ends - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._running = {id(task): task.cost for task in batch}
            self._running_since = self.clock()
            return batch

    def finish(self, task: T, result: Any = None, error: Exception | None = None) -> None:
        """Settle ``task``'s future with ``result`` or ``error``; an identical request is computed anew."""
        with self._cond:
            if self._inflight.get(task.key) is task:
                del self._inflight[task.key]
            if self._running.pop(id(task), None) is not None:
                self._running_since = self.clock()
        # A waiter's cancellation must not reach this shared future (the API shields it), but never let
        # an already-settled future take the worker down.
        with contextlib.suppress(InvalidStateError):
            if error is not None:
                task.future.set_exception(error)
            else:
                task.future.set_result(result)

    def work_ahead(self) -> float:
        """Estimated worker seconds before a task queued now would start."""
        with self._cond:
            return self._work_ahead(self.clock())

    def _work_ahead(self, now: float) -> float:
        running = max(sum(self._running.values()) - (now - self._running_since), 0.0)
        return running + sum(task.cost for task in self._tasks)

    def record_batch(self, seconds: float) -> None:
        """A batch took ``seconds``: the smoothed batch time estimates ``Retry-After``."""
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds

    def close(self) -> None:
        """Refuse new work, wake the worker (``take`` returns ``None``) and fail everything still waiting."""
        with self._cond:
            self._stopping = True
            pending = list(self._tasks)
            self._tasks.clear()
            controls = list(self._controls)
            self._controls.clear()
            self._cond.notify_all()
        for task in pending:
            self.finish(task, error=_shutting_down())
        for control in controls:
            control.future.set_exception(_shutting_down())

    def _retry_after(self) -> int:
        batches_ahead = len(self._tasks) / self.settings.max_batch_size + 1
        return int(min(max(math.ceil(batches_ahead * self._batch_seconds), 1), 300))
