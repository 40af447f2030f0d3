"""``att3d serve``: the HTTP service (``server.app``) under uvicorn.

Models are named: the default one (``--checkpoint DIR``, or the bundled model) answers requests without a
``model`` field; ``--model NAME=DIR`` adds more. Checkpoint manifests are checked before the server starts;
the weights load in the model worker, so ``/livez`` answers at once and ``/readyz`` turns ready when the
models are loaded and warmed up. Every other setting comes from ``ATT3D_*`` environment variables
(``server.settings.ServerSettings``), the API key included: a key on the command line would show in ``ps``.

``--backend ray`` serves the same API on Ray Serve (``server.ray_serve``: an ingress replica and
``--replicas`` generation replicas, on a local Ray cluster or the one at ``--ray-address``); it needs the
``ray`` extra, which the default backend never imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from att3d.commands.errors import UserError, user_errors

DEFAULT_MODEL = "default"


def parse_models(checkpoint: Path | None, models: list[str]) -> dict[str, Path | None]:
    """``{name: checkpoint dir}`` (``None``: the bundled model), validated; raises ``UserError``."""
    from att3d.checkpoint import CheckpointError, read_manifest
    from server.schemas import is_model_name

    result: dict[str, Path | None] = {DEFAULT_MODEL: checkpoint}
    for item in models:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not path:
            raise UserError(f"--model must look like NAME=DIR, got {item!r}")
        if not is_model_name(name):
            raise UserError(f"--model {item!r}: names are 1-64 of A-Z a-z 0-9 . _ - (starting alphanumeric)")
        if name in result:
            raise UserError(f"--model {item!r}: the name {name!r} is already used")
        result[name] = Path(path)
    for name, path in result.items():
        if path is None:
            continue
        if not path.exists():
            raise UserError(f"checkpoint not found: {path} (model {name!r})")
        try:
            read_manifest(path, check_weights=False)  # hashing the weights happens once, when loading
        except CheckpointError as err:
            raise UserError(str(err)) from None
    return result


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: all of them).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", "-c", help="Checkpoint served as the default model (default: bundled)."),
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Another model to serve, as NAME=DIR (repeatable).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:N or auto (default: $ATT3D_DEVICE or cpu).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Jobs database and training runs (default: $ATT3D_DATA_DIR).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    backend: Annotated[
        str, typer.Option(help="local: one process (uvicorn); ray: Ray Serve replicas (the ray extra).")
    ] = "local",
    replicas: Annotated[
        int | None, typer.Option(help="Generation replicas with --backend ray (default 1).", min=1)
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to deploy to with --backend ray (auto, HOST:PORT, ray://...); "
            "default: start a local one."
        ),
    ] = None,
    replica_gpus: Annotated[
        float | None,
        typer.Option(
            help="GPUs per generation replica with --backend ray (default: 1 on cuda, else 0).", min=0
        ),
    ] = None,
) -> None:
    """Serve the HTTP API and the viewer page (http://HOST:PORT/, API docs at /docs)."""
    with user_errors():
        from server.settings import ServerSettings, SettingsError

        ray_only = {"--replicas": replicas, "--ray-address": ray_address, "--replica-gpus": replica_gpus}
        if backend not in ("local", "ray"):
            raise UserError(f"--backend must be local or ray, got {backend!r}")
        if backend == "local" and any(v is not None for v in ray_only.values()):
            given = ", ".join(k for k, v in ray_only.items() if v is not None)
            raise UserError(f"{given}: only with --backend ray")
        sources = parse_models(checkpoint, model or [])
        overrides: dict[str, object] = {}
        if device is not None:
            overrides["device"] = device
        if data_dir is not None:
            overrides["data_dir"] = data_dir
        try:
            settings = ServerSettings.from_env(**overrides)
        except SettingsError as err:
            raise UserError(str(err)) from None
        if backend == "ray":
            _serve_on_ray(settings, sources, host, port, replicas or 1, ray_address, replica_gpus)
            return

    import uvicorn

    from att3d.devices import resolve_device
    from att3d.generate import Generator
    from server.app import create_app

    target = str(resolve_device(settings.device))

    def loader(name: str, path: Path | None):  # -> Callable[[], Generator]
        if path is None:
            return lambda: Generator.default(device=target)
        return lambda: Generator.from_checkpoint(path, name=name, device=target)

    app = create_app(settings, {name: loader(name, path) for name, path in sources.items()})
    typer.echo(f"att3d serving on http://{host}:{port}/ (models: {', '.join(sources)}; docs at /docs)")
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        # Jobs get job_cancel_grace_s to save a checkpoint when the server stops.
        timeout_graceful_shutdown=int(settings.job_cancel_grace_s) + 5,
    )


def _serve_on_ray(
    settings,  # ServerSettings
    sources: dict[str, Path | None],
    host: str,
    port: int,
    replicas: int,
    address: str | None,
    replica_gpus: float | None,
) -> None:
    from server.ray_serve.options import RayServeOptions
    from server.ray_serve.run import RayBackendMissing, serve_on_ray

    paths = {name: str(path.resolve()) for name, path in sources.items() if path is not None}
    options = RayServeOptions(
        checkpoint=paths.pop(DEFAULT_MODEL, None),
        models=paths,
        device=settings.device,
        replicas=replicas,
        replica_gpus=replica_gpus,
    )
    try:
        serve_on_ray(options, settings, host, port, address, echo=typer.echo)
    except RayBackendMissing as err:
        raise UserError(str(err)) from None
