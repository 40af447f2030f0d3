"""Training jobs: state in SQLite, one separate process per running job, a scheduler thread in the server.

States and transitions (every transition is one SQL ``UPDATE ... WHERE state IN (...)`` inside a
``BEGIN IMMEDIATE`` transaction, so two writers can never both move a job)::

    queued ──claim──► running ──► succeeded | failed | canceled | interrupted
      │                  ▲                                          │
      └──cancel──► canceled        └──────────── resume ◄───────────┘  (also from failed)

- A job runs in its own process, ``python -m server.jobs.worker --db DB --job ID --runner MODULE:FN``
  (crash and memory isolation: a training OOM or segfault never takes the API down). The process calls the
  runner with a progress callback that writes step, loss and progress to SQLite, and a cancel flag. Where
  it runs is a backend's business (``job_backend``): a subprocess of the server (default) or a Ray job on a
  cluster, whose jobs outlive the server and are re-attached after a restart.
- ``DELETE`` sets ``cancel_requested`` (the worker polls it: cooperative) and the scheduler sends SIGTERM
  (the trainer saves a checkpoint and returns); a process still alive after ``job_cancel_grace_s`` gets
  SIGKILL.
- A worker whose parent (the server) dies stops cooperatively and marks its job ``interrupted``. At start-up
  the server marks every ``running`` job whose process is gone ``interrupted`` too. Interrupted (and failed)
  jobs are resumed with ``POST /v1/jobs/{id}/resume``: the runner continues from the run folder's latest
  checkpoint.

Modules: :mod:`~server.jobs.requests` (request -> ``TrainConfig``), :mod:`~server.jobs.store` (SQLite),
:mod:`~server.jobs.scheduler` (``JobManager``, in the server), :mod:`~server.jobs.launchers` (the backend
interface; :mod:`~server.jobs.local_launcher`, :mod:`~server.jobs.ray_launcher`), :mod:`~server.jobs.worker`
(the job process; its runner interface, :class:`~server.jobs.worker.Runner`, is the signature of
:func:`att3d.training.loop.train`; tests plug in a fake), :mod:`~server.jobs.processes` (``/proc`` checks)
and :mod:`~server.jobs.recovery` (run folders' ``job.json``/``result.json``; starting on a damaged store).
A run's newest checkpoint comes from the trainer's own layout, :mod:`att3d.training.run_folder`.
"""
