"""The machine recorded in every result row: CPU model, core count, threads, torch, GPU.

A benchmark run may span sessions on different machines (its rows are resumable), and a wall
time or a last-digit difference means little without knowing which machine produced it.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

import torch


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), else the architecture."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    """What ran this process's work; threads are read now, since a worker may set its own."""
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
    return info
