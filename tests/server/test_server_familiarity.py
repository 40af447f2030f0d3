"""The familiarity headers of ``POST /v1/generate`` and ``/v1/interpolate`` (fresh and cached answers) and
``familiarity_threshold`` in ``/v1/models``, against similarities computed here from the hashing encoder."""

from __future__ import annotations

from urllib.parse import quote

import pytest
import torch
from server_fakes import HashEncoder, tiny_generator

RES = 16
TRAINING = ["a red cube", "a blue sphere", "a green cone", "un cube rouge été"]
THRESHOLD = 0.25
"""This module's model has it in its metadata (as a manifest would): not the default 0.6."""


@pytest.fixture(scope="module")
def generator():
    """Overrides conftest's: a non-ASCII training prompt and a threshold of its own."""
    generator = tiny_generator(prompts=TRAINING)
    generator.metadata["familiarity_threshold"] = THRESHOLD
    return generator


def reference(embedding: torch.Tensor) -> tuple[float, str]:
    """Max cosine similarity to the training prompts and that prompt, one prompt at a time."""
    return max(
        (float(torch.dot(embedding / embedding.norm(), row) / row.norm()), prompt)
        for prompt, row in zip(TRAINING, HashEncoder().encode(TRAINING), strict=True)
    )


def familiarity_headers(response) -> tuple[str, str, str]:
    assert response.status_code == 200, response.text
    h = response.headers
    return h["x-prompt-familiarity"], h["x-prompt-familiar"], h["x-prompt-nearest"]


def test_training_prompt_is_familiar(client) -> None:
    response = client.post("/v1/generate", json={"prompt": "a red cube", "resolution": RES})
    assert familiarity_headers(response) == ("1.000", "true", "a%20red%20cube")
    response = client.post("/v1/generate", json={"prompt": "un cube rouge été", "resolution": RES})
    # Percent-encoded UTF-8: a header holds Latin-1 at most.
    assert familiarity_headers(response) == ("1.000", "true", "un%20cube%20rouge%20%C3%A9t%C3%A9")


def test_unfamiliar_prompt_fresh_and_cached(client) -> None:
    similarity, nearest = reference(HashEncoder().encode(["an elephant"])[0])
    assert similarity < THRESHOLD
    expected = (f"{similarity:.3f}", "false", quote(nearest, safe=""))
    body = {"prompt": "an elephant", "resolution": RES, "format": "ply"}
    fresh = client.post("/v1/generate", json=body)
    assert fresh.headers["x-cache"] == "miss"
    assert familiarity_headers(fresh) == expected
    cached = client.post("/v1/generate", json=body)
    assert cached.headers["x-cache"] == "hit"
    assert familiarity_headers(cached) == expected


def test_interpolation_reports_the_blend_and_frames_report_nothing(client) -> None:
    a, b = HashEncoder().encode(["a red cube", "an elephant"])
    similarity, nearest = reference(0.7 * a + 0.3 * b)
    body = {"prompts": ["a red cube", "an elephant"], "weights": [0.7, 0.3], "resolution": RES}
    response = client.post("/v1/interpolate", json=body)
    assert nearest == "a red cube" and similarity > 0.9  # 0.7 / |0.7 a + 0.3 b| with a, b nearly orthogonal
    assert familiarity_headers(response) == (f"{similarity:.3f}", "true", "a%20red%20cube")
    frames = client.post(
        "/v1/interpolate", json={"prompts": ["a red cube", "an elephant"], "frames": 2, "resolution": RES}
    )
    assert frames.status_code == 200, frames.text
    assert not any(name.startswith("x-prompt-") for name in frames.headers)


def test_unseen_colour_is_read_as_a_trained_one_and_said_so(client) -> None:
    # 'navy' is in no training prompt: the model reads the nearest trained colour name ('blue', of red,
    # blue, green and rouge); the familiarity stays that of the prompt as written.
    similarity, nearest = reference(HashEncoder().encode(["a navy sphere"])[0])
    response = client.post("/v1/generate", json={"prompt": "a navy sphere", "resolution": RES})
    assert familiarity_headers(response) == (f"{similarity:.3f}", "false", quote(nearest, safe=""))
    assert response.headers["x-prompt-read-as"] == "a%20blue%20sphere"
    plain = client.post("/v1/generate", json={"prompt": "a blue sphere", "resolution": RES})
    assert "x-prompt-read-as" not in plain.headers
    assert response.content == plain.content  # the same mesh: the model saw the same words


def test_models_report_the_threshold(client) -> None:
    assert client.get("/v1/models").json()["models"][0]["familiarity_threshold"] == THRESHOLD
    assert client.get("/v1/models/default").json()["familiarity_threshold"] == THRESHOLD
