"""What the benchmark runs on: torch when it is installed (with ``--threads`` applied),
fastattn's configuration, the CPU model, the versions and the thread counts."""

from __future__ import annotations

import os
import platform
from typing import Optional

import numpy as np

import fastattn


def import_torch(threads: Optional[int]):
    """torch, with its thread count set when --threads was given; None (with a note) if absent."""
    try:
        import torch
    except ImportError:
        print("note: torch is not installed; skipping torch SDPA", flush=True)
        return None
    if threads is not None:
        torch.set_num_threads(threads)
    return torch


def fastattn_config() -> dict:
    """fastattn.show_config()'s dict."""
    return dict(fastattn.show_config())


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else whatever platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe_machine(config: dict, torch, threads: Optional[int]) -> dict:
    return {
        "fastattn": config["version"],
        "fastattn_config": config,
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "fastattn_threads": threads if threads is not None else config["num_threads"],
        "torch_threads": torch.get_num_threads() if torch is not None else None,
    }
