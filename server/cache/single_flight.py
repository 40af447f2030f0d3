"""Computing a key once across replicas: the replica that claims a key computes it, the others wait.

:func:`single_flight` is how the engine submits work. What it guarantees:

- **Within one process**, as before: at most one computation of a key at a time (the engine's queue merges
  identical requests), whatever the cache.
- **Across replicas sharing a Redis cache**: at most one computation of a key at a time *while the replica
  that claimed it is alive and its claim lasts*. The claim (``SET NX`` with ``ATT3D_CACHE_CLAIM_TTL_S``) is
  taken before the request is queued, renewed every third of its TTL while it is queued or running, and
  released once the result is stored (or the request failed). A replica asked for a claimed key waits for
  the result instead (checked every 50 ms, for at most ``ATT3D_REQUEST_TIMEOUT_S``; then 504, as a request
  that ran too long would get) and answers it as a miss.
- **Best effort otherwise.** If the claimant fails (an error, a 429/503 of its own admission, a shutdown),
  its claim is released without a result and a waiter takes the key over: it claims and computes it
  itself, so an error that is the request's own fault is met again there (errors are not shared). If the
  claimant dies, its claim expires within the TTL and a waiter takes over then. If Redis is unreachable,
  every replica computes for itself (a claim that cannot be taken is granted). A result larger than the
  whole budget is not stored, so its waiters compute it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from server.errors import ServiceError
from server.result_cache import GenerationResult, ResultStore

Compute = Callable[[], "Future[GenerationResult]"]


def single_flight(
    cache: ResultStore,
    key: str,
    compute: Compute,
    timeout_s: float,
    on_wait: Callable[[str], None] = lambda outcome: None,
) -> Future[GenerationResult]:
    """A future for ``key``'s result: the cached one, ``compute()``'s under this process's claim, or the
    result of the replica holding the claim. ``compute`` may raise (admission refusals): so does this.
    ``on_wait`` hears how each wait for another replica ended: ``result``, ``taken_over`` or ``timeout``."""
    cached = cache.get(key)  # it may have landed since the caller's lookup
    if cached is not None:
        done: Future[GenerationResult] = Future()
        done.set_result(cached)
        return done
    if cache.claim(key):
        try:
            future = compute()
        except BaseException:
            cache.release(key)
            raise
        # After the engine stored the result (it stores before settling the future), or failed.
        future.add_done_callback(lambda _: cache.release(key))
        return future

    answer: Future[GenerationResult] = Future()

    def landed(waited: Future[GenerationResult | None]) -> None:
        try:
            result = waited.result()
        except TimeoutError:
            on_wait("timeout")
            answer.set_exception(
                ServiceError(
                    504,
                    "timeout",
                    f"another replica computing this request gave no result within {timeout_s:g} s; "
                    "retry later (it is cached when it lands)",
                    headers={"Retry-After": "5"},
                )
            )
            return
        if result is not None:
            on_wait("result")
            answer.set_result(result)
            return
        on_wait("taken_over")
        try:
            _chain(single_flight(cache, key, compute, timeout_s, on_wait), answer)
        except BaseException as err:  # refused by this replica's admission (429/503), or shutting down
            answer.set_exception(err)

    cache.wait_for(key, timeout_s).add_done_callback(landed)
    return answer


async def off_loop(cache: ResultStore, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)`` (the engine's ``lookup`` or ``submit``) from a thread when ``cache`` waits on the
    network, so the event loop never blocks on Redis; directly when the cache is in-process."""
    return await asyncio.to_thread(call, *args) if cache.remote else call(*args)


def _chain(source: Future[GenerationResult], target: Future[GenerationResult]) -> None:
    """Settle ``target`` as ``source`` settles."""

    def copy(done: Future[GenerationResult]) -> None:
        if done.cancelled():
            target.cancel()
        elif done.exception() is not None:
            target.set_exception(done.exception())
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)
