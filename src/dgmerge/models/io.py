"""Old home of weight-file reading and strict loading; both now live elsewhere.

Reading is `dgmerge.files.read_state_dict`, strict loading `dgmerge.models.fit_weights.load_strict`.
"""

from __future__ import annotations

# kept for dgmerge.models.*_backbone until they import dgmerge.files (another engineer owns them):
# timm_backbone imports StateDict, WeightsError, load_state_file, load_strict from here;
# open_clip_backbone imports StateDict, load_state_file, load_strict.
from dgmerge.files import ModelFileError, StateDict
from dgmerge.files import read_state_dict as load_state_file
from dgmerge.models.fit_weights import load_strict


class WeightsError(ModelFileError):
    """A ModelFileError built from a message alone, for timm_backbone's `raise WeightsError("...")`."""

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)
        self.path, self.problem, self.hint = None, message, ""  # type: ignore[assignment]

    def __reduce__(self):  # noqa: ANN204  (pickle protocol)
        return type(self), (self.problem,)


__all__ = ["StateDict", "WeightsError", "load_state_file", "load_strict"]
