"""The collator: padding, labels, stored scores and their row verification."""

from __future__ import annotations

import pytest
import torch

from tokenweight import TokenWeightError
from tokenweight.data.store import input_ids_hash
from tokenweight.training.collator import TokenWeightCollator, valid_target_mask
from tokenweight.training.trainer import count_valid_targets


def test_pads_right_and_masks_labels():
    batch = TokenWeightCollator(pad_token_id=9)(
        [{"input_ids": [1, 5, 6, 7], "row": 4}, {"input_ids": [1, 8], "row": 2}]
    )
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7], [1, 8, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[1, 5, 6, 7], [1, 8, -100, -100]]
    assert batch["row"].tolist() == [4, 2]
    assert valid_target_mask(batch["input_ids"], batch["labels"]).tolist() == [
        [True, True, True],
        [True, False, False],
    ]
    assert int(count_valid_targets(batch)) == 4


def test_keeps_a_stored_mask_and_skips_it_when_nothing_is_padded():
    batch = TokenWeightCollator()([{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 0]}])
    assert batch["labels"].tolist() == [[1, 2, -100]]
    assert int(count_valid_targets(batch)) == 1
    plain = TokenWeightCollator()([{"input_ids": [1, 2, 3]}, {"input_ids": [1, 4, 5]}])
    assert "attention_mask" not in plain and int(count_valid_targets(plain)) == 4


def test_stored_scores_are_verified_and_padded():
    rows = [[1, 5, 6, 7], [1, 8, 3, 2]]
    examples = [
        {"input_ids": r, "short_nll": [0.5] * 3, "input_hash": input_ids_hash(r), "row": i}
        for i, r in enumerate(rows)
    ]
    batch = TokenWeightCollator()(examples)
    assert batch["short_nll"].dtype == torch.float32
    assert batch["short_nll"].shape == (2, 3)

    examples[1]["input_ids"] = [1, 8, 3, 4]  # tokens changed after scoring
    with pytest.raises(TokenWeightError, match="row 1: its input_ids do not match"):
        TokenWeightCollator()(examples)
    assert "short_nll" in TokenWeightCollator(verify=False)(examples)

    examples[1]["input_ids"] = rows[1]
    examples[0]["short_nll"] = [0.5] * 4
    with pytest.raises(TokenWeightError, match="row 0: short_nll has 4 values for 4 tokens"):
        TokenWeightCollator()(examples)


def test_rejects_sequences_without_a_target():
    with pytest.raises(TokenWeightError, match="at least 2"):
        TokenWeightCollator()([{"input_ids": [1]}])
