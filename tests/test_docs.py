"""The README and docs/*.md point only at files this repository holds.

A newcomer follows these links from a fresh clone, so a link to a file that was moved, renamed or never
committed, or to the developers' workspace outside the clone, is a broken front door.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target), the target up to a space (a title may follow) or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def prose(page: Path) -> str:
    """The page without its code blocks: a link or a `#` line there is text, not a link or a heading."""
    return re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)


def links(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(prose(page))]


def anchors(page: Path) -> set[str]:
    """The #anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", prose(page), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in links(page):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_relative_to(root) or not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(target)
    return broken


def test_the_readme_links_the_documentation():
    targets = links(ROOT / "README.md")
    for page in ("docs/API.md", "docs/OPERATIONS.md", "docs/BENCHMARKS.md", "docs/RESULTS.md"):
        assert page in targets


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_and_heading_in_the_repository(page: Path):
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)} links to what the repository does not hold: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_points_into_the_workspace_outside_the_clone(page: Path):
    text = page.read_text(encoding="utf-8")
    assert "../shared" not in text, f"{page.relative_to(ROOT)} names ../shared, which a clone does not have"


def test_a_broken_link_is_found(tmp_path: Path):
    # the checks above are only as good as the parsing, so show it catching each kind of break
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "API.md").write_text("# API\n\n## Errors\n")
    (tmp_path / "outside.md").write_text("# Outside\n")
    page = root / "docs" / "probe.md"
    page.write_text("# Here\n\n[a](API.md#errors) [b](API.md#no-such-heading) [c](missing.md) "
                    "[d](#here) [e](#gone) [f](https://example.org/x) [g](../../outside.md)\n"
                    "```\n[h](in-a-code-block.md)\n```\n")
    assert broken_links(page, root) == ["API.md#no-such-heading", "missing.md", "#gone", "../../outside.md"]
