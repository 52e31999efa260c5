"""Errors that are the user's to fix (bad input, options or files): the CLI shows them as
one line, while any other exception is an internal error shown with its traceback."""
from __future__ import annotations


class UserError(ValueError):
    """A problem with what the user gave (a path, an option, a file); one line, exit 2."""
