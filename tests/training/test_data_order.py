"""Resumable batching: per-epoch permutations, seamless epoch crossing, state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from limner.errors import DataError, UsageError
from limner.training.data_order import DataOrder, check_train_data, make_batch, rank_slice

from .toy_family import ToyData, toy_data


@given(size=st.integers(1, 40), batch=st.integers(1, 50), steps=st.integers(1, 30))
@settings(max_examples=60, deadline=None)
def test_every_epoch_is_a_permutation(size, batch, steps):
    order = DataOrder(size, seed=3)
    stream = np.concatenate([order.take(batch)[0] for _ in range(steps)])
    full_epochs = len(stream) // size
    for e in range(full_epochs):
        assert sorted(stream[e * size : (e + 1) * size].tolist()) == list(range(size))


@given(size=st.integers(1, 30), batch=st.integers(1, 20), k=st.integers(0, 25), n=st.integers(1, 25))
@settings(max_examples=60, deadline=None)
def test_resume_from_state_continues_the_same_stream(size, batch, k, n):
    straight = DataOrder(size, seed=7, hflip=True)
    expected = [straight.take(batch) for _ in range(k + n)]
    first = DataOrder(size, seed=7, hflip=True)
    for _ in range(k):
        first.take(batch)
    resumed = DataOrder(size, seed=7, hflip=True)
    resumed.load_state_dict(first.state_dict())
    for idx, (want_i, want_f) in enumerate(expected[k:]):
        got_i, got_f = resumed.take(batch)
        assert np.array_equal(got_i, want_i) and np.array_equal(got_f, want_f), idx


def test_epochs_differ_and_flips_are_off_by_default():
    order = DataOrder(20, seed=0)
    a, fa = order.take(20)
    b, _ = order.take(20)
    assert not np.array_equal(a, b)
    assert not fa.any()
    assert DataOrder(20, seed=0, hflip=True).take(20)[1].any()


def test_state_refuses_a_different_dataset():
    state = DataOrder(20, seed=0).state_dict()
    with pytest.raises(UsageError, match="size"):
        DataOrder(21, seed=0).load_state_dict(state)


def test_rank_slices_cover_the_global_batch():
    idx, flips = DataOrder(24, seed=1).take(8)
    parts = [rank_slice(idx, flips, r, 2)[0] for r in range(2)]
    assert np.array_equal(np.concatenate(parts), idx)


def test_make_batch_converts_to_nchw_in_range():
    data = toy_data(n=6)
    batch = make_batch(data, np.array([2, 0]), np.array([False, True]))
    assert batch.images.shape == (2, 3, 8, 8) and batch.images.dtype == torch.float32
    assert batch.images.min() >= -1 and batch.images.max() <= 1
    want0 = torch.from_numpy(data.images[2]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(batch.images[0], want0)
    want1 = (torch.from_numpy(data.images[0]).permute(2, 0, 1).float() / 127.5 - 1).flip(-1)
    assert torch.equal(batch.images[1], want1)
    assert batch.captions == ["image 2", "image 0"]
    assert batch.labels.tolist() == [2, 0] and batch.indices.tolist() == [2, 0]


@pytest.mark.parametrize("images", [np.zeros((0, 8, 8, 3), np.uint8), np.zeros((2, 8, 8), np.uint8),
                                    np.zeros((2, 8, 8, 3), np.float32)])
def test_bad_data_is_refused(images):
    with pytest.raises(DataError):
        check_train_data(ToyData(images, None, None))
