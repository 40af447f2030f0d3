"""User errors of the command line: one ``error: ...`` line on stderr and exit status 2.

The bottom layer of ``att3d.commands``: every command module uses it and it imports none of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected failures (bad input, unreadable files, empty fields) into one line and exit 2."""
    try:
        yield
    except (UserError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code=2) from None
