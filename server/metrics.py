"""Prometheus metrics of one app instance (its own registry, so several apps in one process never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# Request latencies span cache hits (sub-millisecond) to high-resolution meshes on a CPU (a minute).
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """Every metric the service exports at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # process_resident_memory_bytes and friends (Linux): what scripts/load_test.py reports as RSS.
        ProcessCollector(registry=r)
        self.requests = Counter(
            "att3d_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "att3d_http_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "att3d_queue_depth", "Generation requests waiting for the worker.", registry=r
        )
        self.batch_size = Histogram(
            "att3d_batch_size",
            "Requests per micro-batch taken by the model worker.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.generation = Histogram(
            "att3d_generation_seconds",
            "Model-worker time per request (embedding, mesh, export).",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_lookups = Counter(
            "att3d_cache_lookups", "Result-cache lookups by result (hit or miss).", ["result"], registry=r
        )
        self.cache_bytes = Gauge("att3d_cache_bytes", "Bytes held by the result cache.", registry=r)
        self.cache_entries = Gauge("att3d_cache_entries", "Results held by the result cache.", registry=r)
        self.cache_errors = Counter(
            "att3d_cache_errors",
            "Shared result-cache (Redis) calls that failed, by operation; each was answered as a miss.",
            ["op"],
            registry=r,
        )
        self.cache_waits = Counter(
            "att3d_cache_waits",
            "Requests that waited for another replica computing them, by outcome (result, taken_over, "
            "timeout).",
            ["outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "att3d_queue_rejections", "Requests refused with 429 because the queue was full.", registry=r
        )
        self.ready = Gauge("att3d_ready", "1 when the models are loaded and warmed up.", registry=r)
        self.jobs = Gauge("att3d_jobs", "Training jobs by state.", ["state"], registry=r)
        self.job_store_up = Gauge(
            "att3d_job_store_up",
            "1 when the jobs database is usable (att3d_jobs is absent at 0).",
            registry=r,
        )
