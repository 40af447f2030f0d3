"""Typed configuration: every tunable of the package, each field documented where it is declared.

Configs are plain dataclasses. They load from YAML (``load_config``), take ``key.sub=value`` overrides
from the command line, and reject unknown keys and badly typed values with a message that names the
key. ``to_dict`` turns a config back into plain data for checkpoint manifests.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the offending key."""


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


@dataclass
class EncodingConfig:
    """Multiresolution hash encoding (Instant-NGP)."""

    levels: int = 8
    """Number of resolution levels."""
    features_per_level: int = 2
    """Features stored per table entry and level."""
    log2_table_size: int = 14
    """log2 of the entries per level; coarse levels whose dense grid fits use direct indexing."""
    base_resolution: int = 16
    """Grid resolution of the coarsest level."""
    growth_factor: float = 1.447
    """Resolution ratio between consecutive levels."""
    init_scale: float = 1e-4
    """Table entries start uniform in ``[-init_scale, init_scale]``."""
    backend: str = "auto"
    """``torch`` (pure PyTorch, everywhere), ``tcnn`` (tiny-cuda-nn, CUDA only) or ``auto``."""


@dataclass
class FieldConfig:
    """The amortized text-conditioned field: mapping network, basis grids and MLP head."""

    encoding: EncodingConfig = dataclasses.field(default_factory=EncodingConfig)
    """Hash-grid layout shared by all basis grids."""
    text_dim: int = 384
    """Dimension of the text embedding fed to the mapping network."""
    num_bases: int = 16
    """K: hidden width of the mapping network = number of basis grids mixed per prompt."""
    mixing_gain: float = 1.0
    """Lipschitz bound of the output layer per grid entry: a unit ``v(c)`` gives entries of RMS <= this."""
    hidden_dim: int = 64
    """Width of the MLP head."""
    hidden_layers: int = 2
    """Hidden layers of the MLP head."""
    density_activation: str = "trunc_exp"
    """``trunc_exp`` or ``softplus``."""
    density_bias: float = -1.0
    """Constant added to the raw density before the activation."""
    blob_density: float = 10.0
    """Density-blob strength: adds ``blob_density * (1 - |x| / blob_radius)`` to the raw density."""
    blob_radius: float = 0.5
    """Radius of the density blob (world units)."""
    bound: float = 1.0
    """The scene lives in ``[-bound, bound]^3``."""


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@dataclass
class CameraSamplingConfig:
    """Ranges training cameras are drawn from (uniform in each range)."""

    distance: tuple[float, float] = (2.6, 3.0)
    """Distance from the origin."""
    elevation: tuple[float, float] = (-10.0, 60.0)
    """Elevation above the xy-plane in degrees."""
    azimuth: tuple[float, float] = (-180.0, 180.0)
    """Azimuth around +z in degrees (0 looks from +x)."""
    fovy: tuple[float, float] = (40.0, 40.0)
    """Vertical field of view in degrees."""
    light_jitter: float = 0.3
    """Standard deviation of the random offset added to the light direction (0: fixed light)."""
    light_lift: float = 0.5
    """Upward (+z) offset added to the camera direction before normalizing: light from above."""


@dataclass
class RenderConfig:
    """Volume rendering of a field."""

    image_size: int = 32
    """Rendered image side in pixels."""
    samples_per_ray: int = 48
    """Stratified samples per ray inside the scene box."""
    ambient: float = 0.3
    """Ambient term of diffuse shading: ``albedo * (ambient + (1 - ambient) * max(n·l, 0))``."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Background colour (RGB in [0, 1])."""
    normal_eps: float = 0.01
    """Finite-difference step for density-gradient normals (world units)."""
    chunk_rays: int = 16384
    """Rays rendered per chunk when rendering without gradient."""


# --------------------------------------------------------------------------------------------------
# Mesh extraction
# --------------------------------------------------------------------------------------------------


@dataclass
class MeshConfig:
    """Dense field query, marching cubes and export."""

    resolution: int = 128
    """Grid resolution of the fine pass along the longest side."""
    coarse_resolution: int = 48
    """Grid resolution of the coarse pass that finds the object's bounding box."""
    density_threshold: float = 6.93
    """Iso-level on density: ln(2)/0.1, i.e. 50 % opacity across 0.1 world units."""
    chunk_points: int = 262144
    """Points queried per chunk (bounds memory at any resolution)."""
    min_component_fraction: float = 0.02
    """Connected components with fewer faces than this fraction of the largest are dropped."""
    texture: str = "vertex"
    """``vertex`` (vertex colours) or ``uv`` (xatlas unwrap + baked PNG texture)."""
    texture_size: int = 512
    """Side of the baked texture in pixels (``texture=uv``)."""
    decimate_faces: int = 10000
    """Target face count before UV unwrapping (``texture=uv``)."""
    marching_cubes: str = "auto"
    """``skimage``, ``torch`` (``att3d.meshing.marching_cubes``, stays on the query device) or ``auto``
    (torch on CUDA, skimage on the CPU)."""
    grid_query: str = "coarse_to_fine"
    """How a generator queries the coarse and fine grids: ``coarse_to_fine``
    (``att3d.meshing.coarse_to_fine``: block corners first, then only the blocks the surface passes through; the same surface as ``dense`` on smooth
    fields at a fraction of the queries) or ``dense`` (every sample, ``att3d.meshing.dense.extract_mesh``, the
    reference). UV textures and ``marching_cubes=skimage`` take ``dense``; ``coarse_to_fine`` meshes with
    ``torch``."""


# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------


@dataclass
class TextConfig:
    """Text encoder used to condition the field."""

    encoder: str = "minilm"
    """Encoder id: ``minilm`` (bundled all-MiniLM-L6-v2) or a registered encoder name."""
    max_prompt_chars: int = 1000
    """Longer prompts are rejected."""
    cache_dir: str = ""
    """On-disk embedding cache; empty means ``$ATT3D_CACHE`` or ``~/.cache/att3d``."""


@dataclass
class ModelConfig:
    """Everything needed to rebuild a generator from its weights (stored in checkpoint manifests)."""

    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    """The amortized field."""
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    """The text encoder that produced the field's conditioning."""
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)
    """Renderer settings used in training and previews."""
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    """Default mesh-extraction settings."""


# --------------------------------------------------------------------------------------------------
# Score distillation
# --------------------------------------------------------------------------------------------------


@dataclass
class SDSConfig:
    """Score distillation settings."""

    guidance_scale: float = 7.5
    """Classifier-free guidance scale (``att3d.priors.base.guided``)."""
    t_min: float = 0.02
    """Smallest timestep, as a fraction of the schedule."""
    t_max_start: float = 0.98
    """Largest timestep at the start of training."""
    t_max_end: float = 0.5
    """Largest timestep after annealing."""
    t_anneal_steps: int = 0
    """Steps over which ``t_max`` goes linearly from start to end (0: no annealing)."""
    weighting: str = "1-alpha_bar"
    """``w(t)``: ``1-alpha_bar`` (DreamFusion), ``sqrt(1-alpha_bar)`` or ``uniform``."""
    grad_clip: float = 0.0
    """Clip the per-element SDS gradient to ``[-grad_clip, grad_clip]`` (0: off)."""


# --------------------------------------------------------------------------------------------------
# Training (att3d.training, att3d.prompts)
# --------------------------------------------------------------------------------------------------


@dataclass
class PromptSetConfig:
    """Where the training prompts (and the held-out prompts scored separately) come from."""

    source: str = "list"
    """``list`` (``prompts``), ``file`` (``path``), ``template`` (``template`` × ``slots``) or ``shapes``."""
    prompts: list[str] = dataclasses.field(default_factory=list)
    """Inline prompts (``source=list``)."""
    path: str = ""
    """Text file with one prompt per line, ``#`` starts a comment line (``source=file``)."""
    template: str = ""
    """Template with ``{slot}`` fields, e.g. ``a {color} {shape}`` (``source=template``)."""
    slots: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Values of every template slot; the prompts are all combinations (``source=template``)."""
    heldout: list[str] = dataclasses.field(default_factory=list)
    """Held-out prompts: removed from the template's combinations, or extra prompts for list/file."""
    split: str = "train"
    """ShapesWorld split trained on: ``train`` (held out: ``heldout``), ``heldout`` or ``all``."""
    all_phrasings: bool = False
    """ShapesWorld: every phrasing of each object instead of the canonical ``a red cube`` only."""


@dataclass
class OptimConfig:
    """Adam on the generator; the hash grid and the networks get separate learning rates."""

    grid_lr: float = 1e-2
    """Learning rate of the basis hash grids."""
    network_lr: float = 1e-3
    """Learning rate of the mapping network and the MLP head."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam's moment decay rates."""
    eps: float = 1e-15
    """Adam's epsilon (tiny, as Instant-NGP: rarely-touched hash entries still move)."""
    weight_decay: float = 0.0
    """L2 weight decay on the networks (never on the grids)."""


@dataclass
class TrainConfig:
    """One amortized SDS training run (``att3d train``); a one-prompt set is per-prompt DreamFusion."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    """The generator being trained (stored in every checkpoint)."""
    prompts: PromptSetConfig = dataclasses.field(default_factory=PromptSetConfig)
    """The prompt set."""
    prior: str = "shapes"
    """Prior for ``att3d.priors.registry.load_prior``: ``shapes``, ``stable-diffusion[:<hub id or folder>]``,
    ``deepfloyd-if[:<hub id or folder>]`` or a saved prior's folder."""
    sds: SDSConfig = dataclasses.field(default_factory=SDSConfig)
    """Score distillation."""
    cameras: CameraSamplingConfig = dataclasses.field(default_factory=CameraSamplingConfig)
    """Ranges of the training cameras."""
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    """Optimizer."""
    steps: int = 2000
    """Optimizer steps."""
    prompts_per_step: int = 4
    """P: prompts (or interpolants) per step and process."""
    views_per_prompt: int = 1
    """V: cameras rendered per prompt and step."""
    albedo_steps: int = 0
    """Shade with plain albedo for the first steps (no normals), then by ``shading_probs``."""
    shading_probs: tuple[float, float, float] = (0.0, 1.0, 0.0)
    """Probabilities of albedo, diffuse and textureless shading after ``albedo_steps`` (one mode per step)."""
    interp_prob: float = 0.0
    """Probability that a training prompt is an interpolant: a random mix of several prompts' embeddings."""
    interp_prompts: int = 2
    """Prompts mixed into one interpolant."""
    interp_concentration: float = 1.0
    """Dirichlet concentration of the mixing weights (1: uniform on the simplex; Beta(a, a) for two)."""
    sparsity_weight: float = 0.0
    """Weight of the mean rendered opacity (discourages floaters and haze)."""
    opacity_entropy_weight: float = 0.0
    """Weight of the binary entropy of rendered opacity (pushes pixels to empty or solid)."""
    progressive_levels: int = 0
    """Hash-grid levels active at step 0 (0: all); finer levels are unmasked one by one."""
    level_steps: int = 100
    """Steps between unmasking two consecutive hash-grid levels (``progressive_levels > 0``)."""
    seed: int = 0
    """Seed of the initialization and of every random draw (rank r draws from ``seed + r``)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    log_every: int = 10
    """Steps between TensorBoard scalar writes (0: no TensorBoard)."""
    preview_every: int = 250
    """Steps between preview PNG grids, prompts × views (0: none)."""
    preview_prompts: int = 4
    """Prompts in a preview grid (the first of the training set)."""
    preview_views: int = 4
    """Views per prompt in a preview grid (an orbit at 20° elevation)."""
    eval_every: int = 0
    """Steps between evaluations on the held-out prompts (0: none; needs an evaluator)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (0: only at the end and on interruption)."""
    keep_checkpoints: int = 3
    """Most recent checkpoints kept; older ones are deleted."""
    progress_bar: bool = True
    """Show a progress bar (rank 0, interactive terminals only)."""


# --------------------------------------------------------------------------------------------------
# Loading, overrides, serialization
# --------------------------------------------------------------------------------------------------


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for JSON/YAML."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build ``cls`` from nested plain data; unknown keys and wrong types raise ``ConfigError``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in '{path}'" if path else ""
        raise ConfigError(
            f"unknown config key{where}: {', '.join(unknown)} (known: {', '.join(sorted(names))})"
        )
    kwargs = {name: _coerce(hints[name], value, _join(path, name)) for name, value in data.items()}
    return cls(**kwargs)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``."""
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-2" (no dot) as a string; accept any numeric spelling.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars/lists) to nested plain data."""
    result = _plain(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{key}': cannot parse value {raw!r}: {err}") from None
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{key}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return result


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file (optional) plus command-line overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data)
