"""What the shape configs of limner's transformer networks share (the DiT backbone,
``limner.models.diffusion.dit``, and the token transformer, ``limner.models.transformer.model``):
a JSON round trip that refuses unknown keys, and checks whose errors name the
``--set family.net.NAME`` field a user would change."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TypeVar

from limner.errors import UsageError

__all__ = ["NetConfig"]

C = TypeVar("C", bound="NetConfig")


@dataclass
class NetConfig:
    """Base of a network's shape dataclass; ``what`` names it in errors ("DiT")."""

    what: ClassVar[str] = "network"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise UsageError(f"unknown {cls.what} config key(s): {', '.join(unknown)}")
        return cls(**data)

    def invalid(self, name: str, why: str) -> UsageError:
        """The error for field ``name``: ``--set family.net.NAME: WHY, got VALUE``."""
        return UsageError(f"{why}, got {getattr(self, name)!r}", field=f"family.net.{name}")

    def check_at_least_one(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 1:
                raise self.invalid(name, "must be at least 1")

    def check_dropout_and_mlp_ratio(self) -> None:
        """``dropout`` in [0, 1) and a positive ``mlp_ratio``."""
        if not 0 <= self.dropout < 1:
            raise self.invalid("dropout", "must be in [0, 1)")
        if self.mlp_ratio <= 0:
            raise self.invalid("mlp_ratio", "must be positive")
