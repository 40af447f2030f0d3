"""Service settings: one typed dataclass, filled from ``ATT3D_*`` environment variables.

Every field can be set with the environment variable ``ATT3D_<FIELD NAME IN UPPER CASE>`` (for example
``ATT3D_API_KEY``, ``ATT3D_MAX_BATCH_SIZE``); tuples take comma-separated values. A malformed value raises
:class:`SettingsError` naming the variable, so a typo stops the server at start-up instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from att3d.limits import RESOLUTION_RANGE

ENV_PREFIX = "ATT3D_"


class SettingsError(ValueError):
    """A setting is invalid; the message names the environment variable or field."""


@dataclass
class ServerSettings:
    """Everything the service can be tuned with (``att3d serve`` builds this from the environment)."""

    api_key: str = ""
    """When non-empty, every route except the probes, the viewer page and the OpenAPI docs requires it
    (``X-API-Key: KEY`` or ``Authorization: Bearer KEY``)."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from a browser; empty keeps CORS closed (no CORS headers)."""
    max_body_bytes: int = 64 * 1024
    """Largest accepted request body; larger bodies get 413 before they are parsed."""

    max_batch_size: int = 8
    """Most generation requests the model worker takes in one micro-batch."""
    max_wait_ms: float = 5.0
    """How long the worker waits for more requests after the first one of a batch arrives."""
    queue_size: int = 64
    """Generation requests that may wait for the worker; more get 429 with ``Retry-After``."""
    request_timeout_s: float = 120.0
    """A request's deadline. It is admitted only if its estimated completion (the queue's estimated work
    plus its own measured cost) falls within ``request_timeout_s * (1 - deadline_margin)``, else refused at
    once: 429 (the queue is too long) or 503 (too slow even alone), with ``Retry-After``. A request still
    unanswered after this long (its estimate was far off) gets 504; its result is still cached when it
    lands."""
    deadline_margin: float = 0.1
    """Fraction of ``request_timeout_s`` held back for estimate errors (admission and the worker's checks
    aim at the rest), so that an admitted request is answered 200 or 503, not 504."""
    cost_stale_s: float = 300.0
    """A resolution's measured cost older than this gives way to the cold-start estimate scaled by recent
    measurements at other resolutions (so a cost measured under a CPU hog does not refuse it forever)."""
    cache_bytes: int = 256 * 1024 * 1024
    """Byte budget of the result cache: the in-process LRU, or with ``cache_url`` the shared one in Redis
    (set the same on every replica); response bodies only. 0 disables caching (and claims)."""
    cache_url: str = ""
    """Redis shared by replicas as the result cache (``redis://HOST:PORT/DB``, ``rediss://`` or
    ``unix://PATH``); empty: an in-process LRU. Redis being down makes misses, never failed requests."""
    cache_prefix: str = "att3d:"
    """Prefix of every Redis key the service writes, so deployments can share one Redis."""
    cache_timeout_s: float = 0.5
    """Connect and read timeout of a Redis call; past it the call counts as failed (a miss)."""
    cache_claim_ttl_s: float = 10.0
    """Lifetime of a replica's claim on a key it computes (renewed every third of it while it computes):
    how long other replicas wait before taking over a key whose claimant died."""

    max_resolution: int = 256
    """Largest marching-cubes resolution a request may ask for (memory and time grow with its cube)."""
    max_frames: int = 16
    """Most frames one ``/v1/interpolate`` request may ask for."""
    warmup: bool = True
    """Generate one small mesh per model at start-up; ``/readyz`` stays 503 until it is done."""
    readiness_queue_fraction: float = 0.9
    """``/readyz`` reports not ready while the queue is fuller than this fraction of ``queue_size``, or its
    estimated work than this fraction of what fits before a deadline."""
    device: str = "cpu"
    """Device the models live on: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""
    mesher: str = "per_request"
    """``per_request``: each request's meshes by ``Generator.mesh`` (byte-identical whether batched or not);
    ``batched``: one ``att3d.meshing.mesher.mesh_embeddings`` pass per micro-batch (one field query and one
    marching cubes for the batch; equal to unbatched up to float rounding)."""

    data_dir: Path = Path("att3d-data")
    """Folder for the jobs database (``jobs.sqlite``) and the training runs of jobs (``runs/<id>``)."""
    max_running_jobs: int = 1
    """Training jobs run at the same time, each in its own process (0: jobs stay queued)."""
    job_runner: str = "att3d.training.loop:train"
    """``module:function`` the job process trains with (see ``server.jobs.worker.Runner``)."""
    refine_runner: str = "server.jobs.refine_runner:run_refine"
    """``module:function`` the job process runs refine jobs with (the same contract as ``job_runner``)."""
    job_priors: tuple[str, ...] = ("shapes",)
    """Values a job's ``config.prior`` may take (no paths: clients must not make the server read files)."""
    job_device: str = "auto"
    """Device of training jobs (``TrainConfig.device``); clients cannot override it."""
    job_cancel_grace_s: float = 30.0
    """After a cancel or shutdown, how long a job process may take to save and exit before SIGKILL."""
    max_job_prompts: int = 10000
    """Most prompts one training job may have."""
    max_queued_jobs: int = 64
    """Most jobs waiting in ``queued``; another ``POST /v1/jobs`` is refused with 429 + ``Retry-After``."""

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.cors_origins = tuple(self.cors_origins)
        self.job_priors = tuple(self.job_priors)
        problems = []
        for name in ("max_body_bytes", "max_batch_size", "queue_size", "max_frames", "max_queued_jobs"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "cache_bytes", "max_running_jobs", "job_cancel_grace_s"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.deadline_margin < 1:
            problems.append(f"deadline_margin must be in [0, 1), got {self.deadline_margin}")
        if not self.cost_stale_s > 0:
            problems.append(f"cost_stale_s must be > 0, got {self.cost_stale_s}")
        if not self.request_timeout_s > 0:
            problems.append(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        lo, hi = RESOLUTION_RANGE
        if not lo <= self.max_resolution <= hi:
            problems.append(f"max_resolution must be in [{lo}, {hi}], got {self.max_resolution}")
        if not 0 < self.readiness_queue_fraction <= 1:
            problems.append(
                f"readiness_queue_fraction must be in (0, 1], got {self.readiness_queue_fraction}"
            )
        if self.mesher not in ("per_request", "batched"):
            problems.append(f"mesher must be 'per_request' or 'batched', got {self.mesher!r}")
        problems.extend(_cache_problems(self))
        for name in ("job_runner", "refine_runner"):
            if ":" not in getattr(self, name):
                problems.append(f"{name} must look like 'module:function', got {getattr(self, name)!r}")
        if problems:
            raise SettingsError("; ".join(problems))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> ServerSettings:
        """Defaults, then ``ATT3D_*`` variables, then ``overrides`` (e.g. command-line options)."""
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            var = ENV_PREFIX + field.name.upper()
            if var in environ:
                values[field.name] = _parse(hints[field.name], environ[var], var)
        values.update(overrides)
        try:
            return cls(**values)  # type: ignore[arg-type]
        except TypeError as err:
            raise SettingsError(str(err)) from None


def _cache_problems(settings: ServerSettings) -> list[str]:
    """What is wrong with the shared cache's settings (the URL is not echoed: it may hold a password)."""
    problems = [
        f"{name} must be > 0, got {getattr(settings, name)}"
        for name in ("cache_timeout_s", "cache_claim_ttl_s")
        if not getattr(settings, name) > 0
    ]
    if not settings.cache_prefix:
        problems.append("cache_prefix must not be empty (it keeps this service's Redis keys apart)")
    url = settings.cache_url
    if not url:
        return problems
    what = "cache_url (ATT3D_CACHE_URL)"
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is no number in range
    except ValueError:
        return [*problems, f"{what} has an invalid port"]
    db = parts.path.strip("/") if parts.scheme != "unix" else ""
    db = parse_qs(parts.query).get("db", [db])[0]
    if parts.scheme not in ("redis", "rediss", "unix"):
        problems.append(f"{what} must be redis://HOST[:PORT][/DB], rediss://... or unix://PATH")
    elif parts.scheme == "unix" and not parts.path:
        problems.append(f"{what} names no socket path")
    elif parts.scheme != "unix" and not parts.hostname:
        problems.append(f"{what} names no host")
    elif db and not db.isdigit():
        problems.append(f"{what}: the database must be a number")
    elif importlib.util.find_spec("redis") is None:
        problems.append(f"{what} needs the redis package: pip install 'att3d[redis]'")
    return problems


def _parse(tp: object, raw: str, var: str) -> object:
    """Convert an environment string to the field's type, naming the variable on failure."""
    raw = raw.strip()
    try:
        if tp is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected true/false")
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
        if tp is Path:
            return Path(raw)
        if typing.get_origin(tp) is tuple:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return raw
    except ValueError as err:
        raise SettingsError(f"{var}={raw!r}: {err}") from None
