"""pytest plugin: log every numba compile (function, closure constants, signature, CPU s, the test that asked for it).

With an empty NUMBA_CACHE_DIR this shows which test compiles which kernel variant, and at what CPU cost:

    NUMBA_CACHE_DIR=$(mktemp -d) COMPILE_LOG=out.json PYTHONPATH=benchmarks .venv/bin/python -m pytest -q -p no:xdist \
        -p pytest_compile_log tests/test_nn_kernels.py

Entries with depth 0 are the kernels called from Python (their callees compile inside them). Under pytest-xdist
(`-n 2`) each worker writes its own file (`out.gw0.json`, ...). A load from numba's cache passes through the same hook
and is logged too, at well under a second of CPU; the same variant at compile cost in two workers' files was
compiled twice (both asked before either had written it)."""
import json, os, time
import pytest
from numba.core import dispatcher as _d

_current = {"test": "<collect>"}
_log = []
_depth = [0]
_orig = _d.Dispatcher.compile

def _compile(self, sig):
    existing = sig in self.overloads if hasattr(self, "overloads") else False
    f = self.py_func
    cl = None
    if f.__closure__:
        try:
            cl = repr(tuple(c.cell_contents for c in f.__closure__ if not callable(c.cell_contents)))
        except Exception:
            cl = "?"
    _depth[0] += 1
    t0 = time.process_time()
    try:
        return _orig(self, sig)
    finally:
        _depth[0] -= 1
        dt = time.process_time() - t0
        if not existing and dt > 0.005:
            _log.append({"fn": f"{f.__module__}.{f.__qualname__}",  # __module__ is None for functions built from code objects
                         "closure": cl, "sig": str(sig), "cpu": dt,
                         "depth": _depth[0], "test": _current["test"]})

_d.Dispatcher.compile = _compile

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current["test"] = item.nodeid
    yield

def pytest_sessionfinish(session):
    out = os.environ.get("COMPILE_LOG", "compile_log.json")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:  # under pytest-xdist each worker compiles (and logs) for itself: out.gw0.json, out.gw1.json, ...
        root, ext = os.path.splitext(out)
        out = f"{root}.{worker}{ext}"
    elif getattr(session.config.option, "numprocesses", None):
        return  # the xdist controller runs no tests
    with open(out, "w") as fh:
        json.dump(_log, fh, indent=0)
