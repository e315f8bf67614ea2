"""Moved to ``limner.models.safe_load`` (loading weights is shared by training, generation and
evaluation); these names stay importable from here."""

from limner.models.safe_load import (  # noqa: F401
    MAX_SAFETENSORS_HEADER, FileFormat, detect_format, load_safetensors, load_state, safetensors_metadata,
)
