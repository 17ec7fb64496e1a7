"""The sample-level leak guard reads paths through every dataset wrapper dgmerge uses."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import ConcatDataset, Subset, TensorDataset

from dgmerge.data.cache import InMemoryDataset
from dgmerge.data.environments import DataLeakError
from dgmerge.data.leak_guard import refuse_test_samples, sample_paths


class Named(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.samples = [(p, 0) for p in paths]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return torch.zeros(1), 0


def test_paths_come_through_subset_concat_and_wrappers():
    data = ConcatDataset([Subset(Named(["a", "b", "c"]), [2, 0]), InMemoryDataset(Named(["d"]))])
    assert sample_paths(data) == ["c", "a", "d"]
    with pytest.raises(DataLeakError, match=r"^cannot check a TensorDataset for test-domain images: it names no "
                                            r"samples \(give it a \.samples list of \(path, label\)\)$"):
        sample_paths(TensorDataset(torch.zeros(2, 1)))


def test_a_test_image_is_refused_whatever_key_it_hides_under(tmp_path):
    test = {os.path.abspath(tmp_path / "sketch" / "dog" / "1.png")}
    clean = Named([str(tmp_path / "photo" / "dog" / "1.png")])
    refuse_test_samples({"photo": clean}, test, "training")
    planted = ConcatDataset([clean, Named([str(tmp_path / "sketch" / "dog" / "1.png")])])
    with pytest.raises(DataLeakError, match=r"sketch/dog/1.png reached model selection \(as part of 'photo'\)"):
        refuse_test_samples({"photo": planted}, test, "model selection")
    refuse_test_samples({"photo": planted}, frozenset(), "training")  # multi-task cells hold nothing out


class Wrapper(torch.utils.data.Dataset):
    """A wrapper that names no samples itself (a transform or cache layer): the guard looks inside."""

    def __init__(self, dataset):
        self.dataset = dataset


def test_paths_come_through_a_generic_wrapper_and_the_refusal_says_why(tmp_path):
    assert sample_paths(Wrapper(Named(["x", "y"]))) == ["x", "y"]
    test = {os.path.abspath(tmp_path / "sketch" / "1.png")}
    with pytest.raises(DataLeakError, match=r"\(as part of 'a'\); the test domain may only be scored$"):
        refuse_test_samples({"a": Wrapper(Named([str(tmp_path / "sketch" / "1.png")]))}, test, "training")
