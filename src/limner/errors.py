"""limner's exception types: every user-facing failure is one of these, with a message that
names the offending file, field or step."""

from __future__ import annotations


class LimnerError(Exception):
    """Base class for errors limner reports to users (the CLI prints the message, no traceback)."""


class UsageError(LimnerError):
    """A bad argument or option; the CLI exits with code 2."""


class ImageDecodeError(LimnerError):
    """An image file could not be decoded safely (bad format, truncated, bomb, ...)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DataError(LimnerError):
    """A dataset cannot be used (nothing decodable, bad metadata, ...)."""


class CheckpointError(LimnerError):
    """A checkpoint or weights file is missing, corrupt, unsafe or incompatible."""


class NonFiniteLossError(LimnerError):
    """Training produced a NaN/Inf loss; the last good checkpoint is kept."""
