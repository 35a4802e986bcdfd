"""The one sequence encoder: golden outputs and properties (left padding, id 0, most recent kept)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.sequence import PAD_ID, encode_batch, encode_sequence, sequence_length

histories = st.lists(st.integers(min_value=1, max_value=10_000), max_size=80)
lengths = st.integers(min_value=1, max_value=64)


def test_encode_sequence_golden() -> None:
    assert encode_sequence([5, 6, 7], 5).tolist() == [0, 0, 5, 6, 7]
    assert encode_sequence([1, 2, 3, 4, 5, 6], 4).tolist() == [3, 4, 5, 6]
    assert encode_sequence([], 3).tolist() == [0, 0, 0]
    assert encode_sequence([9], 1).tolist() == [9]
    assert encode_sequence([1, 2, 3, 4, 5, 6], 4).dtype == np.int64


def test_encode_batch_golden() -> None:
    out = encode_batch([[1, 2], [3, 4, 5, 6], []], 3)
    assert out.tolist() == [[0, 1, 2], [4, 5, 6], [0, 0, 0]]
    assert sequence_length(out).tolist() == [2, 3, 0]


def test_encode_sequence_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="max_len"):
        encode_sequence([1], 0)
    with pytest.raises(ValueError, match="non-negative"):
        encode_sequence([1, -2], 4)


@given(histories, lengths)
def test_encoded_shape_and_padding_on_the_left(history: list[int], max_len: int) -> None:
    out = encode_sequence(history, max_len)
    assert out.shape == (max_len,)
    n = min(len(history), max_len)
    assert (out[: max_len - n] == PAD_ID).all()
    assert (out[max_len - n :] != PAD_ID).all()


@given(histories, lengths)
def test_most_recent_items_are_kept_in_order(history: list[int], max_len: int) -> None:
    out = encode_sequence(history, max_len)
    kept = out[out != PAD_ID].tolist()
    assert kept == history[-max_len:] if history else kept == []
    if history:
        assert out[-1] == history[-1]


@given(histories, lengths, st.integers(min_value=1, max_value=10_000))
def test_appending_an_item_shifts_left(history: list[int], max_len: int, item: int) -> None:
    before, after = encode_sequence(history, max_len), encode_sequence([*history, item], max_len)
    assert after[-1] == item
    assert after[:-1].tolist() == before[1:].tolist()


@given(st.lists(histories, max_size=6), lengths)
def test_batch_rows_equal_single_encoding(batch: list[list[int]], max_len: int) -> None:
    out = encode_batch(batch, max_len)
    assert out.shape == (len(batch), max_len)
    for row, history in zip(out, batch, strict=True):
        assert row.tolist() == encode_sequence(history, max_len).tolist()
