"""Admission by estimated completion time: a request is queued only if it can finish before its deadline.

The model worker's time is what runs out under load, so the queue is bounded by work, not only by count. A
request's cost is its number of meshes times the measured seconds per mesh at its resolution and texture
(:class:`CostModel`); the work ahead of it is the queued requests' estimates plus what remains of the running
ones. A request that would finish after its deadline is refused at once, with a ``Retry-After`` from the
same estimates: 503 when it could not finish even on an idle worker (:class:`TooSlow`), 429 when the work
ahead is the obstacle (:class:`QueueFull`). Refused at once, a client loses a round trip; admitted and timed
out, it loses the whole timeout and the worker loses the work.

The worker checks again before it starts a request and between the frames of an interpolation walk
(``Engine._check_due``), so an admitted request whose estimate proved too low is answered 503 while its
client still waits, instead of 504 when it has given up.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.errors import ServiceError

Clock = Callable[[], float]

RETRY_AFTER_RANGE = (1, 300)
"""``Retry-After`` seconds are clamped to this range."""

# Seconds per mesh of the bundled model on one CPU thread (2-core dev machine, 2026-11), by resolution:
# only the cold-start estimate, so that the first requests are admitted; measurements replace it.
_PRIOR_RESOLUTIONS = (16, 32, 64, 128, 256, 512)
_PRIOR_SECONDS = {
    "vertex": (0.1, 0.2, 0.5, 2.0, 10.0, 80.0),
    "uv": (1.0, 2.0, 3.0, 6.5, 25.0, 150.0),
}


def prior_seconds(resolution: int, texture: str) -> float:
    """Cold-start seconds per mesh: the measured table above, interpolated log-log between its rows."""
    table = _PRIOR_SECONDS.get(texture, _PRIOR_SECONDS["uv"])
    r = min(max(resolution, _PRIOR_RESOLUTIONS[0]), _PRIOR_RESOLUTIONS[-1])
    i = min(bisect.bisect_left(_PRIOR_RESOLUTIONS, r), len(_PRIOR_RESOLUTIONS) - 1)
    if _PRIOR_RESOLUTIONS[i] == r:
        return table[i]
    r0, r1, s0, s1 = _PRIOR_RESOLUTIONS[i - 1], _PRIOR_RESOLUTIONS[i], table[i - 1], table[i]
    return s0 * (s1 / s0) ** (math.log(r / r0) / math.log(r1 / r0))


def bucket(resolution: int) -> int:
    """The resolution bucket: the next power of two (at least 16)."""
    return 1 << max(4, math.ceil(math.log2(max(resolution, 1))))


def retry_after(seconds: float) -> int:
    lo, hi = RETRY_AFTER_RANGE
    return int(min(max(math.ceil(seconds), lo), hi))


class QueueFull(ServiceError):
    """The queue is full, by count or by its work ahead: 429 with ``Retry-After``."""

    def __init__(self, retry_after_s: int, reason: str = "the generation queue is full") -> None:
        super().__init__(
            429,
            "queue_full",
            f"{reason}; retry in about {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
        )
        self.retry_after_s = retry_after_s


class TooSlow(ServiceError):
    """The request cannot finish before its deadline even with nothing ahead of it (or no longer can, once
    admitted): 503 with ``Retry-After``."""

    def __init__(self, retry_after_s: int, reason: str) -> None:
        super().__init__(
            503,
            "overloaded",
            f"{reason}; retry in about {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
        )
        self.retry_after_s = retry_after_s


def admit(cost_s: float, ahead_s: float, budget_s: float) -> None:
    """Raise :class:`TooSlow` or :class:`QueueFull` unless ``cost_s`` of work behind ``ahead_s`` of queued
    work finishes within ``budget_s`` (the time from now to the request's deadline)."""
    if cost_s > budget_s:
        raise TooSlow(
            retry_after(ahead_s + cost_s),
            f"this request takes about {cost_s:.3g} s on this server now, more than its {budget_s:.3g} s "
            "deadline allows; ask for a lower resolution or fewer frames",
        )
    if ahead_s + cost_s > budget_s:
        raise QueueFull(
            retry_after(ahead_s + cost_s - budget_s),
            f"the queue holds about {ahead_s:.3g} s of work; this request ({cost_s:.3g} s) would not finish "
            f"within its {budget_s:.3g} s deadline",
        )


@dataclass
class _Estimate:
    seconds: float
    """Seconds per mesh at the bucket's own resolution (a measurement at a lower one scaled by the prior)."""
    at: float
    """Clock time of the last measurement."""


class CostModel:
    """Seconds per mesh by (resolution bucket, texture): an exponentially weighted mean of measurements.

    A bucket without a recent measurement (none, or none for ``stale_s``) is estimated as the prior times
    ``scale``, the weighted mean ratio of every measurement to its prior: how much slower or faster than
    the prior this machine runs now. That lets a bucket measured during a CPU hog (and then refused, so
    never measured again) recover once smaller requests show the machine is fast again. Thread-safe.
    """

    def __init__(
        self,
        prior: Callable[[int, str], float] = prior_seconds,
        alpha: float = 0.3,
        stale_s: float = 300.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.prior = prior
        self.alpha = alpha
        self.stale_s = stale_s
        self.clock = clock
        self.scale = 1.0
        self._buckets: dict[tuple[int, str], _Estimate] = {}
        self._lock = threading.Lock()

    def per_mesh(self, resolution: int, texture: str) -> float:
        """Estimated seconds per mesh at ``resolution`` and ``texture``."""
        with self._lock:
            entry = self._fresh(resolution, texture)
            if entry is None:
                return self._prior(resolution, texture) * self.scale
            return entry.seconds * self._within_bucket(resolution, texture)

    def cost(self, meshes: int, resolution: int, texture: str) -> float:
        """Estimated worker seconds of a request of ``meshes`` meshes."""
        return meshes * self.per_mesh(resolution, texture)

    def record(self, resolution: int, texture: str, meshes: int, seconds: float) -> None:
        """A request of ``meshes`` meshes took ``seconds`` of worker time."""
        if meshes < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        per_mesh = seconds / meshes
        with self._lock:
            a = self.alpha
            self.scale = (1 - a) * self.scale + a * per_mesh / self._prior(resolution, texture)
            normalized = per_mesh / self._within_bucket(resolution, texture)
            entry = self._fresh(resolution, texture)
            key = (bucket(resolution), texture)
            if entry is None:
                self._buckets[key] = _Estimate(normalized, self.clock())
            else:
                entry.seconds = (1 - a) * entry.seconds + a * normalized
                entry.at = self.clock()

    def snapshot(self) -> dict[str, float]:
        """``"<bucket>/<texture>"`` → seconds per mesh, of every measured bucket (logs and tests)."""
        with self._lock:
            return {f"{b}/{t}": e.seconds for (b, t), e in sorted(self._buckets.items())}

    def _fresh(self, resolution: int, texture: str) -> _Estimate | None:
        entry = self._buckets.get((bucket(resolution), texture))
        if entry is None or self.clock() - entry.at > self.stale_s:
            return None
        return entry

    def _prior(self, resolution: int, texture: str) -> float:
        return max(self.prior(resolution, texture), 1e-6)  # a ratio's denominator

    def _within_bucket(self, resolution: int, texture: str) -> float:
        """Cost at ``resolution`` relative to its bucket's top, by the prior's shape (within a factor 2)."""
        return self._prior(resolution, texture) / self._prior(bucket(resolution), texture)
