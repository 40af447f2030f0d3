"""The Ray backend's parts that need no Ray: ``configs/serve_ray.yaml`` and the options it builds from,
``att3d serve --backend`` argument checks, and that nothing imports Ray unless the Ray backend runs."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from att3d.commands.serve import serve
from server.ray_serve.options import GENERATION, INGRESS, RayServeOptions

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "serve_ray.yaml"


def _application() -> dict:
    config = yaml.safe_load(CONFIG.read_text())
    (application,) = config["applications"]
    return application


def test_config_file_names_the_builder_and_its_args_are_options():
    application = _application()
    module, _, attr = application["import_path"].partition(":")
    assert (module, attr) == ("server.ray_serve.app", "build_app")
    assert callable(getattr(importlib.import_module(module), attr))
    options = RayServeOptions.from_args(application["args"])
    assert (options.device, options.replicas, options.gpus("cuda")) == ("cuda", 2, 1)
    deployments = {d["name"]: d for d in application["deployments"]}
    assert set(deployments) == {GENERATION, INGRESS}
    generation = deployments[GENERATION]
    # Serve accepts autoscaling only with num_replicas "auto" (not beside a fixed count).
    assert generation["num_replicas"] == "auto"
    scaling = generation["autoscaling_config"]
    assert scaling["min_replicas"] <= scaling["initial_replicas"] <= scaling["max_replicas"]
    assert generation["ray_actor_options"]["num_gpus"] == 1
    assert deployments[INGRESS]["num_replicas"] == 1  # the single job-store owner


def test_options_reject_bad_args_naming_them():
    for args, message in (
        ({"replicas": "2"}, "args.replicas: expected"),
        ({"replicas": True}, "args.replicas: expected"),
        ({"models": {"other": 3}}, "args.models: expected"),
        ({"replica": 2}, "unknown args ['replica']"),
        ({"replicas": 0}, "replicas must be >= 1, got 0"),
        ({"checkpoint": "/c", "factory": "m:f"}, "checkpoint or factory, not both"),
        ({"factory": "module_only"}, "factory must look like 'module:function'"),
        ({"models": {"default": "/c"}}, "'default' is not a free model name"),
        ({"max_queued_requests": 0}, "max_queued_requests must be >= 1 or -1"),
    ):
        with pytest.raises(ValueError) as err:
            RayServeOptions.from_args(args)
        assert message in str(err.value), (args, str(err.value))
    options = RayServeOptions.from_args({"checkpoint": "/a", "models": {"b": "/b"}, "replica_cpus": 2})
    assert options.model_refs() == {"default": "/a", "b": "/b"}
    assert (options.gpus("cpu"), options.gpus("cuda:1"), options.replica_cpus) == (0, 1, 2)
    assert RayServeOptions(replica_gpus=0.5).gpus("cuda") == 0.5


def test_factory_loader_reports_a_bad_import_when_run():
    sources = RayServeOptions(factory="server_fakes:no_such_function").sources("cpu")
    with pytest.raises(ValueError, match="has no function 'no_such_function'"):
        sources["default"]()


def test_ray_options_need_the_ray_backend():
    app = typer.Typer()
    app.command()(serve)
    runner = CliRunner()
    result = runner.invoke(app, ["--replicas", "2", "--ray-address", "auto"])
    assert result.exit_code == 2 and "--replicas, --ray-address: only with --backend ray" in result.output
    result = runner.invoke(app, ["--backend", "spark"])
    assert result.exit_code == 2 and "--backend must be local or ray, got 'spark'" in result.output
    help_text = runner.invoke(app, ["--help"]).output
    assert "--backend" in help_text and "--replica-gpus" in help_text


def test_nothing_imports_ray_without_the_ray_backend(tmp_path):
    """The app, the CLI and the Ray package's Ray-free modules import (and build an app) without Ray."""
    code = (
        "import sys\n"
        "import server.app, server.ray_serve, server.ray_serve.app, server.ray_serve.options\n"
        "import server.ray_serve.remote_engine, server.ray_serve.replica_header, server.ray_serve.run\n"
        "import att3d.commands.app, att3d.commands.serve\n"
        "from server.settings import ServerSettings\n"
        "server.app.create_app(ServerSettings(data_dir=sys.argv[1]))\n"
        "leaked = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not leaked, leaked\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
