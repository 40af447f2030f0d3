"""What the Ray Serve application is built from (:class:`RayServeOptions`: ``build_app``'s ``args`` in
``configs/serve_ray.yaml``, or what ``att3d serve --backend ray`` passes) and how a generation replica turns
its model references into loaders. Plain data, no Ray import: the options travel to the replicas pickled."""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "default"
"""The name of the model answering requests without a ``model`` field (as with ``att3d serve``)."""
GENERATION = "Generation"
"""The generation deployment's name (what a config file's ``deployments`` entries refer to)."""
INGRESS = "Ingress"
"""The ingress deployment's name."""
INGRESS_MAX_ONGOING = 1024
"""Requests the one ingress replica serves at a time: it only validates and awaits the replicas, so this is
far above what the generation replicas admit (they refuse with 429/503 long before it is reached)."""


@dataclass
class RayServeOptions:
    """How the two deployments are built; every field can be set in the config file's ``args``."""

    checkpoint: str | None = None
    """Checkpoint folder served as the default model, as seen from the replicas' nodes; ``None``: the
    bundled model."""
    models: dict[str, str] = field(default_factory=dict)
    """More models, ``NAME: checkpoint folder`` (as ``att3d serve --model NAME=DIR``)."""
    factory: str | None = None
    """``module:function`` returning the default model's ``Generator``, called without arguments in each
    replica, instead of ``checkpoint`` (tests, custom loaders); the module must be importable there."""
    device: str | None = None
    """Device of the replicas' models (``cpu``, ``cuda``, ``cuda:N``, ``auto``); ``None``: the
    ``ATT3D_DEVICE`` setting."""
    replicas: int = 1
    """Generation replicas (a fixed count; an ``autoscaling_config`` in the config file replaces it)."""
    replica_gpus: float | None = None
    """GPUs per generation replica (``ray_actor_options.num_gpus``); ``None``: 1 when the device is CUDA
    (``cuda``, ``cuda:N``), else 0. Ray shows each replica only its own GPUs, so ``cuda`` means that one."""
    replica_cpus: float = 1.0
    """CPUs per generation replica (``ray_actor_options.num_cpus``; Ray sets its torch threads to this)."""
    max_ongoing_requests: int | None = None
    """Requests one generation replica holds at a time; ``None``: ``ATT3D_QUEUE_SIZE + ATT3D_MAX_BATCH_SIZE``,
    so the replica's own admission answers overload (429/503 with an estimated ``Retry-After``)."""
    max_queued_requests: int = 64
    """Requests the ingress keeps waiting while every generation replica is at ``max_ongoing_requests``;
    beyond that Serve refuses them (answered 503 ``overloaded`` with ``Retry-After``). -1: no bound."""
    retries: int = 2
    """Further tries of a request, each on a replica Serve picks again, after its replica died mid-request;
    then 503 ``replica_unavailable`` with ``Retry-After``."""

    def __post_init__(self) -> None:
        from server.schemas import is_model_name

        self.models = dict(self.models)
        problems = []
        if self.checkpoint is not None and self.factory is not None:
            problems.append("give checkpoint or factory, not both")
        if self.factory is not None and ":" not in self.factory:
            problems.append(f"factory must look like 'module:function', got {self.factory!r}")
        for name in self.models:
            if not is_model_name(name) or name == DEFAULT_MODEL:
                problems.append(f"models: {name!r} is not a free model name")
        if self.replicas < 1:
            problems.append(f"replicas must be >= 1, got {self.replicas}")
        for name in ("replica_gpus", "replica_cpus", "retries"):
            value = getattr(self, name)
            if value is not None and value < 0:
                problems.append(f"{name} must be >= 0, got {value}")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            problems.append(f"max_ongoing_requests must be >= 1, got {self.max_ongoing_requests}")
        if self.max_queued_requests < -1 or self.max_queued_requests == 0:
            problems.append(f"max_queued_requests must be >= 1 or -1, got {self.max_queued_requests}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_args(cls, args: Mapping[str, Any] | None) -> RayServeOptions:
        """Options from a config file's ``args`` (unknown keys and wrong types are errors naming the key)."""
        args = dict(args or {})
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - names)
        if unknown:
            raise ValueError(f"unknown args {unknown}; known: {sorted(names)}")
        for key, value in args.items():
            if not _fits(hints[key], value):
                raise ValueError(f"args.{key}: expected {hints[key]}, got {value!r}")
        return cls(**args)

    def model_refs(self) -> dict[str, str | None]:
        """``{name: checkpoint folder}`` in serving order (``None``: the bundled model or ``factory``)."""
        return {DEFAULT_MODEL: self.checkpoint, **self.models}

    def gpus(self, device: str) -> float:
        """GPUs per generation replica for models on ``device``."""
        if self.replica_gpus is not None:
            return self.replica_gpus
        return 1.0 if device.startswith("cuda") else 0.0

    def sources(self, device: str) -> dict[str, Callable[[], Any]]:
        """A loader per model (``server.engine.ModelSource``), run by the replica's model worker."""
        from att3d.devices import resolve_device
        from att3d.generate import Generator

        def loader(name: str, path: str | None) -> Callable[[], Generator]:
            if path is not None:
                return lambda: Generator.from_checkpoint(Path(path), name=name, device=target)
            if self.factory is not None:
                factory = self.factory
                return lambda: _import(factory)()  # an import error becomes the engine's load error
            return lambda: Generator.default(device=target)

        target = str(resolve_device(device))
        return {name: loader(name, path) for name, path in self.model_refs().items()}


def _import(target: str) -> Callable[[], Any]:
    module, _, attr = target.partition(":")
    function = getattr(importlib.import_module(module), attr, None)
    if not callable(function):
        raise ValueError(f"factory {target!r}: {module} has no function {attr!r}")
    return function


def _fits(hint: Any, value: Any) -> bool:
    """Whether a config value has a field's type (``int`` accepts no bool; ``float`` accepts an int)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = typing.get_args(hint) if union else (hint,)
    if value is None:
        return type(None) in members
    for tp in members:
        origin = typing.get_origin(tp) or tp
        if origin is dict:
            return isinstance(value, dict) and all(isinstance(x, str) for x in (*value, *value.values()))
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if origin is str and isinstance(value, str):
            return True
    return False
