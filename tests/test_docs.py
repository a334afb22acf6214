"""The documentation: the site builds with ``mkdocs build --strict``, offline, and every relative
link of the Markdown files resolves, on GitHub as in the site.

``--strict`` with ``mkdocs.yml``'s ``validation`` turns every warning into a failure: a link to a
missing page or anchor, a page left out of the navigation, a missing ``--8<--`` include, a
docstring the API reference cannot render. The build runs with every proxy pointing at a closed
port, so anything that tried to download (fonts, inventories, a plugin's assets) would fail it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[1]
#: The Markdown a reader meets: the front page, the architecture, the benchmarks, the site's pages,
#: the example plugin's README.
MARKDOWN = sorted(
    [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "bench" / "README.md"]
    + list((ROOT / "docs").rglob("*.md"))
    + list((ROOT / "examples").rglob("README.md"))
)
#: A closed port: a build that tries to reach the network fails instead of waiting.
NO_NETWORK = "http://127.0.0.1:9"

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
SNIPPET = re.compile(r'^--8<--\s+"([^":]+)(?::[\w-]+)?"\s*$', re.MULTILINE)


def prose(text: str) -> str:
    """``text`` without code blocks, code spans and HTML comments (their brackets are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", HTML_COMMENT.sub("", text)))


def anchors(path: Path) -> set[str]:
    """The heading anchors of ``path`` as mkdocs makes them, with the headings it includes by ``--8<--``."""
    text = path.read_text(encoding="utf-8")
    headings = set(HEADING.findall(FENCE.sub("", text)))
    for included in SNIPPET.findall(text):
        headings |= set(HEADING.findall(FENCE.sub("", (ROOT / included).read_text(encoding="utf-8"))))
    return {slugify(re.sub(r"[`*]", "", heading), "-") for heading in headings}


def broken_links(path: Path) -> list[str]:
    """Every relative link of ``path`` whose file or heading anchor does not exist."""
    problems = []
    for target in LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{path.relative_to(ROOT)}: {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{path.relative_to(ROOT)}: {target}: no heading with that anchor")
    return problems


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_link_check_finds_missing_files_and_anchors(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# Title\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-section) [top](#here) [web](https://example.org/x)\n"
        "[gone](missing.md) [bad anchor](other.md#nope) `[code](missing2.md)`\n\n# Here\n"
    )
    assert broken_links(page) == [
        "page.md: missing.md: no such file",
        "page.md: other.md#nope: no heading with that anchor",
    ]


def test_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    assert "make quickstart" in readme and "make test" in readme


@pytest.mark.integration
def test_site_builds_strict_and_offline(tmp_path):
    site = tmp_path / "site"
    env = {
        **os.environ,
        "NO_MKDOCS_2_WARNING": "1",
        **{name: NO_NETWORK for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
        "NO_PROXY": "",
        "no_proxy": "",
    }
    # `python -m mkdocs`: with the venv's bin/ first on sys.path, the `mertlab` console script
    # there would shadow the package for the API reference (see mkdocs.yml).
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    pages = {path.parent.name for path in site.rglob("index.html")}
    assert {"getting-started", "cli", "api", "architecture", "benchmarks"} <= pages
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert "FrameTeacher" in api and "contract_tests" in api  # rendered from the docstrings
    external = re.findall(
        r"<(?:link|script)[^>]+(?:href|src)=\"https?://[^\"]+",
        "".join(path.read_text(encoding="utf-8") for path in site.rglob("*.html")),
    )
    assert external == [], "the site loads assets from the network"
