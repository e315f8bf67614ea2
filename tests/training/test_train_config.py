"""TrainConfig: validation names the field, dict round trip, unknown keys refused."""

from __future__ import annotations

import math

import pytest

from limner.errors import UsageError
from limner.training.config import TrainConfig


def test_defaults_validate_and_round_trip():
    cfg = TrainConfig().validate()
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert isinstance(again.betas, tuple)


@pytest.mark.parametrize(
    "field, value",
    [
        ("steps", 0), ("steps", -3), ("batch_size", 0), ("lr", 0.0), ("lr", -1e-3),
        ("lr", math.nan), ("lr", math.inf), ("grad_accum", 0), ("warmup_steps", -1),
        ("grad_clip", 0.0), ("grad_clip", math.nan), ("weight_decay", -0.1), ("ema_decay", 1.0),
        ("betas", (0.9, 1.0)), ("betas", (0.9,)), ("precision", "fp16"), ("nonfinite", "ignore"),
        ("log_every", 0), ("keep_last", 0), ("save_every", -1), ("sample_every", -2),
        ("device", "tpu"), ("seed", -1), ("steps", True), ("lr_decay", "step"), ("min_lr_ratio", -0.1),
        ("min_lr_ratio", 1.5),
    ],
)
def test_nonsense_is_refused_naming_the_field(field, value):
    with pytest.raises(UsageError, match=f"train.{field}"):
        TrainConfig(**{field: value}).validate()


def test_batch_must_divide_by_accumulation_times_world_size():
    TrainConfig(batch_size=8, grad_accum=2).validate(world_size=2)
    with pytest.raises(UsageError, match="batch_size"):
        TrainConfig(batch_size=6, grad_accum=2).validate(world_size=2)


def test_unknown_keys_are_refused():
    with pytest.raises(UsageError, match="lr_warmup"):
        TrainConfig.from_dict({"lr_warmup": 3})
