"""Inference: a loaded generator turns prompts (or blends of prompts) into meshes.

``Generator`` is what the CLI and the service hold: the amortized field, its config, the text encoder it
was trained with, and the model's identity (``model_hash``: of its weights and config). Generation
is prompt -> the prompt as the model reads it (``read``: colour names it never saw become the nearest it
saw) -> embedding -> ``materialize`` (one plain grid per prompt) -> coarse-to-fine query of the grids
(``att3d.meshing.mesher`` picks the path; ``MeshConfig.grid_query=dense`` queries every sample) -> marching
cubes. Each generation can report how familiar its prompt is to the model (``att3d.familiarity``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import trimesh
from torch import Tensor

from att3d.checkpoint import CheckpointError, load_checkpoint, model_identity, save_checkpoint
from att3d.color_terms import ColorTermReader
from att3d.config import ConfigError, MeshConfig, ModelConfig, from_dict, to_dict
from att3d.familiarity import (
    PROMPT_EMBEDDINGS_FILE,
    Familiarity,
    FamiliarityIndex,
    copy_prompt_embeddings,
    threshold_from_metadata,
    training_embeddings,
)
from att3d.field import AmortizedField, PromptField
from att3d.limits import validate_prompt
from att3d.meshing.errors import NoSurfaceError
from att3d.meshing.mesher import mesh_embeddings
from att3d.noun_glosses import NounGlosses
from att3d.text import TextEncoder, get_text_encoder
from att3d.unknown_words import UnknownWordReader

ASSETS = Path(__file__).parent / "assets"
DEFAULT_MODEL_DIR = ASSETS / "default-model"
"""The shipped generator; until one is trained, a seeded initialization (a density blob) stands in."""


@dataclass
class Generator:
    """A loaded amortized generator, ready to produce meshes."""

    field: AmortizedField
    config: ModelConfig
    encoder: TextEncoder
    name: str
    model_hash: str
    """Identifies the model in caches, ETags and response headers: ``checkpoint.model_identity`` of its
    weights and full config (defaults of fields newer than the manifest included), so the same weights
    meshed another way (``config.mesh``) or read another way (``config.text``) never share a cached
    result."""
    prompts: list[str] = dataclasses.field(default_factory=list)
    """The prompt set the model was trained on."""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Training metadata from the checkpoint manifest (step, run name, ...)."""
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    folder: Path | None = None
    """The checkpoint folder it was loaded from (``None`` for a seeded model)."""
    _familiarity: FamiliarityIndex | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )
    _readers: tuple[list[str], ColorTermReader, UnknownWordReader] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    # ---- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | Path, name: str | None = None, device: str = "cpu") -> Generator:
        """Load and verify a checkpoint directory (see ``att3d.checkpoint``)."""
        ckpt = load_checkpoint(path)
        try:
            config = from_dict(ModelConfig, ckpt.config)
        except ConfigError as err:
            raise CheckpointError(f"{path}: manifest 'config' is invalid: {err}") from None
        check_weights_fit(config, ckpt.tensors, path)  # before anything is allocated
        try:
            encoder = get_text_encoder(config.text.encoder)
        except ValueError as err:
            raise CheckpointError(f"{path}: manifest 'config': {err}") from None
        if encoder.id != ckpt.text_encoder:
            raise CheckpointError(
                f"{path}: trained with text encoder {ckpt.text_encoder!r} but config.text.encoder "
                f"{config.text.encoder!r} gives {encoder.id!r}"
            )
        try:
            threshold_from_metadata(ckpt.metadata)
        except ValueError as err:
            raise CheckpointError(f"{path}: manifest {err}") from None
        model = AmortizedField(config.field)
        model.load_state_dict(ckpt.tensors)  # names, shapes and dtypes were checked above
        model.eval().to(device)
        return cls(
            field=model,
            config=config,
            encoder=encoder,
            name=name or str(ckpt.metadata.get("name") or Path(path).name),
            model_hash=model_identity(ckpt.weights_sha256, to_dict(config)),
            prompts=list(ckpt.prompts),
            metadata=dict(ckpt.metadata),
            device=torch.device(device),
            folder=Path(path),
        )

    @classmethod
    def default(cls, device: str = "cpu") -> Generator:
        """The bundled model, or a deterministic seeded initialization when none is shipped yet."""
        if (DEFAULT_MODEL_DIR / "manifest.json").is_file():
            return cls.from_checkpoint(DEFAULT_MODEL_DIR, name="default", device=device)
        return cls.seeded(ModelConfig(), seed=0, device=device)

    @classmethod
    def seeded(cls, config: ModelConfig, seed: int = 0, device: str = "cpu") -> Generator:
        """An untrained generator from a fixed seed: its density blob meshes to a sphere-like shape."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AmortizedField(config.field).eval().to(device)
        digest = hashlib.sha256()
        for key, value in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return cls(
            field=model,
            config=config,
            encoder=get_text_encoder(config.text.encoder),
            name="default",
            model_hash=model_identity(digest.hexdigest(), to_dict(config)),
            metadata={"step": 0, "note": f"untrained seeded initialization (seed {seed})"},
            device=torch.device(device),
        )

    def save(self, path: str | Path) -> Path:
        """Write this generator as a verified checkpoint directory (atomic)."""
        return save_checkpoint(
            path,
            {k: v.detach().cpu().contiguous() for k, v in self.field.state_dict().items()},
            to_dict(self.config),
            self.encoder.id,
            self.prompts,
            {**self.metadata, "name": self.name},
        )

    def save_with_mesh(self, path: str | Path, **mesh_fields: object) -> Path:
        """Write a copy of this generator with some ``config.mesh`` fields changed (what the calibration
        scripts write); the prompt embeddings it was loaded with are copied, not recomputed."""
        mesh = dataclasses.replace(self.config.mesh, **mesh_fields)
        self.config = dataclasses.replace(self.config, mesh=mesh)
        out = self.save(path)
        if self.folder is not None:
            copy_prompt_embeddings(self.folder, out)
        return out

    # ---- conditioning ----------------------------------------------------------------------------

    def read(self, prompt: str) -> str:
        """``prompt`` as the model reads it. With ``config.text.unknown_words = nearest_known`` (the default)
        a colour name the training prompts never used becomes the nearest one they did
        (``att3d.color_terms``: "a canary orb" -> "a lemon orb"), then another unknown word the training
        word that makes the prompt most familiar, by the word and its dictionary definitions
        (``att3d.unknown_words``, ``att3d.noun_glosses``: "large grey dice" -> "large grey cube");
        otherwise, and for a model without training prompts, the prompt as written."""
        if self.config.text.unknown_words == "as_written" or not self.prompts:
            return prompt
        if self._readers is None or self._readers[0] != self.prompts:
            colors = ColorTermReader(self.prompts)
            index = self.familiarity_index()
            assert index is not None  # the model has training prompts
            color_words = frozenset(w for name in colors.named for w in name.split())
            self._readers = (
                list(self.prompts),
                colors,
                UnknownWordReader(self.prompts, self.encoder, index, color_words, NounGlosses.bundled()),
            )
        _, colors, words = self._readers
        return words.read(colors.read(prompt))

    def embed(self, prompts: list[str], as_written: bool = False) -> Tensor:
        """Validated prompts -> embeddings ``[N, D]`` on the model's device, of each prompt as the model
        reads it (:meth:`read`) or, with ``as_written``, as given."""
        clean = [validate_prompt(p, self.config.text.max_prompt_chars) for p in prompts]
        return self.encoder.encode(clean if as_written else [self.read(p) for p in clean]).to(self.device)

    def blend(self, prompts: list[str], weights: list[float]) -> Tensor:
        """The embedding ``sum_i w_i c_i`` of a convex combination of prompts ``[D]``."""
        return self._mix(prompts, weights)

    def _mix(self, prompts: list[str], weights: list[float], as_written: bool = False) -> Tensor:
        # blend, shared with blend_familiarity: a wrapped blend (tests count its calls) sees no extra call.
        if len(prompts) < 1:
            raise ValueError("prompts: at least one prompt is needed")
        if len(weights) != len(prompts):
            raise ValueError(f"weights: got {len(weights)} weights for {len(prompts)} prompts")
        w = torch.tensor(weights, dtype=torch.float32)
        if not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights: every weight must be a finite number >= 0")
        if abs(float(w.sum()) - 1.0) > 1e-4:
            raise ValueError(f"weights: must sum to 1, got {float(w.sum()):.6g}")
        return (w.to(self.device)[:, None] * self.embed(prompts, as_written)).sum(dim=0)

    # ---- geometry --------------------------------------------------------------------------------

    def prompt_field(self, embedding: Tensor) -> PromptField:
        """The single-prompt field for an embedding ``[D]``."""
        return self.field.materialize(embedding.to(self.device))

    def mesh(self, embedding: Tensor, mesh_config: MeshConfig | None = None) -> trimesh.Trimesh:
        """Mesh of the field conditioned on ``embedding [D]`` (``mesh_config.grid_query`` picks the path)."""
        config = mesh_config or self.config.mesh
        # One prompt alone through the mesher: the result depends on nothing but this request.
        embeddings = embedding.to(self.device)[None]
        mesh = mesh_embeddings(self.field, embeddings, config, self.device, return_exceptions=True)[0]
        if isinstance(mesh, NoSurfaceError):
            raise mesh
        return mesh

    def generate(self, prompt: str, mesh_config: MeshConfig | None = None) -> trimesh.Trimesh:
        """Prompt -> mesh."""
        return self.mesh(self.embed([prompt])[0], mesh_config)

    def generate_with_familiarity(self, prompt: str, mesh_config: MeshConfig | None = None) -> Generation:
        """Prompt -> mesh, with the prompt's familiarity (:meth:`familiarity`)."""
        return Generation(self.mesh(self.embed([prompt])[0], mesh_config), self.familiarity(prompt))

    # ---- familiarity (att3d.familiarity) ---------------------------------------------------------

    @property
    def familiarity_threshold(self) -> float:
        """The manifest's ``familiarity_threshold``, else ``att3d.familiarity.DEFAULT_THRESHOLD``."""
        return threshold_from_metadata(self.metadata)

    def familiarity_index(self) -> FamiliarityIndex | None:
        """The training prompts' embeddings (built on first use, again if ``prompts`` changed); ``None``
        for a model without training prompts (a seeded initialization), which has nothing to compare with."""
        index = self._familiarity
        if index is None or index.prompts != self.prompts:
            if not self.prompts:
                return None
            shipped = self.folder / PROMPT_EMBEDDINGS_FILE if self.folder is not None else None
            embeddings = training_embeddings(self.encoder, self.prompts, shipped)
            index = FamiliarityIndex(self.prompts, embeddings, device=self.device)
            self._familiarity = index
        return index

    def embedding_familiarity(self, embedding: Tensor) -> Familiarity | None:
        """Familiarity of an embedding ``[D]`` (a prompt's, or a blend's from :meth:`blend`)."""
        index = self.familiarity_index()
        return None if index is None else index.familiarity(embedding, self.familiarity_threshold)

    def familiarity(self, prompt: str) -> Familiarity | None:
        """Familiarity of ``prompt`` as written, with ``read_as`` when the model reads it otherwise."""
        return self.blend_familiarity([prompt], [1.0])

    def blend_familiarity(self, prompts: list[str], weights: list[float]) -> Familiarity | None:
        """Familiarity of the blended embedding ``sum_i w_i c_i`` of the prompts as written (a colour name
        read as another must not make an unknown object familiar); one prompt also reports ``read_as``."""
        familiarity = self.embedding_familiarity(self._mix(prompts, weights, as_written=True))
        if familiarity is None or len(prompts) != 1:
            return familiarity
        written = validate_prompt(prompts[0], self.config.text.max_prompt_chars)
        read = self.read(written)
        return familiarity if read == written else dataclasses.replace(familiarity, read_as=read)

    def info(self) -> dict[str, Any]:
        """A JSON-able summary: name, hash, prompt count, training step, config."""
        return {
            "name": self.name,
            "model_hash": self.model_hash,
            "text_encoder": self.encoder.id,
            "num_prompts": len(self.prompts),
            # metadata is free-form JSON (not covered by a checksum): a step that is no integer counts as 0
            "training_steps": step if isinstance(step := self.metadata.get("step"), int) else 0,
            "parameters": sum(p.numel() for p in self.field.parameters()),
            "familiarity_threshold": self.familiarity_threshold,
            "config": to_dict(self.config),
        }


@dataclass(frozen=True)
class Generation:
    """What :meth:`Generator.generate_with_familiarity` returns."""

    mesh: trimesh.Trimesh
    familiarity: Familiarity | None
    """``None`` for a model without training prompts."""


def check_weights_fit(config: ModelConfig, tensors: dict[str, Tensor], path: str | Path) -> None:
    """The weights hold exactly the tensors (names, shapes, dtypes) the config's field has.

    The field is built on the meta device (no memory), so a config that does not describe these weights
    (an edited ``hidden_dim``, a huge ``num_bases``) is reported before any real model is allocated.
    """
    try:
        with torch.device("meta"):
            expected = AmortizedField(config.field).state_dict()
    except Exception as err:  # e.g. levels=0 passes the bounds but builds no field
        raise CheckpointError(
            f"{path}: manifest 'config' describes no valid field ({type(err).__name__}: {err})"
        ) from None
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{path}: weights do not match the config (missing: {missing[:3]}, unexpected: {extra[:3]})"
        )
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise CheckpointError(
                f"{path}: weights do not match the config: '{name}' is {list(got.shape)} {got.dtype}, "
                f"the config gives {list(want.shape)} {want.dtype}"
            )


def interpolation_weights(num_prompts: int, frames: int) -> list[list[float]]:
    """Weights of a walk through ``num_prompts`` prompts in ``frames`` evenly spaced steps.

    The walk goes from the first prompt to the last through each in turn (piecewise linear), so frame 0 is
    exactly the first prompt and the last frame exactly the last one.
    """
    if num_prompts < 2:
        raise ValueError("prompts: an interpolation needs at least two prompts")
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    walks = []
    segments = num_prompts - 1
    for i in range(frames):
        position = segments * i / (frames - 1)
        left = min(int(position), segments - 1)
        alpha = position - left
        weights = [0.0] * num_prompts
        weights[left] = 1.0 - alpha
        weights[left + 1] = alpha
        walks.append(weights)
    return walks


def mesh_summary(mesh: trimesh.Trimesh) -> dict[str, Any]:
    """Vertex/face counts and bounds, for logs and ``att3d generate`` output."""
    return {"vertices": len(mesh.vertices), "faces": len(mesh.faces), "bounds": mesh.bounds.tolist()}
