import math

import pytest
import torch

from dgmerge.merging import MergeError, available, merge
from dgmerge.merging.validate import Param, check_compatible

from .helpers import t


def base():
    return {"a": t(1.0, 2.0), "b": t(3.0), "n": torch.tensor(4)}


def test_differing_key_sets_list_the_keys():
    other = {"a": t(1.0, 2.0), "c": t(0.0), "n": torch.tensor(4)}
    with pytest.raises(MergeError, match=r"finetuned\[0\]: key sets differ \(missing 1 key\(s\) of pretrained: b; "
                                         r"1 key\(s\) not in pretrained: c\)"):
        merge("average", base(), [other])


def test_differing_shapes_list_the_keys():
    other = {**base(), "a": t(1.0, 2.0, 3.0)}
    with pytest.raises(MergeError, match=r"finetuned\[1\]: shapes differ .* a \(3,\) vs \(2,\)"):
        merge("average", base(), [base(), other])


def test_differing_dtypes_list_the_keys():
    other = {**base(), "b": t(3.0, dtype=torch.float32)}
    with pytest.raises(MergeError, match=r"dtypes differ .* b torch.float32 vs torch.float64"):
        merge("average", base(), [other])


def test_long_key_lists_are_cut():
    pre = {f"k{i}": t(0.0) for i in range(20)}
    with pytest.raises(MergeError, match=r"\(\+12 more\)"):
        check_compatible(pre, [{}])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_names_the_tensor(bad):
    other = {**base(), "b": t(bad)}
    with pytest.raises(MergeError, match=r"finetuned\[0\]: tensor 'b' contains"):
        merge("average", base(), [other])
    with pytest.raises(MergeError, match=r"pretrained: tensor 'a' contains"):
        merge("average", {**base(), "a": t(1.0, bad)}, [base()])


def test_no_models():
    with pytest.raises(MergeError, match="no fine-tuned models"):
        merge("average", base(), [])


@pytest.mark.parametrize("method, hparams, message", [
    ("ties", {"keep": 0.0}, r"keep=0.0 is outside \(0, 1\]"),
    ("ties", {"keep": 1.01}, r"keep=1.01 is outside"),
    ("ties", {"level": "block"}, "must be one of model, tensor"),
    ("dare", {"drop": 1.0}, r"drop=1.0 is outside \[0, 1\)"),
    ("dare", {"drop": -0.1}, r"drop=-0.1 is outside"),
    ("rhm", {"trim": 1.0}, r"trim=1.0 is outside \[0, 1\)"),
    ("rhm", {"trim": -0.2}, "outside"),
    ("rhm", {"sample_size": 0}, "outside"),
    ("regmean", {"grams": [{}], "alpha": 1.5}, r"alpha=1.5 is outside \[0, 1\]"),
    ("score", {"variant": "v5"}, "must be one of v1, v2, v3, v4, v4-upstream"),
    ("task_arithmetic", {"scale": "big"}, "is not a number"),
    ("task_arithmetic", {"scale": math.nan}, "is not finite"),
    ("average", {"weights": [1.0, -1.0]}, "below 0"),
    ("lwptv", {"eta": -1.0}, "outside"),
    ("greedy_soup", {"evaluate": 3}, "must be a callable"),
])
def test_hyperparameter_out_of_range_fails_before_any_work(method, hparams, message):
    class Exploding(dict):
        def __getitem__(self, key):  # any tensor access would be work
            raise AssertionError("tensor read before the hyperparameter check")

    with pytest.raises(MergeError, match=message):
        merge(method, Exploding(base()), [Exploding(base())], **hparams)


def test_per_model_weights_need_one_entry_per_model():
    with pytest.raises(MergeError, match="weights has 1 entries for 2"):
        merge("average", base(), [base(), base()], weights=[1.0])


@pytest.mark.parametrize("method", available())
def test_non_float_tensors_are_carried_over_from_pretrained(method):
    pre = {"w": t([[1.0, 2.0], [3.0, 4.0]]), "n": torch.tensor(4)}
    fts = [{"w": pre["w"] + i, "n": torch.tensor(99 + i)} for i in (1, 2)]
    extra = {"regmean": {"grams": [{"w": torch.eye(2)}] * 2}, "fisher": {"fishers": [{"w": torch.ones(2, 2)}] * 2},
             "lwptv": {"eta": 0.0}, "greedy_soup": {"evaluate": lambda s: 0.0}}.get(method, {})
    out = merge(method, pre, fts, **extra)
    assert out["n"].dtype == torch.int64 and int(out["n"]) == 4
    assert out["w"].dtype == torch.float64


def test_param_parse_reads_cli_text():
    assert Param("float").parse("m", "x", "0.5") == 0.5
    assert Param("bool").parse("m", "x", "false") is False
    assert Param("floats").parse("m", "x", "1,2.5") == [1.0, 2.5]
    with pytest.raises(MergeError, match="cannot read 'abc' as float"):
        Param("float").parse("m", "x", "abc")
