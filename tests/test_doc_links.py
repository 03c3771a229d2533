"""Every relative link of README.md and docs/*.md reaches a file of the repository, and every #anchor
a heading of its page (GitHub's heading ids), so that the docs never point at a moved page or a
renamed section."""

from __future__ import annotations

import glob
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", *sorted(os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def heading_ids(text: str) -> set[str]:
    """The ids GitHub gives a page's headings: lower case, markup and punctuation dropped (letters,
    digits, `_` and `-` kept), spaces to `-`; a repeated id gets -1, -2, ..."""
    ids, seen = set(), {}
    for line in re.sub(r"```.*?```", "", text, flags=re.S).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a link keeps its text
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    ids |= set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return ids


def relative_links(doc: str) -> list[str]:
    text = open(os.path.join(ROOT, doc)).read()
    return [target for target in LINK.findall(_prose(text)) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def broken(doc: str, target: str) -> str | None:
    """Why the link ``target`` of ``doc`` leads nowhere, or None."""
    path, _, anchor = target.partition("#")
    file = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), path)) if path else os.path.join(ROOT, doc)
    if not file.startswith(ROOT + os.sep) or not os.path.exists(file):
        return f"{path} does not exist"
    if anchor:
        if not file.endswith(".md"):
            return f"#{anchor} points into {path}, which is not a Markdown page"
        if anchor not in heading_ids(open(file).read()):
            return f"{os.path.relpath(file, ROOT)} has no heading #{anchor}"
    return None


def test_heading_ids_follow_githubs_rule():
    page = "# Demos: time and results (2026-11-27)\n## `make demo`\n## Notes\n## Notes\n```\n# not a heading\n```\n"
    assert heading_ids(page) == {"demos-time-and-results-2026-11-27", "make-demo", "notes", "notes-1"}


def test_a_broken_link_or_anchor_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "A.md").write_text("# Title\n## Flags that matter\n")
    (tmp_path / "README.md").write_text("[a](docs/A.md#flags-that-matter) [b](docs/B.md) [c](docs/A.md#flags) "
                                        "[d](#title) `[e](docs/C.md)` [f](https://example.org/x)\n# Title\n")
    links = relative_links("README.md")
    assert links == ["docs/A.md#flags-that-matter", "docs/B.md", "docs/A.md#flags", "#title"]
    assert [broken("README.md", link) for link in links] == [
        None, "docs/B.md does not exist", "docs/A.md has no heading #flags", None]


def test_the_docs_have_links():
    assert sum(len(relative_links(doc)) for doc in DOCS) >= 40
    assert {"docs/FIDELITY.md", "docs/CLASSIFICATION.md", "docs/PERFORMANCE.md"} <= {
        os.path.normpath(link.partition("#")[0]) for link in relative_links("README.md")}


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_and_anchor_resolves(doc):
    problems = [f"{target}: {why}" for target in relative_links(doc) if (why := broken(doc, target))]
    assert not problems, f"{doc}: " + "; ".join(problems)
