"""``/v1/models``: the loaded models and their prompt sets (loading a job's model: see the jobs tests)."""

from __future__ import annotations

import pytest
from server_fakes import (
    isolated_environment,
    settings_for,
    started_client,
    tiny_generator,
)


@pytest.fixture(scope="module")
def generator():
    return tiny_generator(prompts=["a red cube", "a blue sphere", "a green cone"])


@pytest.fixture(scope="module")
def client(tmp_path_factory, generator):
    tmp = tmp_path_factory.mktemp("api")
    with isolated_environment(tmp), started_client(settings_for(tmp), {"default": generator}) as client:
        yield client


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
