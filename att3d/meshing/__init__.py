"""Fields to meshes: plan the grids, query the field, march the cubes, colour and export the surface.

``mesher.mesh_embeddings`` is the entry point (it picks the dense or the coarse-to-fine path from the
``MeshConfig``); ``export`` turns meshes into GLB/PLY/OBJ bytes and files. See docs/ARCHITECTURE.md.
"""
