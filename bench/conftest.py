"""Records library versions and thread counts in the report header and the benchmark JSON."""

import os

import numpy as np

import fastattn


def _environment():
    config = fastattn.show_config()
    info = {
        "fastattn": fastattn.__version__,
        "fastattn_backend": config["backend"],
        "fastattn_isa": config["selected_isa"],
        "fastattn_threads": config["num_threads"],
        "numpy": np.__version__,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "<unset>"),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch
    except ImportError:
        info["torch"] = "<not installed>"
    else:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


def pytest_report_header(config):
    return "bench: " + ", ".join(f"{k}={v}" for k, v in _environment().items())


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["bench_environment"] = _environment()
