"""Floaters: the CPU (scipy) and device (union-find) component searches keep the same faces."""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from att3d.meshing import components
from att3d.meshing.export import Y_UP_FROM_Z_UP, y_up


def _scene() -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts: prompt 0 a big sphere and a tiny one, prompt 1 two equal boxes; faces, owner."""
    parts = [
        (trimesh.creation.icosphere(subdivisions=3), 0),
        (trimesh.creation.icosphere(subdivisions=0), 0),
        (trimesh.creation.box(), 1),
        (trimesh.creation.box(), 1),
    ]
    faces, owner, offset = [], [], 0
    for mesh, prompt in parts:
        faces.append(mesh.faces + offset)
        owner += [prompt] * len(mesh.vertices)
        offset += len(mesh.vertices)
    return torch.as_tensor(np.concatenate(faces)), torch.as_tensor(owner)


def test_host_and_device_component_search_agree():
    faces, owner = _scene()
    labels_host = components._host_labels(faces, len(owner))
    labels_device = components.component_labels(faces, len(owner))
    # Same partition: the label pairs correspond one to one.
    pairs = set(zip(labels_host.tolist(), labels_device.tolist(), strict=True))
    assert len(pairs) == len(set(labels_host.tolist())) == len(set(labels_device.tolist())) == 4
    keep = components.keep_large_components(faces, owner, prompts=2, min_fraction=0.5)
    big, tiny = len(trimesh.creation.icosphere(subdivisions=3).faces), 20
    assert keep.tolist() == [True] * big + [False] * tiny + [True] * 24


def test_y_up_turns_vertices_and_normals_and_keeps_colours():
    mesh = trimesh.creation.box()
    mesh.visual.vertex_colors = np.arange(len(mesh.vertices) * 4).reshape(-1, 4) % 256
    turned = y_up(mesh)
    rotation = Y_UP_FROM_Z_UP[:3, :3]
    # Exactly the rotation's values (the axis swap, not a matrix product), with no negative zeros.
    np.testing.assert_array_equal(turned.vertices, mesh.vertices @ rotation.T)
    np.testing.assert_array_equal(turned.vertex_normals, mesh.vertex_normals @ rotation.T)
    assert not np.signbit(turned.vertex_normals[turned.vertex_normals == 0]).any()
    # The normals handed over match what trimesh derives from the turned faces (winding kept).
    derived = trimesh.Trimesh(turned.vertices, turned.faces, process=False).vertex_normals
    np.testing.assert_allclose(turned.vertex_normals, derived, atol=1e-12)
    np.testing.assert_array_equal(turned.visual.vertex_colors, mesh.visual.vertex_colors)
    assert turned.vertices[:, 1].max() == mesh.vertices[:, 2].max()  # +z became +y
    turned.visual.vertex_colors[:, 0] = 0  # the colours are a copy
    assert mesh.visual.vertex_colors[:, 0].any()
