"""Run the ``sh`` and ``python`` fenced blocks of one Markdown file, in order, as a reader would.

Used by ``tests/test_docs.py`` in a subprocess: ``python tests/docs_runner.py FILE.md WORKDIR``.
Python blocks of a file share one namespace (a page builds on its earlier blocks); ``sh`` blocks run
in bash (``set -e``) in the same working directory. Prints one line per block, ``MARK`` followed by JSON:
{"line": N, "lang": ..., "ok": bool, "seconds": s, "error": text}. Stops at the first failure, because
later blocks usually depend on earlier ones.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARK = "@@snn2hw-doc-block@@ "  # result lines; a block's own output may print anything
BLOCK_SECONDS = int(os.environ.get("SNN2HW_DOCS_BLOCK_SECONDS", "600"))  # a hang guard, not a speed test


def blocks(text: str):
    """(first line number of the code, language, code) for every fenced block tagged sh or python."""
    for m in FENCE.finditer(text):
        lang = m.group(1).lower()
        if lang in ("sh", "bash", "python", "py"):
            yield text.count("\n", 0, m.start(2)) + 1, ("python" if lang in ("python", "py") else "sh"), m.group(2)


class BlockTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise BlockTimeout(f"block ran past {BLOCK_SECONDS} s")


def main(md: str, workdir: str) -> int:
    os.chdir(workdir)
    namespace: dict = {"__name__": "__main__"}
    signal.signal(signal.SIGALRM, _alarm)
    for line, lang, code in blocks(Path(md).read_text()):
        t0 = time.perf_counter()
        ok, err = True, ""
        if lang == "python":
            signal.alarm(BLOCK_SECONDS)
            try:
                exec(compile(code, f"{md}:{line}", "exec"), namespace)
            except BaseException:  # noqa: BLE001 - reported, not swallowed
                ok, err = False, traceback.format_exc(limit=-3)
            finally:
                signal.alarm(0)
        else:
            try:
                r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], capture_output=True, text=True,
                                   timeout=BLOCK_SECONDS)
                ok, err = r.returncode == 0, (r.stdout[-1500:] + r.stderr[-2500:]) if r.returncode else ""
            except subprocess.TimeoutExpired:
                ok, err = False, f"block ran past {BLOCK_SECONDS} s"
        print(MARK + json.dumps({"line": line, "lang": lang, "ok": ok, "seconds": round(time.perf_counter() - t0, 2),
                          "error": err}), flush=True)
        if not ok:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
