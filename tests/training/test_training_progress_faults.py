"""A progress callback that raises (a job store that is gone, a full disk) never costs the run its
checkpoints: the trainer logs it once and keeps training."""

from __future__ import annotations

import logging
import sqlite3

from training_toys import run_train, tiny_config

from att3d.training.run_folder import list_checkpoints


def test_a_failing_progress_callback_neither_stops_training_nor_skips_a_checkpoint(tmp_path, caplog):
    calls = []

    def broken(step: int, total: int, loss: float) -> None:
        calls.append(step)
        raise sqlite3.OperationalError("no such table: jobs")

    caplog.set_level(logging.WARNING)
    result = run_train(tiny_config("steps=3", "checkpoint_every=2"), tmp_path, progress_callback=broken)
    assert result.status == "completed" and result.step == 3 and calls == [1, 2, 3]
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 3]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no such table: jobs" in warnings[0], warnings  # once, not per step
