"""``POST /v1/generate`` and ``POST /v1/interpolate``: mesh bytes, with ``ETag``, ``X-Model-Hash``,
``X-Generation-Ms``, ``X-Cache`` and, for a single mesh, the prompt's familiarity (``X-Prompt-Familiarity``,
``X-Prompt-Familiar``, ``X-Prompt-Nearest``); ``If-None-Match`` with a current ETag answers 304 without
generating."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header
from fastapi.responses import Response

from att3d.familiarity import Familiarity
from att3d.generate import interpolation_weights
from server.cache.single_flight import off_loop
from server.deps import EngineDep, SettingsDep
from server.engine import Engine
from server.errors import ERROR_RESPONSES, V1_ERROR_RESPONSES, ServiceError, limit_error, not_ready
from server.mesh_spec import MeshSpec
from server.result_cache import GenerationResult
from server.schemas import MEDIA_TYPES, ZIP_MEDIA_TYPE, GenerateRequest, InterpolateRequest, MeshOptions
from server.settings import ServerSettings

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_MESH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The mesh (GLB, PLY, or a zip of OBJ + MTL + PNG); a zip of frames with `frames`.",
        "content": {media: _BINARY for media in {*MEDIA_TYPES.values(), ZIP_MEDIA_TYPE}},
        "headers": {
            "ETag": {"schema": {"type": "string"}, "description": "Weak ETag of (model hash, request)."},
            "X-Model-Hash": {"schema": {"type": "string"}, "description": "sha256 of the model's weights."},
            "X-Generation-Ms": {"schema": {"type": "string"}, "description": "Model-worker milliseconds."},
            "X-Cache": {"schema": {"type": "string"}, "description": "hit or miss."},
            "X-Prompt-Familiarity": {
                "schema": {"type": "string"},
                "description": "Cosine similarity (3 decimals) of the prompt's (or blend's) text embedding "
                "to the nearest training prompt's. Single meshes only.",
            },
            "X-Prompt-Familiar": {
                "schema": {"type": "string", "enum": ["true", "false"]},
                "description": "Whether that similarity reaches the model's `familiarity_threshold` "
                "(GET /v1/models); `false`: the mesh may not match the prompt.",
            },
            "X-Prompt-Nearest": {
                "schema": {"type": "string"},
                "description": "The nearest training prompt, percent-encoded UTF-8.",
            },
            "X-Prompt-Read-As": {
                "schema": {"type": "string"},
                "description": "The prompt as the model read it, percent-encoded UTF-8, when that differs "
                "from what was sent: words the model was not trained on replaced by ones it was (a colour "
                "name by the nearest trained colour, another word by the trained word that makes the prompt "
                "most familiar). Single-prompt meshes only.",
            },
        },
    },
    304: {"description": "If-None-Match matched the current ETag: nothing was generated."},
    **ERROR_RESPONSES,
}

router = APIRouter(prefix="/v1", responses=V1_ERROR_RESPONSES)
IfNoneMatch = Annotated[str | None, Header(description="ETag from an earlier response: 304 if unchanged.")]


@router.post("/generate", response_class=Response, responses=_MESH_RESPONSES, tags=["meshes"])
async def generate(
    body: GenerateRequest, engine: EngineDep, settings: SettingsDep, if_none_match: IfNoneMatch = None
) -> Response:
    """One prompt to one mesh."""
    name = _model_name(engine, body)
    spec = MeshSpec(
        model=name,
        prompts=(body.prompt,),
        walk=((1.0,),),
        frames=False,
        resolution=_resolution(engine, settings, name, body),
        texture=body.texture,
        format=body.format,
    )
    filename = f"{_slug(body.prompt)}.{'zip' if body.format == 'obj' else body.format}"
    return await _answer(engine, settings, spec, filename, if_none_match)


@router.post("/interpolate", response_class=Response, responses=_MESH_RESPONSES, tags=["meshes"])
async def interpolate(
    body: InterpolateRequest, engine: EngineDep, settings: SettingsDep, if_none_match: IfNoneMatch = None
) -> Response:
    """A blend of prompts (``weights``: one mesh) or a walk through them (``frames``: a zip of meshes).

    With ``frames: N`` the answer is ``application/zip`` holding ``frame_000.<format>`` ... (OBJ frames are
    folders ``frame_000/``) and ``frames.json`` with each frame's weights; frame 0 is the first prompt,
    the last frame the last prompt, and the walk passes through every prompt in order.
    """
    name = _model_name(engine, body)
    if body.frames is not None:
        if body.frames > settings.max_frames:
            raise limit_error("frames", body.frames)
        walk = tuple(tuple(w) for w in interpolation_weights(len(body.prompts), body.frames))
    else:
        walk = (tuple(body.weights or ()),)
    spec = MeshSpec(
        model=name,
        prompts=tuple(body.prompts),
        walk=walk,
        frames=body.frames is not None,
        resolution=_resolution(engine, settings, name, body),
        texture=body.texture,
        format=body.format,
    )
    stem = _slug(" to ".join(body.prompts[:: len(body.prompts) - 1]))
    ext = "zip" if spec.frames or body.format == "obj" else body.format
    return await _answer(engine, settings, spec, f"{stem}.{ext}", if_none_match)


def _model_name(engine: Engine, options: MeshOptions) -> str:
    if not engine.models():
        raise not_ready(engine.load_error)
    name = options.model or engine.default_model
    if engine.model_info(name) is None:
        loaded = ", ".join(m["name"] for m in engine.models())
        raise ServiceError(404, "not_found", f"model {name!r} is not loaded (loaded: {loaded})", "model")
    return name


def _resolution(engine: Engine, settings: ServerSettings, name: str, options: MeshOptions) -> int:
    if options.resolution is None:
        return int(engine.model_info(name)["default_resolution"])  # type: ignore[index]
    if options.resolution > settings.max_resolution:
        raise limit_error("resolution", options.resolution)
    return options.resolution


async def _answer(
    engine: Engine, settings: ServerSettings, spec: MeshSpec, filename: str, if_none_match: str | None
) -> Response:
    """Cache, 304, queue, wait: the common path of every mesh-returning route."""
    key = engine.key(spec)
    etag = _etag(key)
    model_hash = engine.model_info(spec.model)["model_hash"]  # type: ignore[index]
    if _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=_headers(None, etag, "revalidated", model_hash))
    cached = await off_loop(engine.cache, engine.lookup, key)  # Redis calls run off the event loop
    if cached is not None:
        result, cache = cached, "hit"
    else:
        # QueueFull is a ServiceError: 429 with Retry-After.
        future = await off_loop(engine.cache, engine.submit, spec, key)
        try:
            # shield: one waiter giving up must not cancel the computation other waiters share.
            result = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), settings.request_timeout_s
            )
        except TimeoutError:
            raise ServiceError(
                504,
                "timeout",
                f"no result within {settings.request_timeout_s:g} s; retry later (it is cached "
                "when it lands)",
                headers={"Retry-After": "5"},
            ) from None
        except ServiceError as err:
            # The worker's errors are shared by every waiter: answer with a copy, adding Retry-After to 503s.
            headers = err.headers or ({"Retry-After": "5"} if err.status == 503 else None)
            raise ServiceError(err.status, err.code, err.message, err.field, headers) from None
        cache = "miss"
    headers = _headers(result, etag, cache, result.model_hash)
    headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return Response(content=result.body, media_type=result.media_type, headers=headers)


def _etag(key: str) -> str:
    # Weak: the key names the model's answer to this request, which is the same mesh wherever it is
    # computed, though float rounding may differ across machines and libraries. The whole sha256 (64 hex
    # digits), as docs/API.md says.
    return f'W/"{key}"'


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag.removeprefix("W/") for t in tags)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "mesh"


def _headers(result: GenerationResult | None, etag: str, cache: str, model_hash: str) -> dict[str, str]:
    headers = {"ETag": etag, "X-Model-Hash": model_hash, "X-Cache": cache}
    if result is not None:
        headers["X-Model-Name"] = result.model
        headers["X-Generation-Ms"] = f"{result.generation_ms:.1f}"
        if result.familiarity is not None:
            headers |= familiarity_headers(result.familiarity)
    return headers


def familiarity_headers(familiarity: Familiarity) -> dict[str, str]:
    """``X-Prompt-Familiarity`` (similarity, 3 decimals), ``X-Prompt-Familiar`` (``true``/``false``),
    ``X-Prompt-Nearest`` and, when the model read the prompt otherwise, ``X-Prompt-Read-As`` (both
    percent-encoded: a prompt may hold characters a header cannot)."""
    headers = {
        "X-Prompt-Familiarity": f"{familiarity.similarity:.3f}",
        "X-Prompt-Familiar": "true" if familiarity.familiar else "false",
        "X-Prompt-Nearest": quote(familiarity.nearest, safe=""),
    }
    if familiarity.read_as:
        headers["X-Prompt-Read-As"] = quote(familiarity.read_as, safe="")
    return headers
