"""The errors every layer of gotr1 may raise: the bottom of the import graph (imports nothing)."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (file, flag, config) that deserves a one-line message, not a traceback."""
