"""Request and response bodies of the HTTP API (pydantic), with the checks that make bad input a 422.

Models are strict (no ``"64"`` for an integer, no number for a prompt) and forbid unknown fields, so a typo
in a field name is reported instead of silently ignored. Checks that need the server's settings or loaded
models (resolution cap, model names) happen in ``server.routes`` and produce the same error shape.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from att3d.config import TextureMode, TrainConfig
from att3d.limits import DEFAULT_MAX_PROMPT_CHARS, RESOLUTION_RANGE, validate_prompt

MeshFormat = Literal["glb", "obj", "ply"]

MEDIA_TYPES: dict[str, str] = {
    "glb": "model/gltf-binary",
    "obj": "application/zip",
    "ply": "application/x-ply",
}
"""Media type of each mesh format. OBJ comes as a zip of the OBJ, its MTL and texture; PLY has no
registered media type, so the conventional unregistered ``application/x-ply`` is used."""
ZIP_MEDIA_TYPE = "application/zip"

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""Names of loaded models: URL-safe, at most 64 characters."""

FRAMES_RANGE = (2, 64)
"""Bounds of ``frames`` in the schema; a server's ``max_frames`` may lower the upper one."""

WEIGHT_SUM_TOLERANCE = 1e-4
"""Interpolation weights must sum to 1 within this (the same tolerance as ``Generator.blend``)."""


def _prompt(value: str) -> str:
    # validate_prompt raises PromptError (a ValueError): pydantic turns it into a 422 on this field.
    return validate_prompt(value)


Prompt = Annotated[
    str,
    # Length limits live in validate_prompt (its messages say what is wrong); the schema only mirrors them.
    Field(examples=["a red cube"], json_schema_extra={"minLength": 1, "maxLength": DEFAULT_MAX_PROMPT_CHARS}),
    AfterValidator(_prompt),
]
"""A text prompt: non-blank, at most 1000 characters after stripping surrounding whitespace."""

Weight = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Resolution = Annotated[
    int,
    Field(
        ge=RESOLUTION_RANGE[0],
        le=RESOLUTION_RANGE[1],
        description="Marching-cubes grid resolution (the server may cap it lower; see /v1/models).",
    ),
]
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN, examples=["default"])]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class MeshOptions(_Strict):
    """Options shared by every request that returns meshes."""

    format: MeshFormat = "glb"
    """``glb`` (model/gltf-binary), ``obj`` (zip of OBJ + MTL + PNG) or ``ply`` (binary PLY)."""
    resolution: Resolution | None = None
    """Marching-cubes resolution; default: the model's own setting."""
    texture: TextureMode = "vertex"
    """``vertex`` colours or a baked ``uv`` texture."""
    model: ModelName | None = None
    """Name of a loaded model (``GET /v1/models``); default: the first model loaded."""


class GenerateRequest(MeshOptions):
    """``POST /v1/generate``: one prompt to one mesh."""

    prompt: Prompt


class InterpolateRequest(MeshOptions):
    """``POST /v1/interpolate``: a blend of prompts (``weights``) or a walk through them (``frames``)."""

    prompts: Annotated[list[Prompt], Field(min_length=2, max_length=8)]
    """The prompts blended, in walk order."""
    weights: Annotated[list[Weight], Field(min_length=2, max_length=8)] | None = None
    """One weight per prompt, each in [0, 1], summing to 1: returns one mesh of that blend."""
    frames: Annotated[int, Field(ge=FRAMES_RANGE[0], le=FRAMES_RANGE[1])] | None = None
    """Number of evenly spaced frames from the first prompt to the last: returns a zip of meshes."""

    @model_validator(mode="after")
    def _one_mode(self) -> InterpolateRequest:
        if (self.weights is None) == (self.frames is None):
            raise ValueError("weights: give exactly one of 'weights' (one blended mesh) or 'frames'")
        if self.weights is not None:
            if len(self.weights) != len(self.prompts):
                raise ValueError(f"weights: got {len(self.weights)} weights for {len(self.prompts)} prompts")
            total = math.fsum(self.weights)
            if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
                raise ValueError(f"weights: must sum to 1, got {total:.6g}")
        return self


JOB_SERVER_KEYS = ("prompts", "device", "model.text.cache_dir", "progress_bar")
"""Config keys a job may not set: the prompt set comes from the request's own fields, and paths and devices
are the server's business."""


def job_config_schema() -> dict[str, Any]:
    """JSON schema of a job's ``config``: one property per dotted ``TrainConfig`` key a job may set, with the
    type, choices, range, default and description the config declares (the same types validate it)."""
    from pydantic import TypeAdapter

    root = TypeAdapter(TrainConfig).json_schema()
    sections = root.get("$defs", {})
    properties: dict[str, Any] = {}

    def add(section: dict[str, Any], prefix: str) -> None:
        for name, prop in section["properties"].items():
            key = prefix + name
            if any(key == k or key.startswith(k + ".") for k in JOB_SERVER_KEYS):
                continue
            ref = prop.get("$ref")
            if ref is not None:
                add(sections[ref.rsplit("/", 1)[-1]], key + ".")
            else:
                properties[key] = prop

    add(root, "")
    return {"properties": properties, "additionalProperties": False}


def _document_job_config(schema: dict[str, Any]) -> None:
    schema.pop("patternProperties", None)  # the listed keys say more than the key pattern
    schema.update(job_config_schema())


class JobRequest(_Strict):
    """``POST /v1/jobs``: train a generator on a prompt set, given as a list or as a template."""

    prompts: Annotated[list[Prompt], Field(min_length=1)] | None = None
    """The training prompts (``source=list``)."""
    template: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    """A template such as ``a {color} {shape}``; the prompts are every combination of ``slots``."""
    slots: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], list[str]] | None = None
    """Values of each template slot."""
    heldout: list[Prompt] = Field(default_factory=list)
    """Prompts kept out of training and scored separately."""
    config: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")], Any] = Field(
        default_factory=dict,
        examples=[{"steps": 500, "optim.grid_lr": 0.01}],
        json_schema_extra=_document_job_config,
    )
    """``TrainConfig`` overrides by dotted key, e.g. ``{"steps": 500, "model.field.num_bases": 8}``."""

    @model_validator(mode="after")
    def _one_source(self) -> JobRequest:
        if (self.prompts is None) == (self.template is None):
            raise ValueError("prompts: give exactly one of 'prompts' (a list) or 'template' (with 'slots')")
        if self.template is not None and not self.slots:
            raise ValueError("slots: a template needs the values of its slots")
        if self.template is None and self.slots is not None:
            raise ValueError("slots: only used with 'template'")
        return self


REFINE_STEPS_RANGE = (1, 10_000)
"""Bounds of ``steps`` of ``POST /v1/refine`` (``att3d.refine.REFINE_STEPS_RANGE``; no torch import here)."""


class RefineRequest(_Strict):
    """``POST /v1/refine``: per-prompt SDS starting from a model's output for ``prompt`` (a refine job)."""

    prompt: Prompt
    steps: Annotated[int, Field(ge=REFINE_STEPS_RANGE[0], le=REFINE_STEPS_RANGE[1])] = 64
    """Refine steps, 1-10000 (about a second each on a CPU)."""
    model: ModelName | None = None
    """Name of a loaded model (``GET /v1/models``); default: the first model loaded."""
    format: MeshFormat = "glb"
    """Format of the result (``GET /v1/jobs/{id}/result``); previews are always GLB."""
    resolution: Resolution | None = None
    """Marching-cubes resolution of the result; default: the model's own setting."""
    freeze_head: bool = True
    """Optimize only the prompt's hash grid (true) or its copy of the MLP head too."""
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    """Seed of the cameras, timesteps and noise."""
    prior_text: Literal["prompt", "nearest"] | None = None
    """What the prior is conditioned on: ``prompt`` (the words as given) or ``nearest`` (a prompt the prior
    knows, for words outside a closed-vocabulary prior's; ``att3d.refine_config.RefineConfig``); default:
    the refine config's default."""
    preview_every: Annotated[int, Field(ge=0, le=REFINE_STEPS_RANGE[1])] | None = None
    """Write a preview GLB every this many steps (0: none); default: about eight per job."""


class LoadModelRequest(_Strict):
    """``POST /v1/models``: load a finished job's checkpoint as a named model."""

    name: ModelName
    """Name the model will answer to in ``model`` fields."""
    job_id: Annotated[str, Field(min_length=1, max_length=64)]
    """A job in state ``succeeded``."""


# --------------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------------


class FieldError(BaseModel):
    """One problem with one input field."""

    field: str
    """Dotted path of the field (``prompts.1``, ``weights``, ``body`` for the body as a whole)."""
    message: str


class ErrorResponse(BaseModel):
    """Every error the API returns has this shape."""

    error: str
    """Stable machine-readable code, e.g. ``invalid_request``, ``not_found``, ``queue_full``."""
    message: str
    """One human-readable sentence."""
    fields: list[FieldError] = Field(default_factory=list)
    """The offending fields, when the error is about the input."""


class ModelInfo(BaseModel):
    """A loaded model."""

    name: str
    model_hash: str
    """sha256 of the weights and the model config (``att3d.generate.model_identity``; also sent as
    ``X-Model-Hash`` with every mesh)."""
    text_encoder: str
    num_prompts: int
    """Size of the prompt set it was trained on (``GET /v1/models/{name}/prompts`` lists them)."""
    training_steps: int
    parameters: int
    default: bool
    """Whether requests without ``model`` use it."""
    default_resolution: int
    max_resolution: int
    familiarity_threshold: float
    """A prompt whose embedding's cosine similarity to the nearest training prompt is below this is
    reported unfamiliar (``X-Prompt-Familiar: false``): the manifest's ``familiarity_threshold``, else
    the uncalibrated default 0.6."""


class ModelList(BaseModel):
    models: list[ModelInfo]


class PromptList(BaseModel):
    name: str
    total: int
    offset: int
    prompts: list[str]


JobState = Literal["queued", "running", "succeeded", "failed", "canceled", "interrupted"]


JobKind = Literal["train", "refine"]


class JobStatus(BaseModel):
    """A training job or a refine job."""

    id: str
    kind: JobKind = "train"
    """``train`` (``POST /v1/jobs``) or ``refine`` (``POST /v1/refine``)."""
    state: JobState
    progress: float
    """Percent of ``total_steps`` done, 0-100."""
    step: int
    total_steps: int
    loss: float | None
    error: str | None
    created_at: str
    """ISO-8601 UTC timestamps; ``None`` until the event happened."""
    started_at: str | None
    updated_at: str
    finished_at: str | None
    attempts: int
    """Times the job was started (a resumed job counts again)."""
    checkpoint_available: bool
    """A checkpoint exists (resume continues from it; a succeeded job's can be loaded as a model)."""
    cancel_requested: bool
    status_url: str
    result_url: str | None = None
    """Refine jobs: the refined mesh, once the job has succeeded (409 before)."""
    preview_url: str | None = None
    """Refine jobs: the latest intermediate GLB (404 until the first one is written)."""
    preview_available: bool = False
    """Refine jobs: a preview has been written (``preview_url`` answers 200)."""


def is_model_name(name: str) -> bool:
    """Whether ``name`` is a valid model name."""
    return re.fullmatch(MODEL_NAME_PATTERN, name) is not None
