"""``/v1/models``: the loaded models and their prompt sets, and models added over the API surviving a restart
(loading a job's model: see the jobs tests)."""

from __future__ import annotations

import logging
import shutil

from server_fakes import (
    isolated_environment,
    job_request,
    settings_for,
    started_client,
    tiny_generator,
    wait_for_job,
)


def test_models_and_prompts(client, generator):
    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["default"]
    assert models[0]["model_hash"] == generator.model_hash
    assert models[0]["num_prompts"] == 3 and models[0]["default"] is True
    assert client.get("/v1/models/default").json()["name"] == "default"
    page = client.get("/v1/models/default/prompts", params={"offset": 1, "limit": 1}).json()
    assert page == {"name": "default", "total": 3, "offset": 1, "prompts": ["a blue sphere"]}
    missing = client.get("/v1/models/nope/prompts")
    assert missing.status_code == 404 and missing.json()["fields"][0]["field"] == "name"
    assert client.get("/v1/models/default/prompts", params={"limit": 0}).status_code == 422


def test_models_added_over_the_api_survive_a_restart(tmp_path, caplog):
    settings = settings_for(tmp_path, warmup=False)
    models = {"default": tiny_generator()}
    with isolated_environment(tmp_path):
        with started_client(settings, models) as client:
            job = client.post("/v1/jobs", json=job_request(steps=2)).json()
            assert (
                wait_for_job(client, job["id"], lambda s: s["state"] not in ("queued", "running"))["state"]
                == "succeeded"
            )
            added = client.post("/v1/models", json={"name": "chairs", "job_id": job["id"]})
            assert added.status_code == 201, added.text
            checkpoint = client.app.state.jobs.store.get(job["id"])["checkpoint"]

        with started_client(settings, models) as client:
            assert [m["name"] for m in client.get("/v1/models").json()["models"]] == ["default", "chairs"]
            chairs = client.get("/v1/models/chairs").json()
            assert chairs["model_hash"] == added.json()["model_hash"] and chairs["default"] is False
            request = {"prompt": "a red cube", "model": "chairs", "resolution": 16}
            mesh = client.post("/v1/generate", json=request)
            assert mesh.status_code == 200 and mesh.headers["x-model-name"] == "chairs"

        # Its checkpoint gone: the server starts, ready, without it, and says why in the log.
        shutil.rmtree(checkpoint)
        with caplog.at_level(logging.WARNING), started_client(settings, models) as client:
            assert client.get("/readyz").status_code == 200
            assert [m["name"] for m in client.get("/v1/models").json()["models"]] == ["default"]
        assert "chairs" in caplog.text and checkpoint in caplog.text

        # A damaged list: moved aside with a log line, never a failed start.
        saved = settings.data_dir / "models.json"
        saved.write_text("{not json")
        caplog.clear()
        with caplog.at_level(logging.WARNING), started_client(settings, models) as client:
            assert client.get("/readyz").status_code == 200
        assert not saved.exists() and (settings.data_dir / "models.json.damaged").read_text() == "{not json"
        assert "models.json" in caplog.text
