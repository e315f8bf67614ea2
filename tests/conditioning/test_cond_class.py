"""Class-label encoder: label lookup by id or name, errors, null row."""

from __future__ import annotations

import pytest
import torch

from limner.errors import UsageError

from .conftest import make_encoder


def test_label_by_id_name_and_digit_string(data):
    encoder = make_encoder("class", data)
    assert encoder.label_index(2) == 2
    assert encoder.label_index("dog") == 1  # class name "Dog", case-insensitive
    assert encoder.label_index(" BIRD ") == 2
    assert encoder.label_index("0") == 0


def test_bad_name_lists_the_valid_classes(data):
    encoder = make_encoder("class", data)
    with pytest.raises(UsageError, match="unknown class 'horse'.*cat, Dog, bird"):
        encoder.label_index("horse")
    with pytest.raises(UsageError, match=r"0\.\.2"):
        encoder.label_index(3)
    with pytest.raises(UsageError, match="out of range"):
        encoder.label_index("-1")


def test_prepare_accepts_names_ids_and_tensors(data):
    encoder = make_encoder("class", data)
    assert encoder.prepare(labels=["cat", 2, "DOG"]).labels.tolist() == [0, 2, 1]
    assert encoder.prepare(labels=torch.tensor([1, 0])).labels.dtype == torch.long
    with pytest.raises(UsageError, match="class label"):
        encoder.prepare(captions=["a cat"])


def test_null_is_the_extra_embedding_row(data):
    encoder = make_encoder("class", data)
    assert encoder.embedding.num_embeddings == 4
    torch.testing.assert_close(encoder.null(2).vector[1], encoder.embedding.weight[3])


def test_label_index_on_other_encoders_is_a_usage_error(data):
    with pytest.raises(UsageError, match="not on class labels"):
        make_encoder("text", data).label_index("cat")
