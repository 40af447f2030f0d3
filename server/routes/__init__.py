"""The HTTP routes, one module per group: meshes, models, jobs and the probes."""
