"""Contract every conditioning encoder honours: shapes, condition dropout, null, gradients,
config round trip, concatenation for CFG."""

from __future__ import annotations

import json

import pytest
import torch

from limner.conditioning import CondKind, Conditioning, EncoderConfig, build_encoder
from limner.errors import UsageError

from .conftest import make_encoder, sample_inputs


def trimmed_rows(cond: Conditioning) -> list[dict]:
    """Per-row fields with padding removed, so conditions of different T compare equal."""
    rows = []
    for i in range(cond.batch_size):
        row = {"vector": None if cond.vector is None else cond.vector[i]}
        if cond.tokens is not None:
            row["tokens"] = cond.tokens[i][cond.mask[i]]
        rows.append(row)
    return rows


def assert_rows_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key] is None:
            assert b[key] is None
        else:
            torch.testing.assert_close(a[key], b[key])


def test_output_fields_and_shapes(encoder_name, data):
    encoder = make_encoder(encoder_name, data)
    cond = encoder(sample_inputs(encoder, B=3))
    assert cond.batch_size == 3
    if encoder.kind is CondKind.none:
        assert cond.is_empty and not list(encoder.parameters())
        return
    assert cond.vector.shape == (3, encoder.dim)
    if encoder.kind is CondKind.class_:
        assert cond.tokens is None and cond.mask is None
        return
    B, T, D = cond.tokens.shape
    assert (B, D) == (3, encoder.dim) and cond.mask.shape == (3, T) and cond.mask.dtype == torch.bool
    assert cond.mask[:, 0].all()  # every caption has at least one real token
    assert (cond.tokens[~cond.mask] == 0).all()


def test_drop_replaces_exactly_the_dropped_rows(encoder_name, data):
    encoder = make_encoder(encoder_name, data)
    inputs = sample_inputs(encoder, B=4)
    drop = torch.tensor([True, False, True, False])
    kept = trimmed_rows(encoder(inputs))
    dropped = trimmed_rows(encoder(inputs, drop=drop))
    null = trimmed_rows(encoder.null(4))
    for i in range(4):
        assert_rows_equal(dropped[i], null[i] if drop[i] else kept[i])
    if encoder.kind is not CondKind.none:  # the null condition differs from every real one
        assert not torch.allclose(null[0]["vector"], kept[0]["vector"])


def test_null_equals_fully_dropped_output(encoder_name, data):
    encoder = make_encoder(encoder_name, data)
    inputs = sample_inputs(encoder, B=2)
    dropped = encoder(inputs, drop=torch.ones(2, dtype=torch.bool))
    null = encoder.null(2)
    assert null.batch_size == 2
    for a, b in zip(trimmed_rows(dropped), trimmed_rows(null)):
        assert_rows_equal(a, b)


def test_drop_of_wrong_shape_is_rejected(encoder_name, data):
    encoder = make_encoder(encoder_name, data)
    with pytest.raises(ValueError, match="shape"):
        encoder(sample_inputs(encoder, B=3), drop=torch.zeros(2, dtype=torch.bool))


def test_gradients_reach_every_trainable_parameter(encoder_name, data):
    encoder = make_encoder(encoder_name, data)
    cond = encoder(sample_inputs(encoder, B=4), drop=torch.tensor([True, False, False, False]))
    if cond.is_empty:
        pytest.skip("the null encoder has no parameters")
    loss = cond.vector.square().sum()
    if cond.tokens is not None:
        loss = loss + cond.tokens.square().sum()
    loss.backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_init_is_deterministic_given_the_seed(encoder_name, data):
    a = make_encoder(encoder_name, data, seed=1).state_dict()
    b = make_encoder(encoder_name, data, seed=1).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_config_round_trip_rebuilds_the_same_state_dict(encoder_name, data):
    encoder = make_encoder(encoder_name, data)
    config = EncoderConfig.from_dict(json.loads(json.dumps(encoder.config.to_dict())))
    assert config == encoder.config
    rebuilt = build_encoder(config)
    ours, theirs = encoder.state_dict(), rebuilt.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    rebuilt.load_state_dict(ours)  # strict
    inputs = sample_inputs(encoder, B=2)
    for a, b in zip(trimmed_rows(encoder(inputs)), trimmed_rows(rebuilt(inputs))):
        assert_rows_equal(a, b)


def test_outputs_concatenate_for_guidance(encoder_name, data):
    encoder = make_encoder(encoder_name, data)
    cond = encoder(sample_inputs(encoder, B=2))
    both = Conditioning.cat([cond, encoder.null(2)])
    assert both.batch_size == 4
    for a, b in zip(trimmed_rows(both), trimmed_rows(cond) + trimmed_rows(encoder.null(2))):
        assert_rows_equal(a, b)


def test_prepare_rejects_inconsistent_batch_sizes(encoder_name, data):
    encoder = make_encoder(encoder_name, data)
    with pytest.raises(UsageError, match="batch size"):
        encoder.prepare(captions=["a", "b"], labels=[0, 1], batch_size=3)
    with pytest.raises(UsageError):
        encoder.prepare()
