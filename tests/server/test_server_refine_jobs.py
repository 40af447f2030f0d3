"""Refine jobs without HTTP: the job process runs the refine runner for refine rows, and a refine cut off by a
server restart is marked interrupted by the next server and resumes from its checkpoint."""

from __future__ import annotations

import threading
from pathlib import Path

from server_fakes import fake_refine, settings_for

from server.jobs.refine_requests import job_kind
from server.jobs.scheduler import DB_FILE, JobManager
from server.jobs.worker import run_job

CONFIG = {
    "kind": "refine",
    "prompt": "a red cube",
    "format": "glb",
    "refine": {"steps": 6, "preview_every": 2, "checkpoint_every": 1},
}


def test_kind_of_stored_configs():
    assert job_kind(CONFIG) == "refine"
    assert job_kind({"steps": 5, "prompts": {}}) == "train"
    assert job_kind([]) == "train"


def test_a_refine_cut_off_by_a_restart_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("ATT3D_CACHE", str(tmp_path / "cache"))
    settings = settings_for(tmp_path)
    manager = JobManager(settings)  # opens (creates) the store; its scheduler thread is not started
    store = manager.store
    assert store.path == settings.data_dir / DB_FILE
    row, _ = store.create({"refine": {}}, CONFIG, 6, manager.runs_dir)
    store.claim_next()
    run_dir = Path(row["run_dir"])

    # The first attempt's process dies after step 3 (here: its runner stops there; no outcome is recorded).
    cancel = threading.Event()
    steps: list[int] = []

    def progress(step: int, total: int, loss: float) -> None:
        steps.append(step)
        if step == 3:
            cancel.set()

    first = fake_refine(CONFIG, run_dir, resume=False, progress_callback=progress, cancel=cancel)
    assert first.status == "cancelled" and first.step == 3
    store.set_pid(row["id"], 2**22 + 12345, "0")  # a process that is gone

    JobManager(settings).recover()  # the restarted server
    interrupted = store.get(row["id"])
    assert interrupted["state"] == "interrupted" and interrupted["step"] == 3
    assert "its last checkpoint is at step 3" in interrupted["error"]

    assert store.resume(row["id"])["state"] == "queued"
    store.claim_next()
    state = run_job(store, row["id"], "server_fakes:failing_train", "server_fakes:fake_refine")
    assert state == "succeeded"  # the refine runner ran, not the (failing) trainer
    done = store.get(row["id"])
    assert done["step"] == 6 and done["attempts"] == 2 and done["checkpoint"].endswith("step_0000006")
    assert (run_dir / "result.glb").is_file() and (run_dir / "preview.glb").is_file()
