"""The docs hold together: every relative link resolves, the README stays a user's page, the pages exist.

The README is for using the app and the CLI; what was measured lives in docs/ (quality, decoding,
performance, architecture, testing). A link is checked the way GitHub renders it: the file must
exist, and a `#anchor` must be the slug of a heading in the target (lower case, punctuation
dropped, spaces to hyphens, `-1`, `-2` for repeats), so `[GPU](docs/performance.md#gpu-issue-12)`
fails as soon as the heading "GPU (issue 12)" is renamed.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("quality", "decoding", "performance", "architecture", "testing")
MAX_README_LINES = 400

pytestmark = pytest.mark.timeout(60)

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def body(path: Path) -> str:
    """The Markdown without YAML front matter and fenced code (a `# comment` in bash is no heading)."""
    text = path.read_text(encoding="utf-8")
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        text = text[end + 5:] if end != -1 else text
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text.

    >>> slug("GPU (issue 12)"), slug("Full length: learning rate 0.1 with a 10% warm-up")
    ('gpu-issue-12', 'full-length-learning-rate-01-with-a-10-warm-up')
    >>> slug("3 epochs = 12 steps"), slug("`python -m tuning`, 5 × 5")
    ('3-epochs--12-steps', 'python--m-tuning-5--5')
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text, not its target
    text = re.sub(r"<[^>]+>", "", text).lower()
    kept = (c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's slug in `path`, numbered as GitHub numbers repeats (`x`, `x-1`, `x-2`)."""
    seen: dict[str, int] = {}
    out = set()
    for match in HEADING.finditer(body(path)):
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    text = CODE_SPAN.sub("", body(path))
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:|^//", t, re.I)]


def broken(path: Path, target: str) -> str | None:
    """Why `target` (a link in `path`) does not resolve, or None when it does."""
    file, _, anchor = target.partition("#")
    dest = (path.parent / file).resolve() if file else path
    if not dest.exists():
        return f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
    if anchor:
        if dest.is_dir() or dest.suffix != ".md":
            return f"{target}: an anchor into something that is not a Markdown page"
        if anchor not in anchors(dest):
            return f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("page", PAGES)
def test_each_docs_page_exists_and_opens_with_a_title_and_an_intro(page):
    lines = (ROOT / "docs" / f"{page}.md").read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith("# "), f"docs/{page}.md should open with its title"
    assert lines[1] == "" and lines[2] and not lines[2].startswith("#"), f"docs/{page}.md: an intro paragraph first"


def test_the_readme_stays_within_400_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move records of experiments to docs/"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    links = relative_links(path)
    problems = [why for target in links if (why := broken(path, target))]
    assert not problems, "\n".join(problems)


def test_the_readme_links_every_docs_page():
    links = {t.partition("#")[0] for t in relative_links(ROOT / "README.md")}
    assert {f"docs/{p}.md" for p in PAGES} <= links


def test_the_module_map_names_every_module():
    """docs/architecture.md has a line for app.py and every module in tuning/ and ui/ (keep it true when files move)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = ["app.py"] + sorted(f"tuning/{p.name}" for p in (ROOT / "tuning").glob("*.py")) \
        + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "ui").rglob("*.py"))
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"add to the module map in docs/architecture.md: {missing}"


@pytest.mark.parametrize("heading, anchor", [
    ("GPU (issue 12)", "gpu-issue-12"),
    ("On an AVX2-only AMD EPYC (issue 12, 2026-12-04)", "on-an-avx2-only-amd-epyc-issue-12-2026-12-04"),
    ("Full length: learning rate 0.3 with a 10% warm-up (the default now)",
     "full-length-learning-rate-03-with-a-10-warm-up-the-default-now"),
    ("MCP and the documented API", "mcp-and-the-documented-api"),
    ("Share: the Hub and the run report", "share-the-hub-and-the-run-report"),
])
def test_slugs_follow_githubs_rules(heading, anchor):
    assert slug(heading) == anchor
