"""The one exception type for user mistakes.

A ``UserError`` carries a single line that says what is wrong, where, and how to fix it. The CLI
prints it without a traceback and exits with status 2; everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake in the user's input (a path, a column, a config value, a checkpoint)."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line, always: multi-line messages get folded so the CLI prints exactly one.
        super().__init__(" ".join(str(message).split()))
