"""The errors laudnet raises for input a user can fix.

:class:`UsageError` is raised wherever laudnet validates what it was given (names, sizes,
files, settings) and says what was wrong and what is accepted. It is a ``ValueError``, so
code that catches ``ValueError`` keeps working; the command line prints its message as one
line (exit code 2), while any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Input a user can fix: the message says what was wrong and what is accepted."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be used as asked: unreadable, of another model or spec, or of another format."""


class MissingFileError(UsageError, FileNotFoundError):
    """A file or folder the user named does not exist (also a ``FileNotFoundError``)."""


class CheckpointWarning(UserWarning):
    """A checkpoint that loads, but not as completely as it might be expected to (e.g. no masker weights)."""
