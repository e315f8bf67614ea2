"""limner's exception types: every user-facing failure is one of these, with a message that
names the offending file, field or step."""

from __future__ import annotations

import re


class LimnerError(Exception):
    """Base class for errors limner reports to users (the CLI prints the message, no traceback)."""


class UsageError(LimnerError):
    """A bad argument or option; the CLI exits with code 2.

    ``field`` names what the error is about as a request or API field (``steps``, ``top_k``,
    ``vae``), so one check serves every front end: the CLI prints ``--steps: must be ...``
    and an HTTP API answers 422 naming ``steps`` with ``reason``. Give it as
    ``UsageError("must be at least 1, got 0", field="steps")``; a message written the older way,
    ``"--steps: must be ..."``, gets its field from the flag it starts with.

    Attributes:
        field: the field name (``None`` when the error is about no single field).
        reason: the message without the field's flag.
    """

    def __init__(self, message: str, *, field: str | None = None):
        if field is None:
            m = _FLAG_PREFIX.match(message)
            if m is not None:
                field, message = m.group(1).replace("-", "_"), message[m.end():]
        self.field = field
        self.reason = message
        super().__init__(f"{flag_name(field)}: {message}" if field else message)


def flag_name(field: str) -> str:
    """The command-line spelling of a request field: ``top_k`` -> ``--top-k``; a dotted config
    path is a ``--set`` setting (``family.P_mean`` -> ``--set family.P_mean``)."""
    if "." in field:
        return f"--set {field}"
    return "--" + field.replace("_", "-")


_FLAG_PREFIX = re.compile(r"--([a-z][a-z0-9-]*): ")


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
