"""What every benchmark sets before torch starts and records about the machine (imports no torch)."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path


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


# The "under load" mark. The 1-minute load average counts a benchmark's own threads and children, so on
# a 2-core machine a benchmark alone lifts it to about 2: it cannot tell whether *others* loaded the machine.
OTHER_LOAD_LIMIT = 0.1


class OtherLoad:
    """CPU time that *other* processes took over an interval, in CPUs (0 on an idle machine).

    The 1-minute load average counts this benchmark's own threads (and Lava's runtime processes), so on
    a 2-core machine the benchmark alone lifts it to about 2. Instead this takes the busy time of all
    CPUs from /proc/stat and subtracts this process's own CPU time and that of its finished children
    (Lava's runtime processes are children that end before the interval does), from /proc/self/stat.
    ``None`` where /proc is missing."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait

    @staticmethod
    def _own():
        try:
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime (clock ticks)

    def result(self) -> dict:
        wall = time.perf_counter() - self.t0
        busy, own = self._busy(), self._own()
        if None in (busy, own, self.busy0, self.own0) or wall <= 0:
            return {"other_cpus": None, "own_cpus": None, "seconds": wall}
        tick = os.sysconf("SC_CLK_TCK")
        own_cpus = (own - self.own0) / tick / wall
        other = max(0.0, (busy - self.busy0) / tick / wall - own_cpus)
        return {"other_cpus": other, "own_cpus": own_cpus, "seconds": wall}


def under_load(other: dict, load_at_start: float) -> bool:
    """Other processes used more than ``OTHER_LOAD_LIMIT`` of the CPUs (or, without /proc, the load
    average sampled before the benchmark started exceeded the CPU count)."""
    cpus = os.cpu_count() or 1
    if other["other_cpus"] is None:
        return load_at_start > cpus
    return other["other_cpus"] > OTHER_LOAD_LIMIT * cpus


class OtherLoadWithDescendants(OtherLoad):
    """``OtherLoad`` for a benchmark whose workers are long-lived child processes (``bench_training.py``'s
    worker interpreters, the peers' one included): the CPU time of every live descendant also counts as
    the benchmark's own, not only that of the children it has already waited for. A descendant that
    ends and is reaped inside the interval moves its time into its parent's ``cutime``, so nothing is
    counted twice."""

    @staticmethod
    def _own():
        own = OtherLoad._own()
        if own is None:
            return None
        parent, ticks = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # ended while we looked
            parent[int(entry)] = int(fields[1])
            ticks[int(entry)] = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        me = os.getpid()
        for pid in ticks:
            p, seen = parent.get(pid), 0
            while p is not None and p != me and p > 1 and seen < 64:  # walk up to this process or init
                p, seen = parent.get(p), seen + 1
            if p == me:
                own += ticks[pid]
        return own


def write_results(out, script: str, argv, meta: dict, rows: list, load_before: float) -> None:
    """Write a diagnostic's JSON: ``meta`` plus the machine, the 1-minute load average before and after the
    run and the command line, and its ``rows``; print where it went."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "cpu_model": cpu_model(), "load_average_1min_before": load_before,
            "load_average_1min_after": os.getloadavg()[0],
            "command": " ".join([script, *(argv if argv is not None else sys.argv[1:])])}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
