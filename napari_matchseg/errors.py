"""Exceptions with messages a user can act on.

Every error the core raises derives from :class:`MatchsegError`, so the CLI and the napari
widgets can show the message as-is and never a traceback.
"""


class MatchsegError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class InputError(MatchsegError, ValueError):
    """An image or mask the user gave cannot be used (shape, dtype, channels, content)."""


class BankError(MatchsegError):
    """A reference bank is missing, corrupt, foreign, or an operation on it is not allowed."""


class ReferenceNotFound(BankError, KeyError):
    """No reference with that id in the bank."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "reference not found"


class DuplicateReference(BankError):
    """The same image (by content hash) is already in the bank."""

    def __init__(self, message: str, existing_id: str):
        super().__init__(message)
        self.existing_id = existing_id


class WeightsError(MatchsegError):
    """A model checkpoint is missing, corrupt, or cannot be downloaded."""


class Cancelled(MatchsegError):
    """A long operation was cancelled by the user; nothing half-done was kept."""


def name_list(names, limit: int = 5) -> str:
    """``a, b, c and 4 more``: the first few of a list of names for a message that must stay one line."""
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown
