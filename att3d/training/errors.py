"""The trainer's errors, at the bottom so every training module can raise them without import circles."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why."""


class TrainingDiverged(TrainingError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
