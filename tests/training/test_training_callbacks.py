"""Training callbacks run where and when they are due, in list order."""

from __future__ import annotations

from att3d.training.callbacks import (
    CallbackLocation,
    TrainingCallback,
    close_callbacks,
    due,
    run_callbacks,
)


def test_callbacks_run_at_their_steps_in_list_order_and_after_training_once():
    calls: list[tuple[str, int]] = []

    def record(name: str):
        return lambda step, scalars: calls.append((name, step))

    callbacks = [
        TrainingCallback(record("every"), close=lambda: calls.append(("closed", -1))),
        TrainingCallback(record("third"), every_n_steps=3),
        TrainingCallback(record("never"), every_n_steps=0),
        TrainingCallback(record("end"), where=CallbackLocation.AFTER_TRAIN),
    ]
    for step in range(1, 7):
        run_callbacks(callbacks, CallbackLocation.AFTER_STEP, step, {})
    run_callbacks(callbacks, CallbackLocation.AFTER_TRAIN, 6, {})
    close_callbacks(callbacks)
    assert calls == [
        ("every", 1),
        ("every", 2),
        ("every", 3),
        ("third", 3),
        ("every", 4),
        ("every", 5),
        ("every", 6),
        ("third", 6),
        ("end", 6),
        ("closed", -1),
    ]
    assert due(4, 2) and not due(3, 2) and not due(0, 0)


def test_progress_is_plain_lines_at_log_every_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    import re
    import sys

    from training_toys import run_train, tiny_config

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    result = run_train(tiny_config("steps=4", "progress_bar=true", "log_every=2"), tmp_path)
    assert result.status == "completed"
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    pattern = r"step (\d)/4  loss [\d.e+-]+  [\d.e+-]+ steps/s  [\d.e+-]+ frames/s  ETA \d+m\d\ds"
    assert [re.fullmatch(pattern, line).group(1) for line in lines] == ["2", "4"], lines
