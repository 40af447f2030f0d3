"""Typed configuration: every tunable of the package, each field documented and checked where it is declared.

Configs are dataclasses validated by pydantic (:mod:`att3d.config_validation`): a choice is a ``Literal``, a
range a ``Field(ge=..., le=...)``, a rule between fields a model validator, so building a config, from YAML
(``load_config``), ``key.sub=value`` overrides, plain data (``from_dict``) or a constructor call, checks
every value once and raises :class:`ConfigError` naming the dotted key. ``to_dict`` turns a config back
into plain data for checkpoint manifests; ``TypeAdapter(TrainConfig).json_schema()`` describes it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StrictBool, StrictInt, StrictStr, model_validator

from att3d.config_loading import apply_overrides, from_dict, load_config, to_dict  # noqa: F401 (re-exported)
from att3d.config_validation import (  # ConfigError is re-exported
    ConfigError,  # noqa: F401
    Fraction,
    KeyProblem,
    NonNegativeInt,
    NonNegativeNumber,
    Number,
    PositiveInt,
    PositiveNumber,
    config_dataclass,
)
from att3d.limits import DEFAULT_MAX_PROMPT_CHARS

# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


@config_dataclass("encoding")
class EncodingConfig:
    """Multiresolution hash encoding (Instant-NGP)."""

    levels: Annotated[StrictInt, Field(ge=1, le=32)] = 8
    """Number of resolution levels."""
    features_per_level: Annotated[StrictInt, Field(ge=1, le=8)] = 2
    """Features stored per table entry and level."""
    log2_table_size: Annotated[StrictInt, Field(ge=1, le=24)] = 14
    """log2 of the entries per level; coarse levels whose dense grid fits use direct indexing."""
    base_resolution: Annotated[StrictInt, Field(ge=1, le=4096)] = 16
    """Grid resolution of the coarsest level."""
    growth_factor: Number = 1.447
    """Resolution ratio between consecutive levels."""
    init_scale: Number = 1e-4
    """Table entries start uniform in ``[-init_scale, init_scale]``."""
    backend: Literal["torch", "tcnn", "auto"] = "auto"
    """``torch`` (pure PyTorch, everywhere), ``tcnn`` (tiny-cuda-nn, CUDA only) or ``auto``."""


@config_dataclass("field")
class FieldConfig:
    """The amortized text-conditioned field: mapping network, basis grids and MLP head."""

    encoding: EncodingConfig = dataclasses.field(default_factory=EncodingConfig)
    """Hash-grid layout shared by all basis grids."""
    text_dim: Annotated[StrictInt, Field(ge=1, le=8192)] = 384
    """Dimension of the text embedding fed to the mapping network."""
    num_bases: Annotated[StrictInt, Field(ge=1, le=1024)] = 16
    """K: hidden width of the mapping network = number of basis grids mixed per prompt."""
    mixing_gain: Number = 1.0
    """Lipschitz bound of the output layer per grid entry: a unit ``v(c)`` gives entries of RMS <= this."""
    hidden_dim: Annotated[StrictInt, Field(ge=1, le=1024)] = 64
    """Width of the MLP head."""
    hidden_layers: Annotated[StrictInt, Field(ge=0, le=16)] = 2
    """Hidden layers of the MLP head."""
    density_activation: Literal["trunc_exp", "softplus"] = "trunc_exp"
    """``trunc_exp`` or ``softplus``."""
    density_bias: Number = -1.0
    """Constant added to the raw density before the activation."""
    blob_density: Number = 10.0
    """Density-blob strength: adds ``blob_density * (1 - |x| / blob_radius)`` to the raw density."""
    blob_radius: Number = 0.5
    """Radius of the density blob (world units)."""
    bound: PositiveNumber = 1.0
    """The scene lives in ``[-bound, bound]^3``."""


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@config_dataclass("cameras")
class CameraSamplingConfig:
    """Ranges training cameras are drawn from (uniform in each range)."""

    distance: tuple[Number, Number] = (2.6, 3.0)
    """Distance from the origin."""
    elevation: tuple[Number, Number] = (-10.0, 60.0)
    """Elevation above the xy-plane in degrees."""
    azimuth: tuple[Number, Number] = (-180.0, 180.0)
    """Azimuth around +z in degrees (0 looks from +x)."""
    fovy: tuple[Number, Number] = (40.0, 40.0)
    """Vertical field of view in degrees."""
    light_jitter: Number = 0.3
    """Standard deviation of the random offset added to the light direction (0: fixed light)."""
    light_lift: Number = 0.5
    """Upward (+z) offset added to the camera direction before normalizing: light from above."""


@config_dataclass("render")
class RenderConfig:
    """Volume rendering of a field."""

    image_size: Annotated[StrictInt, Field(ge=1, le=1024)] = 32
    """Rendered image side in pixels."""
    samples_per_ray: Annotated[StrictInt, Field(ge=1, le=1024)] = 48
    """Stratified samples per ray inside the scene box."""
    ambient: Number = 0.3
    """Ambient term of diffuse shading: ``albedo * (ambient + (1 - ambient) * max(n·l, 0))``."""
    background: tuple[Number, Number, Number] = (1.0, 1.0, 1.0)
    """Background colour (RGB in [0, 1])."""
    normal_eps: Number = 0.01
    """Finite-difference step for density-gradient normals (world units)."""
    normals: Literal["central", "forward"] = "central"
    """Finite differences for normals: ``central`` (6 probes per sample) or ``forward`` (3 probes, reusing
    the sample's own density: half the cost, first-order accurate)."""
    chunk_rays: StrictInt = 16384
    """Rays rendered per chunk when rendering without gradient."""


# --------------------------------------------------------------------------------------------------
# Mesh extraction
# --------------------------------------------------------------------------------------------------


TextureMode = Literal["vertex", "uv"]
MarchingCubesMethod = Literal["auto", "skimage", "torch"]
GridQuery = Literal["coarse_to_fine", "dense"]
"""The choices of ``MeshConfig`` that callers list too (``typing.get_args``: CLI options, the HTTP schema)."""


@config_dataclass("mesh")
class MeshConfig:
    """Dense field query, marching cubes and export."""

    resolution: Annotated[StrictInt, Field(ge=2, le=1024)] = 128
    """Grid resolution of the fine pass along the longest side."""
    coarse_resolution: Annotated[StrictInt, Field(ge=2, le=512)] = 48
    """Grid resolution of the coarse pass that finds the object's bounding box."""
    density_threshold: PositiveNumber = 6.93
    """Iso-level on density: ln(2)/0.1, i.e. 50 % opacity across 0.1 world units (densities are >= 0 and
    the grid is padded with 0: a non-positive level has no outside)."""
    color_depth: Annotated[NonNegativeNumber, Field(le=0.25)] = 0.03
    """How deep below the surface (world units, along the inward normal) vertex colours and textures read
    the albedo. A trained field's surface is soft: the iso-level lies in a faint outer layer that renders
    barely show, so SDS leaves its albedo lighter and speckled; rays are absorbed a few hundredths deeper,
    where the colour the renders (and the prior) saw is. 0 reads at the iso-surface itself."""
    chunk_points: PositiveInt = 262144
    """Points queried per chunk (bounds memory at any resolution)."""
    min_component_fraction: Fraction = 0.02
    """Connected components with fewer faces than this fraction of the largest are dropped."""
    texture: TextureMode = "vertex"
    """``vertex`` (vertex colours) or ``uv`` (xatlas unwrap + baked PNG texture)."""
    texture_size: Annotated[StrictInt, Field(ge=8, le=8192)] = 512
    """Side of the baked texture in pixels (``texture=uv``)."""
    decimate_faces: Annotated[StrictInt, Field(le=10_000_000)] = 10000
    """Target face count before UV unwrapping (``texture=uv``; 0 or less: no decimation)."""
    marching_cubes: MarchingCubesMethod = "auto"
    """``skimage``, ``torch`` (``att3d.meshing.marching_cubes``, stays on the query device) or ``auto``
    (torch on CUDA, skimage on the CPU)."""
    grid_query: GridQuery = "coarse_to_fine"
    """How a generator queries the coarse and fine grids: ``coarse_to_fine``
    (``att3d.meshing.coarse_to_fine``: block corners first, then only the blocks the surface passes through;
    the same surface as ``dense`` on smooth fields at a fraction of the queries) or ``dense`` (every sample,
    ``att3d.meshing.dense.extract_mesh``, the
    reference). UV textures and ``marching_cubes=skimage`` take ``dense``; ``coarse_to_fine`` meshes with
    ``torch``."""


# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------


def _encoder_name(name: str) -> str:
    # A registered name, never a path: a job request must not make the server read files.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) or ".." in name:
        raise ValueError(f"must be an encoder name (letters, digits, '.', '_', '-'; no paths), got {name!r}")
    return name


@config_dataclass("text")
class TextConfig:
    """Text encoder used to condition the field."""

    encoder: Annotated[StrictStr, AfterValidator(_encoder_name)] = "minilm"
    """Encoder id: ``minilm`` (bundled all-MiniLM-L6-v2) or a registered encoder name."""
    max_prompt_chars: StrictInt = DEFAULT_MAX_PROMPT_CHARS
    """Longer prompts are rejected."""
    unknown_words: Literal["nearest_known", "as_written"] = "nearest_known"
    """How a generator reads words its training prompts never used: ``nearest_known`` replaces a colour
    name by the trained colour name nearest in colour (``att3d.color_terms``) and another word by the
    trained word that makes the prompt most familiar (``att3d.unknown_words``); ``as_written`` leaves the
    prompt to the text encoder alone. Training always reads prompts as written."""
    cache_dir: StrictStr = ""
    """On-disk embedding cache; empty means ``$ATT3D_CACHE`` or ``~/.cache/att3d``."""


@config_dataclass("")
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


@config_dataclass("sds")
class SDSConfig:
    """Score distillation settings."""

    guidance_scale: Number = 7.5
    """Classifier-free guidance scale (``att3d.priors.base.guided``)."""
    t_min: Number = 0.02
    """Smallest timestep, as a fraction of the schedule."""
    t_max_start: Number = 0.98
    """Largest timestep at the start of training."""
    t_max_end: Number = 0.5
    """Largest timestep after annealing."""
    t_anneal_steps: StrictInt = 0
    """Steps over which ``t_max`` goes linearly from start to end (0: no annealing)."""
    weighting: Literal["1-alpha_bar", "sqrt(1-alpha_bar)", "uniform"] = "1-alpha_bar"
    """``w(t)``: ``1-alpha_bar`` (DreamFusion), ``sqrt(1-alpha_bar)`` or ``uniform``."""
    grad_clip: Number = 0.0
    """Clip the per-element SDS gradient to ``[-grad_clip, grad_clip]`` (0: off)."""


# --------------------------------------------------------------------------------------------------
# Training (att3d.training, att3d.prompts)
# --------------------------------------------------------------------------------------------------


ShapesSplit = Literal["train", "heldout", "all"]
"""ShapesWorld object splits: trained on (``prompts.split``), scored (``att3d eval --split``, + wordings)."""


@config_dataclass("prompts")
class PromptSetConfig:
    """Where the training prompts (and the held-out prompts scored separately) come from."""

    source: Literal["list", "file", "template", "shapes"] = "list"
    """``list`` (``prompts``), ``file`` (``path``), ``template`` (``template`` × ``slots``) or ``shapes``."""
    prompts: list[StrictStr] = dataclasses.field(default_factory=list)
    """Inline prompts (``source=list``)."""
    path: StrictStr = ""
    """Text file with one prompt per line, ``#`` starts a comment line (``source=file``)."""
    template: StrictStr = ""
    """Template with ``{slot}`` fields, e.g. ``a {color} {shape}`` (``source=template``)."""
    slots: dict[StrictStr, list[StrictStr]] = dataclasses.field(default_factory=dict)
    """Values of every template slot; the prompts are all combinations (``source=template``)."""
    heldout: list[StrictStr] = dataclasses.field(default_factory=list)
    """Held-out prompts: removed from the template's combinations, or extra prompts for list/file."""
    split: ShapesSplit = "train"
    """ShapesWorld split trained on: ``train`` (held out: ``heldout``), ``heldout`` or ``all``."""
    all_phrasings: StrictBool = False
    """ShapesWorld: every phrasing of each object instead of the canonical ``a red cube`` only."""
    wordings: Annotated[StrictInt, Field(ge=0, le=10_000)] = 0
    """ShapesWorld: training wordings per trained object from the language's training words and templates,
    the prior conditioned on the canonical prompt (0: canonical prompts, or ``all_phrasings``)."""

    @model_validator(mode="after")
    def _wordings_need_shapes(self) -> PromptSetConfig:
        if self.wordings and (self.source != "shapes" or self.all_phrasings):
            raise KeyProblem("wordings", "needs source=shapes and all_phrasings=false")
        return self


@config_dataclass("optim")
class OptimConfig:
    """Adam on the generator; the hash grid and the networks get separate learning rates."""

    grid_lr: Number = 1e-2
    """Learning rate of the basis hash grids."""
    network_lr: Number = 1e-3
    """Learning rate of the mapping network and the MLP head."""
    betas: tuple[Number, Number] = (0.9, 0.99)
    """Adam's moment decay rates."""
    eps: Number = 1e-15
    """Adam's epsilon (tiny, as Instant-NGP: rarely-touched hash entries still move)."""
    weight_decay: Number = 0.0
    """L2 weight decay on the networks (never on the grids)."""


def _probabilities(probs: tuple[float, float, float]) -> tuple[float, float, float]:
    if min(probs) < 0 or abs(sum(probs) - 1.0) >= 1e-6:
        raise ValueError(
            f"must be 3 probabilities >= 0 (albedo, diffuse, textureless) summing to 1, got {list(probs)}"
        )
    return probs


@config_dataclass("occupancy")
class OccupancyConfig:
    """Empty-space skipping in training renders (``att3d.training.occupancy``)."""

    enabled: StrictBool = False
    """Query the field only at samples in cells where some recent prompt showed density."""
    resolution: Annotated[StrictInt, Field(ge=4, le=256)] = 32
    """Cells per side of the grid over the scene box."""
    update_every: PositiveInt = 16
    """Steps between re-evaluations of every cell (with that step's prompts)."""
    threshold: PositiveNumber = 0.2
    """Density above which a cell is occupied (0.2 over a 1/16 sample interval is 1.2 % opacity)."""
    decay: Fraction = 0.95
    """A cell's remembered density is multiplied by this at each update before the new maximum."""


@config_dataclass("")
class TrainConfig:
    """One amortized SDS training run (``att3d train``); a one-prompt set is per-prompt DreamFusion."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    """The generator being trained (stored in every checkpoint)."""
    prompts: PromptSetConfig = dataclasses.field(default_factory=PromptSetConfig)
    """The prompt set."""
    prior: StrictStr = "shapes"
    """Prior for ``att3d.priors.registry.load_prior``: ``shapes``, ``stable-diffusion[:<hub id or folder>]``,
    ``deepfloyd-if[:<hub id or folder>]`` or a saved prior's folder."""
    sds: SDSConfig = dataclasses.field(default_factory=SDSConfig)
    """Score distillation."""
    cameras: CameraSamplingConfig = dataclasses.field(default_factory=CameraSamplingConfig)
    """Ranges of the training cameras."""
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    """Optimizer."""
    steps: Annotated[PositiveInt, Field(le=10_000_000)] = 2000
    """Optimizer steps."""
    prompts_per_step: Annotated[PositiveInt, Field(le=4096)] = 4
    """P: prompts (or interpolants) per step and process."""
    views_per_prompt: Annotated[PositiveInt, Field(le=64)] = 1
    """V: cameras rendered per prompt and step."""
    albedo_steps: NonNegativeInt = 0
    """Shade with plain albedo for the first steps (no normals), then by ``shading_probs``."""
    shading_probs: Annotated[tuple[Number, Number, Number], AfterValidator(_probabilities)] = (0.0, 1.0, 0.0)
    """Probabilities of albedo, diffuse and textureless shading after ``albedo_steps`` (one mode per step)."""
    interp_prob: Fraction = 0.0
    """Probability that a training prompt is an interpolant: a random mix of several prompts' embeddings."""
    interp_prompts: Annotated[StrictInt, Field(ge=2, le=64)] = 2
    """Prompts mixed into one interpolant."""
    interp_concentration: PositiveNumber = 1.0
    """Dirichlet concentration of the mixing weights (1: uniform on the simplex; Beta(a, a) for two)."""
    sparsity_weight: NonNegativeNumber = 0.0
    """Weight of the mean rendered opacity (discourages floaters and haze)."""
    opacity_entropy_weight: NonNegativeNumber = 0.0
    """Weight of the binary entropy of rendered opacity (pushes pixels to empty or solid)."""
    progressive_levels: NonNegativeInt = 0
    """Hash-grid levels active at step 0 (0: all); finer levels are unmasked one by one."""
    level_steps: StrictInt = 100
    """Steps between unmasking two consecutive hash-grid levels (``progressive_levels > 0``)."""
    albedo_smoothness_weight: NonNegativeNumber = 0.0
    """Weight of the albedo change between a contributing sample and its normal probes (speckle), in
    shaded steps."""
    occupancy: OccupancyConfig = dataclasses.field(default_factory=OccupancyConfig)
    """Empty-space skipping (off by default)."""
    init_from: StrictStr = ""
    """Checkpoint folder whose weights start a new run (same model config; fresh optimizer and step)."""
    seed: StrictInt = 0
    """Seed of the initialization and of every random draw (rank r draws from ``seed + r``)."""
    device: StrictStr = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    workers: Annotated[PositiveInt, Field(le=1024)] = 1
    """Processes of the Ray runner (``att3d.training.ray_train``: Ray Train workers, one DDP group); under
    ``torchrun`` its ``--nproc-per-node`` decides, and ``att3d.training.loop.train`` alone runs one."""
    log_every: NonNegativeInt = 10
    """Steps between TensorBoard scalar writes (0: no TensorBoard)."""
    preview_every: NonNegativeInt = 250
    """Steps between preview PNG grids, prompts × views (0: none)."""
    preview_prompts: Annotated[PositiveInt, Field(le=64)] = 4
    """Prompts in a preview grid (the first of the training set)."""
    preview_views: Annotated[PositiveInt, Field(le=64)] = 4
    """Views per prompt in a preview grid (an orbit at 20° elevation)."""
    eval_every: NonNegativeInt = 0
    """Steps between evaluations on the held-out prompts (0: none; needs an evaluator)."""
    checkpoint_every: NonNegativeInt = 500
    """Steps between checkpoints (0: only at the end and on interruption)."""
    keep_checkpoints: PositiveInt = 3
    """Most recent checkpoints kept; older ones are deleted."""
    progress_bar: StrictBool = True
    """Show a progress bar (rank 0, interactive terminals only)."""

    @model_validator(mode="after")
    def _levels_unmask_in_time(self) -> TrainConfig:
        levels = self.model.field.encoding.levels
        if self.progressive_levels > levels:
            raise KeyProblem(
                "progressive_levels", f"must be in [0, {levels}] (0: off), got {self.progressive_levels}"
            )
        if 0 < self.progressive_levels < levels:
            if self.level_steps < 1:
                raise KeyProblem("level_steps", f"must be >= 1, got {self.level_steps}")
            # Masked levels are not trained; a model saved before they are all active would meet untrained
            # features at inference, where nothing is masked.
            all_active = (levels - self.progressive_levels) * self.level_steps
            if all_active >= self.steps:
                raise KeyProblem(
                    "progressive_levels",
                    f"all {levels} levels become active only at step {all_active}, "
                    f"not before steps={self.steps}",
                )
        return self
