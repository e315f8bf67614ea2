"""bfloat16 on a CPU without bfloat16 vector instructions: one warning, from every entry point."""

from __future__ import annotations

import logging

import pytest
import torch

from limner.errors import UsageError
from limner.generation import precision
from limner.nn import bf16 as P


@pytest.fixture
def fresh_warnings():
    P._warn_once.cache_clear()
    yield
    P._warn_once.cache_clear()


def _warnings(caplog):
    return [r for r in caplog.records if r.levelno == logging.WARNING and "--precision bf16" in r.getMessage()]


def test_the_fact_comes_from_onednn():
    # A CPU with AVX-512 (or AMX) runs oneDNN's bfloat16 kernels; an AVX2-only one cannot.
    assert P.cpu_bf16_native() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if torch.backends.cpu.get_cpu_capability() == "AVX2":
        assert not P.cpu_bf16_native()


def test_slow_cpu_warns_once_with_the_reason(monkeypatch, caplog, fresh_warnings):
    monkeypatch.setattr(P, "cpu_bf16_native", lambda: False)
    caplog.set_level(logging.WARNING, logger=P.__name__)
    for _ in range(3):
        with precision.precision_context("bf16", "cpu"):
            pass
    (record,) = _warnings(caplog)
    message = record.getMessage()
    assert torch.backends.cpu.get_cpu_capability() in message and "use fp32" in message


def test_no_warning_where_bf16_is_fast_or_not_asked_for(monkeypatch, caplog, fresh_warnings):
    caplog.set_level(logging.WARNING, logger=P.__name__)
    monkeypatch.setattr(P, "cpu_bf16_native", lambda: True)
    with precision.precision_context("bf16", "cpu"):
        pass
    monkeypatch.setattr(P, "cpu_bf16_native", lambda: False)
    with precision.precision_context("fp32", "cpu"):
        pass
    assert P.slow_bf16_reason("meta") is None  # only the CPU's own instructions matter
    assert _warnings(caplog) == []


def test_unknown_precision_is_a_usage_error():
    with pytest.raises(UsageError, match="fp16"):
        precision.precision_context("fp16", "cpu")


def test_training_warns_too(monkeypatch, caplog, fresh_warnings, tmp_path):
    from tests.training.toy_family import make_trainer

    monkeypatch.setattr(P, "cpu_bf16_native", lambda: False)
    caplog.set_level(logging.WARNING, logger=P.__name__)
    make_trainer(tmp_path, steps=1, precision="bf16")
    assert len(_warnings(caplog)) == 1


def test_env_reports_it(monkeypatch):
    from limner.environment import describe

    monkeypatch.setattr(P, "cpu_bf16_native", lambda: False)
    assert describe()["cpu"]["bfloat16"].startswith("slow")
    monkeypatch.setattr(P, "cpu_bf16_native", lambda: True)
    assert describe()["cpu"]["bfloat16"].startswith("fast")
