"""Marching cubes in vectorized PyTorch: the iso-surface of a dense grid without leaving the device.

One vertex per grid edge whose end samples lie on opposite sides of the level (``value > level`` is
inside), placed by linear interpolation, so the vertex count equals the number of crossing edges — what
scikit-image's Lewiner implementation produces on the same grid, up to the rare cell-centre vertices it
adds in ambiguous cases. Faces wind counter-clockwise seen from the low-value side: with density growing
towards the inside of an object, normals point outward (as :func:`grid_surface` asks scikit-image
for with ``gradient_direction="ascent"``).

The triangle table is generated here, not typed in. For each cube configuration we walk every face of
the cube counter-clockwise (seen from outside) and join the face's crossing edges into directed segments
(from the edge where the walk enters the inside region to the edge where it leaves it); the segments of
the six faces close into loops, and each loop is fanned into triangles. A face with four crossings is
ambiguous; it is resolved by the asymptotic decider (do the inside corners connect through the bilinear
saddle?), which depends only on the face's own four samples, so the two cells sharing a face always agree
and the surface is watertight. The table is therefore indexed by ``case * 64 + face_bits`` (8 corner bits,
one decider bit per face). Loops are triangulated without edges lying in an ambiguous face (which the
neighbouring cell could use too); the few loops that cannot be (116 of 656 configurations, all with
ambiguous faces, so almost never on smooth fields) are fanned around an extra vertex at their centre.
"""

from __future__ import annotations

import functools
import typing

import numpy as np
import torch
from torch import Tensor

from att3d.config import MarchingCubesMethod

# Corner c of a cell sits at offset (c & 1, c >> 1 & 1, c >> 2 & 1) from the cell's lowest grid sample.
_CORNERS = tuple((c & 1, (c >> 1) & 1, (c >> 2) & 1) for c in range(8))


def _edges() -> tuple[tuple[int, int, int, tuple[int, int, int]], ...]:
    """The 12 cell edges as (corner_a, corner_b, axis, offset of corner_a); edge ``axis * 4 + k``."""
    edges = []
    for axis in range(3):
        u, v = (axis + 1) % 3, (axis + 2) % 3
        for k in range(4):
            start = [0, 0, 0]
            start[u], start[v] = k & 1, k >> 1
            end = list(start)
            end[axis] = 1
            edges.append((_CORNERS.index(tuple(start)), _CORNERS.index(tuple(end)), axis, tuple(start)))
    return tuple(edges)


_EDGES = _edges()
_EDGE_OF = {frozenset(e[:2]): i for i, e in enumerate(_EDGES)}


def _faces() -> tuple[tuple[int, int, int, int], ...]:
    """The 6 cell faces as four corners in counter-clockwise order seen from outside the cell.

    Face ``2 * axis + side`` lies at coordinate ``side`` along ``axis``; with ``(u, v)`` the next two axes
    in cyclic order, ``e_u × e_v = e_axis``, so the (u, v) square is walked forwards on the +axis face and
    backwards on the -axis face.
    """
    faces = []
    for axis in range(3):
        u, v = (axis + 1) % 3, (axis + 2) % 3
        for side in (0, 1):
            square = [(0, 0), (1, 0), (1, 1), (0, 1)] if side else [(0, 0), (0, 1), (1, 1), (1, 0)]
            corners = []
            for a, b in square:
                offset = [0, 0, 0]
                offset[axis], offset[u], offset[v] = side, a, b
                corners.append(_CORNERS.index(tuple(offset)))
            faces.append(tuple(corners))
    return tuple(faces)


_FACES = _faces()
MAX_TRIANGLES = 12
"""Upper bound on triangles per cell in the table (the table generator checks it)."""
CENTRE = 12
"""Triangle-table index of a cell's first centre vertex (``CENTRE + 1``: its second)."""
MAX_CENTRES = 2
"""Upper bound on centre vertices per cell (the table generator checks it)."""


def _cell_triangles(case: int, face_bits: int) -> tuple[list[tuple[int, int, int]], list[list[int]]]:
    """Triangles of one cell configuration, and the loops that needed a centre vertex.

    ``case`` bit ``c`` says corner ``c`` is inside; ``face_bits`` bit ``f`` says the inside corners of
    face ``f`` connect through it (read only when that face is ambiguous). Triangle corners are edge
    indices 0-11, or ``CENTRE + m`` for the centre vertex of the ``m``-th returned loop.
    """
    inside = [bool(case >> c & 1) for c in range(8)]
    following: dict[int, int] = {}
    # Pairs of crossings on one ambiguous face that its segments do not join: a triangle edge between
    # them would lie in the face, where the neighbouring cell may use it too (a non-manifold edge).
    forbidden: set[frozenset[int]] = set()
    for f, corners in enumerate(_FACES):
        # Crossings in walk order: (edge, entering the inside region?).
        crossings = []
        for i in range(4):
            a, b = corners[i], corners[(i + 1) % 4]
            if inside[a] != inside[b]:
                crossings.append((_EDGE_OF[frozenset((a, b))], inside[b]))
        if not crossings:
            continue
        n = len(crossings)
        connect = n == 4 and bool(face_bits >> f & 1)
        for i, (edge, entering) in enumerate(crossings):
            if not entering:
                continue
            # Separate inside corners: leave at the next crossing (the segment cuts off one inside
            # corner). Connected: leave at the previous one (it cuts off an outside corner instead).
            exit_edge, exit_entering = crossings[(i - 1) % n] if connect else crossings[(i + 1) % n]
            assert not exit_entering
            following[edge] = exit_edge
        if n == 4:
            edges = [edge for edge, _ in crossings]
            joined = {frozenset((edge, following[edge])) for edge, entering in crossings if entering}
            forbidden |= {frozenset((a, b)) for a in edges for b in edges if a != b} - joined
    triangles: list[tuple[int, int, int]] = []
    centred: list[list[int]] = []
    remaining = set(following)
    while remaining:
        start = min(remaining)
        loop = [start]
        remaining.discard(start)
        edge = following[start]
        while edge != start:
            loop.append(edge)
            remaining.discard(edge)
            edge = following[edge]
        found = _triangulate(loop, forbidden)
        if found is None:
            # Every triangulation would put an edge in an ambiguous face (a loop winding through two
            # connected faces): fan around a vertex at the loop's centre instead, as Lewiner et al. do.
            centre = CENTRE + len(centred)
            centred.append(loop)
            found = [(centre, loop[i], loop[(i + 1) % len(loop)]) for i in range(len(loop))]
        triangles += found
    return triangles, centred


def _triangulate(loop: list[int], forbidden: set[frozenset[int]]) -> list[tuple[int, int, int]] | None:
    """Triangles of the polygon ``loop`` (kept in its winding) whose diagonals avoid ``forbidden`` pairs.

    Interval dynamic programming over sub-polygons ``loop[i..j]``; the closest to a fan from ``loop[0]``
    is tried first. ``None`` when every triangulation needs a forbidden diagonal.
    """

    @functools.cache
    def solve(i: int, j: int) -> tuple[tuple[int, int, int], ...] | None:
        if j - i < 2:
            return ()
        for k in range(i + 1, j):
            if any(
                b - a > 1
                and not (a == 0 and b == len(loop) - 1)
                and frozenset((loop[a], loop[b])) in forbidden
                for a, b in ((i, k), (k, j))
            ):
                continue
            left, right = solve(i, k), solve(k, j)
            if left is not None and right is not None:
                return (*left, (loop[i], loop[k], loop[j]), *right)
        return None

    found = solve(0, len(loop) - 1)
    return None if found is None else list(found)


@functools.cache
def _tables_numpy() -> tuple[np.ndarray, np.ndarray]:
    """The triangle table and the centre-vertex table, indexed by ``case * 64 + face_bits``.

    Triangles: ``[256 * 64, MAX_TRIANGLES, 3]`` int8 vertex indices (see :func:`_cell_triangles`), -1 past
    the last triangle. Centres: ``[256 * 64, MAX_CENTRES, 12]`` bool, the edges whose vertices each centre
    vertex averages. Rows with decider bits on faces that are not ambiguous are never looked up.
    """
    triangles_table = np.full((256 * 64, MAX_TRIANGLES, 3), -1, dtype=np.int8)
    centres_table = np.zeros((256 * 64, MAX_CENTRES, 12), dtype=bool)
    for case in range(256):
        inside = [case >> c & 1 for c in range(8)]
        ambiguous = [
            f for f, (a, b, c, d) in enumerate(_FACES) if inside[a] == inside[c] != inside[b] == inside[d]
        ]
        # Decider bits are only ever set on ambiguous faces (see marching_cubes).
        for choice in range(1 << len(ambiguous)):
            bits = sum(1 << f for i, f in enumerate(ambiguous) if choice >> i & 1)
            triangles, centred = _cell_triangles(case, bits)
            if len(triangles) > MAX_TRIANGLES or len(centred) > MAX_CENTRES:
                raise AssertionError(f"case {case}: {len(triangles)} triangles, {len(centred)} centres")
            row = case * 64 + bits
            if triangles:
                triangles_table[row, : len(triangles)] = np.asarray(triangles, dtype=np.int8)
            for m, loop in enumerate(centred):
                centres_table[row, m, loop] = True
    return triangles_table, centres_table


@functools.cache
def _device_tables(device: torch.device) -> tuple[Tensor, ...]:
    """Triangle and centre tables, edge axes, edge start offsets and face corners on ``device``."""
    triangles, centres = _tables_numpy()
    return (
        torch.from_numpy(triangles.astype(np.int64)).to(device),
        torch.from_numpy(centres).to(device),
        torch.tensor([e[2] for e in _EDGES], device=device),
        torch.tensor([e[3] for e in _EDGES], device=device),
        torch.tensor(_FACES, device=device),
    )


def triangle_table() -> tuple[np.ndarray, np.ndarray]:
    """Copies of the generated triangle and centre tables (see :func:`_tables_numpy`)."""
    triangles, centres = _tables_numpy()
    return triangles.copy(), centres.copy()


def marching_cubes(volume: Tensor, level: float) -> tuple[Tensor, Tensor]:
    """Iso-surface ``volume == level`` of a ``[X, Y, Z]`` grid, on the volume's device.

    Returns vertices ``[V, 3]`` (float32, in grid-index units: sample ``(i, j, k)`` is at ``(i, j, k)``)
    and faces ``[F, 3]`` (int64), wound counter-clockwise seen from the side of values below ``level``.
    Samples with ``value > level`` are inside. A surface cut by the grid's sides stays open there: pad the
    volume with an outside value to close it. Non-finite samples are rejected.
    """
    if volume.dim() != 3 or min(volume.shape) < 2:
        raise ValueError(
            f"volume must be a 3D grid with >= 2 samples per axis, got shape {tuple(volume.shape)}"
        )
    if not volume.is_floating_point():
        raise ValueError(f"volume must be a floating-point tensor, got {volume.dtype}")
    # Interpolation weights need more precision than a half-precision grid holds.
    values = volume.float().contiguous()
    if not bool(torch.isfinite(values).all()):
        raise ValueError("volume contains NaN or infinite values")
    level = float(level)
    device = values.device
    nx, ny, nz = values.shape
    strides = (ny * nz, nz, 1)
    total = nx * ny * nz
    flat_values = values.view(-1)
    inside = values > level

    # 1. One vertex per crossing edge. An edge is keyed by axis * total + flat index of its lower sample;
    #    keys come out sorted (axis-major, then row-major), so searchsorted finds a vertex's id.
    keys, vertices, crossings = [], [], []
    for axis in range(3):
        n = values.shape[axis] - 1
        crossing = inside.narrow(axis, 0, n) != inside.narrow(axis, 1, n)
        crossings.append(crossing)
        coords = crossing.nonzero()  # [K, 3], row-major order
        flat = coords[:, 0] * strides[0] + coords[:, 1] * strides[1] + coords[:, 2]
        v0 = flat_values[flat]
        v1 = flat_values[flat + strides[axis]]
        t = (level - v0) / (v1 - v0)
        position = coords.to(torch.float32)
        position[:, axis] += t
        keys.append(flat + axis * total)
        vertices.append(position)
    edge_keys = torch.cat(keys)
    vertices = torch.cat(vertices)
    if len(vertices) == 0:
        return vertices, torch.zeros(0, 3, dtype=torch.int64, device=device)

    # 2. Active cells: corners on both sides, i.e. some crossing among 7 edges that span the 8 corners
    #    (the 4 x-edges, the two y-edges at x = 0, the z-edge at x = y = 0). Cheaper than building the
    #    configuration of every cell of the grid.
    x_cross, y_cross, z_cross = crossings
    active = x_cross[:, :-1, :-1] | x_cross[:, 1:, :-1] | x_cross[:, :-1, 1:] | x_cross[:, 1:, 1:]
    active |= y_cross[:-1, :, :-1] | y_cross[:-1, :, 1:] | z_cross[:-1, :-1, :]
    cells = active.nonzero()  # [C, 3]
    base = cells[:, 0] * strides[0] + cells[:, 1] * strides[1] + cells[:, 2]
    corner_offsets = torch.tensor(
        [dx * strides[0] + dy * strides[1] + dz for dx, dy, dz in _CORNERS], device=device
    )
    shifted = flat_values[base[:, None] + corner_offsets] - level  # [C, 8]
    case = ((shifted > 0).long() << torch.arange(8, device=device)).sum(dim=1)

    # 3. Asymptotic decider on each face with four crossings (only the faces' own samples matter).
    table, centre_table, edge_axes, edge_starts, face_corners = _device_tables(device)
    g = shifted[:, face_corners]  # [C, 6, 4], counter-clockwise per face
    side = g > 0
    ambiguous = (
        (side[..., 0] == side[..., 2]) & (side[..., 1] == side[..., 3]) & (side[..., 0] != side[..., 1])
    )
    diagonal_02 = g[..., 0] * g[..., 2]
    diagonal_13 = g[..., 1] * g[..., 3]
    # The bilinear saddle is inside iff the product of the inside pair exceeds that of the outside pair.
    connect = torch.where(side[..., 0], diagonal_02 > diagonal_13, diagonal_13 > diagonal_02)
    face_bits = ((ambiguous & connect).long() << torch.arange(6, device=device)).sum(dim=1)

    # 4. Triangles of every active cell, their corners mapped to global vertex ids.
    row = case * 64 + face_bits
    triangles = table[row]  # [C, T, 3] local ids (0-11 edges, CENTRE + m centres), -1 padded
    cell_index, slot = (triangles[..., 0] >= 0).nonzero(as_tuple=True)
    local = triangles[cell_index, slot]  # [F, 3]
    on_edge = local < CENTRE
    edge = local.clamp(max=CENTRE - 1)
    start = edge_starts[edge]  # [F, 3, 3]
    flat = base[cell_index, None] + start[..., 0] * strides[0] + start[..., 1] * strides[1] + start[..., 2]
    faces = torch.searchsorted(edge_keys, flat + edge_axes[edge] * total)

    # 5. Rare loops that could not be triangulated manifoldly get a vertex at the mean of their vertices.
    members = centre_table[row]  # [C, MAX_CENTRES, 12]
    centre_cell, centre_slot = members.any(dim=-1).nonzero(as_tuple=True)
    if len(centre_cell) > 0:
        cell_edges = base[centre_cell, None] + (edge_starts * torch.tensor(strides, device=device)).sum(-1)
        ids = torch.searchsorted(edge_keys, cell_edges + edge_axes * total)  # [M, 12]
        weights = members[centre_cell, centre_slot].float()  # [M, 12]
        centres = (weights[..., None] * vertices[ids.clamp(max=len(vertices) - 1)]).sum(1)
        centre_ids = torch.full((len(cells), MAX_CENTRES), -1, dtype=torch.int64, device=device)
        centre_ids[centre_cell, centre_slot] = len(vertices) + torch.arange(len(centre_cell), device=device)
        vertices = torch.cat([vertices, centres / weights.sum(1, keepdim=True)])
        centre_of_face = centre_ids[cell_index[:, None], (local - CENTRE).clamp(min=0)]
        faces = torch.where(on_edge, faces, centre_of_face)
    return vertices, faces


# --------------------------------------------------------------------------------------------------
# Choosing an implementation (MeshConfig.marching_cubes)
# --------------------------------------------------------------------------------------------------

METHODS = typing.get_args(MarchingCubesMethod)
"""Values of ``MeshConfig.marching_cubes``."""


def resolve_method(method: str, device: torch.device | str) -> str:
    """``skimage`` or ``torch`` for ``method`` on ``device``: ``auto`` is torch on CUDA, skimage elsewhere.

    On CUDA the torch version keeps the grid on the GPU; on the CPU scikit-image is the reference.
    """
    if method not in METHODS:
        raise ValueError(f"mesh.marching_cubes must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "auto":
        return "torch" if torch.device(device).type == "cuda" else "skimage"
    return method


def grid_surface(
    volume: np.ndarray | Tensor, level: float, method: str = "auto", device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of a grid as host arrays: vertices ``[V, 3]`` (float64, index units), faces ``[F, 3]``.

    Faces point towards lower values with either implementation (scikit-image with
    ``gradient_direction="ascent"``, which also drops its degenerate triangles).
    """
    if resolve_method(method, device) == "torch":
        vertices, faces = marching_cubes(torch.as_tensor(volume, device=device), level)
        return vertices.cpu().numpy().astype(np.float64), faces.cpu().numpy()
    from skimage.measure import marching_cubes as skimage_marching_cubes

    array = volume.detach().cpu().numpy() if isinstance(volume, Tensor) else volume
    vertices, faces, _, _ = skimage_marching_cubes(
        array, level=level, gradient_direction="ascent", allow_degenerate=False
    )
    return vertices.astype(np.float64), faces.astype(np.int64)
