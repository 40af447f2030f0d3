"""The ``att3d`` command line: the typer app (``app``) and one module per command.

``errors`` is the bottom layer (``UserError`` and its handler); the command modules import it, never the
app; ``app`` imports the commands and registers them. Heavy modules (torch, diffusers, the server) are
imported inside the command functions, so ``att3d --help`` stays fast.
"""
