"""``/livez``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

RES = 16  # the smallest resolution: each mesh takes a fraction of a second


def _glb(client, prompt: str, **options):
    response = client.post("/v1/generate", json={"prompt": prompt, "resolution": RES, **options})
    assert response.status_code == 200, response.text
    return response


def test_probes_and_metrics(client):
    assert client.get("/livez").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    _glb(client, "a metric cube")
    text = client.get("/metrics").text
    for needle in (
        'att3d_http_requests_total{method="POST",route="/v1/generate",status="200"}',
        'att3d_http_request_duration_seconds_bucket{le="0.005",route="/livez"}',
        "att3d_queue_depth 0.0",
        "att3d_batch_size_count",
        'att3d_generation_seconds_count{outcome="ok"}',
        "att3d_cache_bytes",
        'att3d_jobs{state="queued"}',
        "att3d_ready 1.0",
    ):
        assert needle in text, needle
