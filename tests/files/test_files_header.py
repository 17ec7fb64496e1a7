"""Broken .safetensors files: every reader entry point fails with one line naming the file."""

from __future__ import annotations

import pickle

import pytest

from dgmerge.files import LazyStateDict, ModelFileError, open_state_dict, read_header, read_meta, read_state_dict

from .corrupt import CORRUPT, write_corrupt

READERS = {"read_header": read_header, "read_state_dict": read_state_dict, "open_state_dict": open_state_dict,
           "LazyStateDict": LazyStateDict, "read_meta": read_meta}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_file_is_one_line_model_file_error(tmp_path, case, reader):
    path = write_corrupt(tmp_path / f"{case}.safetensors", case)
    with pytest.raises(ModelFileError) as info:
        READERS[reader](path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert CORRUPT[case][1] in message
    assert "\n" not in message and message.endswith("re-save or re-download it")
    assert type(info.value) is ModelFileError and info.value.path == path


def test_absurd_length_is_rejected_before_any_allocation(tmp_path, monkeypatch):
    # The length must be checked against the file size first; reading it would need exabytes.
    path = write_corrupt(tmp_path / "huge.safetensors", "absurd_length")
    real_open = open
    reads = []

    class Recorder:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def read(self, n=-1):
            reads.append(n)
            return self.handle.read(n)

    monkeypatch.setattr("builtins.open", lambda p, mode="r", *a, **k: Recorder(real_open(p, mode, *a, **k))
                        if str(p) == str(path) else real_open(p, mode, *a, **k))
    with pytest.raises(ModelFileError, match="header length field says"):
        read_header(path)
    assert reads == [8]


def test_missing_file_is_also_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        read_state_dict(tmp_path / "gone.safetensors")
    assert isinstance(info.value, ModelFileError)
    assert str(info.value) == f"{tmp_path / 'gone.safetensors'}: no such file or directory"
    with pytest.raises(FileNotFoundError, match="gone.safetensors: no such file"):
        read_meta(tmp_path / "gone.safetensors")


def test_the_error_survives_pickling_for_worker_processes(tmp_path):
    path = write_corrupt(tmp_path / "e.safetensors", "empty")
    with pytest.raises(ModelFileError) as info:
        read_state_dict(path)
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is ModelFileError and str(copy) == str(info.value) and copy.path == path
