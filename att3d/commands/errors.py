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
    """Turn expected failures (bad input, unreadable or unwritable files, empty fields) into one line and
    exit 2."""
    try:
        yield
    except (UserError, ValueError, OSError) as err:
        # OSError: missing or unreadable input, and an output the system refuses (full disk, read-only
        # folder); the atomic writers leave nothing half-written behind.
        text = str(err).strip()
        if isinstance(err, OSError) and err.strerror:  # no "[Errno 28]" prefix
            text = f"{err.strerror}: {err.filename}" if err.filename else err.strerror
        message = text.splitlines()[0] if text else type(err).__name__
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code=2) from None
