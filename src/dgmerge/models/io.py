"""Old home of weight-file reading and strict loading; both now live elsewhere.

Reading is `dgmerge.files.read_state_dict`, strict loading `dgmerge.models.fit_weights.load_strict`.
"""

from __future__ import annotations

# kept for dgmerge.models.*_backbone until they import dgmerge.files (another engineer owns them):
# timm_backbone and open_clip_backbone import StateDict, load_state_file and load_strict from here.
from dgmerge.files import StateDict
from dgmerge.files import read_state_dict as load_state_file
from dgmerge.models.fit_weights import load_strict

__all__ = ["StateDict", "load_state_file", "load_strict"]
