"""Merging library: every merge method over state dicts, one registry, shared building blocks.

    from dgmerge.merging import merge, available
    merged = merge("ties", pretrained_state, [state_a, state_b], keep=0.2)

Methods are pure functions of state dicts (plus statistics for regmean/fisher and an
evaluation callback for greedy_soup). Importing this package registers all of them. Model files
are read and written by `dgmerge.files`.
"""

from dgmerge.merging.registry import METHODS, MergedState, available, get_method, merge, register
from dgmerge.merging.validate import MergeError, Param, check_models

# Importing the method modules fills the registry; the order here is the order of available().
from dgmerge.merging.average import average
from dgmerge.merging.task_arithmetic import task_arithmetic
from dgmerge.merging.ties import ties
from dgmerge.merging.dare import dare
from dgmerge.merging.rhm import rhm
from dgmerge.merging.regmean import regmean
from dgmerge.merging.fisher import fisher
from dgmerge.merging.tsv import tsv
from dgmerge.merging.score import score
from dgmerge.merging.lwptv import lwptv
from dgmerge.merging.greedy_soup import greedy_soup

from dgmerge.merging.files import FILE_MERGES, FileMerge, inspect_files, merge_files, parse_settings, register_file_merge
from dgmerge.merging.diagnostics import TaskVectorReport, format_report, save_heatmap, task_vector_report
from dgmerge.merging.quantile import Threshold, kth_smallest_magnitudes, magnitude_thresholds
from dgmerge.merging.similarity import least_similar_modules, module_similarities
from dgmerge.merging.statistics import collect_fisher, collect_gram
from dgmerge.merging.task_vectors import task_vector
from dgmerge.merging.trajectory import EMA, HistoricalAverage, beta_weight

__all__ = [
    "METHODS", "MergedState", "MergeError", "Param", "available", "get_method", "merge", "register",
    "check_models", "average", "task_arithmetic", "ties", "dare", "rhm", "regmean", "fisher", "tsv",
    "score", "lwptv", "greedy_soup", "merge_files", "FILE_MERGES", "FileMerge", "register_file_merge",
    "inspect_files", "parse_settings", "TaskVectorReport", "task_vector_report", "format_report",
    "save_heatmap", "Threshold", "kth_smallest_magnitudes", "magnitude_thresholds",
    "least_similar_modules", "module_similarities", "collect_gram", "collect_fisher", "task_vector",
    "EMA", "HistoricalAverage", "beta_weight",
]
