import pytest
import torch

import dgmerge.merging as M
from dgmerge.merging import MergeError, available, merge

from .helpers import t


def test_available_lists_every_method_of_the_issue():
    assert available() == ["average", "task_arithmetic", "ties", "dare", "rhm", "regmean", "fisher", "tsv",
                           "score", "lwptv", "greedy_soup"]


def test_unknown_method_names_the_alternatives():
    with pytest.raises(MergeError, match="unknown merge method 'tie'.*ties"):
        merge("tie", {"w": t(1.0)}, [{"w": t(2.0)}])


def test_unknown_hyperparameter_lists_accepted_ones():
    with pytest.raises(MergeError, match="unknown hyperparameter.*kep.*accepted: aggregate, keep"):
        merge("ties", {"w": t(1.0)}, [{"w": t(2.0)}], kep=0.2)


def test_required_hyperparameter_missing():
    with pytest.raises(MergeError, match="'eta' is required"):
        merge("lwptv", {"w": t(1.0)}, [{"w": t(2.0)}])


def test_direct_call_checks_hyperparameters_too():
    with pytest.raises(MergeError, match=r"keep=2.0 is outside \(0, 1\]"):
        M.ties({"w": t(1.0)}, [{"w": t(2.0)}], keep=2.0)


def test_wrapper_forwards_and_checks_base_hyperparameters():
    with pytest.raises(MergeError, match=r"dare \(base ties\).*keep=0 is outside"):
        merge("dare", {"w": t(1.0)}, [{"w": t(2.0)}], base="ties", keep=0)
    with pytest.raises(MergeError, match="unknown merge method 'nope'"):
        merge("dare", {"w": t(1.0)}, [{"w": t(2.0)}], base="nope", scale=1.0)


def test_result_is_a_plain_tensor_dict_with_info():
    out = merge("task_arithmetic", {"w": t(1.0)}, [{"w": t(2.0)}], scale=0.5)
    assert isinstance(out, dict) and isinstance(out["w"], torch.Tensor)
    assert out.info == {"scale": 0.5}
