"""The run folder's layout: complete checkpoints only, the newest that verifies, pruning; no torch import."""

from __future__ import annotations

import subprocess
import sys

import torch

from att3d.checkpoint import save_checkpoint, save_tensors_atomic
from att3d.training.run_folder import (
    TRAIN_STATE_FILE,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
)


def _checkpoint(run_dir, step: int, complete: bool = True):
    weights = {"w": torch.full((2,), float(step))}
    path = save_checkpoint(checkpoint_dir(run_dir, step), weights, {}, "toy", ["a"])
    if complete:
        save_tensors_atomic(path / TRAIN_STATE_FILE, {"step": torch.tensor([step])}, {})
    return path


def test_only_complete_checkpoints_count_and_the_newest_that_verifies_wins(tmp_path):
    assert list_checkpoints(tmp_path) == [] and latest_checkpoint(tmp_path) is None
    paths = {step: _checkpoint(tmp_path, step) for step in (1, 2, 10)}
    _checkpoint(tmp_path, 11, complete=False)  # no train state yet: an interrupted save
    assert checkpoint_dir(tmp_path, 10) == tmp_path / "checkpoints" / "step_0000010"
    assert list_checkpoints(tmp_path) == [(1, paths[1]), (2, paths[2]), (10, paths[10])]
    assert latest_checkpoint(tmp_path) == (10, paths[10])

    with open(paths[10] / "model.safetensors", "ab") as f:
        f.write(b"garbage")
    assert latest_checkpoint(tmp_path) == (2, paths[2])  # weights checked: the corrupt one is skipped
    assert latest_checkpoint(tmp_path, check_weights=False) == (10, paths[10])  # manifest only

    prune_checkpoints(tmp_path, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 10]
    assert (tmp_path / "checkpoints" / "step_0000011").is_dir()  # incomplete ones never count


def test_run_folder_imports_no_torch():
    code = "import sys, att3d.training.run_folder; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_run_folder_has_one_trainer_and_a_killed_one_does_not_block(tmp_path):
    import os
    import signal

    import pytest

    from att3d.training.run_folder import RunFolderBusy, lock_run_folder

    code = (
        "import sys, time\n"
        "from att3d.training.run_folder import lock_run_folder\n"
        "with lock_run_folder(sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = f"run folder {tmp_path} is in use .*pid {holder.pid}"
        with pytest.raises(RunFolderBusy, match=busy), lock_run_folder(tmp_path):
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a crash: the kernel drops the lock
        holder.wait()
    with lock_run_folder(tmp_path) as lock:
        assert lock.read_text() == f"{os.getpid()}\n"
    with lock_run_folder(tmp_path):  # released when the block ends
        pass


def test_a_second_trainer_on_a_locked_folder_fails_at_once_and_writes_nothing(tmp_path):
    import os

    import pytest
    from training_toys import run_train, tiny_config

    from att3d.training.run_folder import RunFolderBusy, lock_run_folder

    # The first trainer: this process, through another open file of the lock.
    with lock_run_folder(tmp_path), pytest.raises(RunFolderBusy, match=f"pid {os.getpid()}"):
        run_train(tiny_config("steps=1"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    assert run_train(tiny_config("steps=1"), tmp_path).status == "completed"  # free again
