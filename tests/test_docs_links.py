"""The docs' cross-references resolve: relative links, their anchors, and the section names that code and
other pages quote ("see docs/performance.md, "The event-driven input product"").

Fast (text only). ``tests/test_docs.py`` runs the ``sh``/``python`` blocks of README.md and docs/*.md; the
experiment logs under docs/experiments/ are history, not run by it, so they must not hold runnable blocks.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted((DOCS / "experiments").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[^\n]*\n.*?^```[ \t]*$", re.S | re.M)
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
# `docs/X.md`, "Section name" or X.md, "Section name" in code, docstrings and pages (line breaks and
# comment markers inside the quoted name are folded to spaces first).
QUOTED = re.compile(r"([\w-]+\.md)`*\)?,\s*\"([A-Z][^\"]{4,100}?)\"")


def _without_code(text: str) -> str:
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _headings(page: Path) -> list[str]:
    return [m.group(1) for m in HEADING.finditer(_without_code(page.read_text()))]


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in _headings(page):
        s = _slug(h)
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page):
    bad = []
    for target in LINK.findall(_without_code(page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not bad, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(bad)


def test_experiment_logs_hold_no_runnable_blocks():
    """History is fenced as text: the docs runner covers docs/*.md only, so a sh/python block here would
    be an example nobody runs."""
    for page in sorted((DOCS / "experiments").glob("*.md")):
        langs = {m.group(1).lower() for m in FENCE.finditer(page.read_text())}
        assert not langs & {"sh", "bash", "python", "py"}, f"{page.relative_to(ROOT)}: runnable block in a log"


def _quoted_sections():
    files = [*ROOT.glob("snn2hw/**/*.py"), *ROOT.glob("backends/**/*.py"), *ROOT.glob("benchmarks/*.py"),
             *ROOT.glob("tests/*.py"), *PAGES]
    for f in files:
        if f == Path(__file__).resolve():
            continue
        text = re.sub(r"\n[ \t]*(?:#[ \t]*)?", " ", f.read_text(errors="replace"))
        for name, section in QUOTED.findall(text):
            yield f, name, section


def test_quoted_section_names_exist():
    pages = {p.name: p for p in PAGES if p.parent == DOCS or p.parent == DOCS / "experiments"}
    quoted = list(_quoted_sections())
    assert any(name == "performance.md" for _, name, _ in quoted)  # the pattern still finds the references
    bad = []
    for f, name, section in quoted:
        page = pages.get(name)
        if page is None:
            continue
        if not any(h.startswith(section) or section in h for h in _headings(page)):
            bad.append(f"{f.relative_to(ROOT)}: {name}, \"{section}\": no such heading")
    assert not bad, "\n".join(bad)
