"""What every benchmark sets before torch starts and records about the machine (imports no torch)."""
from __future__ import annotations

import os
import platform


def threads_from_argv(argv) -> str:
    """The value of ``--threads`` on a command line (default 2), read before argparse runs."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "2"


def thread_env(threads: str) -> dict:
    """The thread and wait-policy variables a benchmark process runs under: spinning OpenMP workers
    otherwise starve the thread that issues many small ops on an oversubscribed machine."""
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
            "NUMBA_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def set_thread_env(argv) -> str:
    """Put ``thread_env`` into ``os.environ`` (call before importing torch or numba); returns the count."""
    threads = threads_from_argv(argv)
    os.environ.update(thread_env(threads))
    return threads


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
