"""The gating merge of Ye et al.: a gate, per-input weight mixing, block selection, costs, files.

The experiment method lives in dgmerge.methods.gating; importing this package registers the
gated model files with `dgmerge evaluate` and the file merge `dgmerge merge --method gating`.
"""

from dgmerge.gating import files  # noqa: F401  (registers the model kind and the file merge)
