"""The request schemas stay light: importing them loads no model stack."""

from __future__ import annotations

import subprocess
import sys


def test_schemas_import_without_torch():
    code = "import server.schemas, sys; assert 'torch' not in sys.modules, 'server.schemas imports torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_job_config_schema_comes_from_train_config():
    import dataclasses
    import json

    from att3d.config import TrainConfig
    from server.schemas import JOB_SERVER_KEYS, JobRequest, job_config_schema

    schema = job_config_schema()
    properties = schema["properties"]
    assert schema["additionalProperties"] is False
    # The config's own declarations: choices, ranges, defaults, the field docstrings.
    assert properties["model.mesh.texture"]["enum"] == ["vertex", "uv"]
    assert properties["steps"]["minimum"] == 1
    assert properties["steps"]["default"] == TrainConfig().steps
    assert properties["optim.grid_lr"]["description"] == "Learning rate of the basis hash grids."
    # One leaf per dotted key; sections are expanded, server-owned keys left out.
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {key.split(".")[0] for key in properties} == top - set(JOB_SERVER_KEYS)
    assert not any(key == k or key.startswith(k + ".") for key in properties for k in JOB_SERVER_KEYS)
    assert "$ref" not in json.dumps(schema)  # self-contained: valid inside the OpenAPI document
    assert JobRequest.model_json_schema()["properties"]["config"]["properties"] == properties
