"""Conditioning encoders for "nothing" and class labels, and ``build_encoder``, which picks the
encoder a run's ``EncoderConfig`` names (text encoders live in ``text.py`` and ``minilm.py``).

The class encoder is a learned embedding table with one extra row for the null label, as in
classifier-free guidance (Ho & Salimans 2022) and DiT's label embedder (Peebles & Xie 2023).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from limner.conditioning.base import CondInputs, CondKind, Conditioning
from limner.conditioning.config import EncoderConfig, resolve_encoder_config
from limner.conditioning.encoder_base import CondEncoder
from limner.conditioning.minilm import MiniLMTextEncoder
from limner.conditioning.text import TrainedTextEncoder
from limner.errors import UsageError

__all__ = [
    "ClassEncoder",
    "CondEncoder",
    "EncoderConfig",
    "NullEncoder",
    "build_encoder",
    "resolve_encoder_config",
]


class NullEncoder(CondEncoder):
    """Unconditional runs: every condition is ``Conditioning.empty(B)``; no parameters."""

    def prepare(
        self,
        captions: list[str] | None = None,
        labels: Sequence[int | str] | Tensor | None = None,
        batch_size: int | None = None,
    ) -> CondInputs:
        """Inputs carrying only the batch size (captions and labels are ignored)."""
        return CondInputs(batch_size=self._batch_size(captions, labels, batch_size))

    def encode(self, inputs: CondInputs) -> Conditioning:
        """``Conditioning.empty(B)``."""
        return Conditioning.empty(inputs.batch_size)

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        """``Conditioning.empty(B)``."""
        return Conditioning.empty(batch_size)


class ClassEncoder(CondEncoder):
    """Class label → learned vector [B, D]; row ``num_classes`` of the table is the null label."""

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.num_classes: int = config.num_classes
        self.class_names: list[str] | None = config.class_names
        self.embedding = nn.Embedding(self.num_classes + 1, config.dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def prepare(
        self,
        captions: list[str] | None = None,
        labels: Sequence[int | str] | Tensor | None = None,
        batch_size: int | None = None,
    ) -> CondInputs:
        """Labels [B] int64 from ids or class names."""
        B = self._batch_size(captions, labels, batch_size)
        if labels is None:
            raise UsageError("this run is class-conditioned: give a class label per image")
        if isinstance(labels, Tensor):
            labels = labels.tolist()
        ids = torch.tensor([self.label_index(label) for label in labels], dtype=torch.long)
        return CondInputs(batch_size=B, labels=ids.reshape(B))

    def encode(self, inputs: CondInputs) -> Conditioning:
        """Embedding of each label: vector [B, D]."""
        return Conditioning(vector=self.embedding(inputs.labels), batch_size=inputs.batch_size)

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        """The learned null label's embedding, vector [B, D]."""
        device = self.device if device is None else device
        ids = torch.full((batch_size,), self.num_classes, dtype=torch.long, device=device)
        return Conditioning(vector=self.embedding(ids), batch_size=batch_size)

    def label_index(self, label: int | str) -> int:
        """Class id of ``label``: a class name (case-insensitive) or an id (int or digit string)."""
        if isinstance(label, str):
            index = self._name_index(label)
            if index is not None:
                return index
            if not label.strip().lstrip("-").isdigit():
                raise UsageError(f"unknown class {label!r}" + self._names_hint())
        index = int(label)
        if not 0 <= index < self.num_classes:
            raise UsageError(
                f"class id {index} is out of range: this run has classes 0..{self.num_classes - 1}"
                + self._names_hint()
            )
        return index

    def _name_index(self, name: str) -> int | None:
        wanted = name.strip().casefold()
        for i, class_name in enumerate(self.class_names or []):
            if class_name.casefold() == wanted:
                return i
        return None

    def _names_hint(self) -> str:
        if not self.class_names:
            return " (this run has no class names; use an id)"
        return "; valid classes: " + ", ".join(self.class_names)


def build_encoder(config: EncoderConfig) -> CondEncoder:
    """The encoder ``config`` describes, freshly initialised (load weights with load_state_dict)."""
    if config.kind is CondKind.none:
        return NullEncoder(config)
    if config.kind is CondKind.class_:
        return ClassEncoder(config)
    if config.text_encoder == "minilm":
        return MiniLMTextEncoder(config)
    return TrainedTextEncoder(config)
