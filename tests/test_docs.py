"""Executable docs: every ``sh``/``python`` fenced block of README.md and docs/*.md runs as written.

Blocks run from a scratch copy of the repository root (top-level entries symlinked, so nothing a block
writes lands in the checkout), with the virtual environment's ``bin`` first on PATH, after a demo
has produced ``out/demo/`` (built once per session with ``snn2hw demo --epochs 2 --no-lava``: the docs
promise to run after ``make demo``, and two epochs give the same files quickly). A page's blocks run in
order in one process (``tests/docs_runner.py``); a failure names the file and the line of the block.
Illustrative, slow or optional-package snippets are fenced ``text`` (or ``console``) and not run.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock  # the test extra (torch brings it too)

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNER = Path(__file__).resolve().parent / "docs_runner.py"
sys.path.insert(0, str(RUNNER.parent))
from docs_runner import MARK, blocks  # noqa: E402

pytestmark = pytest.mark.slow  # minutes of subprocesses; CI (make test) runs it


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    # One demo per test session, not per pytest-xdist worker (each build trains and compiles: ~45 CPU-s cold):
    # workers share their base temp directory's parent; the first builds under a file lock, the others reuse it.
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    out, done = base / "docs_demo" / "demo", base / "docs_demo.ok"
    with FileLock(str(base / "docs_demo.lock")):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)  # a failed build of another worker: start clean
            r = subprocess.run([sys.executable, "-m", "snn2hw.cli", "demo", "--out", str(out), "--epochs", "2",
                                "--no-lava", "--quiet"], capture_output=True, text=True, cwd=ROOT)
            assert r.returncode == 0, r.stderr[-3000:]
            done.touch()
    return out


def _scratch_root(tmp: Path, demo: Path) -> Path:
    root = tmp / "repo"
    root.mkdir()
    for entry in ROOT.iterdir():
        if entry.name in (".git", "out"):
            continue
        (root / entry.name).symlink_to(entry)
    (root / "out").mkdir()
    subprocess.run(["cp", "-r", str(demo), str(root / "out" / "demo")], check=True)
    shared = ROOT.parent / "shared"
    if shared.exists() and not (tmp / "shared").exists():
        (tmp / "shared").symlink_to(shared)
    return root


@pytest.mark.parametrize("page", [p for p in PAGES if any(blocks(p.read_text()))], ids=lambda p: p.name)
def test_doc_blocks_run(page, demo_dir, tmp_path):
    root = _scratch_root(tmp_path, demo_dir)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    r = subprocess.run([sys.executable, str(RUNNER), str(page), str(root)], capture_output=True, text=True, env=env)
    results = [json.loads(line[len(MARK):]) for line in r.stdout.splitlines() if line.startswith(MARK)]
    failed = [x for x in results if not x["ok"]]
    rel = page.relative_to(ROOT)
    if failed:
        f = failed[0]
        pytest.fail(f"{rel}:{f['line']}: {f['lang']} block failed:\n{f['error']}", pytrace=False)
    assert r.returncode == 0, f"{rel}: runner exited {r.returncode}: {r.stderr[-2000:]}"
    assert len(results) == sum(1 for _ in blocks(page.read_text()))
    # seconds per block are in the runner's output (not asserted: timings on a shared machine vary)
