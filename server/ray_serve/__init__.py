"""Serving on Ray Serve (``att3d serve --backend ray``, ``serve run configs/serve_ray.yaml``).

The picture::

    HTTP proxy (every node) -> Ingress (1 replica: the FastAPI app of server.app, the job manager)
                                  | DeploymentHandle: generate / describe / prompts
                                  v
                              Generation (N replicas, num_gpus each: an ordinary server.engine.Engine)

- ``options``: what a deployment is built from (:class:`RayServeOptions`, the builder's ``args``) and how a
  replica turns model references into loaders; no Ray import.
- ``remote_engine``: :class:`RemoteEngine`, the engine the ingress's routes call, answered by the replicas
  (retries when a replica dies, back-pressure as 503 + ``Retry-After``); Ray imported inside functions.
- ``replica_header``: the ``X-Replica`` response header (ASGI middleware); no Ray import.
- ``deployments``: the two Serve deployments (imports Ray).
- ``app``: ``build_app(args)``, the application builder that ``configs/serve_ray.yaml`` names, and ``bind``.
- ``run``: what ``att3d serve --backend ray`` runs (``ray.init``, ``serve.run``, block, shut down).

Why each replica holds an :class:`~server.engine.Engine` rather than ``@serve.batch``: the engine batches by
model and resolution, admits by estimated completion time (429/503 with a computed ``Retry-After``), drops
work that can no longer meet its deadline, measures its own cost per resolution, joins identical requests
and keeps the result cache and prompt familiarity. ``@serve.batch`` would only group calls by arrival time;
rebuilding the rest on top of it would duplicate that machinery, and a replica would answer differently from
``att3d serve``. Serve still does what it is good at: placing replicas (``num_gpus``), routing to the least
loaded one, restarting dead ones, autoscaling, and bounding its own queues (``max_ongoing_requests``,
``max_queued_requests``).

Only ``deployments`` (and ``app``/``run`` inside their functions) import Ray, so ``server.app``, ``att3d
serve`` and the plain test run never need the ``ray`` extra.
"""
