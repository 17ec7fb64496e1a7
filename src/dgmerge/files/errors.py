"""The one error type of dgmerge's model files: a file that cannot be read or written as asked."""

from __future__ import annotations

import os
from pathlib import Path


class ModelFileError(ValueError):
    """A model or state-dict file that cannot be used; the one-line message names the file.

    The message reads "PATH: problem; what to do". It is a ValueError so the CLI's usual
    `except ValueError` prints it as a one-line error instead of a traceback.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, hint: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        self.hint = hint
        text = f"{path}: {problem}" + (f"; {hint}" if hint else "")
        # One line, always: the CLI prints the message as is, and errors from torch or
        # safetensors quoted in `problem` can span several lines.
        super().__init__(" ".join(text.splitlines()))

    def __reduce__(self):  # noqa: ANN204  (pickle protocol)
        # Errors cross process boundaries in sweeps; the default would call cls(message).
        return type(self), (self.path, self.problem, self.hint)


class ModelFileMissing(ModelFileError, FileNotFoundError):
    """No file (or model directory) at the path; also a FileNotFoundError for callers that ask."""


def first_line(error: BaseException, limit: int = 160) -> str:
    """A short one-line summary of an error raised by torch, pickle or safetensors."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
