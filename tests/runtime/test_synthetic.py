"""Synthetic inputs: the values each kind of input gets, masks included."""
import pytest
import torch

from kiln.engine.plan import Binding
from kiln.runtime.synthetic import is_mask, synthetic_inputs


def _bindings():
    return [Binding("input_ids", "int64", ("batch", 8), 0), Binding("attention_mask", "int64", ("batch", 8), 1),
            Binding("token_type_ids", "int32", (2, 8), 2), Binding("keep", "bool", (2, 8), 3),
            Binding("pixel_values", "float16", (2, 3), 4)]


def test_values_by_kind():
    feeds = synthetic_inputs(_bindings(), {"input_ids": {"opt": (2, 8)}, "attention_mask": {"opt": (2, 8)}})
    assert feeds["input_ids"].dtype == torch.int64 and not feeds["input_ids"].any()
    assert feeds["token_type_ids"].dtype == torch.int32 and not feeds["token_type_ids"].any()
    # an integer mask of ones keeps every position: attention over no key would be NaN
    assert feeds["attention_mask"].shape == (2, 8) and bool((feeds["attention_mask"] == 1).all())
    assert feeds["keep"].dtype == torch.bool and bool(feeds["keep"].all())
    assert feeds["pixel_values"].dtype == torch.float16 and feeds["pixel_values"].std() > 0


def test_deterministic_per_seed():
    b = [Binding("x", "float32", (4, 4), 0)]
    assert torch.equal(synthetic_inputs(b, None, seed=3)["x"], synthetic_inputs(b, None, seed=3)["x"])
    assert not torch.equal(synthetic_inputs(b, None, seed=3)["x"], synthetic_inputs(b, None, seed=4)["x"])


@pytest.mark.parametrize("name,want", [("attention_mask", True), ("input_mask", True), ("Padding_Mask", True),
                                       ("input_ids", False), ("position_ids", False)])
def test_is_mask(name, want):
    assert is_mask(name) is want


def test_dynamic_dims_need_a_profile():
    with pytest.raises(ValueError, match="has dynamic shape"):
        synthetic_inputs([Binding("ids", "int64", ("batch", 8), 0)], None)
