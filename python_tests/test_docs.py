"""README.md and docs/*.md: links that resolve, file names that exist, the quick-start commands.

The README was split into docs/ pages; a page that moves, a heading that is renamed or a recorded
benchmark file that is renamed would otherwise leave links and names pointing nowhere.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULTS = ROOT / "benchmarks" / "results"

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# Repository paths written as code spans: `superthoughts_ext/data.py`, `benchmarks/results/`.
REPO_PATH = re.compile(r"`((?:benchmarks|superthoughts_ext|python_tests|csrc|docs|\.ci)/[\w./-]*)`")
# Recorded benchmark files named without their folder: `train_cpu.json`, `demo_cpu_xeon.png`.
RESULT_NAME = re.compile(r"`((?:step|generate|train|demo)_\w+\.(?:json|png))`")


def prose_lines(page: Path) -> list[str]:
    """The page's lines outside fenced code blocks (a `# comment` in a bash block is no heading)."""
    lines, fenced = [], False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in prose_lines(page):
        if match := re.match(r"#{1,6} (.+)", line):
            anchor = github_anchor(match.group(1))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            if count:  # GitHub numbers repeated headings: setup, setup-1, ...
                seen[f"{anchor}-{count}"] = 1
    return set(seen)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for line in prose_lines(page):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            linked = (page.parent / path_part).resolve() if path_part else page
            if not linked.exists():
                broken.append(f"{target}: no file {linked}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_named_repository_files_exist(page):
    # Paths in code spans are relative to the repository root on every page (each docs page says so).
    text = page.read_text()
    missing = [name for name in REPO_PATH.findall(text) if not (ROOT / name).exists()]
    missing += [name for name in RESULT_NAME.findall(text) if not (RESULTS / name).exists()]
    assert not missing, f"{page.name} names files that do not exist: {sorted(set(missing))}"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    unlinked = [page.name for page in PAGES[1:] if f"(docs/{page.name})" not in readme]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_the_readme_opens_with_the_demo_and_test_commands():
    # A newcomer's first two commands; .ci/run runs the second, so it must stay `make test`.
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```", 2)[1].splitlines()[1:]
    commands = [line.split("#")[0].strip() for line in first_block if line.strip()]
    assert commands == ["make demo", "make test"], commands
    assert "\nmake test\n" in (ROOT / ".ci" / "run").read_text()
