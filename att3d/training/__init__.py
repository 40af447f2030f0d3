"""Amortized score-distillation training (ATT3D), one module per job.

``checks`` (config checks) · ``distributed`` (process group, DDP) · ``conditioning`` (prompts, mixes,
shading) · ``setup`` (building a run) · ``step`` (one forward/backward) · ``state`` (checkpoint + RNG
state) · ``callbacks`` (logs, TensorBoard, previews, checkpoints, evaluation) · ``loop`` (:func:`train`).
``run_folder`` is the on-disk layout of a run, light enough for the service to import without torch.
"""
