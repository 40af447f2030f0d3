"""``att3d serve``: argument checks happen before anything is loaded or bound."""

from __future__ import annotations

import pytest
import typer
from server_fakes import tiny_generator
from typer.testing import CliRunner

from att3d.commands.errors import UserError
from att3d.commands.serve import parse_models, serve


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_generator().save(tmp_path_factory.mktemp("serve") / "tiny")


def test_parse_models(checkpoint, tmp_path):
    assert parse_models(None, []) == {"default": None}
    assert parse_models(checkpoint, [f"other={checkpoint}"]) == {"default": checkpoint, "other": checkpoint}
    for items, message in (
        (["nameonly"], "NAME=DIR"),
        ([f"../x={checkpoint}"], "names are"),
        ([f"default={checkpoint}"], "already used"),
        ([f"a={checkpoint}", f"a={checkpoint}"], "already used"),
        ([f"a={tmp_path / 'missing'}"], "checkpoint not found"),
        ([f"a={tmp_path}"], "manifest.json is missing"),
    ):
        with pytest.raises(UserError, match=message):
            parse_models(None, items)


def test_serve_rejects_bad_arguments_with_exit_2(tmp_path, monkeypatch):
    app = typer.Typer()
    app.command()(serve)
    runner = CliRunner()
    missing = runner.invoke(app, ["--checkpoint", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "checkpoint not found" in missing.output
    monkeypatch.setenv("ATT3D_MAX_BATCH_SIZE", "lots")
    bad_env = runner.invoke(app, [])
    assert bad_env.exit_code == 2 and "ATT3D_MAX_BATCH_SIZE='lots'" in bad_env.output
    monkeypatch.setenv("ATT3D_MAX_BATCH_SIZE", "0")
    assert "max_batch_size must be >= 1" in runner.invoke(app, []).output
    assert "--checkpoint" in runner.invoke(app, ["--help"]).output
