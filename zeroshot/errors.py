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


# Reason codes of :class:`ImageError` (stable; documented in the README).
NOT_FOUND = "not_found"
NOT_A_FILE = "not_a_file"
UNREADABLE = "unreadable"
EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED = "unsupported_format"
TRUNCATED = "truncated"
TOO_LARGE = "too_large"
DECODE_ERROR = "decode_error"
WORKER_FAILED = "worker_failed"


class ImageError(Exception):
    """One input that cannot be used; ``code`` is a stable reason code. It never stops a run:
    the input is reported (``str(err)`` is ``"<code>: <detail>"``) and the others go on."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
