"""Exceptions with user-facing messages.

Every error the library raises on bad input is a :class:`ZeroshotError` whose message is one line
that names the file or option at fault and says what to do. The CLI prints it as ``error: ...``
and exits with :attr:`ZeroshotError.exit_code`.
"""

from __future__ import annotations


class ZeroshotError(Exception):
    """A failure the user can act on. ``str(err)`` is the one-line message."""

    exit_code: int = 1


class UsageError(ZeroshotError):
    """Bad options or option values (labels, templates, formats...). Exit code 2."""

    exit_code = 2


class ModelLoadError(ZeroshotError):
    """The model or its weights could not be resolved or loaded. Exit code 1."""


class OutputError(ZeroshotError):
    """An output file could not be written or resumed. Exit code 1."""


class ZeroshotWarning(UserWarning):
    """Something the user should know that does not stop the run (printed as ``warning: ...``)."""
